"""The model-family seam: what the engine asks of a served model, whatever library runs it.

A family is one module behind this one small interface: `sam2_family.py`
(Meta's `sam2`, the reference) and `edgetam.py` (Meta's EdgeTAM through
Hugging Face `transformers` and `timm`). Everything else in the engine (the
embedding cache, single-flight, batching, locks, admission, limits, the
automatic-mask pacing, metrics) and every API surface work on `ImageModel`
and `Embedding` only, so they serve every family unchanged.

Which family a model belongs to is decided once, when its id is resolved
(models.py): Meta's SAM2 repo ids and `.pt` checkpoints are SAM2; a
Hugging Face repository or a local folder is whatever its own `config.json`
says in `model_type` (`FAMILY_OF_MODEL_TYPE`), never guessed from its name.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the seam names the engine's values; models.py imports this module
    import numpy as np
    import torch
    from PIL import Image

    from sam2_server.domain import AutomaticParams, MaskRecord, Prompt
    from sam2_server.engine.automatic import AutomaticHooks
    from sam2_server.engine.embedding import Embedding

__all__ = ["EDGETAM", "FAMILY_OF_MODEL_TYPE", "SAM2", "Frames", "ImageModel", "VideoPredictor"]

SAM2 = "sam2"
EDGETAM = "edgetam"
# A Hugging Face config's `model_type` → the family that serves it. EdgeTAM's image
# model loads from either config (the published repository holds the video one).
FAMILY_OF_MODEL_TYPE = {"edgetam": EDGETAM, "edgetam_video": EDGETAM}


class ImageModel(Protocol):
    """One loaded model's image side: encode, decode a prompt, generate masks.

    Thread-safety is the caller's (encoding.py and decoding.py hold the
    model's locks): an implementation keeps no per-image state between calls,
    so one instance serves every request, and an `Embedding` is all that
    links an encode to the prompts decoded on it. Every method runs inside
    the engine's compute context (inference mode, autocast, OOM handling).
    """

    @property
    def family(self) -> str:
        """SAM2 or EDGETAM."""
        ...

    @property
    def image_size(self) -> int:
        """The square input side the encoder sees (1024 for the published models)."""
        ...

    def encode_one(self, image: Image.Image, model_id: str) -> Embedding:
        """One image's embedding (an encode outside any batch)."""
        ...

    def encode_batch(self, images: Sequence[Image.Image], model_id: str) -> list[Embedding]:
        """Several images in one forward; each embedding owns its tensors."""
        ...

    def predict(
        self, embedding: Embedding, prompt: Prompt
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masks, scores, logits) as `SAM2ImagePredictor.predict` shapes them, unsorted:
        C x H x W masks (B x C x H x W for B objects), C scores, C x 256 x 256 logits."""
        ...

    def generate(
        self,
        embedding: Embedding,
        params: AutomaticParams,
        hooks: AutomaticHooks,
        image: np.ndarray | None,
    ) -> list[MaskRecord]:
        """Automatic masks: SAM2AutomaticMaskGenerator's algorithm on this model's decoder.

        `image` (H x W x 3 uint8) is needed only for `crop_n_layers > 0`.
        """
        ...


class Frames(Protocol):
    """A clip's frames as a family's video model reads them (held once per session)."""

    width: int
    height: int

    def append(self, image: Image.Image) -> None: ...

    def __len__(self) -> int: ...

    @property
    def nbytes(self) -> int: ...


# A frame's answer: (frame index, object ids, mask logits objects x 1 x H x W at the clip's size).
FrameLogits = tuple[int, Sequence[int], "torch.Tensor"]


class VideoPredictor(Protocol):
    """One loaded model's video side, in SAM2's video predictor's terms (video.py calls these).

    A session's state is the predictor's own; video.py reads it as SAM2's state dict
    (`obj_ids`, `obj_id_to_idx`, `output_dict_per_obj`, `temp_output_dict_per_obj`,
    `images`) to bound its memory. The SAM2 family is the library's predictor itself
    (video_predictor.py); EdgeTAM's is edgetam_video.py.
    """

    image_size: int

    @property
    def device(self) -> torch.device: ...

    def frame_store(self, width: int, height: int) -> Frames:
        """An empty store for a clip of that size, which `init_state_from_frames` takes."""
        ...

    def frame_bytes(self) -> int:
        """What one frame costs in a session's store."""
        ...

    def init_state_from_frames(
        self, frames: Any, *, offload_state_to_cpu: bool = False
    ) -> Mapping[str, Any]: ...

    def add_new_points_or_box(
        self,
        inference_state: Any,
        frame_idx: int,
        obj_id: int,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: np.ndarray | None = None,
    ) -> FrameLogits: ...

    def propagate_in_video(
        self,
        inference_state: Any,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Generator[FrameLogits, None, None]: ...

    def remove_object(
        self, inference_state: Any, obj_id: int, strict: bool = False, need_output: bool = True
    ) -> Any: ...

    def reset_state(self, inference_state: Any) -> None: ...
