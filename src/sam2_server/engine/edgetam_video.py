"""EdgeTAM's video side: transformers' `EdgeTamVideoModel` inference session, behind the
video predictor interface the server's sessions use (video.py, SAM2's method names).

transformers keeps a clip's frames, prompts and per-object memory in an
`EdgeTamVideoInferenceSession`; its model holds no per-clip state. This
module answers each of video.py's calls exactly as transformers' own usage
does (the model card's): `Sam2VideoProcessor` prepares the frames and the
prompts (`add_inputs_to_inference_session`), `EdgeTamVideoModel(session,
frame_idx)` answers a prompted frame, `propagate_in_video_iterator` walks
the clip forwards or backwards, and `Sam2VideoProcessor.post_process_masks`
brings every mask to the clip's size. Two calls transformers has no method
for are built from its session's own fields: removing an object (its
per-object entries re-indexed, as SAM2's `remove_object` does) and reset
(`reset_tracking_data`).

The frames are kept as the processor makes them (float32 at the model's
input size): `EdgeTamFrames` is the session's `processed_frames` and the
store video.py counts, so they are held once.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam2_server.engine.edgetam import (
    OpenVinoVision,
    compile_vision,
    from_pretrained,
    image_config,
    speed_up,
)
from sam2_server.engine.models import HF_CONFIG, ModelNotFoundError, ModelSpec, read_hf_config

__all__ = ["EdgeTamFrames", "EdgeTamVideoPredictor", "load_video_predictor"]

# A session's per-object fields, keyed by the object's index (transformers' names).
_PER_OBJECT = (
    "point_inputs_per_obj",
    "mask_inputs_per_obj",
    "output_dict_per_obj",
    "frames_tracked_per_obj",
)


def load_video_predictor(
    spec: ModelSpec,
    weights: Path,
    device: torch.device,
    backend: str = "torch",
    precision: str = "fp32",
) -> EdgeTamVideoPredictor:
    """The repository's `EdgeTamVideoModel` (folded as the image model is) and its
    processor; with `backend` "openvino", each frame's encode on OpenVINO as the image
    model's (`compile_vision`; the memory and the decoder stay transformers')."""
    from transformers import EdgeTamVideoConfig, EdgeTamVideoModel, Sam2VideoProcessor

    folder = weights.parent
    raw = read_hf_config(folder / HF_CONFIG, spec.model_id)
    image_config(raw, spec.model_id)  # the same checks: an EdgeTAM config, a RepViT backbone
    if raw.get("model_type") != "edgetam_video":
        raise ModelNotFoundError(
            f"model {spec.model_id!r}: its config.json is an image model's (model_type "
            f"{raw.get('model_type')!r}); video sessions need an edgetam_video repository."
        )
    config: Any = EdgeTamVideoConfig.from_dict(raw)
    model, info = from_pretrained(EdgeTamVideoModel, config, spec, weights, "EdgeTAM's video model")
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ModelNotFoundError(
            f"model {spec.model_id!r}: {weights} lacks {len(missing)} of the video model's "
            f"weights (e.g. {missing[0]})."
        )
    processor: Any = Sam2VideoProcessor.from_pretrained(folder, local_files_only=True)
    speed_up(model)
    model = model.to(device).eval()
    if backend == "openvino":
        encode_frames_on(model, compile_vision(model, spec, weights, precision))
    return EdgeTamVideoPredictor(model, processor, device)


def encode_frames_on(model: Any, vision: OpenVinoVision) -> None:
    """`model.get_image_features` (which the session calls once per frame it has not
    encoded yet) answered by the compiled network, in transformers' shapes: each
    feature map and its position encoding flattened to (H*W) x N x C, highest
    resolution first. The position encodings are the neck's own (cached per size)."""
    from transformers.models.edgetam_video import modeling_edgetam_video

    # Typed as one tensor per field, it holds lists here, as transformers' own code fills it.
    output: Any = modeling_edgetam_video.EdgeTamVideoVisionEncoderOutput
    positions = model.vision_encoder.neck.position_encoding

    def get_image_features(pixel_values: torch.Tensor, **_: Any) -> Any:
        maps = vision.feature_maps(pixel_values)
        encodings = [positions(m.shape, m.device, m.dtype) for m in maps]
        return output(
            fpn_hidden_states=[m.flatten(2).permute(2, 0, 1) for m in maps],
            fpn_position_encoding=[e.flatten(2).permute(2, 0, 1) for e in encodings],
        )

    model.get_image_features = get_image_features


class EdgeTamFrames(Mapping[int, torch.Tensor]):
    """A clip's frames as `Sam2VideoProcessor` prepares them, index → 3 x S x S float32."""

    def __init__(self, processor: Any, width: int, height: int, image_size: int) -> None:
        self._processor = processor
        self.width = width
        self.height = height
        self.image_size = image_size
        self._frames: list[torch.Tensor] = []

    def append(self, image: Image.Image) -> None:
        """One frame, processed on its own as the processor processes each frame of a video."""
        video = [image.convert("RGB")]  # PIL: no guessing which axis holds the channels
        processed = self._processor.video_processor(videos=[video], return_tensors="pt")
        self._frames.append(processed["pixel_values_videos"][0][0].contiguous())

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._frames[index]

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._frames)))

    @property
    def nbytes(self) -> int:
        return sum(frame.numel() * frame.element_size() for frame in self._frames)

    @staticmethod
    def frame_bytes(image_size: int) -> int:
        return 3 * image_size * image_size * 4


class _State(Mapping[str, Any]):
    """A session as video.py reads SAM2's state dict: object ids, their index, and the
    per-object outputs and inputs (what the memory bounds count), read live from the
    transformers session, which rebinds some of its fields as it goes."""

    def __init__(self, session: Any, frames: EdgeTamFrames) -> None:
        self.session = session
        self.frames = frames

    def _fields(self) -> dict[str, Any]:
        session = self.session
        return {
            "images": self.frames,
            "obj_ids": session.obj_ids,
            "obj_id_to_idx": session._obj_id_to_idx,
            "output_dict_per_obj": session.output_dict_per_obj,
            "temp_output_dict_per_obj": {},
            "point_inputs_per_obj": session.point_inputs_per_obj,
            "mask_inputs_per_obj": session.mask_inputs_per_obj,
            # Not the session's one cached frame of features: it holds views of the
            # model's shared position encodings, which are the model's bytes, not the clip's.
        }

    def __getitem__(self, key: str) -> Any:
        return self._fields()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())


class EdgeTamVideoPredictor:
    """EdgeTAM's video model behind SAM2's video predictor calls (video.py's interface)."""

    def __init__(self, model: Any, processor: Any, device: torch.device) -> None:
        self.model: Any = model  # transformers' EdgeTamVideoModel
        self.processor: Any = processor  # transformers' Sam2VideoProcessor
        self.device = device
        self.image_size = int(model.config.prompt_encoder_config.image_size)

    # -- frames --------------------------------------------------------------------------

    def frame_store(self, width: int, height: int) -> EdgeTamFrames:
        return EdgeTamFrames(self.processor, width, height, self.image_size)

    def frame_bytes(self) -> int:
        return EdgeTamFrames.frame_bytes(self.image_size)

    def init_state_from_frames(
        self, frames: EdgeTamFrames, *, offload_state_to_cpu: bool = False
    ) -> _State:
        """A new inference session over the frames (as `init_video_session` builds one)."""
        from transformers.models.edgetam_video.modeling_edgetam_video import (
            EdgeTamVideoInferenceSession,
        )

        storage = torch.device("cpu") if offload_state_to_cpu else self.device
        session: Any = EdgeTamVideoInferenceSession(
            video=None,
            video_height=frames.height,
            video_width=frames.width,
            inference_device=self.device,
            inference_state_device=storage,
            video_storage_device=torch.device("cpu"),
            dtype=torch.float32,
        )
        session.processed_frames = frames
        return _State(session, frames)

    # -- prompts and propagation ---------------------------------------------------------

    def add_new_points_or_box(
        self,
        state: _State,
        frame_idx: int,
        obj_id: int,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: np.ndarray | None = None,
    ) -> tuple[int, list[int], torch.Tensor]:
        """`add_inputs_to_inference_session` then the model on that frame: every object's
        mask logits at the clip's size (objects x 1 x H x W)."""
        session = state.session
        size = (state.frames.height, state.frames.width)
        inputs: dict[str, Any] = {}
        if points is not None:
            inputs["input_points"] = [[np.asarray(points, np.float64).tolist()]]
        if labels is not None:
            inputs["input_labels"] = [[np.asarray(labels, np.int64).tolist()]]
        if box is not None:
            inputs["input_boxes"] = [[np.asarray(box, np.float64).reshape(4).tolist()]]
        try:
            self.processor.add_inputs_to_inference_session(
                inference_session=session,
                frame_idx=frame_idx,
                obj_ids=int(obj_id),
                # Coordinates relative to the frame ([0, 1]) when not normalised: a 1x1 frame.
                original_size=size if normalize_coords else (1, 1),
                clear_old_inputs=clear_old_points,
                **inputs,
            )
        finally:  # the processor records the size it was given as the clip's
            session.video_height, session.video_width = size
        outputs = self.model(inference_session=session, frame_idx=frame_idx)
        return int(outputs.frame_idx), list(outputs.object_ids), self._video_logits(outputs, size)

    def propagate_in_video(
        self,
        state: _State,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Generator[tuple[int, list[int], torch.Tensor], None, None]:
        """`propagate_in_video_iterator`, each frame's masks at the clip's size."""
        size = (state.frames.height, state.frames.width)
        steps = self.model.propagate_in_video_iterator(
            state.session,
            start_frame_idx=start_frame_idx,
            max_frame_num_to_track=max_frame_num_to_track,
            reverse=reverse,
        )
        for outputs in steps:
            logits = self._video_logits(outputs, size)
            yield int(outputs.frame_idx), list(outputs.object_ids), logits

    def _video_logits(self, outputs: Any, size: tuple[int, int]) -> torch.Tensor:
        masks = self.processor.post_process_masks(
            [outputs.pred_masks], original_sizes=[list(size)], binarize=False
        )[0]
        logits: torch.Tensor = masks.float()
        return logits

    # -- objects ---------------------------------------------------------------------------

    def remove_object(
        self, state: _State, obj_id: int, strict: bool = False, need_output: bool = True
    ) -> None:
        """Forget one object, its inputs and its memory; the others keep theirs (their
        per-object entries re-indexed in order, as SAM2's `remove_object` does)."""
        session = state.session
        old_index = dict(session._obj_id_to_idx)
        if obj_id not in old_index:
            if strict:
                raise RuntimeError(f"Cannot remove object id {obj_id} as it doesn't exist.")
            return
        kept = [other for other in session.obj_ids if other != obj_id]
        saved = {name: dict(getattr(session, name)) for name in _PER_OBJECT}
        session._obj_id_to_idx.clear()
        session._obj_idx_to_id.clear()
        for name in _PER_OBJECT:
            getattr(session, name).clear()
        for index, other in enumerate(kept):
            session._obj_id_to_idx[other] = index
            session._obj_idx_to_id[index] = other
            for name in _PER_OBJECT:
                getattr(session, name)[index] = saved[name][old_index[other]]
        session.obj_ids = kept
        session.obj_with_new_inputs = [o for o in session.obj_with_new_inputs if o != obj_id]

    def reset_state(self, state: _State) -> None:
        """Every object, input and output forgotten; the frames (and encoded features) kept."""
        state.session.reset_tracking_data()
