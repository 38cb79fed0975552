"""What the cluster path costs: one server vs `serve --replicas`, in one run.

Starts, one after the other on loopback (side by side they would share the
cores), with the same random-weight hiera-tiny checkpoint:

  - `sam2-server serve` (torch's threads: all cores),
  - `serve --replicas 1 --replica-cpus 2`: the cluster path with the same
    threads, so the difference is Ray's (proxy -> ingress -> replica),
  - `serve --replicas 2`: a replica per core, one thread each.

On each: one client uploads `--images` new 1024x768 photos through the
native API (the encode) and clicks each `--clicks` times by id (medians);
then two clients at once do the same on other images (requests per second).
The encoder runs /stats counts should be one per new image: affinity.

    .venv/bin/python bench/cluster.py     # about 4 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PHOTO, SIZE, serve_args, started

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.synthetic: the test models
from tests.synthetic import write_checkpoint


def photos(count: int) -> list[bytes]:
    """Distinct photos of SIZE: the test photo shifted by a few pixels each."""
    base = np.array(Image.open(PHOTO).convert("RGB").resize((SIZE[0] + 64, SIZE[1] + 64)))
    out = []
    for index in range(count):
        crop = base[index : index + SIZE[1], index : index + SIZE[0]]
        buffer = io.BytesIO()
        Image.fromarray(crop).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def run(url: str, images: list[bytes], clicks: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"upload": [], "click": []}
    with httpx.Client(base_url=url, timeout=300) as client:
        for image in images:
            started_at = time.perf_counter()
            upload = client.post("/v1/images", files={"image": ("p.jpg", image, "image/jpeg")})
            times["upload"].append(time.perf_counter() - started_at)
            upload.raise_for_status()
            image_id = upload.json()["image_id"]
            for index in range(clicks):
                started_at = time.perf_counter()
                answer = client.post(
                    f"/v1/images/{image_id}/segment",
                    json={"points": [[100 + 40 * index, 300]], "labels": [1]},
                )
                times["click"].append(time.perf_counter() - started_at)
                answer.raise_for_status()
    return times


CONFIGS = (
    ("one server", ()),
    ("1 replica, 2 CPUs", ("--replicas", "1", "--replica-cpus", "2")),
    ("2 replicas, 1 CPU each", ("--replicas", "2")),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--clicks", type=int, default=10)
    args = parser.parse_args()
    images = photos(2 * args.images + 1)
    warm_up, alone, together = images[0], images[1 : args.images + 1], images[args.images + 1 :]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder) / "sam2.1_hiera_tiny.pt", seed=0)
        for name, extra in CONFIGS:
            with started(name, serve_args(checkpoint, *extra)) as server:
                run(server.url, [warm_up], 2)  # every replica's first request is slower
                run(server.url, [warm_up], 2)
                before = server.stats()["encoded_images"]
                times = run(server.url, alone, args.clicks)
                # Two clients at once, each with its own images: what the cores give.
                halves = [together[::2], together[1::2]]
                started_at = time.perf_counter()
                with ThreadPoolExecutor(2) as pool:
                    list(pool.map(lambda half: run(server.url, half, args.clicks), halves))
                wall = time.perf_counter() - started_at
                time.sleep(1.5)  # the cluster's replicas report twice a second
                stats = server.stats()
                threads = [r["threads"] for r in stats.get("replicas", [])] or ["2 (torch default)"]
                rows.append(
                    (
                        name,
                        statistics.median(times["upload"]),
                        statistics.median(times["click"]),
                        len(together) * (1 + args.clicks) / wall,
                        stats["encoded_images"] - before,
                        threads,
                    )
                )
    print(
        f"hiera-tiny (random weights), {SIZE[0]}x{SIZE[1]} JPEG; one client: {args.images} "
        f"images x {args.clicks} clicks by id (median s); two clients at once: "
        f"{len(together)} other images (requests/s)"
    )
    print(f"{'':24} {'upload':>7} {'click':>7} {'2 clients':>9} {'encodes':>7}  torch threads")
    for name, upload, click, throughput, encodes, threads in rows:
        print(f"{name:24} {upload:7.3f} {click:7.3f} {throughput:9.2f} {encodes:7d}  {threads}")
    base = rows[0]
    for name, upload, click, throughput, _, _ in rows[1:]:
        print(
            f"{name} / one server: upload {upload / base[1]:.2f}x, click {click / base[2]:.2f}x, "
            f"throughput {throughput / base[3]:.2f}x"
        )
    print(f"expected encodes per configuration: {2 * args.images} (one per new image)")


if __name__ == "__main__":
    main()
