"""What the cluster path costs per request: one server vs `serve --replicas 2`, one run.

Starts `sam2-server serve` on loopback with a random-weight hiera-tiny, then
`sam2-server serve --replicas 2` (a local Ray, one CPU per replica) on the
same checkpoint, one after the other (side by side they would share the
cores). On each: `--images` new 1024x768 photos, each uploaded once through
the native API (the encode) and clicked `--clicks` times by id; then prints
the medians, the ratios cluster / one server, and the encoder runs the
cluster's /stats counts (the affinity: one per image).

    .venv/bin/python bench/cluster.py     # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PHOTO, SIZE, serve_args, started
from sam2_server.engine.synthetic import write_checkpoint


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--clicks", type=int, default=10)
    args = parser.parse_args()
    images = photos(args.images)
    results: dict[str, dict[str, list[float]]] = {}
    encoded: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder) / "sam2.1_hiera_tiny.pt", seed=0)
        for name, extra in (("one server", ()), ("2 replicas", ("--replicas", "2"))):
            with started(name, serve_args(checkpoint, *extra)) as server:
                run(server.url, photos(1), 2)  # warm-up, not counted
                before = server.stats()["encoded_images"]
                results[name] = run(server.url, images, args.clicks)
                time.sleep(1.5)  # the cluster's replicas report twice a second
                encoded[name] = server.stats()["encoded_images"] - before
    print(
        f"hiera-tiny (random weights), {SIZE[0]}x{SIZE[1]} JPEG, {args.images} images x "
        f"{args.clicks} clicks by id, median seconds"
    )
    print(f"{'':12} {'upload+encode':>14} {'click':>8} {'encoder runs':>13}")
    for name, times in results.items():
        print(
            f"{name:12} {statistics.median(times['upload']):14.3f} "
            f"{statistics.median(times['click']):8.3f} {encoded[name]:13d}"
        )
    one, two = results["one server"], results["2 replicas"]
    print(
        f"{'ratio':12} {statistics.median(two['upload']) / statistics.median(one['upload']):14.2f} "
        f"{statistics.median(two['click']) / statistics.median(one['click']):8.2f}"
    )


if __name__ == "__main__":
    main()
