"""One click on a cached 1024x768 photo: bytes and latency per answer format, in one run.

Starts sam2-server on loopback with a random-weight hiera-tiny checkpoint,
uploads the photo once through the native API, then times the same click
(one foreground point) through:

  - the Livepeer route with its defaults (logits as JSON text),
  - the Livepeer route with `return_logits=false` (0/1 as JSON text),
  - the native segment route: `rle` and `png`, with and without the
    packed low-res logits.

Each format is timed `--rounds` times, interleaved round by round (the
machines are noisy), and the median reported with its ratio to the Livepeer
default. Random weights give noisy masks, which are the worst case for RLE
and PNG (their size grows with the mask's boundary); a real model's masks
are smooth, so its compact answers are smaller still.

    .venv/bin/python bench/native_click.py          # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name
from run import SIZE, post_click, tiny_with_photo

POINT = [[500, 375]]


def formats(url: str, image: bytes, image_id: str) -> dict[str, tuple[str, dict]]:
    """name -> (how to send it, its arguments)."""
    form = {"point_coords": str(POINT), "point_labels": "[1]"}
    native = {"points": POINT, "labels": [1]}
    return {
        "livepeer default": ("form", form),
        "livepeer return_logits=false": ("form", {**form, "return_logits": "false"}),
        "native rle + logits": ("json", {**native, "mask_format": "rle"}),
        "native png + logits": ("json", {**native, "mask_format": "png"}),
        "native rle, no logits": ("json", {**native, "mask_format": "rle", "return_logits": False}),
        "native png, no logits": ("json", {**native, "mask_format": "png", "return_logits": False}),
    }


def click(
    client: httpx.Client, image: bytes, image_id: str, kind: str, args: dict
) -> tuple[int, float]:
    """The answer's bytes, and seconds until the whole of it has arrived."""
    started_at = time.perf_counter()
    response = post_click(client, image, image_id, kind, args)
    return len(response.content), time.perf_counter() - started_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tiny_with_photo("sam2-click-") as (server, client, image, image_id):
        plan = formats(server.url, image, image_id)
        sizes: dict[str, int] = {}
        times: dict[str, list[float]] = {name: [] for name in plan}
        for name, (kind, form) in plan.items():  # warm-up; the embedding is cached
            sizes[name], _ = click(client, image, image_id, kind, form)
        for _ in range(args.rounds):
            for name, (kind, form) in plan.items():
                times[name].append(click(client, image, image_id, kind, form)[1])
    base_bytes = sizes["livepeer default"]
    base_time = statistics.median(times["livepeer default"])
    print(f"one cached click, {SIZE[0]}x{SIZE[1]} photo, median of {args.rounds}")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} CPUs")
    print(f"{'answer':32} {'bytes':>12} {'x fewer':>8} {'latency':>9} {'ratio':>6}")
    for name in plan:
        median = statistics.median(times[name])
        print(
            f"{name:32} {sizes[name]:>12,} {base_bytes / sizes[name]:>8.0f} "
            f"{median * 1000:>7.0f}ms {median / base_time:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    np.set_printoptions(suppress=True)
    sys.exit(main())
