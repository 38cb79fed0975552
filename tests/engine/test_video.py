"""Video sessions against SAM2's own video predictor, on real frames.

The oracle (tests/video_reference.py) is the library's predictor with the
one fix it needs on CPU applied at the read site in its own source.

The test checkpoint's object-score head is biased to "present": with plain
random weights every video mask would be empty and equality trivial.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from sam2_server.api.errors import status_of
from sam2_server.domain import FrameMasks, VideoPrompt
from sam2_server.errors import ServiceError
from tests.conftest import VIDEO_FRAMES, LocalModel
from tests.video_reference import BOX, LABELS, POINTS, reference, reference_run


def _open(engine, **kwargs: object) -> str:
    files = [path.open("rb") for path in VIDEO_FRAMES]
    try:
        return engine.videos.open(engine.default_model_id, frames=files, **kwargs).video_id
    finally:
        for file in files:
            file.close()


@pytest.fixture
def session(video_engine) -> Iterator[str]:
    video_id = _open(video_engine)
    yield video_id
    with contextlib.suppress(ServiceError):
        video_engine.videos.close(video_id)


def _assert_same(
    ours: list[FrameMasks], theirs: list[FrameMasks], present: list[int] | None = None
) -> None:
    """Equal frame by frame; and not trivially so: the objects in `present` (default:
    all) are non-empty on every frame. (An object not yet tracked on a prompted frame
    has, as in the library, an empty mask there.)"""
    assert [f.frame_index for f in ours] == [f.frame_index for f in theirs]
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine.object_ids == ref.object_ids
        assert mine.masks.shape == ref.masks.shape == (len(ref.object_ids), 540, 960)
        assert mine.masks.dtype == np.bool_
        for i, object_id in enumerate(mine.object_ids):
            if present is None or object_id in present:
                assert mine.masks[i].any(), f"object {object_id} empty on {mine.frame_index}"
        assert np.array_equal(mine.masks, ref.masks), f"frame {mine.frame_index} differs"


def test_the_library_as_shipped_fails_on_cpu(video_model: LocalModel) -> None:
    """Why the fix exists: the unfixed predictor cannot propagate without CUDA autocast."""
    with pytest.raises(RuntimeError, match="dtype"):
        reference_run(reference(video_model, fixed=False))


def test_prompts_and_propagation_equal_the_fixed_library(
    video_engine, session: str, video_reference: dict[str, list[FrameMasks]]
) -> None:
    reference_run = video_reference
    videos = video_engine.videos
    info = videos.get(session)
    assert (info.frames, info.width, info.height, info.fps) == (8, 960, 540, None)
    prompts = [
        videos.prompt(session, VideoPrompt(0, 1, POINTS, LABELS, None)),
        videos.prompt(session, VideoPrompt(3, 2, None, None, BOX)),
    ]
    _assert_same(prompts[:1], reference_run["prompts"][:1])
    _assert_same(prompts[1:], reference_run["prompts"][1:], present=[2])
    _assert_same(list(videos.propagate(session, None, None, False)), reference_run["forward"])
    _assert_same(list(videos.propagate(session, 7, None, True)), reference_run["reverse"])
    assert videos.get(session).objects == (1, 2)


def test_a_session_is_owned_by_one_call_at_a_time(video_engine, session: str) -> None:
    videos = video_engine.videos
    videos.prompt(session, VideoPrompt(0, 1, POINTS, LABELS, None))
    steps = videos.propagate(session, None, 3, False)
    first = next(steps)
    assert first.frame_index == 0
    with pytest.raises(ServiceError) as busy:
        videos.prompt(session, VideoPrompt(1, 1, POINTS, LABELS, None))
    assert status_of(busy.value) == 409
    steps.close()  # what a client that leaves does: the session is free again
    assert videos.prompt(session, VideoPrompt(1, 1, POINTS, LABELS, None)).frame_index == 1


def test_a_close_during_a_step_frees_the_session_as_that_step_ends(
    video_engine, session: str
) -> None:
    """The server closes a departed client's propagation from its event loop while a
    worker thread computes the frame in flight; that client calls the session again at
    once, so the session must be free as soon as the step returns, whatever the
    interleaving. Here `close()` comes at the worst moment: after the step's own look at
    `_closing`, while it still holds its lock (before the fix the session stayed taken
    until the propagation was garbage collected: a 409 on every call meanwhile)."""
    videos = video_engine.videos
    videos.prompt(session, VideoPrompt(0, 1, POINTS, LABELS, None))
    steps = videos.propagate(session, None, None, False)
    real_lock = steps._step_lock  # type: ignore[attr-defined]
    closes = []

    class CloseJustBeforeRelease:
        """The step lock, with a `close()` from another thread just before each release."""

        def acquire(self, blocking: bool = True) -> bool:
            return real_lock.acquire(blocking)

        def release(self) -> None:
            real_lock.release()

        def __enter__(self) -> None:
            real_lock.acquire()

        def __exit__(self, *exc_info: object) -> None:
            if not closes:
                closer = threading.Thread(target=steps.close)  # type: ignore[attr-defined]
                closer.start()
                closer.join()
                closes.append(closer)
            real_lock.release()

    steps._step_lock = CloseJustBeforeRelease()  # type: ignore[attr-defined]
    assert next(steps).frame_index == 0
    assert closes, "close() did not come during the step"
    # Free the moment that step returned: no 409, nothing left to collect.
    assert videos.prompt(session, VideoPrompt(1, 1, POINTS, LABELS, None)).frame_index == 1
    assert list(steps) == []  # closed for good


def test_remove_reset_and_close(video_engine, session: str) -> None:
    videos = video_engine.videos
    videos.prompt(session, VideoPrompt(0, 1, POINTS, LABELS, None))
    videos.prompt(session, VideoPrompt(0, 7, None, None, BOX))
    assert videos.remove_object(session, 1).objects == (7,)
    with pytest.raises(ServiceError) as unknown:
        videos.remove_object(session, 1)
    assert status_of(unknown.value) == 404
    frames = list(videos.propagate(session, None, 1, False))
    assert [f.object_ids for f in frames] == [(7,), (7,)]
    assert videos.reset(session).objects == ()
    with pytest.raises(ServiceError) as nothing:
        videos.propagate(session, None, None, False)
    assert status_of(nothing.value) == 400
    videos.close(session)
    with pytest.raises(ServiceError) as gone:
        videos.get(session)
    assert status_of(gone.value) == 404
