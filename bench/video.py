"""Video propagation speed: frames per second for the hiera-tiny architecture, in one run.

Builds a random-weight hiera-tiny checkpoint (the real `sam2.1_hiera_t`
config at its 1024x1024 input; the object-score head biased to "present",
as in the tests, so the memory path does real work), opens a session on the
bedroom frames from tests/data, prompts one or two objects on frame 0 and
propagates forwards through the clip, then backwards. Prints seconds for
opening the session (decoding and resizing the frames, encoding frame 0),
per prompt, and frames per second of propagation per object count.

Random weights cost exactly what real ones do; the masks are meaningless.

    .venv/bin/python bench/video.py              # several minutes on 2 CPU cores
    .venv/bin/python bench/video.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sam2_server.config import Settings
from sam2_server.domain import VideoPrompt
from sam2_server.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.synthetic: the test models

from tests.synthetic import TINY_CONFIG, write_checkpoint

from machine import cpu_name

FRAMES = sorted((Path(__file__).resolve().parents[1] / "tests/data/video-bedroom").glob("*.jpg"))
POINTS = [np.array([[300.0, 200.0]], np.float32), np.array([[700.0, 300.0]], np.float32)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--frames", type=int, default=4, help="frames tracked each way (max 7)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "sam2.1_hiera_tiny.pt", seed=0)
        settings = Settings(
            model_ids=(str(checkpoint),), model_config=TINY_CONFIG, device=args.device
        )
        engine = Engine(settings)
        engine.load()
        model = engine.default_model_id
        started = time.perf_counter()
        engine.models.video_model(model)  # built on first use; not part of a session's cost
        print(f"video predictor built in {time.perf_counter() - started:.1f} s")
        print(f"hiera-tiny (random weights), {len(FRAMES)} frames 960x540, {engine.compute.device}")
        print(f"CPU: {cpu_name()}, torch threads: {torch.get_num_threads()}")
        for objects in args.objects:
            files = [path.open("rb") for path in FRAMES]
            started = time.perf_counter()
            video_id = engine.videos.open(model, frames=files).video_id
            opened = time.perf_counter() - started
            for file in files:
                file.close()
            started = time.perf_counter()
            for object_id in range(objects):
                prompt = VideoPrompt(
                    0, object_id + 1, POINTS[object_id], np.array([1], np.int32), None
                )
                engine.videos.prompt(video_id, prompt)
            prompted = (time.perf_counter() - started) / objects
            rates = []
            for reverse, start in ((False, None), (True, args.frames)):
                # The prompted frame (0) comes back without any work: time the others.
                steps = engine.videos.propagate(video_id, start, args.frames, reverse)
                spent = []
                while True:
                    started = time.perf_counter()
                    frame = next(steps, None)
                    if frame is None:
                        break
                    if frame.frame_index != 0:
                        spent.append(time.perf_counter() - started)
                rates.append(len(spent) / sum(spent))
            engine.videos.close(video_id)
            print(
                f"{objects} object(s): open {opened:.2f} s, prompt {prompted:.2f} s each, "
                f"propagation {rates[0]:.2f} frames/s forward, {rates[1]:.2f} frames/s reverse"
            )


if __name__ == "__main__":
    main()
