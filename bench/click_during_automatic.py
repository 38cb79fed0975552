"""Click latency while automatic masks run on another image: the interleaving figure.

In-process, on the engine's public API (so that it runs against older commits
too, with `PYTHONPATH=<their src>`): one thread runs
`automatic_masks` on `truck.jpg` (1800x1200) with `--points-per-side` (256
points in 4 batches of 64 by default); another clicks on `groceries.jpg` (a
cached image: one point, `segment_cached`) every `--every` seconds and
records each click's latency. Printed: a click on an idle engine, the clicks
during the generation (median, p90, max), and the ratio of the worst to idle.

The model is the reduced random-weight one the tests use: its mask decoder is
SAM2's full one (what automatic masks cost), the encoder is thinned (what
the uploads cost). Machines differ: the CPU's name is printed with the figures.

    .venv/bin/python bench/click_during_automatic.py
    PYTHONPATH=/path/to/old/src .venv/bin/python bench/click_during_automatic.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.synthetic: the test models

from tests.synthetic import REDUCED_OVERRIDES, write_checkpoint, write_config

from machine import cpu_name
from sam2_server.config import Settings
from sam2_server.domain import AutomaticParams, Prompt
from sam2_server.engine import Engine

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
CLICK = Prompt(
    point_coords=np.array([[300.0, 200.0]], np.float32), point_labels=np.array([1], np.int64)
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--every", type=float, default=0.25, help="seconds between clicks")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="sam2-bench-click-"))
    config = write_config(folder / "reduced.yaml", overrides=REDUCED_OVERRIDES)
    checkpoint = write_checkpoint(folder / "reduced.pt", overrides=REDUCED_OVERRIDES, seed=1)
    settings = Settings(
        model_ids=(str(checkpoint),), model_config=str(config), device="cpu", cache_bytes=2**30
    )
    engine = Engine(settings)
    engine.load()
    model = engine.default_model_id
    truck = engine.add_image(model, (DATA / "truck.jpg").read_bytes()).image_id
    groceries = engine.add_image(model, (DATA / "groceries.jpg").read_bytes()).image_id

    def click() -> float:
        started = time.perf_counter()
        engine.segment_cached(model, groceries, CLICK)
        return time.perf_counter() - started

    click()  # warm
    idle = statistics.median(click() for _ in range(5))

    params = AutomaticParams(points_per_side=args.points_per_side)
    done = threading.Event()
    generation: dict[str, float] = {}

    def generate() -> None:
        started = time.perf_counter()
        try:
            engine.automatic_masks(model, truck, params)
        finally:
            generation["seconds"] = time.perf_counter() - started
            done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    during: list[float] = []
    while not done.is_set():
        during.append(click())
        done.wait(args.every)
    worker.join()

    during.sort()
    p90 = during[min(len(during) - 1, int(0.9 * len(during)))]
    print(f"{cpu_name()}, {torch.get_num_threads()} torch threads, reduced random-weight model")
    print(
        f"automatic masks: points_per_side {args.points_per_side} on 1800x1200, "
        f"{generation['seconds']:.1f} s"
    )
    print(f"click on another cached image, idle: {idle * 1000:.0f} ms")
    median = statistics.median(during)
    print(
        f"during the generation ({len(during)} clicks): median {median * 1000:.0f} ms, "
        f"p90 {p90 * 1000:.0f} ms, max {during[-1] * 1000:.0f} ms "
        f"(max / idle = {during[-1] / idle:.1f})"
    )


if __name__ == "__main__":
    main()
