"""The video oracle: SAM2's own video predictor, with the one fix at its read site.

`SAM2VideoPredictor` as the library builds it (`build_sam2_video_predictor`,
`init_state` on a folder of JPEG files), with the fix it needs without CUDA
autocast applied in the library's own source: the stored bfloat16 memory
features upcast where `_prepare_memory_conditioned_features` reads them. The
server's fix is written differently (a hook on the memory attention), so the
two agreeing frame by frame is evidence, not a tautology.
"""

from __future__ import annotations

import inspect
import textwrap

import numpy as np
import torch
from sam2.modeling import sam2_base
from sam2.sam2_video_predictor import SAM2VideoPredictor

from sam2_server.domain import FrameMasks
from tests.conftest import VIDEO_FRAMES, VIDEO_TEST_OVERRIDES, LocalModel
from tests.synthetic import TINY_CONFIG

POINTS = np.array([[300.0, 200.0], [620.0, 310.0]], dtype=np.float32)
LABELS = np.array([1, 0], dtype=np.int32)
BOX = np.array([480.0, 90.0, 820.0, 420.0], dtype=np.float32)
READ_SITE = 'feats = prev["maskmem_features"].to(device, non_blocking=True)'


def patched_prepare() -> object:
    """The library's `_prepare_memory_conditioned_features`, with the read site upcast."""
    source = textwrap.dedent(
        inspect.getsource(sam2_base.SAM2Base._prepare_memory_conditioned_features)
    )
    assert source.count(READ_SITE) == 1, "sam2's source changed: re-check the fix"
    source = source.replace(READ_SITE, READ_SITE + ".to(current_vision_feats[-1].dtype)")
    namespace: dict[str, object] = {}
    exec(compile(source, sam2_base.__file__, "exec"), dict(vars(sam2_base)), namespace)
    return namespace["_prepare_memory_conditioned_features"]


class _FixedAtReadSite(SAM2VideoPredictor):
    _prepare_memory_conditioned_features = patched_prepare()


def reference(video_model: LocalModel, *, fixed: bool = True) -> SAM2VideoPredictor:
    from sam2.build_sam import build_sam2_video_predictor

    model = build_sam2_video_predictor(
        TINY_CONFIG,
        str(video_model.checkpoint),
        device="cpu",
        hydra_overrides_extra=list(VIDEO_TEST_OVERRIDES),
    )
    if fixed:
        model.__class__ = _FixedAtReadSite
    return model


def binary(frame_index: int, object_ids: list[int], logits: torch.Tensor) -> FrameMasks:
    return FrameMasks(frame_index, tuple(object_ids), (logits[:, 0] > 0.0).numpy())


def reference_run(predictor: SAM2VideoPredictor) -> dict[str, list[FrameMasks]]:
    """Two objects (points on frame 0, a box on frame 3), then forward and reverse."""
    folder = str(VIDEO_FRAMES[0].parent)
    out: dict[str, list[FrameMasks]] = {"prompts": [], "forward": [], "reverse": []}
    with torch.inference_mode():
        state = predictor.init_state(folder)
        out["prompts"].append(
            binary(*predictor.add_new_points_or_box(state, 0, 1, points=POINTS, labels=LABELS))
        )
        out["prompts"].append(binary(*predictor.add_new_points_or_box(state, 3, 2, box=BOX)))
        out["forward"] = [binary(*step) for step in predictor.propagate_in_video(state)]
        out["reverse"] = [
            binary(*step) for step in predictor.propagate_in_video(state, 7, reverse=True)
        ]
    return out
