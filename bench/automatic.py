"""Automatic masks ("segment everything"): seconds per call, cold and on a cached embedding.

Runs the whole route in-process (FastAPI's TestClient, no network) for two
random-weight models: the reduced encoder the tests use, and the real
`sam2.1_hiera_t` architecture. Per model:

  - cold: `POST /v1/images` (decode + encode) then `POST .../automatic-masks`,
    on an image the server has not seen (each round changes a corner pixel);
  - cached: `POST .../automatic-masks` again on the last image, with its
    embedding in the cache: no encoder run (checked with /stats).

With the library's defaults (points_per_side 32: 1024 points in 16 batches
of 64, three candidates each) the mask decoder, not the encoder, is the
cost on CPU: every batch repeats the image embedding per point through the
two-way transformer, and upsamples 192 candidate logits to the photo's size.
All SAM2 sizes share that decoder, so the cached figure barely depends on
the model; the cold one adds one encode. Random weights cost what real ones
do, but their noisy masks fail the default stability threshold, so the
answer is nearly empty and its serialisation free.

    .venv/bin/python bench/automatic.py                       # ~11 min on 2 idle CPU cores
    .venv/bin/python bench/automatic.py --points-per-side 8   # ~1 min a round
    .venv/bin/python bench/automatic.py --device cuda
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from PIL import Image

from sam2_server.api import create_app
from sam2_server.config import Settings
from sam2_server.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.synthetic: the test models

from tests.synthetic import (
    REDUCED_OVERRIDES,
    TINY_CONFIG,
    write_checkpoint,
    write_config,
)

from machine import cpu_name

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = (ROOT.parent / "shared" / "data" / "images", ROOT / "tests" / "data")


def default_photo() -> Path:
    for folder in PHOTOS:
        if (folder / "truck.jpg").exists():
            return folder / "truck.jpg"
    raise SystemExit("no truck.jpg in " + " or ".join(map(str, PHOTOS)))


def variant(photo: Image.Image, round_: int) -> bytes:
    """The photo as JPEG with its corner block recoloured: new bytes, a new image id.

    A whole 16x16 block, not a pixel: JPEG's quantisation can make a
    one-pixel change vanish, giving the same bytes (a cache hit) again.
    """
    image = photo.copy()
    image.paste((round_ * 37 % 256, 255 - round_ * 53 % 256, 91), (0, 0, 16, 16))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def measure(settings: Settings, photo: Image.Image, body: dict, rounds: int) -> dict[str, float]:
    engine = Engine(settings)
    engine.load()
    app = create_app(settings, engine, load=False)
    colds: list[float] = []
    cached: list[float] = []
    with TestClient(app) as client:
        image_id = ""
        masks = 0
        for round_ in range(rounds):
            data = variant(photo, round_)
            started = time.perf_counter()
            upload = client.post("/v1/images", files={"image": ("photo.jpg", data, "image/jpeg")})
            upload.raise_for_status()
            image_id = upload.json()["image_id"]
            assert image_id == hashlib.sha256(data).hexdigest()
            assert not upload.json()["cached"], "a cold round found its image cached"
            answer = client.post(f"/v1/images/{image_id}/automatic-masks", json=body)
            answer.raise_for_status()
            colds.append(time.perf_counter() - started)
            masks = len(answer.json()["masks"])
        encoded = engine.encoder.encoded_images
        for _ in range(rounds):
            started = time.perf_counter()
            answer = client.post(f"/v1/images/{image_id}/automatic-masks", json=body)
            answer.raise_for_status()
            cached.append(time.perf_counter() - started)
        assert engine.encoder.encoded_images == encoded, "a cached call ran the encoder"
    return {"cold_s": min(colds), "cached_s": min(cached), "masks": masks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image", type=Path, default=None, help="default: truck.jpg")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="best of this many (default 1)")
    parser.add_argument("--models", nargs="+", default=["reduced", "hiera-tiny"])
    args = parser.parse_args()
    photo_path = args.image or default_photo()
    photo = Image.open(photo_path).convert("RGB")
    body = {"points_per_side": args.points_per_side}
    torch.manual_seed(0)
    print(
        f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"device {args.device}; {photo_path.name} {photo.width}x{photo.height}, "
        f"points_per_side {args.points_per_side} (other parameters: the library's defaults)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            if name == "reduced":
                config = str(write_config(folder / "reduced.yaml", overrides=REDUCED_OVERRIDES))
                checkpoint = write_checkpoint(
                    folder / "reduced.pt", overrides=REDUCED_OVERRIDES, seed=1
                )
            elif name == "hiera-tiny":
                config = TINY_CONFIG
                checkpoint = write_checkpoint(folder / "sam2.1_hiera_tiny.pt", seed=0)
            else:
                raise SystemExit(f"unknown model {name!r}: reduced or hiera-tiny")
            settings = Settings(
                model_ids=(str(checkpoint),), model_config=config, device=args.device
            )
            result = measure(settings, photo, body, args.rounds)
            print(
                f"{name:>10}: cold (upload + encode + masks) {result['cold_s']:7.2f} s   "
                f"cached embedding {result['cached_s']:7.2f} s   "
                f"({result['masks']} masks kept)",
                flush=True,
            )


if __name__ == "__main__":
    main()
