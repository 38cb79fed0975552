"""Eager PyTorch vs OpenVINO for the image encoder (ENCODER_BACKEND), on this CPU.

For each SAM2 config (random weights from `write_checkpoint`, full size): a
first start with an empty converted-model cache (conversion included), a
second start (cache reused), then per-image encode times, the two backends
interleaved round by round on the same photo, and how far OpenVINO's answers
move from PyTorch's: the largest absolute difference of each encoder output,
the fraction of equal mask pixels and the largest score difference over a few
prompts. Prints the CPU the figures came from.

    .venv/bin/python bench/encoder_backends.py [--configs t,s] [--rounds 3] [--precision fp32]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The converted-model cache goes next to this Hugging Face cache: a fresh one, so
# the first start converts. Set before huggingface_hub is imported.
_TMP = Path(tempfile.mkdtemp(prefix="sam2-bench-ov-"))
os.environ["HF_HUB_CACHE"] = str(_TMP / "hub")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sam2_server.config import Settings  # noqa: E402
from sam2_server.domain import Timings  # noqa: E402
from sam2_server.engine import Engine, openvino_backend  # noqa: E402
from sam2_server.engine.cpu import cpu_features  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.synthetic: the test models
from tests.synthetic import write_checkpoint  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import PROMPTS  # noqa: E402  (the same prompts as the precision benchmark)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="t,s", help="of t, s, b+, l")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--photo", default="groceries.jpg")
    args = parser.parse_args()
    cpu = cpu_features()
    print(
        f"CPU: {cpu.model or 'unknown'}, {os.cpu_count()} cores seen, torch threads "
        f"{torch.get_num_threads()}; avx2={cpu.avx2} avx512={cpu.avx512} bf16={cpu.bf16} "
        f"amx={cpu.amx}; openvino {openvino_backend.require_openvino()}, torch {torch.__version__}"
    )
    data = (ROOT / "tests" / "data" / args.photo).read_bytes()
    try:
        for name in args.configs.split(","):
            run_config(name.strip(), data, args.rounds, args.precision)
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)  # checkpoints and converted encoders


def run_config(name: str, data: bytes, rounds: int, precision: str) -> None:
    config = CONFIGS[name]
    checkpoint = write_checkpoint(_TMP / f"sam2.1_hiera_{name}.pt", config_name=config, seed=3)
    base = Settings(
        model_ids=(str(checkpoint),),
        model_config=config,
        device="cpu",
        cache_bytes=0,  # every embed encodes
        precision=precision,
    )
    model_id = str(checkpoint)
    converted: list[float] = []
    original = openvino_backend.convert

    def timed_convert(*a: object, **k: object) -> float:
        seconds = original(*a, **k)  # type: ignore[arg-type]
        converted.append(seconds)
        return seconds

    openvino_backend.convert = timed_convert  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        Engine(base.with_(encoder_backend="openvino")).load()  # empty cache: converts
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        ov = Engine(base.with_(encoder_backend="openvino"))
        ov.load()  # cache reused
        warm = time.perf_counter() - t0
    finally:
        openvino_backend.convert = original  # type: ignore[assignment]
    t0 = time.perf_counter()
    eager = Engine(base)
    eager.load()
    eager_start = time.perf_counter() - t0
    print(f"\n== hiera-{name} ({config}), {precision}, 1024x1024 input")
    print(
        f"start: eager {eager_start:.1f} s; openvino first start {cold:.1f} s "
        f"(conversion {converted[0] if converted else float('nan'):.1f} s), "
        f"second start {warm:.1f} s (cache reused: {len(converted) == 1})"
    )
    engines = {"eager": eager, "openvino": ov}
    times: dict[str, list[float]] = {k: [] for k in engines}
    for engine in engines.values():  # warm-up, not timed
        engine.embed(model_id, data)
    for _ in range(rounds):
        for key, engine in engines.items():
            timings = Timings()
            engine.embed(model_id, data, timings)
            times[key].append(timings.encode_s)
    med = {k: statistics.median(v) for k, v in times.items()}
    eager_runs = " ".join(f"{t:.2f}" for t in times["eager"])
    ov_runs = " ".join(f"{t:.2f}" for t in times["openvino"])
    print(
        f"encode per image (median of {rounds}, s): eager {med['eager']:.2f} [{eager_runs}], "
        f"openvino {med['openvino']:.2f} [{ov_runs}]; "
        f"eager/openvino {med['eager'] / med['openvino']:.2f}x"
    )
    print_accuracy(engines, model_id, data)


def print_accuracy(engines: dict[str, Engine], model_id: str, data: bytes) -> None:
    models = {k: e.models.images.loaded()[model_id].predictor for k, e in engines.items()}
    image = Image.open(io.BytesIO(data)).convert("RGB")
    sample = models["eager"]._transforms(image)[None]
    with torch.inference_mode():
        outs = {k: p.model.image_encoder(sample) for k, p in models.items()}
    names = ["vision_features"]
    names += [f"vision_pos_enc[{i}]" for i in range(len(outs["eager"]["vision_pos_enc"]))]
    names += [f"backbone_fpn[{i}]" for i in range(len(outs["eager"]["backbone_fpn"]))]

    def flat(out: dict) -> list[torch.Tensor]:
        return [out["vision_features"], *out["vision_pos_enc"], *out["backbone_fpn"]]

    parts = []
    for label, a, b in zip(names, flat(outs["eager"]), flat(outs["openvino"]), strict=True):
        diff = float((a.float() - b.float()).abs().max())
        parts.append(f"{label} {diff:.2e} (|max| {float(a.abs().max()):.2f})")
    print("encoder outputs, max abs diff: " + "; ".join(parts))
    equal, total, score = 0, 0, 0.0
    embeddings = [e.embed(model_id, data) for e in engines.values()]  # one encode each
    for prompt in PROMPTS:
        a, b = (e.decode(x, prompt) for e, x in zip(engines.values(), embeddings, strict=True))
        equal += int(((a.masks > 0) == (b.masks > 0)).sum())
        total += a.masks.size
        score = max(score, float(np.abs(np.sort(a.scores) - np.sort(b.scores)).max()))
    print(
        f"masks over {len(PROMPTS)} prompts: {equal / total:.6f} of pixels equal; "
        f"max score difference {score:.2e}"
    )


if __name__ == "__main__":
    main()
