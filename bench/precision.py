"""How far bf16 autocast moves the answers from fp32, on the same checkpoint.

Runs one engine in fp32 and one with `PRECISION=bf16` over a few photos and
prompts and prints: the largest absolute difference of scores and of low-res
logits, and how many mask pixels (thresholded at 0) agree. On CUDA this is the
production GPU path (bf16 autocast + TF32); on a CPU it runs bf16 autocast on
the CPU, an approximation of the GPU's numerics.

    .venv/bin/python bench/precision.py [--device cuda] [--checkpoint PATH --config NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from sam2_server.config import Settings
from sam2_server.domain import Prompt
from sam2_server.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.synthetic: the test models
from tests.synthetic import write_checkpoint

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ["groceries.jpg", "truck.jpg", "cars.jpg"]
PROMPTS = [
    Prompt(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1])),
    Prompt(box=np.array([100.0, 100.0, 500.0, 400.0]), multimask_output=False),
    Prompt(point_coords=np.array([[120.0, 90.0], [400, 250]]), point_labels=np.array([1, 0])),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--checkpoint", help="default: a random-weight hiera-tiny")
    parser.add_argument("--config")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or str(write_checkpoint(Path(tmp) / "sam2.1_hiera_tiny.pt"))
        base = Settings(model_ids=(checkpoint,), model_config=args.config, device=args.device)
        engines = {}
        for precision in ("fp32", "bf16"):
            engines[precision] = Engine(base.with_(precision=precision, cache_bytes=0))
            engines[precision].load()
        worst = {"scores": 0.0, "logits": 0.0, "mask_agreement_min": 1.0}
        for photo in PHOTOS:
            data = (ROOT / "tests" / "data" / photo).read_bytes()
            for prompt in PROMPTS:
                a, b = (e.segment(e.default_model_id, data, prompt) for e in engines.values())
                # Scores as sets (sorting may swap near-ties); masks: the best one of each,
                # which is what a client shows.
                worst["scores"] = max(
                    worst["scores"], float(np.abs(np.sort(a.scores) - np.sort(b.scores)).max())
                )
                worst["logits"] = max(
                    worst["logits"], float(np.abs(a.logits[0] - b.logits[0]).max())
                )
                agreement = float(((a.masks[0] > 0) == (b.masks[0] > 0)).mean())
                worst["mask_agreement_min"] = min(worst["mask_agreement_min"], agreement)
        device = str(engines["fp32"].device)
    print(json.dumps({"device": device, **worst}, indent=2))


if __name__ == "__main__":
    main()
