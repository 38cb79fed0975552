"""The native API's shapes: COCO RLE and PNG masks, packed float32 arrays.

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

from sam2_server.domain import Prediction

MASK_FORMATS: tuple[str, ...] = ("rle", "png")


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


def encode_masks(masks: np.ndarray, mask_format: str) -> list[Any]:
    """C x H x W (or B x C x H x W) binary masks as nested lists of encoded masks."""
    encode = encode_rle if mask_format == "rle" else encode_png
    if masks.ndim == 2:
        return encode(masks)  # type: ignore[return-value]
    return [encode_masks(part, mask_format) for part in masks]


def native_answer(
    prediction: Prediction,
    *,
    image_id: str,
    model_id: str,
    width: int,
    height: int,
    mask_format: str,
    return_logits: bool,
) -> bytes:
    """The segment answer of the native API (and of the Livepeer route with `mask_format`).

    Masks are binary, as `SAM2ImagePredictor.predict(return_logits=False)`
    gives them: the pixels whose logits are > 0.
    """
    answer: dict[str, Any] = {
        "image_id": image_id,
        "model_id": model_id,
        "width": width,
        "height": height,
        "masks": encode_masks(prediction.masks > 0, mask_format),
        "scores": prediction.scores.astype(np.float32),
    }
    if return_logits:
        answer["logits"] = pack_array(prediction.logits)
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
