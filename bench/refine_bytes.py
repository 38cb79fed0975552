"""Bytes of one refining click, up and down: the page's path against the Livepeer default.

Starts sam2-server on loopback with a random-weight hiera-tiny checkpoint and
the photo `tests/data/truck.jpg` at 1024x768, then makes the same two clicks
(a foreground point, then a second point refining the best candidate of the
first answer) through:

  - the Livepeer route with its defaults: the image and the prompt with every
    request, the earlier answer's chosen logits sent back as JSON text
    (`mask_input`, 1x256x256), every logit back as JSON text;
  - the native route as the page used it before issue 18: the image uploaded
    once, the chosen candidate's logits sent back packed, packed logits back;
  - the page's path now: the earlier answer named by `answer_id` and index,
    `return_logits: false`, the masks as PNG (what the page asks for) or as
    COCO RLE.

It counts the refining (second) click's bytes on the wire: the request line
and headers plus the body up, the status line and headers plus the body down
(HTTP/1.1, no compression); the masks of the four refinements are checked to
be the same pixels first, so the comparison is of one answer in four
encodings. Latency is the median of `--rounds` refining clicks, interleaved.
Random weights give noisy masks, the worst case for PNG and RLE (their size
follows the mask's boundary), so a real model's answers are smaller still.

    .venv/bin/python bench/refine_bytes.py        # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name
from run import SIZE, post_click, tiny_with_photo

FIRST = [[500, 375]]  # the first click
SECOND = [[500, 375], [620, 300]]  # the refining click: one more point
GOAL = 100  # x fewer bytes than the Livepeer default, for a refining click


def wire_bytes(response: httpx.Response) -> tuple[int, int]:
    """(up, down): each way's start line, headers and body, as HTTP/1.1 writes them."""
    request = response.request
    up = len(f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n")
    body = int(request.headers["content-length"])  # a multipart body is a stream: its length
    up += sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + 2 + body
    down = len(f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n")
    down += sum(len(k) + len(v) + 4 for k, v in response.headers.raw) + 2 + len(response.content)
    return up, down


class Clicks:
    """The refining click of each path, built from that path's own first answer."""

    def __init__(self, client: httpx.Client, image: bytes, image_id: str) -> None:
        self.client = client
        self.image = image
        self.image_id = image_id
        livepeer_first = self.livepeer({"point_coords": json.dumps(FIRST), "point_labels": "[1]"})
        scores = json.loads(livepeer_first["scores"])
        self.best = int(np.argmax(scores))  # sorted best first: 0
        chosen = json.loads(livepeer_first["logits"])[self.best]
        self.livepeer_mask_input = json.dumps([chosen])  # 1x256x256, as a Livepeer client sends
        packed_first = self.native({"points": FIRST, "labels": [1], "mask_format": "rle"})
        logits = np.frombuffer(base64.b64decode(packed_first["logits"]["data"]), "<f4")
        self.packed = {
            "dtype": "float32",
            "shape": [1, 256, 256],
            "data": base64.b64encode(logits.reshape(-1, 256, 256)[self.best].tobytes()).decode(),
        }
        page_first = self.native(
            {"points": FIRST, "labels": [1], "mask_format": "png", "return_logits": False}
        )
        self.reference = {"answer_id": page_first["answer_id"], "index": self.best}

    def livepeer(self, form: dict) -> dict:
        return self.click("form", form).json()

    def native(self, body: dict) -> dict:
        return self.click("json", body).json()

    def paths(self) -> dict[str, tuple[str, dict]]:
        """name -> (route kind, the refining click's form or body)."""
        native = {"points": SECOND, "labels": [1, 1], "multimask_output": False}
        return {
            "livepeer default": (
                "form",
                {
                    "point_coords": json.dumps(SECOND),
                    "point_labels": "[1, 1]",
                    "mask_input": self.livepeer_mask_input,
                    "multimask_output": "false",
                },
            ),
            "native, packed logits both ways (page before)": (
                "json",
                {**native, "mask_format": "png", "mask_input": self.packed},
            ),
            "page: answer_id, no logits, png": (
                "json",
                {
                    **native,
                    "mask_format": "png",
                    "return_logits": False,
                    "mask_input": self.reference,
                },
            ),
            "answer_id, no logits, rle": (
                "json",
                {
                    **native,
                    "mask_format": "rle",
                    "return_logits": False,
                    "mask_input": self.reference,
                },
            ),
        }

    def click(self, kind: str, args: dict) -> httpx.Response:
        return post_click(self.client, self.image, self.image_id, kind, args)


def mask_of(name: str, answer: dict) -> np.ndarray:
    """The refinement's one binary mask, from whichever encoding the path asked for."""
    if name.startswith("livepeer"):
        return np.asarray(json.loads(answer["masks"]), dtype=np.float32)[0] > 0
    mask = answer["masks"][0]
    if isinstance(mask, str):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(mask)))) == 255
    from pycocotools import mask as coco_mask

    rle = {"size": mask["size"], "counts": mask["counts"].encode()}
    return coco_mask.decode(rle).astype(bool)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tiny_with_photo("sam2-refine-") as (_, client, image, image_id):
        clicks = Clicks(client, image, image_id)
        plan = clicks.paths()
        sizes: dict[str, tuple[int, int]] = {}
        masks: dict[str, np.ndarray] = {}
        for name, (kind, form) in plan.items():  # warm-up, sizes, and the same answer
            response = clicks.click(kind, form)
            sizes[name] = wire_bytes(response)
            masks[name] = mask_of(name, response.json())
        times: dict[str, list[float]] = {name: [] for name in plan}
        for _ in range(args.rounds):
            for name, (kind, form) in plan.items():
                started_at = time.perf_counter()
                clicks.click(kind, form)
                times[name].append(time.perf_counter() - started_at)
    reference = masks["livepeer default"]
    for name, mask in masks.items():
        assert np.array_equal(mask, reference), f"{name}: not the Livepeer route's mask"

    base_up, base_down = sizes["livepeer default"]
    print(f"one refining click, {SIZE[0]}x{SIZE[1]} photo (truck.jpg), random-weight hiera-tiny")
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} CPUs; median latency of {args.rounds}; "
        "every path gives the same mask"
    )
    header = f"{'path':47} {'up':>11} {'down':>12} {'total':>12} {'x fewer':>8} {'latency':>8}"
    print(header)
    for name in plan:
        up, down = sizes[name]
        fewer = (base_up + base_down) / (up + down)
        median = statistics.median(times[name]) * 1000
        print(f"{name:47} {up:>11,} {down:>12,} {up + down:>12,} {fewer:>8.0f} {median:>6.0f}ms")
    page_up, page_down = sizes["page: answer_id, no logits, png"]
    ratio = (base_up + base_down) / (page_up + page_down)
    print(
        f"page path vs Livepeer default: {base_up / page_up:,.0f}x fewer bytes up, "
        f"{base_down / page_down:,.0f}x fewer down, {ratio:,.0f}x in all "
        f"(goal {GOAL}x: {'met' if ratio >= GOAL else 'NOT met'})"
    )
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
