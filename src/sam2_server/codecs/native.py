"""The native API's shapes: COCO RLE, PNG and polygon masks, packed float32 arrays.

One click on a 2-megapixel photo is 79 MB as the Livepeer route's JSON text;
the same answer with binary masks as COCO RLE and the low-res logits as
packed float32 is a few hundred kilobytes, mostly the logits (which a
client needs only to refine with `mask_input`).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import orjson
from PIL import Image
from pycocotools import mask as coco_mask

from sam2_server.codecs.polygons import polygon_arrays
from sam2_server.domain import Prediction

MASK_FORMATS: tuple[str, ...] = ("rle", "png", "polygon")


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """`{"dtype": "float32", "shape": [...], "data": base64}`: exact, a quarter of JSON text.

    Little-endian, C order, so a browser reads it with one `Float32Array`.
    """
    data = np.ascontiguousarray(array, dtype="<f4")
    return {
        "dtype": "float32",
        "shape": list(data.shape),
        "data": base64.b64encode(data.tobytes()).decode("ascii"),
    }


def unpack_array(packed: dict[str, Any]) -> np.ndarray:
    """The inverse of `pack_array`; raises ValueError on anything else."""
    if packed.get("dtype") != "float32":
        raise ValueError(f"dtype must be 'float32', got {packed.get('dtype')!r}")
    shape = packed.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise ValueError("shape must be a list of non-negative integers")
    data = packed.get("data")
    if not isinstance(data, str):
        raise ValueError("data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise ValueError("data is not valid base64") from None
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(raw) != 4 * count:
        raise ValueError(f"data holds {len(raw)} bytes; shape {shape} needs {4 * count}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE exactly as `pycocotools.mask.encode` writes it, `counts` as a string."""
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode("ascii")}


def encode_png(mask: np.ndarray) -> str:
    """A base64 grayscale PNG: 255 inside the mask, 0 outside."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_polygons(mask: np.ndarray, epsilon: float = 0.0) -> dict[str, Any]:
    """`{"size": [h, w], "polygons": [[ring, ...], ...]}`: one polygon per 8-connected
    region, its outer ring then its holes' rings, `[x, y]` at pixel centres.

    `size` is COCO RLE's, so `mask["size"]` reads the same in every format and
    the polygons rasterize back without the answer around them
    (`polygons.rasterize(mask["polygons"], *mask["size"])`: the mask exactly
    with `epsilon` 0; with `epsilon` > 0, every ring is simplified to within
    that many pixels).

    Rings are int32 arrays: write the answer with `orjson.OPT_SERIALIZE_NUMPY`.
    """
    height, width = mask.shape
    return {"size": [height, width], "polygons": polygon_arrays(mask, epsilon=epsilon)}


def encode_mask(mask: np.ndarray, mask_format: str, epsilon: float = 0.0) -> Any:
    """One H x W binary mask in `mask_format` (`epsilon` only simplifies polygons), for
    `orjson.dumps(..., option=orjson.OPT_SERIALIZE_NUMPY)`."""
    if mask_format == "rle":
        return encode_rle(mask)
    if mask_format == "png":
        return encode_png(mask)
    if mask_format == "polygon":
        return encode_polygons(mask, epsilon)
    raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS)}; got {mask_format!r}")


def encode_masks(masks: np.ndarray, mask_format: str, epsilon: float = 0.0) -> Any:
    """C x H x W (or B x C x H x W) binary masks as nested lists of encoded masks."""
    if masks.ndim == 2:
        return encode_mask(masks, mask_format, epsilon)
    return [encode_masks(part, mask_format, epsilon) for part in masks]


def native_answer(
    prediction: Prediction,
    *,
    image_id: str,
    model_id: str,
    width: int,
    height: int,
    mask_format: str,
    return_logits: bool,
    polygon_epsilon: float = 0.0,
    answer_id: str | None = None,
) -> bytes:
    """The segment answer of the native API (and of the Livepeer route with `mask_format`).

    Masks are binary, as `SAM2ImagePredictor.predict(return_logits=False)`
    gives them: the pixels whose logits are > 0. `answer_id` names the logits the
    server keeps for `mask_input` by reference (null when it keeps none).
    """
    answer: dict[str, Any] = {
        "image_id": image_id,
        "model_id": model_id,
        "width": width,
        "height": height,
        "answer_id": answer_id,
        "masks": encode_masks(prediction.masks > 0, mask_format, polygon_epsilon),
        "scores": prediction.scores.astype(np.float32),
    }
    if return_logits:
        answer["logits"] = pack_array(prediction.logits)
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
