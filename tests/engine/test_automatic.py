"""Engine.automatic_masks: the kept upload, cancellation between batches, no shared state."""

from __future__ import annotations

import threading
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sam2_server.domain import AutomaticParams, Prompt, Work
from sam2_server.errors import Cancelled, ErrorKind, ServiceError
from tests.api.test_automatic import DATA, IMAGE_ID

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# One point per batch: four batches, so cancellation and interleaving have room.
PARAMS = AutomaticParams(
    points_per_side=2,
    points_per_batch=1,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    box_nms_thresh=1.0,
)


@pytest.fixture(scope="module")
def engine(reduced_engine):
    reduced_engine.add_image(reduced_engine.default_model_id, DATA)
    return reduced_engine


def test_the_embedding_keeps_its_upload(engine):
    embedding = engine.encoder.cache.peek((engine.default_model_id, IMAGE_ID))
    assert embedding is not None
    assert embedding.image_bytes == DATA
    tensors = (embedding.image_embed, *embedding.high_res_feats)
    features = sum(t.numel() * t.element_size() for t in tensors)
    assert embedding.nbytes == features + len(DATA)


def test_the_librarys_jit_script_warning_is_not_printed(engine):
    """torch 2.14 deprecates the `torch.jit.script` that sam2 calls when it builds a
    predictor; the server's (and in-process CLI's) output must not carry it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, records = engine.automatic_masks(engine.default_model_id, IMAGE_ID, PARAMS)
    assert records
    assert not [w for w in caught if "jit.script" in str(w.message)]


def test_a_client_gone_before_the_work_stops_it(engine):
    before = engine.encoder.encoded_images
    with pytest.raises(Cancelled):
        engine.automatic_masks(
            engine.default_model_id, IMAGE_ID, PARAMS, Work(cancelled=lambda: True)
        )
    assert engine.encoder.encoded_images == before


def test_a_client_gone_during_the_work_stops_it_at_the_next_batch(engine):
    asked = 0

    def cancelled() -> bool:
        nonlocal asked
        asked += 1
        return asked > 2  # before the work, then the first batch; the second is refused

    with pytest.raises(Cancelled):
        engine.automatic_masks(engine.default_model_id, IMAGE_ID, PARAMS, Work(cancelled=cancelled))
    assert asked == 3  # not 5: the last two batches never ran


def test_concurrent_generations_and_clicks_share_no_state(engine):
    model_id = engine.default_model_id
    # Two batches each: enough for the two generations to interleave batch by batch.
    params = replace(PARAMS, points_per_batch=2)
    other = replace(params, multimask_output=False)
    click = Prompt(point_coords=np.array([[40.0, 30.0]]), point_labels=np.array([1]))
    alone = {
        "a": engine.automatic_masks(model_id, IMAGE_ID, params)[1],
        "b": engine.automatic_masks(model_id, IMAGE_ID, other)[1],
        "click": engine.segment_cached(model_id, IMAGE_ID, click)[1],
    }
    together: dict[str, object] = {}
    jobs = {
        "a": lambda: engine.automatic_masks(model_id, IMAGE_ID, params)[1],
        "b": lambda: engine.automatic_masks(model_id, IMAGE_ID, other)[1],
        "click": lambda: engine.segment_cached(model_id, IMAGE_ID, click)[1],
    }
    threads = [
        threading.Thread(target=lambda k=k, job=job: together.__setitem__(k, job()))
        for k, job in jobs.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together["a"] == alone["a"]
    assert together["b"] == alone["b"]
    for name in ("masks", "scores", "logits"):
        np.testing.assert_array_equal(
            getattr(together["click"], name), getattr(alone["click"], name)
        )


def test_every_predictor_is_scripted_under_the_lock(engine, monkeypatch):
    """`torch.jit.script` (via `ast.parse`) is not thread-safe on CPython 3.11.

    Two generations started together once failed in CI with "AST constructor
    recursion depth mismatch"; the race is too rare to provoke, so this checks
    the guard: every transforms scripting, the generator's included, holds the lock.
    """
    from sam2.utils import transforms

    from sam2_server.engine.models import SCRIPTING_LOCK

    held: list[bool] = []
    original = transforms.SAM2Transforms.__init__

    def spy(self, *args, **kwargs) -> None:
        held.append(SCRIPTING_LOCK.locked())
        original(self, *args, **kwargs)

    monkeypatch.setattr(transforms.SAM2Transforms, "__init__", spy)
    engine.automatic_masks(engine.default_model_id, IMAGE_ID, PARAMS)
    assert held == [True]


# -- clicks beside a generation, and the time budget --------------------------------------


def test_a_click_does_not_wait_for_a_batch_in_flight(engine, monkeypatch):
    """A generation's batch holds the model's automatic lock, not the clicks' decode lock:
    a click on another image answers while the batch is still running."""
    from sam2_server.engine import automatic

    in_batch, release = threading.Event(), threading.Event()
    original = automatic._CropPredictor._predict

    def held(self, *args, **kwargs):
        in_batch.set()
        assert release.wait(30), "the test never released the batch"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(automatic._CropPredictor, "_predict", held)
    model_id = engine.default_model_id
    other = engine.add_image(model_id, (DATA_DIR / "groceries.jpg").read_bytes()).image_id
    generation = threading.Thread(
        target=lambda: engine.automatic_masks(model_id, IMAGE_ID, PARAMS), daemon=True
    )
    generation.start()
    try:
        assert in_batch.wait(30)
        click = Prompt(point_coords=np.array([[40.0, 30.0]]), point_labels=np.array([1]))
        _, prediction = engine.segment_cached(model_id, other, click)
        assert prediction.masks.shape[0] == 3
        assert not release.is_set()  # answered while the batch was still in flight
    finally:
        release.set()
        generation.join(60)
    assert not generation.is_alive()


def test_the_plan_counts_the_librarys_points_and_crops():
    from sam2_server.engine.pacing import plan_of

    whole = plan_of(AutomaticParams(points_per_side=4), (1000, 1000))
    assert (whole.points, whole.crop_encodes) == (16, 0)
    assert whole.units == pytest.approx(16 * 1.25)
    # One crop layer: the whole image and four crops, each with the layer's own grid.
    layered = plan_of(AutomaticParams(points_per_side=4, crop_n_layers=1), (1000, 1000))
    assert (layered.points, layered.crop_encodes) == (16 + 4 * 16, 4)
    downscaled = replace(
        AutomaticParams(points_per_side=4, crop_n_layers=1), crop_n_points_downscale_factor=2
    )
    assert plan_of(downscaled, (1000, 1000)).points == 16 + 4 * 4


def test_a_first_generation_over_the_budget_stops_after_one_batch(engine, monkeypatch):
    from sam2_server.engine.pacing import Pacer

    monkeypatch.setattr(engine, "pacer", Pacer(budget_s=1e-6))
    batches = count_batches(monkeypatch)
    with pytest.raises(ServiceError) as refused:
        engine.automatic_masks(engine.default_model_id, IMAGE_ID, PARAMS)
    assert refused.value.kind is ErrorKind.BAD_INPUT
    assert "AUTOMATIC_TIME_BUDGET" in refused.value.message
    assert "4 grid points" in refused.value.message
    assert batches == [1]  # the first batch measured the speed; the other three never ran

    # Now the speed is known: refused before any batch.
    with pytest.raises(ServiceError, match="would take about"):
        engine.automatic_masks(engine.default_model_id, IMAGE_ID, PARAMS)
    assert batches == [1]


def test_a_generation_slower_than_measured_stops_at_twice_the_budget(engine, monkeypatch):
    from sam2_server.engine.pacing import Pacer

    pacer = Pacer(budget_s=0.05)
    pacer.observe_batch(engine.default_model_id, units=1.0, seconds=1e-9)  # "very fast"
    monkeypatch.setattr(engine, "pacer", pacer)
    batches = count_batches(monkeypatch, seconds=0.2)  # but each batch takes 0.2 s
    with pytest.raises(ServiceError, match="stopped after"):
        engine.automatic_masks(engine.default_model_id, IMAGE_ID, PARAMS)
    assert batches == [1]  # past 0.1 s after the first, the second is refused


def test_no_budget_runs_everything(engine, monkeypatch):
    from sam2_server.engine.pacing import Pacer

    monkeypatch.setattr(engine, "pacer", Pacer(budget_s=None))
    _, records = engine.automatic_masks(engine.default_model_id, IMAGE_ID, PARAMS)
    assert records


def count_batches(monkeypatch, seconds: float = 0.0) -> list[int]:
    """Counts the generator's batches (one list item, incremented), each made `seconds` slower."""
    import time

    from sam2_server.engine import automatic

    count = [0]
    library = automatic.SAM2AutomaticMaskGenerator
    original = library._process_batch

    def counting(self, points, *args, **kwargs):
        data = original(self, points, *args, **kwargs)
        count[0] += 1
        time.sleep(seconds)
        return data

    monkeypatch.setattr(library, "_process_batch", counting)
    return count
