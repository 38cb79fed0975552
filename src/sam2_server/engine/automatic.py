"""Automatic masks ("segment everything"): the sam2 library's own generator, on cached work.

`SAM2AutomaticMaskGenerator` prompts a grid of points over the image (and,
with `crop_n_layers`, over overlapping crops of it), then filters and
de-duplicates the masks. Its records are the contract, so the library does
all of that here; what changes is only where the image features come from:

- The first crop is always the whole image, whose embedding the cache
  already holds: the per-request predictor binds it instead of running the
  encoder, so a second call with other thresholds costs no encode at all.
- Smaller crops need pixels: they are decoded from the upload the embedding
  keeps, and encoded by the library as usual, one at a time under the
  model's encode lock.
- Clicks never wait for a generation: its batches' forwards take the
  model's automatic lock (generations take turns batch by batch), not the
  decode lock that clicks take, so a click runs beside a batch in flight
  (on a CPU they share the cores for the click's fraction of a second)
  rather than behind it. Splitting the batch instead would change the
  decoder's float results (the library's records are the contract).
- Before each batch: a client that left stops the work, and so does the time
  budget (pacing.py); every batch is timed, so the engine learns its rate.

The generator and its predictor are built per request and never shared:
SAM2's predictors keep the current image as mutable state.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam2_server.domain import AutomaticParams, MaskRecord
from sam2_server.engine.embedding import Embedding, set_embedding
from sam2_server.engine.models import fit_feature_sizes, scripting
from sam2_server.errors import check_cancelled

__all__ = [
    "AutomaticHooks",
    "generate_masks",
    "small_region_filter_available",
    "warnings_for",
]


@dataclass
class AutomaticHooks:
    """What one generation shares with the rest of the engine: locks, cancellation, counts."""

    encode_lock: threading.Lock
    batch_lock: threading.Lock  # the model's automatic lock: one generation's batch at a time
    cancelled: Callable[[], bool] | None = None
    on_encoded: Callable[[float], None] | None = None  # seconds, once per crop encoded
    on_batch: Callable[[int, float], None] | None = None  # points and seconds, per batch
    deadline: Callable[[], None] | None = None  # raises once the generation is out of time
    encode_s: float = 0.0  # filled in: time spent encoding crops

    def check(self) -> None:
        check_cancelled(self.cancelled)
        if self.deadline is not None:
            self.deadline()

    def encode_crop(self, encode: Callable[[], None]) -> None:
        """Run one crop's encode as every family does: checked first, under the model's
        encode lock, timed into `encode_s` and reported to `on_encoded`."""
        self.check()
        started = time.perf_counter()
        with self.encode_lock:
            encode()
        seconds = time.perf_counter() - started
        self.encode_s += seconds
        if self.on_encoded is not None:
            self.on_encoded(seconds)


# How a family turns the predictor the library built for a generator into its own:
# (library's predictor, the cached embedding, the hooks) → what the generator calls
# (`set_image`, `_predict`, `_transforms.transform_coords`, `device`, `reset_predictor`).
Adopt = Callable[[Any, Embedding, AutomaticHooks], Any]


def generate_masks(
    model: SAM2Base,
    embedding: Embedding,
    params: AutomaticParams,
    hooks: AutomaticHooks,
    image: np.ndarray | None = None,
    adopt: Adopt | None = None,
) -> list[MaskRecord]:
    """`SAM2AutomaticMaskGenerator(model, **params).generate(image)`, reusing `embedding`.

    `adopt` makes the generator's predictor another family's (see `Adopt`);
    by default it is SAM2's own (`_CropPredictor`), and `model` a `SAM2Base`.
    Another family passes any `model` with the `image_size` the library's
    transforms are built from.

    `image` (H x W x 3 uint8, the pixels the embedding was computed from) is
    needed only when `crop_n_layers > 0`; without crops the generator gets a
    zero-copy stand-in of the right shape, since the one crop's features are
    the embedding. Call inside the engine's compute context (inference mode,
    autocast, OOM handling).
    """
    height, width = embedding.orig_hw
    if image is None:
        if params.crop_n_layers > 0:
            raise ValueError("crop_n_layers > 0 needs the image's pixels")
        image = np.broadcast_to(np.zeros(3, dtype=np.uint8), (height, width, 3))
    elif image.shape[:2] != (height, width):
        raise ValueError(f"image is {image.shape[:2]}, the embedding {(height, width)}")
    generator = _Generator(model, params, embedding, hooks, adopt or _adopt_sam2)
    records = generator.generate(image)
    return [MaskRecord.of(record) for record in records]


def warnings_for(params: AutomaticParams, device: torch.device) -> list[str]:
    """What the library will not do here that the parameters ask for (see below)."""
    if params.min_mask_region_area > 0 and not small_region_filter_available(device):
        return [_NO_SMALL_REGION_FILTER]
    return []


@functools.cache
def small_region_filter_available(device: torch.device) -> bool:
    """Whether the library can apply `min_mask_region_area` on `device`.

    sam2 1.1.0 applies it inside the predictor (`max_hole_area`,
    `max_sprinkle_area`) with connected components from its own CUDA
    extension `sam2._C`; without it (a CPU device, or sam2 built without
    CUDA) the library warns and skips the filtering. The server does what
    the library does (its records are the contract) and says so in the
    answer's `warnings`, instead of leaving the client to find out.
    """
    if device.type != "cuda":
        return False
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


_NO_SMALL_REGION_FILTER = (
    "min_mask_region_area was not applied: sam2 applies it with its compiled CUDA extension "
    "(sam2._C), which this server's device or sam2 build lacks, and skips it otherwise, as "
    "here; the masks are those of min_mask_region_area 0."
)


class _CropPredictor(SAM2ImagePredictor):
    """The generator's predictor: the whole image from the cached embedding, crops encoded.

    Built from the predictor the library configured for this generator (its
    transforms carry `min_mask_region_area`), by copying its fields: the
    model and transforms are shared read-only, the image state is its own.
    """

    _embedding: Embedding
    _hooks: AutomaticHooks

    @classmethod
    def adopt(
        cls, predictor: SAM2ImagePredictor, embedding: Embedding, hooks: AutomaticHooks
    ) -> _CropPredictor:
        adopted = cls.__new__(cls)
        adopted.__dict__.update(vars(predictor))
        adopted._embedding = embedding
        adopted._hooks = hooks
        return adopted

    def set_image(self, image: np.ndarray) -> None:
        """The cached embedding for the whole image; the library's encode for a smaller crop.

        A crop as large as the image can only be the image itself (crops start
        inside it and are clipped to it), so its features are the embedding's.
        """
        if tuple(image.shape[:2]) == self._embedding.orig_hw:
            set_embedding(self, self._embedding)
            return
        self._hooks.encode_crop(lambda: super(_CropPredictor, self).set_image(image))

    def _predict(self, *args: Any, **kwargs: Any) -> Any:
        """The model's prompt encoder and mask decoder, under the model's automatic lock
        (other generations' batches wait; clicks, under the decode lock, do not)."""
        with self._hooks.batch_lock:
            return super()._predict(*args, **kwargs)


def _adopt_sam2(
    predictor: SAM2ImagePredictor, embedding: Embedding, hooks: AutomaticHooks
) -> _CropPredictor:
    adopted = _CropPredictor.adopt(predictor, embedding, hooks)
    fit_feature_sizes(adopted)
    return adopted


class _Generator(SAM2AutomaticMaskGenerator):
    """The library's generator with our predictor, and cancellation between batches."""

    predictor: Any  # the library's SAM2ImagePredictor, then the family's (built in __init__)

    def __init__(
        self,
        model: SAM2Base,
        params: AutomaticParams,
        embedding: Embedding,
        hooks: AutomaticHooks,
        adopt: Adopt,
    ) -> None:
        # Uncompressed RLE: the library's own intermediate form, small, and
        # what the codec needs for both COCO RLE and PNG.
        # The library builds its predictor here (a `torch.jit.script`): see `scripting`.
        with scripting():
            super().__init__(model, output_mode="uncompressed_rle", **asdict(params))
        self.predictor = adopt(self.predictor, embedding, hooks)
        self._hooks = hooks

    def _process_batch(self, points: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        hooks = self._hooks
        hooks.check()
        started = time.perf_counter()
        data = super()._process_batch(points, *args, **kwargs)
        if hooks.on_batch is not None:
            hooks.on_batch(len(points), time.perf_counter() - started)
        return data
