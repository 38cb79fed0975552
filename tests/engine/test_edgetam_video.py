"""EdgeTAM video sessions against transformers' `EdgeTamVideoModel` on the same checkpoint.

The oracle is transformers' own usage (the model card's): `Sam2VideoProcessor.
init_video_session` on the frames, `add_inputs_to_inference_session` then the
model on the prompted frame, `propagate_in_video_iterator` forwards and in
reverse, `post_process_masks` to the clip's size. Two objects: points for one
on frame 0, a box for the other on frame 2 (any frame may be prompted).

The test checkpoint's object-score head is biased to "present"
(tests/synthetic.py): with plain random weights every video mask would be
empty and equality trivial; every mask compared is asserted non-empty.

Two runs through the server's video sessions: one on transformers' model as
loaded (nothing folded) must equal the oracle mask for mask; the served model
(its encoder folded) must equal it but for pixels within float noise of the
threshold.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_server.config import Settings
from sam2_server.domain import FrameMasks, VideoPrompt
from sam2_server.errors import ServiceError
from tests.conftest import VIDEO_FRAMES

FRAMES = VIDEO_FRAMES[:3]  # 960 x 540; the box prompts the last frame
POINTS = np.array([[300.0, 200.0], [620.0, 310.0]], dtype=np.float32)
LABELS = np.array([1, 0], dtype=np.int32)
BOX = np.array([480.0, 90.0, 820.0, 420.0], dtype=np.float32)


def oracle_run(folder: Path) -> dict[str, list[FrameMasks]]:
    from transformers import EdgeTamVideoModel, Sam2VideoProcessor

    model = EdgeTamVideoModel.from_pretrained(folder).eval()
    processor = Sam2VideoProcessor.from_pretrained(folder)
    video = [Image.open(path).convert("RGB") for path in FRAMES]

    def masks(output) -> FrameMasks:
        binary = processor.post_process_masks([output.pred_masks], original_sizes=[[540, 960]])[0]
        return FrameMasks(int(output.frame_idx), tuple(output.object_ids), binary[:, 0].numpy())

    out: dict[str, list[FrameMasks]] = {}
    with torch.inference_mode():
        session = processor.init_video_session(video=video, inference_device="cpu")
        processor.add_inputs_to_inference_session(
            inference_session=session,
            frame_idx=0,
            obj_ids=1,
            input_points=[[POINTS.tolist()]],
            input_labels=[[LABELS.tolist()]],
        )
        first = masks(model(inference_session=session, frame_idx=0))
        processor.add_inputs_to_inference_session(
            inference_session=session, frame_idx=2, obj_ids=2, input_boxes=[[BOX.tolist()]]
        )
        second = masks(model(inference_session=session, frame_idx=2))
        out["prompts"] = [first, second]
        out["forward"] = [masks(o) for o in model.propagate_in_video_iterator(session)]
        last = len(FRAMES) - 1
        steps = model.propagate_in_video_iterator(session, start_frame_idx=last, reverse=True)
        out["reverse"] = [masks(o) for o in steps]
    return out


def served_run(videos, model_id: str) -> dict[str, list[FrameMasks]]:
    files = [path.open("rb") for path in FRAMES]
    try:
        info = videos.open(model_id, frames=files)
    finally:
        for file in files:
            file.close()
    assert (info.frames, info.width, info.height) == (len(FRAMES), 960, 540)
    video_id = info.video_id
    try:
        out = {
            "prompts": [
                videos.prompt(video_id, VideoPrompt(0, 1, POINTS, LABELS, None)),
                videos.prompt(video_id, VideoPrompt(2, 2, None, None, BOX)),
            ],
            "forward": list(videos.propagate(video_id, None, None, False)),
            "reverse": list(videos.propagate(video_id, len(FRAMES) - 1, None, True)),
        }
        assert videos.get(video_id).objects == (1, 2)
    finally:
        videos.close(video_id)
    return out


def assert_same(ours: dict, theirs: dict, *, exact: bool) -> None:
    for part in ("prompts", "forward", "reverse"):
        assert [f.frame_index for f in ours[part]] == [f.frame_index for f in theirs[part]]
        for mine, ref in zip(ours[part], theirs[part], strict=True):
            assert mine.object_ids == ref.object_ids
            assert mine.masks.shape == ref.masks.shape == (len(ref.object_ids), 540, 960)
            assert mine.masks.dtype == np.bool_
            for i, object_id in enumerate(ref.object_ids):
                assert ref.masks[i].any(), f"{part}: object {object_id} empty on {ref.frame_index}"
            if exact:
                assert np.array_equal(mine.masks, ref.masks), f"{part} {mine.frame_index} differs"
            else:
                assert (mine.masks != ref.masks).mean() < 1e-4, f"{part} {mine.frame_index}"
    # Both directions walk the whole clip, both objects on every frame.
    assert [f.frame_index for f in theirs["forward"]] == list(range(len(FRAMES)))
    assert [f.frame_index for f in theirs["reverse"]] == list(range(len(FRAMES)))[::-1]
    assert all(f.object_ids == (1, 2) for f in theirs["forward"] + theirs["reverse"])


@pytest.fixture(scope="module")
def oracle(edgetam_repo):
    return oracle_run(edgetam_repo)


def test_unfolded_sessions_equal_transformers_frame_by_frame(edgetam_repo, hf_edgetam, oracle):
    """The server's sessions (video.py) on transformers' model as loaded: exactly the oracle."""
    from transformers import EdgeTamVideoModel, Sam2VideoProcessor

    from sam2_server.engine.edgetam_video import EdgeTamVideoPredictor
    from sam2_server.engine.video import VideoSessions

    model = EdgeTamVideoModel.from_pretrained(edgetam_repo).eval()
    predictor = EdgeTamVideoPredictor(
        model, Sam2VideoProcessor.from_pretrained(edgetam_repo), torch.device("cpu")
    )
    lock = threading.Lock()
    videos = VideoSessions(
        Settings(model_ids=(hf_edgetam,), device="cpu", video_max_frames=8),
        lambda _model_id, _cancelled: predictor,
        torch.inference_mode,
        lambda _model_id: lock,
    )
    assert_same(served_run(videos, hf_edgetam), oracle, exact=True)


def test_served_sessions_equal_transformers(edgetam_engine, hf_edgetam, oracle):
    """The served model (folded encoder) through the engine: the oracle's masks."""
    assert_same(served_run(edgetam_engine.videos, hf_edgetam), oracle, exact=False)


def test_remove_reset_and_bounds(edgetam_engine, hf_edgetam):
    videos = edgetam_engine.videos
    files = [path.open("rb") for path in FRAMES[:2]]
    try:
        video_id = videos.open(hf_edgetam, frames=files).video_id
    finally:
        for file in files:
            file.close()
    try:
        videos.prompt(video_id, VideoPrompt(0, 1, POINTS, LABELS, None))
        two = videos.prompt(video_id, VideoPrompt(0, 7, None, None, BOX))
        assert two.object_ids == (1, 7)
        with_both = list(videos.propagate(video_id, 0, None, False))
        info = videos.remove_object(video_id, 1)
        assert info.objects == (7,)
        # The remaining object keeps its memory: the same masks as before the removal.
        alone = list(videos.propagate(video_id, 0, None, False))
        for before, after in zip(with_both, alone, strict=True):
            assert after.object_ids == (7,)
            np.testing.assert_array_equal(after.masks[0], before.masks[1])
        with pytest.raises(ServiceError, match="no object 1"):
            videos.remove_object(video_id, 1)
        # A box needs cleared points, as with SAM2.
        with pytest.raises(ServiceError, match="box"):
            videos.prompt(video_id, VideoPrompt(1, 7, None, None, BOX, clear_old_points=False))
        assert videos.reset(video_id).objects == ()
        with pytest.raises(ServiceError, match="Nothing to propagate"):
            videos.propagate(video_id, None, None, False)
        stats = videos.stats()
        # Frames held as the processor makes them: float32 at the model's input size.
        assert stats["bytes"] >= 2 * 3 * 1024 * 1024 * 4
    finally:
        with contextlib.suppress(ServiceError):
            videos.close(video_id)


def test_openvino_sessions_equal_transformers(edgetam_openvino, hf_edgetam, oracle):
    """ENCODER_BACKEND=openvino: each frame encoded on OpenVINO (as the image model's
    encode), the memory and decoder transformers'; every frame as transformers' own."""
    engine, _ = edgetam_openvino
    assert_same(served_run(engine.videos, hf_edgetam), oracle, exact=False)
