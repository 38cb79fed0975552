"""SAM2's video predictor as the server runs it: two departures from the library,
both invisible in the answers.

- **The memory fix.** SAM2 stores each frame's memory features in bfloat16
  and, outside CUDA autocast, hands them to float32 layers ("mat1 and mat2
  must have the same dtype", sam2 issues #308 and #577). `FixedVideoPredictor`
  keeps the bfloat16 storage and upcasts the stored memory to the compute
  dtype where it is read (the memory-attention input). bf16 → fp32 is exact,
  so the answers equal the library's with that read site patched.
- **Frames as uint8.** The library holds every frame as float32 at the
  model's input size (12 MiB per frame at 1024²). A `FrameStore` keeps the
  resized uint8 pixels (3 MiB) and normalises a frame when the model reads
  it, with the library's own arithmetic (`/ 255.0` in float64, to float32,
  `- mean`, `/ std`), so the tensors are bit-identical. Frames always live in
  host memory; on a GPU only the frame being encoded is copied over.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from sam2 import sam2_video_predictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

__all__ = ["VIDEO_OVERRIDES", "FixedVideoPredictor", "FrameStore"]

# The library's normalisation (sam2.utils.misc.load_video_frames).
_IMG_MEAN = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
_IMG_STD = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
# What the config of `build_sam2_video_predictor(apply_postprocessing=True)` adds
# to the image model's (the image model already has the mask decoder's part).
VIDEO_OVERRIDES = {
    "_target_": "sam2_server.engine.video_predictor.FixedVideoPredictor",
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 8,
}


def _no_progress_bar(iterable: Any, *args: Any, **kwargs: Any) -> Any:
    return iterable


# The library draws a tqdm progress bar on stderr for every propagation: in a
# server that is a screenful of carriage returns per request in the logs.
sam2_video_predictor.tqdm = _no_progress_bar
# Without its optional CUDA extension SAM2 skips filling small holes in video
# masks (identically in the reference) and warns on every frame; say it once.
warnings.filterwarnings("once", message=r"cannot import name '_C' from 'sam2'")


class FixedVideoPredictor(SAM2VideoPredictor):
    """SAM2VideoPredictor, with stored bfloat16 memory upcast where it is read.

    Also accepts frames already decoded (`init_state_from_frames`), since the
    library's `init_state` reads only a folder of JPEG files.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memory_attention.register_forward_pre_hook(_upcast_memory, with_kwargs=True)

    def frame_store(self, width: int, height: int) -> FrameStore:
        """An empty store for a clip of that size (the video sessions' family interface)."""
        return FrameStore(width, height, self.image_size)

    def frame_bytes(self) -> int:
        return FrameStore.frame_bytes(self.image_size)

    @torch.inference_mode()
    def init_state_from_frames(
        self, frames: FrameStore, *, offload_state_to_cpu: bool = False
    ) -> dict[str, Any]:
        """`init_state`, with the frames given instead of loaded from a folder.

        Builds the same dict as the library's `init_state` (sam2 1.1.0), and,
        like it, encodes frame 0 once to warm the backbone's feature cache.
        """
        device = self.device
        state: dict[str, Any] = {
            "images": frames,
            "num_frames": len(frames),
            "offload_video_to_cpu": True,
            "offload_state_to_cpu": offload_state_to_cpu,
            "video_height": frames.height,
            "video_width": frames.width,
            "device": device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }
        self._get_image_feature(state, frame_idx=0, batch_size=1)
        return state


def _upcast_memory(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The fix: `memory` (and its positions) in the dtype of the current frame's features."""
    curr = kwargs.get("curr", args[0] if args else None)
    if isinstance(curr, list | tuple):
        curr = curr[0]
    if not isinstance(curr, torch.Tensor):
        return args, kwargs
    for name in ("memory", "memory_pos"):
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.dtype != curr.dtype:
            kwargs[name] = value.to(curr.dtype)
    return args, kwargs


class FrameStore(Sequence[torch.Tensor]):
    """A clip's frames at the model's input size, uint8, normalised on read."""

    def __init__(self, width: int, height: int, image_size: int) -> None:
        self.width = width
        self.height = height
        self.image_size = image_size
        self._frames: list[np.ndarray] = []

    def append(self, image: Image.Image) -> None:
        # As the library's _load_img_as_tensor: PIL's default resize to a square.
        resized = np.array(image.convert("RGB").resize((self.image_size, self.image_size)))
        self._frames.append(resized)

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        pixels = torch.from_numpy(self._frames[index] / 255.0).permute(2, 0, 1).float()
        pixels -= _IMG_MEAN
        pixels /= _IMG_STD
        return pixels

    @property
    def nbytes(self) -> int:
        return sum(frame.nbytes for frame in self._frames)

    @staticmethod
    def frame_bytes(image_size: int) -> int:
        return image_size * image_size * 3
