"""Engine.automatic_masks: the kept upload, cancellation between batches, no shared state."""

from __future__ import annotations

import threading
import warnings
from dataclasses import replace

import numpy as np
import pytest

from sam2_server.domain import AutomaticParams, Prompt, Work
from sam2_server.errors import Cancelled
from tests.api.test_automatic import DATA, IMAGE_ID

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
