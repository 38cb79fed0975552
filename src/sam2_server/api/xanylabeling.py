"""X-AnyLabeling-Server's protocol under /xanylabeling (docs/tools.md).

X-AnyLabeling's "Remote-Server" model (`anylabeling/services/auto_labeling/
remote_server.py`, x-anylabeling-cvhub 4.2.1) appends `/v1/models` and
`/v1/predict` to the server URL it is given and sends the `Token` header
(checked by the guard, api/guard.py). It lists the models and shows the
buttons each one's `widgets` name, then posts the whole image, base64 in a
data URL, with every click. So a click here is the native API's click on
bytes: the image's SHA-256 finds its embedding cached from the second click
on, and only the prompt decoder runs.

What X-AnyLabeling-Server's own SAM2 model does, and how this differs
(CVHub520/X-AnyLabeling-Server `app/models/segment_anything_2.py`):
- all marks of a request are one prompt (every point; several rectangles are
  several objects, each with every point); `multimask_output` off unless asked;
- shapes are `cv2.findContours(RETR_EXTERNAL)` + `approxPolyDP(epsilon_factor
  x perimeter)`, closed (first point repeated), labelled `AUTOLABEL_OBJECT`
  (the label X-AnyLabeling replaces on the next click and renames on
  "Finish"), `replace: false`. Here they come from `codecs.polygons` on the
  native API's best mask: outer boundaries only, since an X-AnyLabeling
  polygon is one ring, so holes are filled. Their server drops rings under
  three points and regions under a fifth of the mean area; here only the
  regions without area as a polygon (under three distinct points: a single
  pixel, a straight one-pixel line) are left out, so the polygons rasterize
  back to the native mask, holes filled, less those;
- errors are `{"success": false, "error": {"code", "message"}}`. Their server
  answers them with HTTP 200; X-AnyLabeling's client reads only `data.shapes`
  and so shows nothing at all for those. Here they carry their HTTP status,
  which the client shows as "Remote server error: <status> ..." on its
  status bar.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from sam2_server.api.admission import Admission
from sam2_server.api.deps import SegmenterDep
from sam2_server.api.errors import headers_of, message_of, status_of
from sam2_server.api.paths import XANYLABELING_PATH
from sam2_server.api.pipeline import prompt_limits
from sam2_server.api.service import Segmenter
from sam2_server.api.tool_pipeline import (
    add_image_bytes,
    segment_bytes,
    segment_image_id,
    start_tool_request,
)
from sam2_server.codecs.polygons import Ring, mask_polygons
from sam2_server.config import Settings
from sam2_server.domain import Prediction, Prompt
from sam2_server.errors import Cancelled, ErrorKind, ImageNotCached, ServiceError
from sam2_server.prompts import PromptLimits, prompt_from_arrays

logger = logging.getLogger(__name__)

# Their SAM2 model's defaults (configs/auto_labeling/segment_anything_2.yaml): the
# client's mask fineness slider maps 1..100 to 0.0001..0.01, and 10 is 0.001.
EPSILON_FACTOR = 0.001
FINENESS_SLIDER = 10
OBJECT_LABEL = "AUTOLABEL_OBJECT"  # X-AnyLabeling's AutoLabelingMode.OBJECT
# The buttons of their SAM2 model: add/remove point, add rectangle, clear, finish
# object, and the mask fineness slider that sets `epsilon_factor`.
WIDGETS: tuple[dict[str, Any], ...] = (
    {"name": "button_add_point", "value": None},
    {"name": "button_remove_point", "value": None},
    {"name": "button_add_rect", "value": None},
    {"name": "button_clear", "value": None},
    {"name": "button_finish_object", "value": None},
    {"name": "mask_fineness_slider", "value": FINENESS_SLIDER},
    {"name": "mask_fineness_value_label", "value": None},
)

# The codes of X-AnyLabeling-Server (app/api/*.py, app/core/middleware.py), and for
# what it has no code for, codes in the same style.
UNAUTHORIZED = "UNAUTHORIZED"
MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
INVALID_IMAGE = "INVALID_IMAGE"
INFERENCE_ERROR = "INFERENCE_ERROR"
INVALID_REQUEST = "INVALID_REQUEST"  # the body is not the protocol's JSON
INVALID_PARAMS = "INVALID_PARAMS"  # marks the model cannot take (a limit, a label)
NOT_FOUND = "NOT_FOUND"  # no such route
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"  # a full queue, a model loading or failed
REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"

_GUARD_CODES = {401: UNAUTHORIZED, 408: REQUEST_TIMEOUT, 413: REQUEST_TOO_LARGE}
_KIND_CODES = {
    ErrorKind.BAD_INPUT: INVALID_PARAMS,
    ErrorKind.NOT_FOUND: NOT_FOUND,
    ErrorKind.BUSY: SERVICE_UNAVAILABLE,
    ErrorKind.TOO_LARGE: REQUEST_TOO_LARGE,
    ErrorKind.UNAVAILABLE: SERVICE_UNAVAILABLE,
    ErrorKind.INTERNAL: INFERENCE_ERROR,
}
# Media types a data URL may declare; the bytes themselves decide the format.
_IMAGE_MEDIA = re.compile(r"(image/[\w.+-]+|application/octet-stream)?", re.ASCII)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")


def xanylabeling_error_body(status: int, message: str) -> bytes:
    """The error shape X-AnyLabeling-Server answers, for the guard's 401/408/413."""
    return _error_body(_GUARD_CODES.get(status, INVALID_REQUEST), message)


class Refusal(Exception):
    """An answer in the protocol's error shape, raised from anywhere in a route."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class XAnyLabelingRoute(APIRoute):
    """Every failure of a route here leaves in the protocol's shape.

    The app's handlers answer in the native API's shape; FastAPI's validation
    of the JSON body, the engine's errors by kind and anything unexpected are
    caught here instead (a client that left still gets the app's 499).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except Refusal as refusal:
                return _error(refusal.status, refusal.code, refusal.message, refusal.headers)
            except RequestValidationError as exc:
                return _error(422, INVALID_REQUEST, _describe_invalid(exc.errors()))
            except ServiceError as exc:
                return _service_error(exc, _KIND_CODES[exc.kind])
            except StarletteHTTPException as exc:  # e.g. a body FastAPI could not read
                code = _GUARD_CODES.get(exc.status_code, INVALID_REQUEST)
                return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))
            except (Cancelled, ClientDisconnect):  # nobody is waiting for an answer
                raise
            except Exception:
                logger.exception("%s %s failed", request.method, request.url.path)
                return _error(500, INFERENCE_ERROR, "Segment-anything-2 pipeline error.")

        return handler


# -- the request ---------------------------------------------------------------------------


class _Lenient(BaseModel):
    """Their schemas ignore fields they do not know (the client sends conf_threshold,
    iou_threshold, text_prompt ... to every model); the known ones are checked strictly."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class Mark(_Lenient):
    """One click: a point `[x, y]` (label 1 add, 0 remove) or a rectangle `[x1, y1, x2, y2]`,
    in pixels of the image."""

    type: Literal["point", "rectangle"]
    data: list[float]
    label: Literal[0, 1] = 1

    @model_validator(mode="after")
    def _arity(self) -> Mark:
        shape = "[x, y]" if self.type == "point" else "[x1, y1, x2, y2]"
        if len(self.data) != (2 if self.type == "point" else 4):
            raise ValueError(f"a {self.type} mark's data is {shape}, got {len(self.data)} numbers")
        return self


class PredictParams(_Lenient):
    marks: list[Mark] = Field(default_factory=list, description="All clicks of the object so far.")
    epsilon_factor: float = Field(
        default=EPSILON_FACTOR,
        ge=0.0,
        le=1.0,
        description="Polygon simplification, a fraction of each ring's perimeter; 0: exact.",
    )
    multimask_output: bool = Field(default=False, description="Pick the best of three candidates.")
    show_masks: bool = Field(default=True, description="Answer the mask's polygons.")
    show_boxes: bool = Field(default=False, description="Answer the mask's bounding rectangle too.")


class PredictBody(_Lenient):
    model: str = Field(..., description="A model id from /v1/models (or a served model id).")
    image: str = Field(..., description="The image: `data:image/...;base64,...` or base64.")
    params: PredictParams = Field(default_factory=lambda: PredictParams())


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorAnswer(BaseModel):
    success: Literal[False] = False
    error: ErrorDetail


_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorAnswer} for code in (400, 401, 404, 408, 413, 422, 500, 503)
}


# -- the routes ----------------------------------------------------------------------------


def build_xanylabeling_router(settings: Settings, admission: Admission) -> APIRouter:
    # The guard checks the token; this declares X-AnyLabeling's header in the schema.
    token = APIKeyHeader(name="Token", auto_error=False)
    router = APIRouter(
        prefix=XANYLABELING_PATH,
        tags=["x-anylabeling"],
        route_class=XAnyLabelingRoute,
        dependencies=[Depends(token)],
        responses=_RESPONSES,
    )
    limits = prompt_limits(settings)

    @router.get("/health", summary="X-AnyLabeling-Server's health answer")
    async def health(segmenter: SegmenterDep) -> Response:
        status = segmenter.status
        loaded = 0
        if status != "LOADING":
            loaded = len(set(segmenter.served_model_ids) - set(segmenter.unavailable()))
        word = {"OK": "healthy", "LOADING": "loading"}.get(status, "unhealthy")
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return _json({"status": word, "models_loaded": loaded, "timestamp": stamp})

    @router.get("/v1/models", summary="The served models, as X-AnyLabeling lists them")
    async def models(segmenter: SegmenterDep) -> Response:
        ids = model_ids(segmenter.served_model_ids)
        return _success({name: _metadata(model) for name, model in ids.items()})

    @router.get("/v1/models/{model_id:path}/info", summary="One model's metadata")
    async def model_info(segmenter: SegmenterDep, model_id: str) -> Response:
        model = _served(segmenter, model_id)
        name = _name_of(segmenter, model)
        return _success({"model_id": name, **_metadata(model)})

    @router.post("/v1/predict", summary="Segment the object the marks point at")
    async def predict(request: Request, segmenter: SegmenterDep, body: PredictBody) -> Response:
        model = start_tool_request(request, segmenter, _served(segmenter, body.model))
        data = await run_in_threadpool(image_bytes, body.image)
        params = body.params
        prompt = _prompt(params.marks, params.multimask_output, limits)
        if prompt is None:  # their model answers no shapes for no marks (after "Clear")
            await _check_image(segmenter, data)
            return _success(_answer([]))
        prediction = await _segment(request, segmenter, admission, model, data, prompt)
        shapes = await run_in_threadpool(
            prediction_shapes,
            prediction,
            epsilon_factor=params.epsilon_factor,
            show_masks=params.show_masks,
            show_boxes=params.show_boxes,
        )
        return _success(_answer(shapes))

    @router.api_route(
        "/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
    )
    async def unknown(rest: str) -> Response:
        hint = (
            "; remove the trailing slash from X-AnyLabeling's server URL"
            if rest.startswith("/")
            else ""
        )
        shown = rest if len(rest) <= 100 else rest[:100] + "..."
        raise Refusal(
            404, NOT_FOUND, f"{XANYLABELING_PATH}/{shown} is not part of the protocol{hint}."
        )

    return router


# -- models --------------------------------------------------------------------------------


def model_ids(served: Sequence[str]) -> dict[str, str]:
    """X-AnyLabeling's id for each served model → the served id.

    Served ids are hub names (`facebook/sam2-hiera-large`) or checkpoint paths;
    the ids here are their URL-safe spelling (a checkpoint by its file name),
    with a digest of the served id appended where two would read the same.
    They depend on the served ids alone, so they survive restarts.
    """
    slugs = {model: _UNSAFE.sub("-", _short_name(model)).strip("-.") or "model" for model in served}
    repeated = Counter(slugs.values())
    ids: dict[str, str] = {}
    for model in served:
        slug = slugs[model]
        if repeated[slug] > 1:
            slug = f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"
        ids[slug] = model
    return ids


def _short_name(model: str) -> str:
    """A checkpoint path's file name; a hub id as it is."""
    path_like = model.startswith(("/", ".", "~")) or "\\" in model
    if path_like or model.lower().endswith(_CHECKPOINT_SUFFIXES):
        return re.split(r"[\\/]", model.rstrip("\\/"))[-1]
    return model


def _served(segmenter: Segmenter, name: str) -> str:
    """The served model an X-AnyLabeling id (or a served id itself) names, else 404."""
    served = segmenter.served_model_ids
    model = model_ids(served).get(name) or (name if name in served else None)
    if model is None:
        shown = name if len(name) <= 200 else name[:200] + "..."
        known = ", ".join(model_ids(served))
        raise Refusal(404, MODEL_NOT_FOUND, f"Model '{shown}' not loaded; this server has {known}.")
    return model


def _name_of(segmenter: Segmenter, model: str) -> str:
    return next(
        name for name, served in model_ids(segmenter.served_model_ids).items() if served == model
    )


def _metadata(model: str) -> dict[str, Any]:
    """What their `BaseModel.get_metadata` answers for a SAM2 model (any served model: its
    name says which, SAM 2 or EdgeTAM)."""
    return {
        "display_name": f"{_short_name(model)} (sam2-server)",
        "widgets": [dict(widget) for widget in WIDGETS],
        "params": {"model_id": model, "epsilon_factor": EPSILON_FACTOR, "multimask_output": False},
        "capabilities": {},
        "batch_processing_mode": "default",
    }


# -- the image -----------------------------------------------------------------------------


def image_bytes(image: str) -> bytes:
    """The bytes of a `data:image/...;base64,...` URL (or of bare base64), else INVALID_IMAGE.

    The body holding it is capped by MAX_REQUEST_BYTES before it is read (the
    guard); the decoded pixels by MAX_IMAGE_PIXELS when the header is read.
    """
    payload = image
    if image[:5].lower() == "data:":
        header, comma, payload = image[5:].partition(",")
        media, _, encoding = header.rpartition(";")
        if not comma or encoding.strip().lower() != "base64":
            raise Refusal(
                400, INVALID_IMAGE, "image: expected a base64 data URL (data:image/...;base64,...)."
            )
        media_type = media.split(";")[0].strip().lower()
        if not _IMAGE_MEDIA.fullmatch(media_type):
            raise Refusal(
                400,
                INVALID_IMAGE,
                f"image: the data URL's type {media_type[:60]!r} is not an image.",
            )
    compact = "".join(payload.split())  # line breaks some encoders add
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(400, INVALID_IMAGE, "image: the data URL's payload is not base64.") from None
    if not data:
        raise Refusal(400, INVALID_IMAGE, "image: the image is empty.")
    return data


def _image_refusal(exc: ServiceError) -> Exception:
    """An unreadable or oversize image is their INVALID_IMAGE; other failures keep their kind."""
    if exc.kind in (ErrorKind.BAD_INPUT, ErrorKind.TOO_LARGE):
        return Refusal(status_of(exc), INVALID_IMAGE, message_of(exc), headers_of(exc))
    return exc


async def _check_image(segmenter: Segmenter, data: bytes) -> None:
    try:
        await run_in_threadpool(segmenter.image_size, data)
    except ServiceError as exc:
        raise _image_refusal(exc) from None


# -- the click -----------------------------------------------------------------------------


def _prompt(marks: list[Mark], multimask_output: bool, limits: PromptLimits) -> Prompt | None:
    """All marks as one prompt, as their model builds it; None without marks.

    Every point goes to every object; each rectangle is one object (their model
    passes several boxes as a batch, the points repeated per box). A rectangle
    is taken corner to corner whichever way it was drawn, and its label is
    ignored, as theirs does: SAM2 has no negative box.
    """
    points = [mark.data for mark in marks if mark.type == "point"]
    labels = [mark.label for mark in marks if mark.type == "point"]
    boxes = [_box(mark.data) for mark in marks if mark.type == "rectangle"]
    if not points and not boxes:
        return None
    coords = np.asarray(points, dtype=np.float64) if points else None
    point_labels = np.asarray(labels, dtype=np.int64) if points else None
    box = None
    if boxes:
        box = np.asarray(boxes[0] if len(boxes) == 1 else boxes, dtype=np.float64)
        if len(boxes) > 1 and coords is not None and point_labels is not None:
            coords = np.repeat(coords[None], len(boxes), axis=0)
            point_labels = np.repeat(point_labels[None], len(boxes), axis=0)
    return prompt_from_arrays(
        coords=coords,
        labels=point_labels,
        boxes=box,
        mask=None,
        multimask_output=multimask_output,
        return_logits=False,  # binary masks, thresholded as the native API's are
        normalize_coords=True,
        limits=limits,
    )


def _box(data: list[float]) -> list[float]:
    x1, y1, x2, y2 = data
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


async def _segment(
    request: Request,
    segmenter: Segmenter,
    admission: Admission,
    model: str,
    data: bytes,
    prompt: Prompt,
) -> Prediction:
    """`tool_pipeline.segment_bytes` in its two steps, so that an image it cannot read
    is told apart (INVALID_IMAGE) from a prompt it cannot take."""
    try:
        info = await add_image_bytes(request, segmenter, admission, model, data)
    except ServiceError as exc:
        raise _image_refusal(exc) from None
    try:
        _, prediction = await segment_image_id(
            request, segmenter, admission, model, info.image_id, prompt
        )
    except ImageNotCached:  # evicted between the steps (a full cache under load)
        _, prediction = await segment_bytes(request, segmenter, admission, model, data, prompt)
    return prediction


def prediction_shapes(
    prediction: Prediction, *, epsilon_factor: float, show_masks: bool, show_boxes: bool
) -> list[dict[str, Any]]:
    """Each object's best mask (nonzero: a binary mask, or logits > 0) as X-AnyLabeling shapes."""
    masks, scores = prediction.masks, prediction.scores
    if masks.ndim == 3:  # one object
        masks, scores = masks[None], scores[None]
    shapes: list[dict[str, Any]] = []
    for object_masks, object_scores in zip(masks, scores, strict=True):
        # Their Shape schema holds a score within [0, 1]; SAM2's IoU head can stray past.
        score = min(max(float(object_scores[0]), 0.0), 1.0)
        rings = [
            polygon[0]
            for polygon in mask_polygons(
                object_masks[0] > 0, epsilon_factor=epsilon_factor, holes=False
            )
        ]
        closed = [points for points in map(_closed, rings) if points is not None]
        if show_masks:
            shapes.extend(_shape("polygon", points, score) for points in closed)
        if show_boxes and closed:
            xs = [x for points in closed for x, _ in points]
            ys = [y for points in closed for _, y in points]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            if x0 < x1 and y0 < y1:
                corners = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
                shapes.append(_shape("rectangle", corners, score))
    return shapes


def _closed(ring: Ring) -> Ring | None:
    """The ring as X-AnyLabeling keeps it, closed as their shapes are; None without area.

    Its `Shape.add_point` drops any point equal to the first (that closes the
    polygon), so a contour that passes through its first point again (a pinch,
    where a region touches itself at a corner) would lose that vertex and fill
    background: the ring starts at a point it visits once. A region with fewer
    than three distinct points (a single pixel, a straight one-pixel line) has
    no area as a polygon; their server drops such rings, and so does this one.
    """
    points = [(x, y) for x, y in ring]
    visits = Counter(points)
    if len(visits) < 3:
        return None
    start = next((i for i, point in enumerate(points) if visits[point] == 1), 0)
    turned = ring[start:] + ring[:start]
    return [*turned, turned[0]]


def _shape(shape_type: str, points: list[list[int]], score: float) -> dict[str, Any]:
    """Every field of their `Shape` schema, as it serialises."""
    return {
        "label": OBJECT_LABEL,
        "shape_type": shape_type,
        "points": [[float(x), float(y)] for x, y in points],
        "score": score,
        "attributes": {},
        "description": None,
        "difficult": False,
        "direction": 0,
        "flags": None,
        "group_id": None,
        "kie_linking": [],
    }


def _answer(shapes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"shapes": shapes, "description": "", "replace": False}


# -- answers -------------------------------------------------------------------------------


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _success(data: Any) -> Response:
    return _json({"success": True, "data": data})


def _error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"success": False, "error": {"code": code, "message": message}})


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(_error_body(code, message), status, headers, media_type="application/json")


def _service_error(exc: ServiceError, code: str) -> Response:
    status = status_of(exc)
    if status >= 500:
        logger.error("x-anylabeling: %s", exc.message)
    return _error(status, code, message_of(exc), headers_of(exc))


def _describe_invalid(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors in one line: where, and what is wrong (never the input)."""
    parts = []
    for error in list(errors)[:5]:
        if error.get("type") == "json_invalid":
            parts.append(f"the body is not JSON ({error.get('ctx', {}).get('error', 'invalid')})")
            continue
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "invalid"))
        parts.append(f"{location}: {message}" if location else message)
    more = len(errors) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
