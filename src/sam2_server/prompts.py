"""Prompt fields → a validated `Prompt`, or a 400 that names the field and the shape.

The reference parses each array field with `np.array(json.loads(s))` and
hands whatever comes out to the model, which then fails (500) or, worse,
succeeds on the wrong shape. Here every shape, number and work limit is
checked before inference, by one set of rules for every surface: the
Livepeer route's form text, the native API's JSON, the CLI. It lives outside
`api/` so that the CLI's in-process mode needs no HTTP stack.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam2_server.domain import AutomaticParams, Prompt
from sam2_server.errors import bad_request

MASK_SHAPE = (1, 256, 256)

# The largest magnitude each field may hold. Anything past float32's range
# silently became inf and then `null` in every answer. Coordinates are further
# multiplied by up to 1024 inside SAM2 (and by the image size when not
# normalized), so they get a bound far past any image side but safe after that;
# mask logits come back from SAM2 clamped to +-32 and a larger input only
# overflows the mask encoder.
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_COORDINATE = 1e9
MAX_MASK_LOGIT = 1e6


@dataclass(frozen=True)
class PromptLimits:
    """Bounds on the work one prompt can ask for (see config.Settings)."""

    max_points: int = 256  # per object
    max_objects: int = 64  # boxes or point lists
    max_total_points: int = 4096  # over all objects


def parse_json_array(value: str | None, name: str) -> np.ndarray | None:
    """A JSON array field as a numpy array; None when missing or empty.

    Uses a JSON parser (not Python literal evaluation), with the reference's
    message for text that is not JSON. Nested lists of unequal length, and
    anything that is not a number, are rejected here rather than becoming a
    numpy object array.
    """
    if value is None or value.strip() == "":
        return None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise bad_request(f"Error parsing JSON for {name}: {exc}") from None
    except RecursionError:
        raise bad_request(f"Error parsing JSON for {name}: nested too deeply") from None
    if not isinstance(data, list):
        raise bad_request(
            f"Error parsing JSON for {name}: expected a JSON array, got {value[:40]!r}"
        )
    return array_from_json(data, name)


def array_from_json(data: list[Any], name: str) -> np.ndarray:
    """Decoded JSON (nested lists of numbers) as a float64 array, or a 400 naming `name`."""
    if not _numbers_only(data):
        raise bad_request(f"Error parsing JSON for {name}: the array must contain only numbers")
    try:
        array = np.array(data, dtype=np.float64)
    except ValueError:
        raise bad_request(
            f"Error parsing JSON for {name}: nested lists have different lengths (ragged array)"
        ) from None
    except OverflowError:
        raise bad_request(
            f"{name} must contain only finite numbers (no NaN or Infinity)."
        ) from None
    check_numbers(array, name)
    return array


def check_numbers(array: np.ndarray, name: str) -> None:
    """Finite, and within float32's range: SAM2 computes in float32."""
    if not np.isfinite(array).all():
        raise bad_request(f"{name} must contain only finite numbers (no NaN or Infinity).")
    if array.size and float(np.abs(array).max()) > FLOAT32_MAX:
        raise bad_request(
            f"{name} holds a number too large for float32 (|x| > 3.4e38), which SAM2 computes in."
        )


def _numbers_only(data: Any) -> bool:
    """True for nested lists of int/float (bool excluded: `true` is not a coordinate)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, int | float):
            return False
    return True


def _shape(array: np.ndarray) -> str:
    return "x".join(str(n) for n in array.shape) or "scalar"


def build_prompt(
    *,
    point_coords: str | None,
    point_labels: str | None,
    box: str | None,
    mask_input: str | None,
    multimask_output: bool,
    return_logits: bool,
    normalize_coords: bool,
    limits: PromptLimits | None = None,
) -> Prompt:
    """Parse every array field, then check the shapes against each other and the limits."""
    return prompt_from_arrays(
        coords=parse_json_array(point_coords, "point_coords"),
        labels=parse_json_array(point_labels, "point_labels"),
        boxes=parse_json_array(box, "box"),
        mask=parse_json_array(mask_input, "mask_input"),
        multimask_output=multimask_output,
        return_logits=return_logits,
        normalize_coords=normalize_coords,
        limits=limits,
    )


def prompt_from_arrays(
    *,
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    boxes: np.ndarray | None,
    mask: np.ndarray | None,
    multimask_output: bool,
    return_logits: bool,
    normalize_coords: bool,
    limits: PromptLimits | None = None,
) -> Prompt:
    """Arrays from any surface (form text, JSON body) → a checked Prompt, one set of rules.

    The field names in messages are the Livepeer route's; the native API
    documents which of its fields they correspond to.
    """
    limits = limits or PromptLimits()
    num_boxes = _check_box(boxes)
    if coords is not None or labels is not None:
        coords, labels = _check_points(coords, labels, num_boxes)
    if mask is not None:
        mask = _check_mask(mask, coords, num_boxes)
    _check_work(coords, num_boxes, limits)
    _check_magnitude(coords, "point_coords", MAX_COORDINATE)
    _check_magnitude(boxes, "box", MAX_COORDINATE)
    _check_magnitude(mask, "mask_input", MAX_MASK_LOGIT)

    return Prompt(
        point_coords=coords,
        point_labels=labels,
        box=boxes,
        mask_input=mask,
        multimask_output=multimask_output,
        return_logits=return_logits,
        normalize_coords=normalize_coords,
    )


def _check_box(boxes: np.ndarray | None) -> int:
    """Number of boxes: a plain [x0, y0, x1, y1] is one, a B x 4 list is B."""
    if boxes is None:
        return 0
    if boxes.shape == (4,):
        return 1
    if boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.shape[0] >= 1:
        return int(boxes.shape[0])
    raise bad_request(
        f"box must be [x0, y0, x1, y1] (4 numbers) or a list of B such boxes (Bx4); "
        f"got shape {_shape(boxes)}."
    )


def _check_points(
    coords: np.ndarray | None, labels: np.ndarray | None, num_boxes: int
) -> tuple[np.ndarray, np.ndarray]:
    if coords is None:
        raise bad_request("point_labels was given without point_coords.")
    if labels is None:
        raise bad_request("point_labels is required with point_coords (one label per point).")
    if coords.ndim == 2 and coords.shape[1] == 2 and coords.shape[0] >= 1:
        if num_boxes > 1:
            raise bad_request(
                f"with {num_boxes} boxes, point_coords must hold one point list per box "
                f"({num_boxes}xNx2); got shape {_shape(coords)}."
            )
    elif coords.ndim == 3 and coords.shape[2] == 2 and coords.shape[1] >= 1:
        objects = coords.shape[0]
        if num_boxes not in (0, objects) or objects == 0:
            raise bad_request(
                f"point_coords has {objects} point lists but box has {num_boxes} boxes; "
                "give one point list per box."
            )
    else:
        raise bad_request(
            f"point_coords must be a list of [x, y] points (Nx2), or one such list per "
            f"object (BxNx2); got shape {_shape(coords)}."
        )
    if labels.shape != coords.shape[:-1]:
        expected = "x".join(str(n) for n in coords.shape[:-1])
        raise bad_request(
            f"point_labels must have one label per point (shape {expected}); "
            f"got shape {_shape(labels)}."
        )
    if not np.isin(labels, (0, 1)).all():
        raise bad_request("point_labels must be 1 (foreground) or 0 (background).")
    return coords, labels.astype(np.int64)


def _check_mask(mask: np.ndarray, coords: np.ndarray | None, num_boxes: int) -> np.ndarray:
    if mask.shape != MASK_SHAPE:
        raise bad_request(
            "mask_input must be 1x256x256 low-resolution logits (one of an earlier answer's "
            f"logits, wrapped in a list); got shape {_shape(mask)}."
        )
    objects = max(num_boxes, coords.shape[0] if coords is not None and coords.ndim == 3 else 1)
    if objects > 1:
        raise bad_request("mask_input can only be combined with a single object (one box).")
    return mask.astype(np.float32)


def _check_work(coords: np.ndarray | None, num_boxes: int, limits: PromptLimits) -> None:
    """Objects and points cost memory and time far beyond their bytes: bound them.

    Each object is a full-resolution answer (1000 boxes on a small image grew
    the process past 20 GB), and points attend to each other (quadratic).
    """
    objects = max(num_boxes, coords.shape[0] if coords is not None and coords.ndim == 3 else 1)
    if objects > limits.max_objects:
        field = "box" if num_boxes >= objects else "point_coords"
        raise bad_request(
            f"{field} asks for {objects} objects; this server segments at most "
            f"{limits.max_objects} objects per request (MAX_OBJECTS): split the request."
        )
    if coords is None:
        return
    per_object = coords.shape[-2]
    if per_object > limits.max_points:
        raise bad_request(
            f"point_coords has {per_object} points per object; this server takes at most "
            f"{limits.max_points} (MAX_POINTS)."
        )
    total = per_object * (coords.shape[0] if coords.ndim == 3 else 1)
    if total > limits.max_total_points:
        raise bad_request(
            f"point_coords has {total} points over all objects; this server takes at most "
            f"{limits.max_total_points} per request (MAX_TOTAL_POINTS): split the request."
        )


def _check_magnitude(array: np.ndarray | None, name: str, bound: float) -> None:
    if array is not None and array.size and float(np.abs(array).max()) > bound:
        raise bad_request(f"{name} values must lie within +-{bound:g}.")


# -- automatic masks -------------------------------------------------------------------------


@dataclass(frozen=True)
class AutomaticLimits:
    """A server's bounds on the generator parameters that multiply work (None: unbounded)."""

    max_points_per_side: int | None = None
    max_points_per_batch: int | None = None
    max_crop_layers: int | None = None
    max_total_points: int | None = None  # grid points over the image and every crop


_INT32_MAX = 2**31 - 1
_UNIT_INTERVAL = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh")


def check_automatic(
    params: AutomaticParams, limits: AutomaticLimits | None = None
) -> AutomaticParams:
    """The generator's parameters in their meaningful ranges and within the server's bounds,
    or a 400 naming the first that is not: one set of rules for the API and the CLI."""
    limits = limits or AutomaticLimits()
    bounds = (
        ("points_per_side", 1, limits.max_points_per_side, "MAX_POINTS_PER_SIDE"),
        ("points_per_batch", 1, limits.max_points_per_batch, "MAX_POINTS_PER_BATCH"),
        ("crop_n_layers", 0, limits.max_crop_layers, "MAX_CROP_LAYERS"),
    )
    for name, low, high, setting in bounds:
        _int_within(name, getattr(params, name), low, high, setting)
    for name in _UNIT_INTERVAL:
        _float_within(name, getattr(params, name), 0.0, 1.0)
    # Both are logit values: past the logits' own range (MAX_MASK_LOGIT, the bound of
    # mask_input too) every mask is empty or full, which no one means to ask for.
    _float_within("stability_score_offset", params.stability_score_offset, 0.0, MAX_MASK_LOGIT)
    _float_within("mask_threshold", params.mask_threshold, -MAX_MASK_LOGIT, MAX_MASK_LOGIT)
    ratio = _finite("crop_overlap_ratio", params.crop_overlap_ratio)
    if not 0.0 <= ratio < 1.0:
        raise bad_request(f"crop_overlap_ratio must be at least 0 and below 1; got {ratio!r}.")
    factor = params.crop_n_points_downscale_factor
    if factor < 1:
        raise bad_request(f"crop_n_points_downscale_factor must be at least 1; got {factor}.")
    # The library samples points_per_side / factor**layer points per side in each crop
    # layer; a layer left with none would divide by zero inside it.
    if params.points_per_side // factor**params.crop_n_layers < 1:
        raise bad_request(
            "crop_n_points_downscale_factor leaves the last crop layer without points: "
            f"points_per_side / crop_n_points_downscale_factor**crop_n_layers = "
            f"{params.points_per_side} / {factor}**{params.crop_n_layers} must be at least 1."
        )
    total = automatic_points(params)
    if limits.max_total_points is not None and total > limits.max_total_points:
        raise bad_request(
            f"These parameters prompt {total} grid points over the image and its crops; this "
            f"server runs at most {limits.max_total_points} per request (MAX_AUTOMATIC_POINTS): "
            "lower points_per_side or crop_n_layers, or raise crop_n_points_downscale_factor."
        )
    area = params.min_mask_region_area
    if area < 0:
        raise bad_request(f"min_mask_region_area must be at least 0; got {area}.")
    if area > _INT32_MAX:
        raise bad_request(f"min_mask_region_area must be at most {_INT32_MAX}.")
    return params


def automatic_points(params: AutomaticParams) -> int:
    """Grid points the generator prompts: layer i has 4**i crops of (side // factor**i)**2
    points each (sam2's `build_all_layer_point_grids` and `generate_crop_boxes`)."""
    return sum(
        4**layer * (params.points_per_side // params.crop_n_points_downscale_factor**layer) ** 2
        for layer in range(params.crop_n_layers + 1)
    )


def automatic_batches(params: AutomaticParams) -> int:
    """Batches of points the generator runs: each crop's grid points, `points_per_batch`
    at a time (the library's `batch_iterator` over every crop of every layer)."""
    batches = 0
    for layer in range(params.crop_n_layers + 1):
        points = (params.points_per_side // params.crop_n_points_downscale_factor**layer) ** 2
        batches += 4**layer * math.ceil(points / params.points_per_batch)
    return batches


def _int_within(name: str, value: int, low: int, high: int | None, setting: str) -> None:
    if value < low:
        raise bad_request(f"{name} must be at least {low}; got {value}.")
    if high is not None and value > high:
        raise bad_request(
            f"{name} {value} is over this server's limit of {high} ({setting}); "
            "the work grows with it."
        )


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise bad_request(f"{name} must be a finite number; got {value!r}.")
    return value


def _float_within(name: str, value: float, low: float, high: float) -> None:
    _finite(name, value)
    if not low <= value <= high:
        if math.isinf(high):
            raise bad_request(f"{name} must be at least {low:g}; got {value!r}.")
        raise bad_request(f"{name} must be between {low:g} and {high:g}; got {value!r}.")
