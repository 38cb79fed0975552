"""The values that cross layer boundaries: plain numpy, no torch, no HTTP.

`api/` produces a `Prompt`, `engine/` turns it into a `Prediction`, `codecs/`
turns that into bytes. Shapes are validated when a `Prompt` is built, so the
engine can trust them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prompt:
    """What to segment on an image, in the units SAM2ImagePredictor.predict takes.

    point_coords: N x 2, or B x N x 2 with B boxes (one point set per object).
    point_labels: N, or B x N; 1 foreground, 0 background.
    box: 4 (one object) or B x 4 (B objects), XYXY.
    mask_input: 1 x 256 x 256 low-res logits from an earlier answer.
    """

    point_coords: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None
    multimask_output: bool = True
    return_logits: bool = True
    normalize_coords: bool = True

    @property
    def num_objects(self) -> int:
        """How many objects are segmented at once (B); 1 unless several boxes are given."""
        if self.box is not None and self.box.ndim == 2:
            return int(self.box.shape[0])
        if self.point_coords is not None and self.point_coords.ndim == 3:
            return int(self.point_coords.shape[0])
        return 1

    @property
    def batched(self) -> bool:
        """True when the answer carries a leading object axis (B x C x ...)."""
        return self.num_objects > 1


@dataclass(frozen=True)
class Prediction:
    """SAM2's answer, sorted best-first along the candidate axis C.

    masks: C x H x W (or B x C x H x W), float32 logits or 0/1.
    scores: C (or B x C) predicted IoU, float32.
    logits: C x 256 x 256 (or B x C x 256 x 256) low-res logits, float32.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray


def sort_best_first(masks: np.ndarray, scores: np.ndarray, logits: np.ndarray) -> Prediction:
    """Order candidates by descending score, per object, as the reference does.

    The reference uses `np.argsort(scores)[::-1]`; the same expression is kept
    so that ties land in the same order as Livepeer's runner.
    """
    if scores.ndim == 1:
        order = np.argsort(scores)[::-1]
        return Prediction(
            np.ascontiguousarray(masks[order]),
            np.ascontiguousarray(scores[order]),
            np.ascontiguousarray(logits[order]),
        )
    order = np.argsort(scores, axis=1)[:, ::-1]
    rows = np.arange(scores.shape[0])[:, None]
    return Prediction(
        np.ascontiguousarray(masks[rows, order]),
        np.ascontiguousarray(scores[rows, order]),
        np.ascontiguousarray(logits[rows, order]),
    )


@dataclass
class Timings:
    """Where one request's time went, filled in by the engine as it works.

    Mutable on purpose: the HTTP layer passes one in and reads it back for its
    metrics and log line, without knowing anything about the engine.
    """

    decode_image_s: float = 0.0
    encode_s: float = 0.0
    decode_s: float = 0.0
    cache_hit: bool = True


@dataclass(frozen=True)
class ImageInfo:
    """An image whose embedding the server holds, as the native API describes it.

    `image_id` is the SHA-256 of the uploaded bytes, which is also the cache
    key: a client can compute it and ask before uploading.
    """

    image_id: str
    model_id: str
    width: int
    height: int
    cached: bool  # True when the embedding was already there (no encoder run)
