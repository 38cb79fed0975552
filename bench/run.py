"""sam2-server against a reference-style baseline, side by side, in one run.

Starts on loopback: sam2-server and the baseline (bench/baseline_server.py,
which does per request what Livepeer's runner does), both on the same
random-weight hiera-tiny checkpoint, then measures:

  1. cold: a new image with the default parameters,
  2. clicks: ten further prompts on the same image,
  3. 4 concurrent clients on distinct images, and on one (new) image,
  4. /health latency while 3 runs,
  5. memory: 200 distinct images in a row through sam2-server (a reduced
     encoder to keep it short; embeddings have the same size) with a small
     cache bound, RSS before and after.

Prints medians and ratios, writes JSON (default bench/results/latest.json).

    .venv/bin/python bench/run.py            # ~5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.synthetic: the test models
from tests.synthetic import REDUCED_OVERRIDES, write_checkpoint, write_config

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "truck.jpg"
SIZE = (1024, 768)  # the image size quoted in the issue
EMBEDDING_BYTES = 16 * 1024 * 1024  # one fp32 SAM2 embedding, ~16.8 MB


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen

    def stats(self) -> dict:
        return httpx.get(self.url + "/stats", timeout=10).json()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def started(name: str, args: list[str], env: dict[str, str] | None = None) -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *args, "--port", str(port)],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    server = Server(name, f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 300
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited during start-up")
            try:
                if httpx.get(server.url + "/health", timeout=2).json()["status"] == "OK":
                    break
            except (httpx.TransportError, ValueError):  # ValueError: Ray's proxy, not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become healthy")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


class Images:
    """Distinct uploads of one photo: a corner block differs, and so do the bytes and hash.

    (A one-pixel change is not enough: JPEG quantisation can give identical bytes.)
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.base = np.array(Image.open(PHOTO).convert("RGB").resize(size))
        self.count = 0

    def new(self) -> bytes:
        self.count += 1
        pixels = self.base.copy()
        pixels[:16, :16] = (self.count % 256, self.count // 256 % 256, 7)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(
            buffer, format="JPEG", quality=92, comment=f"sam2-bench {self.count}"
        )
        return buffer.getvalue()


def segment(client: httpx.Client, url: str, image: bytes, point: tuple[int, int]) -> float:
    """One request with the default parameters; seconds until the whole body has arrived."""
    started_at = time.perf_counter()
    response = client.post(
        url + "/segment-anything-2",
        data={"point_coords": json.dumps([list(point)]), "point_labels": "[1]"},
        files={"image": ("image.jpg", image, "image/jpeg")},
        timeout=600,
    )
    response.read()
    elapsed = time.perf_counter() - started_at
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
    return elapsed


def answer(url: str, image: bytes) -> dict[str, np.ndarray]:
    response = httpx.post(
        url + "/segment-anything-2",
        data={"point_coords": "[[500, 400]]", "point_labels": "[1]"},
        files={"image": ("image.jpg", image, "image/jpeg")},
        timeout=600,
    )
    return {k: np.array(json.loads(v), dtype=np.float32) for k, v in response.json().items()}


def concurrently(url: str, uploads: list[bytes]) -> tuple[float, list[float]]:
    """All uploads at once, one client each: (wall seconds, per-request seconds)."""
    latencies: list[float] = [0.0] * len(uploads)
    barrier = threading.Barrier(len(uploads))

    def client(i: int) -> None:
        with httpx.Client() as c:
            barrier.wait()
            latencies[i] = segment(c, url, uploads[i], (300 + 40 * i, 300))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(uploads))]
    started_at = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started_at, latencies


@contextmanager
def health_probe(url: str) -> Iterator[list[float]]:
    """Poll /health every 50 ms while the block runs; yields the latencies (s)."""
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                started_at = time.perf_counter()
                c.get(url + "/health")
                latencies.append(time.perf_counter() - started_at)
                stop.wait(0.05)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def measure(server: Server, images: Images, clicks: int, colds: int) -> dict:
    result: dict = {}
    with httpx.Client() as client:
        cold = [segment(client, server.url, images.new(), (500, 400)) for _ in range(colds)]
        image = images.new()
        segment(client, server.url, image, (500, 400))
        click = [
            segment(client, server.url, image, (100 + 80 * i, 200 + 40 * i)) for i in range(clicks)
        ]
    result["cold_s"] = statistics.median(cold)
    result["click_s"] = statistics.median(click)
    result["cold_samples_s"] = cold
    result["click_samples_s"] = click
    with health_probe(server.url) as health:
        result["concurrent_distinct_wall_s"], lat = concurrently(
            server.url, [images.new() for _ in range(4)]
        )
        result["concurrent_distinct_median_s"] = statistics.median(lat)
        same = images.new()
        encodes_before = stats_encodes(server)
        result["concurrent_same_wall_s"], lat = concurrently(server.url, [same] * 4)
        result["concurrent_same_median_s"] = statistics.median(lat)
        encodes_after = stats_encodes(server)
        if encodes_before is not None and encodes_after is not None:
            result["concurrent_same_encodes"] = encodes_after - encodes_before
    result["health_p50_ms"] = 1000 * percentile(health, 50)
    result["health_p99_ms"] = 1000 * percentile(health, 99)
    result["health_max_ms"] = 1000 * max(health)
    result["health_samples"] = len(health)
    return result


def stats_encodes(server: Server) -> int | None:
    try:
        return int(server.stats()["encoded_images"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def serve_args(checkpoint: Path, *extra: str) -> list[str]:
    """`sam2-server serve` on loopback, CPU, quiet, for `checkpoint`."""
    return [
        *("-m", "sam2_server.cli", "serve", "--host", "127.0.0.1", "--device", "cpu"),
        *("--model-id", str(checkpoint), "--log-level", "warning", *extra),
    ]


def photo_jpeg() -> bytes:
    """PHOTO at SIZE, as a JPEG (quality 92): the image the click benchmarks send."""
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize(SIZE).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@contextmanager
def tiny_with_photo(prefix: str) -> Iterator[tuple[Server, httpx.Client, bytes, str]]:
    """sam2-server on a random-weight hiera-tiny, `photo_jpeg()` uploaded to it (so it is
    encoded and cached): the server, a client for it, the photo and its image id."""
    image = photo_jpeg()
    image_id = hashlib.sha256(image).hexdigest()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "sam2.1_hiera_tiny.pt", seed=0)
        with (
            started("sam2-server", serve_args(checkpoint)) as server,
            httpx.Client(base_url=server.url, timeout=300) as client,
        ):
            upload = client.post("/v1/images", files={"image": ("p.jpg", image, "image/jpeg")})
            upload.raise_for_status()
            assert upload.json()["image_id"] == image_id
            yield server, client, image, image_id


def post_click(
    client: httpx.Client, image: bytes, image_id: str, kind: str, args: dict
) -> httpx.Response:
    """One click on `tiny_with_photo`'s server: `kind` "form" is the Livepeer route (the
    image sent with `args` as its form), "json" the native segment route (`args` the body,
    on the uploaded image's id). Raises for a status that is not 2xx."""
    if kind == "form":
        files = {"image": ("p.jpg", image, "image/jpeg")}
        response = client.post("/segment-anything-2", data=args, files=files)
    else:
        response = client.post(f"/v1/images/{image_id}/segment", json=args)
    response.raise_for_status()
    return response


def memory_run(folder: Path, count: int, cache_entries: int) -> dict:
    config = write_config(folder / "reduced.yaml", overrides=REDUCED_OVERRIDES)
    checkpoint = write_checkpoint(folder / "reduced.pt", overrides=REDUCED_OVERRIDES, seed=3)
    cache_bytes = cache_entries * 17 * 1024 * 1024
    args = serve_args(checkpoint, "--model-config", str(config))
    images = Images((320, 240))
    with started("memory", args, {"CACHE_BYTES": str(cache_bytes)}) as server:
        rss = psutil.Process(server.process.pid)
        samples: list[int] = []
        with httpx.Client() as client:
            for i in range(count):
                segment(client, server.url, images.new(), (100, 100))
                if i == 2 * cache_entries:  # cache full, allocator warmed up
                    samples.append(rss.memory_info().rss)
            samples.append(rss.memory_info().rss)
        cache = server.stats()["cache"]
    growth = samples[-1] - samples[0]
    return {
        "images": count,
        "cache_bound_mb": cache_bytes / 2**20,
        "cache_bytes_mb": cache["bytes"] / 2**20,
        "cache_entries": cache["entries"],
        "evictions": cache["evictions"],
        "rss_after_warmup_mb": samples[0] / 2**20,
        "rss_end_mb": samples[-1] / 2**20,
        "rss_growth_mb": growth / 2**20,
    }


def codec_ratio() -> dict:
    """The three response strings for a 1024x768 answer: str(tolist()) vs encode_livepeer."""
    from sam2_server.codecs import encode_livepeer
    from sam2_server.domain import Prediction

    rng = np.random.default_rng(0)
    masks = (rng.standard_normal((3, SIZE[1], SIZE[0])) * 10).astype(np.float32)
    logits = np.clip(rng.standard_normal((3, 256, 256)) * 10, -32, 32).astype(np.float32)
    scores = rng.random(3).astype(np.float32)
    reference, ours = [], []
    for _ in range(3):
        started_at = time.perf_counter()
        for part in (masks, scores, logits):
            str(part.tolist())
        reference.append(time.perf_counter() - started_at)
        started_at = time.perf_counter()
        encode_livepeer(Prediction(masks, scores, logits))
        ours.append(time.perf_counter() - started_at)
    return {"str_tolist_s": min(reference), "encode_livepeer_s": min(ours)}


def table(ours: dict, base: dict, memory: dict | None, identical: bool, codec: dict) -> str:
    rows = [
        ("cold request, new 1024x768 image (median)", "cold_s", "s"),
        ("click on a cached image (median)", "click_s", "s"),
        ("4 clients, distinct new images: wall", "concurrent_distinct_wall_s", "s"),
        ("4 clients, distinct new images: per request", "concurrent_distinct_median_s", "s"),
        ("4 clients, same new image: wall", "concurrent_same_wall_s", "s"),
        ("4 clients, same new image: per request", "concurrent_same_median_s", "s"),
        ("/health p50 during the concurrent runs", "health_p50_ms", "ms"),
        ("/health p99 during the concurrent runs", "health_p99_ms", "ms"),
        ("/health max during the concurrent runs", "health_max_ms", "ms"),
    ]
    lines = [
        f"| {'measure':<46} | {'sam2-server':>12} | {'baseline':>12} | {'ratio':>7} |",
        f"|{'-' * 48}|{'-' * 14}|{'-' * 14}|{'-' * 9}|",
    ]
    for label, key, unit in rows:
        a, b = ours[key], base[key]
        lines.append(f"| {label:<46} | {a:>9.3f} {unit:<2} | {b:>9.3f} {unit:<2} | {a / b:>7.3f} |")
    lines.append("")
    lines.append(
        f"encodes for 4 concurrent requests on one new image: {ours.get('concurrent_same_encodes')}"
    )
    lines.append(f"answers identical to the baseline (cold request, parsed float32): {identical}")
    lines.append(
        f"response strings for a 1024x768 answer: str(tolist()) {codec['str_tolist_s']:.3f} s, "
        f"encode_livepeer {codec['encode_livepeer_s']:.3f} s "
        f"({codec['str_tolist_s'] / codec['encode_livepeer_s']:.1f}x faster)"
    )
    if memory:
        lines.append(
            f"memory: {memory['images']} distinct images, cache bound "
            f"{memory['cache_bound_mb']:.0f} MB ({memory['cache_entries']} entries, "
            f"{memory['cache_bytes_mb']:.0f} MB held, {memory['evictions']} evictions); RSS "
            f"{memory['rss_after_warmup_mb']:.0f} MB after warm-up -> "
            f"{memory['rss_end_mb']:.0f} MB at the end (growth {memory['rss_growth_mb']:+.0f} MB)"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--colds", type=int, default=5)
    parser.add_argument("--memory-images", type=int, default=200, help="0 skips the memory run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sam2-bench-") as tmp:
        folder = Path(tmp)
        checkpoint = write_checkpoint(folder / "sam2.1_hiera_tiny.pt", seed=0)
        images = Images(SIZE)
        ours_args = serve_args(checkpoint)
        base_args = [str(ROOT / "bench" / "baseline_server.py"), "--checkpoint", str(checkpoint)]
        with (
            started("sam2-server", ours_args) as ours_server,
            started("baseline", base_args) as base_server,
        ):
            probe = images.new()
            a, b = answer(ours_server.url, probe), answer(base_server.url, probe)
            identical = all(np.array_equal(a[k], b[k]) for k in ("masks", "scores", "logits"))
            del a, b
            results = {}
            for server in (ours_server, base_server):
                print(f"measuring {server.name} ...", flush=True)
                results[server.name] = measure(server, images, args.clicks, args.colds)
        memory = None
        if args.memory_images:
            print("memory run ...", flush=True)
            memory = memory_run(folder, args.memory_images, cache_entries=8)

    codec = codec_ratio()
    report = table(results["sam2-server"], results["baseline"], memory, identical, codec)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "image": {"size": SIZE, "source": PHOTO.name},
                "sam2-server": results["sam2-server"],
                "baseline": results["baseline"],
                "memory": memory,
                "codec": codec,
                "identical_answers": identical,
            },
            indent=2,
        )
    )
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
