"""The values that cross layer boundaries: plain numpy, no torch, no HTTP.

`api/` produces a `Prompt`, `engine/` turns it into a `Prediction`, `codecs/`
turns that into bytes. Shapes are validated when a `Prompt` is built, so the
engine can trust them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

# -- the image id --------------------------------------------------------------------------

# The native API's image id, as routes, the cluster's router and clients spell it.
IMAGE_ID_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")


def image_id_of(image_bytes: bytes) -> str:
    """The native API's image id: the SHA-256 of the uploaded bytes (also the cache key).

    One definition for the engine's cache, the Livepeer route's native answer,
    the cluster's routing key and the client, which computes it before uploading.
    """
    return hashlib.sha256(image_bytes).hexdigest()


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
    # Whether the image's embedding came from the cache; None until one was looked up
    # (a request refused before, e.g. for an unavailable model, says nothing of it).
    cache_hit: bool | None = None


@dataclass
class Work:
    """One request's work as the engine sees it: where its time goes (`timings`, filled
    in), whether anyone still waits for it (`cancelled()`, asked before each step
    that would start work; None: always someone), and who follows its progress
    (`progress(points)`, called after each batch of grid points of automatic masks,
    with that batch's points, in the worker thread; None: nobody)."""

    timings: Timings = field(default_factory=Timings)
    cancelled: Callable[[], bool] | None = None
    progress: Callable[[int], None] | None = None


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


# -- video sessions ----------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """A video session as the native API describes it (`objects` in the order added)."""

    video_id: str
    model_id: str
    frames: int
    width: int
    height: int
    fps: float | None  # None for a session built from frame images
    objects: tuple[int, ...] = ()


@dataclass(frozen=True)
class FrameMasks:
    """Every tracked object's binary mask (H x W bool, the clip's size) on one frame."""

    frame_index: int
    object_ids: tuple[int, ...]
    masks: np.ndarray  # objects x H x W, bool


@dataclass(frozen=True)
class VideoPrompt:
    """Points and/or a box for one object on one frame (SAM2's add_new_points_or_box)."""

    frame_index: int
    object_id: int
    points: np.ndarray | None  # N x 2 float32
    labels: np.ndarray | None  # N int32
    box: np.ndarray | None  # 4 float32, XYXY
    clear_old_points: bool = True
    normalize_coords: bool = True


# -- automatic masks (below this line: owned by the automatic-masks work) ---------------


def _param(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class AutomaticParams:
    """SAM2AutomaticMaskGenerator's parameters, with the library's own defaults (sam2 1.1.0).

    The one list of them: the API's request schema, the CLI's flags and the
    client's accepted names are derived from these fields and their `help`.
    The HTTP layer checks them against the server's bounds; the engine hands
    them to the library unchanged, so an answer equals `generate()`'s.
    """

    points_per_side: int = _param(
        32, "Grid points along each side of the image (points_per_side**2 prompts)."
    )
    points_per_batch: int = _param(64, "Points run through the model at once.")
    pred_iou_thresh: float = _param(0.8, "Keep masks whose predicted IoU is above this.")
    stability_score_thresh: float = _param(
        0.95, "Keep masks whose stability score is at least this."
    )
    stability_score_offset: float = _param(
        1.0, "Shift of the logit cutoff used to compute the stability score."
    )
    mask_threshold: float = _param(0.0, "Logit threshold that binarises a mask.")
    box_nms_thresh: float = _param(0.7, "Box IoU above which duplicate masks are dropped.")
    crop_n_layers: int = _param(0, "Layers of image crops run again (layer i has (2**i)**2 crops).")
    crop_nms_thresh: float = _param(
        0.7, "Box IoU above which duplicates between crops are dropped."
    )
    crop_overlap_ratio: float = _param(512 / 1500, "How much crops overlap, in [0, 1).")
    crop_n_points_downscale_factor: int = _param(
        1, "Points per side in crop layer n: points_per_side / factor**n."
    )
    min_mask_region_area: int = _param(
        0,
        "Fill holes and remove islands up to this area (low-res mask pixels). sam2 does "
        "this with its CUDA extension and skips it without one, as does the server, "
        "which then says so in the answer's `warnings`.",
    )
    use_m2m: bool = _param(False, "Refine each mask once with its own low-res logits.")
    multimask_output: bool = _param(True, "Three candidate masks per point instead of one.")


AUTOMATIC_PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(AutomaticParams))


@dataclass(frozen=True)
class MaskRecord:
    """One mask of `generate()`, with its segmentation as an uncompressed RLE.

    The RLE (`{"size": [h, w], "counts": [ints]}`: run lengths over the
    column-major pixels, background first) is what the library itself keeps,
    so hundreds of masks never exist as H x W arrays at once; the codec turns
    it into COCO RLE or PNG. The other fields are the library's values as it
    returns them (Python ints or floats), so the JSON equals its records'.
    """

    segmentation: dict[str, list[int]]  # {"size": [h, w], "counts": [...]}
    area: int
    bbox: list[float]  # XYWH
    predicted_iou: float
    point_coords: list[list[float]]  # the one grid point that prompted this mask
    stability_score: float
    crop_box: list[float]  # XYWH

    @classmethod
    def of(cls, record: dict[str, Any]) -> MaskRecord:
        """From a record that has these fields (the library's, or an answer's): one
        place names them, so the engine, the codec and the client agree."""
        return cls(**{name: record[name] for name in MASK_RECORD_FIELDS})


MASK_RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(MaskRecord))
