"""EdgeTAM against SAM2.1-tiny (and -large for a cold request), side by side in one run.

EdgeTAM is measured twice: its encoder in (folded, channels_last) PyTorch, and
with ENCODER_BACKEND=openvino (converted into the run's own folder; the
conversion is part of the load, not of the figures).

Each model runs in a child process of its own (so that its peak memory is
its own), built with random weights at its real architecture and its
1024x1024 input: EdgeTAM as transformers' conversion script builds the
published repository (tests/synthetic.py), SAM2.1 from the sam2 package's
configs. Random weights cost exactly what real ones do; masks are meaningless.

Measured per model, through the engine the server runs:
1. **cold**: one click on a new image (decode, encode, prompt), median of 3;
2. **click**: a further click on the cached image, median of 5;
3. **automatic**: one automatic-mask call at 16 points per side on the cached
   image (the library's defaults otherwise);
4. **video**: frames per second propagating 1 and then 2 objects forwards through
   the bedroom clip (tests/data, 960x540), through the server's video sessions
   (SAM2's video predictor; transformers' `EdgeTamVideoModel` session);
5. **peak memory**: the child's peak RSS.

    .venv/bin/python bench/edgetam_vs_sam2.py          # ~7 minutes on 2 CPU cores
    .venv/bin/python bench/edgetam_vs_sam2.py --skip-large --frames 4

Prints one table and the ratios EdgeTAM / SAM2.1-tiny, with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.synthetic: the random-weight models

from machine import cpu_name  # noqa: E402

FRAMES = sorted((ROOT / "tests/data/video-bedroom").glob("*.jpg"))
MODELS = {
    "edgetam": "EdgeTAM (RepViT-M1)",
    "edgetam-openvino": "EdgeTAM, OpenVINO",
    "tiny": "SAM2.1 Hiera-T",
    "large": "SAM2.1 Hiera-L",
}


def build(name: str, folder: Path) -> tuple[str, str | None]:
    """The model id (and SAM2 config) of a random-weight model of `name`."""
    if name.startswith("edgetam"):
        from tests.synthetic import write_edgetam_repo

        return str(write_edgetam_repo(folder / "EdgeTAM-hf", seed=0)), None
    from tests.synthetic import write_checkpoint

    config = {
        "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
        "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
    }[name]
    checkpoint = write_checkpoint(folder / f"sam2.1_{name}.pt", config, seed=0)
    return str(checkpoint), config


def child(name: str, frames: int, full: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from run import SIZE, Images
    from sam2_server.config import Settings
    from sam2_server.domain import AutomaticParams, Prompt
    from sam2_server.engine import Engine

    result: dict[str, Any] = {"model": MODELS[name], "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        model_id, config = build(name, Path(tmp))
        backend = "openvino" if name.endswith("openvino") else "torch"
        if backend == "openvino":  # converted into this run's folder, not the HF cache's
            from sam2_server.engine import openvino_backend

            openvino_backend.default_cache_dir = lambda: Path(tmp) / "openvino"
        engine = Engine(
            Settings(
                model_ids=(model_id,),
                model_config=config,
                device="cpu",
                precision="fp32",
                encoder_backend=backend,
            )
        )
        started = time.perf_counter()
        engine.load()
        result["load_s"] = time.perf_counter() - started
        prompt = Prompt(point_coords=np.array([[500.0, 375.0]]), point_labels=np.array([1]))
        photos = Images(SIZE)  # truck.jpg at 1024x768, each copy new bytes (a new hash)
        fresh = [photos.new() for _ in range(4)]
        engine.segment(model_id, fresh[0], prompt)  # warm-up: first-call costs are not cold's
        cold = []
        for data in fresh[1:]:
            started = time.perf_counter()
            engine.segment(model_id, data, prompt)
            cold.append(time.perf_counter() - started)
        result["cold_s"] = statistics.median(cold)
        result["cold_samples"] = cold
        if not full:
            result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return result
        clicks = []
        for i in range(5):
            point = np.array([[100.0 + 150 * i, 300.0]])
            click = Prompt(point_coords=point, point_labels=np.array([1]))
            started = time.perf_counter()
            engine.segment(model_id, fresh[-1], click)
            clicks.append(time.perf_counter() - started)
        result["click_s"] = statistics.median(clicks)
        info = engine.add_image(model_id, fresh[-1])
        started = time.perf_counter()
        _, records = engine.automatic_masks(
            model_id, info.image_id, AutomaticParams(points_per_side=16)
        )
        result["automatic_s"] = time.perf_counter() - started
        result["automatic_masks"] = len(records)
        for objects in (1, 2):
            result[f"video_{objects}_fps"] = video_fps(engine, model_id, objects, frames)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


POINTS = [(300.0, 200.0), (700.0, 300.0)]


def video_fps(engine: Any, model_id: str, objects: int, frames: int) -> float:
    import numpy as np

    from sam2_server.domain import VideoPrompt

    files = [path.open("rb") for path in FRAMES[: frames + 1]]
    try:
        video_id = engine.videos.open(model_id, frames=files).video_id
    finally:
        for file in files:
            file.close()
    for index in range(objects):
        point = np.array([POINTS[index]], np.float32)
        engine.videos.prompt(
            video_id, VideoPrompt(0, index + 1, point, np.array([1], np.int32), None)
        )
    started = time.perf_counter()
    count = sum(1 for _ in engine.videos.propagate(video_id, 0, frames, False))
    seconds = time.perf_counter() - started
    engine.videos.close(video_id)
    return count / seconds


def run_child(name: str, frames: int, full: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", name, "--frames", str(frames)]
    if not full:
        command.append("--cold-only")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict[str, Any]]) -> None:
    edge, tiny = results["edgetam"], results["tiny"]
    edges = [m for m in results if m.startswith("edgetam")]  # PyTorch, then OpenVINO
    rows = [
        ("cold request, new 1024x768 image (median)", "cold_s", "s"),
        ("click on a cached image (median)", "click_s", "s"),
        ("automatic masks, 16 points per side", "automatic_s", "s"),
        ("video, 1 object", "video_1_fps", "frames/s"),
        ("video, 2 objects", "video_2_fps", "frames/s"),
        ("peak memory (RSS)", "peak_rss_mb", "MB"),
    ]
    names = [results[key]["model"] for key in results]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} CPUs, torch threads {edge['threads']}, fp32")
    ratios = "".join(f"{'EdgeTAM/tiny' if m == 'edgetam' else 'OpenVINO/tiny':>16}" for m in edges)
    print(f"{'measure':<44}" + "".join(f"{n:>22}" for n in names) + ratios)
    for label, key, unit in rows:
        cells = "".join(
            f"{results[m][key]:>17.3f} {unit:<4}" if key in results[m] else f"{'-':>22}"
            for m in results
        )
        print(
            f"{label:<44}{cells}" + "".join(f"{results[m][key] / tiny[key]:>16.3f}" for m in edges)
        )
    if "large" in results:
        print(f"cold, EdgeTAM / SAM2.1-large: {edge['cold_s'] / results['large']['cold_s']:.3f}")
    samples = {m: [round(s, 3) for s in r["cold_samples"]] for m, r in results.items()}
    print(f"cold samples: {samples}")
    for m in edges:
        one = results[m]
        print(
            f"goals (issue 17), {MODELS[m]}: cold <= 0.25x tiny's: "
            f"{one['cold_s'] / tiny['cold_s']:.3f}; video >= 5x tiny's frames/s: "
            f"{one['video_1_fps'] / tiny['video_1_fps']:.2f}x (1 object), "
            f"{one['video_2_fps'] / tiny['video_2_fps']:.2f}x (2 objects)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=7, help="frames propagated (max 7)")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--child", choices=list(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--cold-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.frames, full=not args.cold_only)))
        return
    results = {}
    names = ["edgetam", "edgetam-openvino", "tiny"] + ([] if args.skip_large else ["large"])
    for name in names:
        results[name] = run_child(name, args.frames, full=name != "large")
        print(f"{MODELS[name]}: {results[name]}", file=sys.stderr)
    report(results)


if __name__ == "__main__":
    main()
