"""The automatic-masks answer: the library's records, masks as COCO RLE, PNG or polygons.

The engine keeps each mask as the uncompressed RLE the library computes
(run lengths over column-major pixels). `"rle"` compresses it exactly as the
library's own `coco_encode_rle` does for `output_mode="coco_rle"`, so the
answer's records equal `generate()`'s; `"png"` and `"polygon"` expand it to a
mask and write it as the segment route does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from pycocotools import mask as coco_mask

from sam2_server.codecs.native import encode_mask
from sam2_server.domain import MASK_RECORD_FIELDS, MaskRecord

# An answer's size follows its masks' boundaries: COCO RLE writes each run in
# one to three characters, and PNG's deflate spends about as much per run.
_BYTES_PER_RUN = 4
# Polygons spend up to 13 bytes per vertex (`[12345,1234],`: a 40-megapixel image
# has at most nine digits in a point). The worst masks found (every periodic tile
# up to 4x4, random masks) have about 3 vertices per run: 43 bytes per run even
# with ten digits; tested against written answers (tests/codecs/test_automatic.py).
_POLYGON_BYTES_PER_RUN = 48
_BYTES_PER_RECORD = 512  # the other fields, the PNG header, the JSON punctuation
_BYTES_PER_ANSWER = 1024  # ids and size


def estimate_answer_bytes(records: Sequence[MaskRecord], mask_format: str = "rle") -> int:
    """About the most bytes `automatic_answer` writes for `records` in `mask_format`."""
    per_run = _POLYGON_BYTES_PER_RUN if mask_format == "polygon" else _BYTES_PER_RUN
    return _BYTES_PER_ANSWER + sum(
        len(record.segmentation["counts"]) * per_run + _BYTES_PER_RECORD for record in records
    )


def coco_rle(rle: dict[str, list[int]]) -> dict[str, Any]:
    """COCO RLE `{"size": [h, w], "counts": str}`, as sam2's `coco_encode_rle` writes it."""
    height, width = rle["size"]
    encoded = coco_mask.frPyObjects(rle, height, width)
    return {"size": encoded["size"], "counts": encoded["counts"].decode("utf-8")}


def rle_to_mask(rle: dict[str, list[int]]) -> np.ndarray:
    """The H x W bool mask of an uncompressed RLE (runs alternate, background first)."""
    height, width = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if int(counts.sum()) != height * width:
        raise ValueError(f"RLE runs cover {int(counts.sum())} pixels, not {height}x{width}")
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape(width, height).T


def encode_segmentation(
    rle: dict[str, list[int]], mask_format: str, epsilon: float = 0.0
) -> dict[str, Any] | str:
    """One mask in `mask_format`: COCO RLE (`rle`), a base64 grayscale PNG (`png`), or
    `{"size", "polygons"}` (`polygon`, simplified to within `epsilon` pixels)."""
    if mask_format == "rle":
        return coco_rle(rle)
    encoded: dict[str, Any] | str = encode_mask(rle_to_mask(rle), mask_format, epsilon)
    return encoded


def automatic_answer(
    records: Sequence[MaskRecord],
    *,
    image_id: str,
    model_id: str,
    width: int,
    height: int,
    mask_format: str,
    polygon_epsilon: float = 0.0,
    warnings: Sequence[str] = (),
) -> bytes:
    """`{"image_id", "model_id", "width", "height", "masks": [records]}`, in the library's order.

    `warnings` (what the library skipped, e.g. `min_mask_region_area` without
    its CUDA extension) is added only when there are some.

    Each record has the fields of `generate()`'s, with the same values: ints
    stay ints and floats are written exactly (orjson writes the shortest text
    that reads back as the same double).
    """
    masks = [_answer_record(record, mask_format, polygon_epsilon) for record in records]
    answer: dict[str, object] = {
        "image_id": image_id,
        "model_id": model_id,
        "width": width,
        "height": height,
        "masks": masks,
    }
    if warnings:
        answer["warnings"] = list(warnings)
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)  # polygons' rings


def _answer_record(record: MaskRecord, mask_format: str, epsilon: float) -> dict[str, Any]:
    """The record's fields in the library's order, its segmentation encoded."""
    fields: dict[str, Any] = {name: getattr(record, name) for name in MASK_RECORD_FIELDS}
    fields["segmentation"] = encode_segmentation(record.segmentation, mask_format, epsilon)
    return fields
