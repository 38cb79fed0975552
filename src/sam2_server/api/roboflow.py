"""Roboflow inference's SAM2 routes, /sam2/embed_image and /sam2/segment_image (docs/tools.md).

Roboflow's `inference-sdk` (`InferenceHTTPClient.sam2_segment_image`) and
anything written against Roboflow's inference server call these two routes;
here they run on the server's engine, cache and admission, so for the same
image and prompt a prediction's mask is the native API's best mask.

Followed from Roboflow's own source (`inference/core/entities/requests/sam2.py`,
`.../responses/sam2.py`, `inference/models/sam2/segment_anything2.py`,
`inference/core/interfaces/http/error_handlers.py`):

- a request is `{image: {type, value}, image_id, prompts, multimask_output,
  format, sam2_version_id, save_logits_to_cache, load_logits_from_cache}`;
  `prompts` may be `{"prompts": [...]}`, a flat list or one prompt. A box is
  centre-based (`x`, `y`, `width`, `height`), points are `{x, y, positive}`;
- one prediction per prompt: its most confident mask and that mask's score,
  whatever `multimask_output` says; no prompt at all is one prediction, the
  model's unprompted mask;
- `format`: `json` (polygons: the outer contours OpenCV finds, RETR_EXTERNAL
  with CHAIN_APPROX_SIMPLE, so holes are filled as in Roboflow's answer),
  `rle` (COCO RLE as pycocotools writes it), `binary` (an npz body: `masks`,
  the best masks' logits, and `low_res_masks`);
- errors are `{"message": ...}` with the status Roboflow's server uses.

Where this server differs, it says so in docs/tools.md: image ids it makes
are the SHA-256 of the image's bytes (Roboflow: an md5 of the pixels); an id
a client chose stays usable while the embedding is cached, but when a request
carries the image, the image decides (Roboflow would answer from whatever the
id named before); `sam2_version_id` picks a served model of that size or the
default model, and the answer names the model (`model_id`, `X-Model-Id`);
`numpy` images are refused (Roboflow unpickles them).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from sam2_server.api.admission import Admission
from sam2_server.api.deps import SegmenterDep
from sam2_server.api.downloads import Downloader, RememberedUrls
from sam2_server.api.errors import headers_of, status_of
from sam2_server.api.paths import ROBOFLOW_PATH
from sam2_server.api.pipeline import prompt_limits
from sam2_server.api.service import Segmenter
from sam2_server.api.tool_pipeline import add_image_bytes, segment_image_id, start_tool_request
from sam2_server.codecs.native import encode_rle
from sam2_server.codecs.polygons import mask_polygons
from sam2_server.config import Settings
from sam2_server.domain import IMAGE_ID_PATTERN, Prediction, Prompt
from sam2_server.errors import Cancelled, ErrorKind, ImageNotCached, ServiceError, bad_request
from sam2_server.prompts import PromptLimits, prompt_from_arrays

logger = logging.getLogger(__name__)

# Roboflow's version ids (their SegmentAnything2's config table) → the size in a model's name.
VERSION_SIZES: dict[str, str] = {
    "hiera_tiny": "tiny",
    "hiera_small": "small",
    "hiera_b_plus": "base_plus",
    "hiera_large": "large",
}
# A served model's size and family from its name: `facebook/sam2.1-hiera-base-plus`,
# `sam2_hiera_large.pt`, `/models/sam2.1_hiera_tiny.pt`.
_ARCHITECTURE = re.compile(r"sam2(\.1)?[-_]hiera[-_](tiny|small|base[-_]plus|large)(?![a-z])")
_substituted: set[str] = set()  # version ids already logged as answered by the default model
# Roboflow strips this prefix from a base64 image (their BASE64_DATA_TYPE_PATTERN).
_DATA_URL = re.compile(r"^data:image/[a-z]+;base64,")
# Image types Roboflow's server knows; only base64 and url are served here.
_IMAGE_TYPES = ("base64", "url", "numpy", "numpy_object", "file", "multipart", "pil")

CLIENT_IDS = 4096  # client-chosen image ids remembered (per server process)
MAX_CLIENT_ID = 256  # characters in a client-chosen image id
LOGITS_PROMPTS = 256  # low-res logits kept for load_logits_from_cache: 256 KiB each
NPZ_TYPE = "application/octet-stream"  # what Roboflow's server sends the binary format as


# -- the request, as Roboflow's models define it ---------------------------------------------


class Box(BaseModel):
    """Centre-based, in pixels of the image."""

    model_config = ConfigDict(allow_inf_nan=False)

    x: float
    y: float
    width: float
    height: float


class Point(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    x: float
    y: float
    positive: bool


class Sam2Prompt(BaseModel):
    """One object: a box and/or points."""

    box: Box | None = None
    points: list[Point] | None = None


class Sam2PromptSet(BaseModel):
    prompts: list[Sam2Prompt] | None = None


class InferenceRequestImage(BaseModel):
    type: str = Field(..., description="`base64` or `url` (`numpy` is refused).")
    value: Any = Field(None, description="The base64 text (a data URL prefix is allowed) or URL.")


class Sam2EmbeddingRequest(BaseModel):
    """Embed an image once; segment it later by `image_id`."""

    api_key: str | None = Field(None, description="This server's token (or `?api_key=`).")
    sam2_version_id: str | None = Field(
        None,
        description="hiera_tiny, hiera_small, hiera_b_plus, hiera_large, or a served model id; "
        "a size this server does not serve is answered by its default model.",
    )
    image: InferenceRequestImage | None = None
    image_id: str | None = Field(
        None,
        max_length=MAX_CLIENT_ID,
        description="An id to name this image by later; default: the SHA-256 of its bytes.",
    )


class Sam2SegmentationRequest(Sam2EmbeddingRequest):
    """Segment an image (sent, or embedded before and named by `image_id`)."""

    prompts: Sam2PromptSet = Field(
        default_factory=Sam2PromptSet,
        description='`{"prompts": [...]}`, a list of prompts, or one prompt.',
    )
    multimask_output: bool = True
    format: Literal["json", "rle", "binary"] | None = "json"
    save_logits_to_cache: bool = False
    load_logits_from_cache: bool = False

    @field_validator("prompts", mode="before")
    @classmethod
    def _coerce_prompts(cls, value: Any) -> Any:
        """As Roboflow's request does: None, `{"prompts": [...]}`, a flat list, or one prompt."""
        if value is None:
            return {"prompts": None}
        if isinstance(value, list):
            return {"prompts": value}
        if isinstance(value, dict) and "prompts" not in value:
            return {"prompts": [value]}
        return value


# -- the answer --------------------------------------------------------------------------------


class Sam2EmbeddingResponse(BaseModel):
    image_id: str = Field(..., description="The id to segment this image by.")
    time: float = Field(..., description="Seconds this request took.")
    model_id: str = Field(..., description="The served model that embedded it.")


class Sam2SegmentationPrediction(BaseModel):
    masks: list[list[list[int]]] | dict[str, Any] = Field(
        ...,
        description="json: the mask's outer contours, each a list of [x, y] pixels; "
        "rle: COCO RLE {size: [h, w], counts}.",
    )
    confidence: float = Field(..., description="The predicted IoU of this (the best) mask.")
    format: str = Field(..., description="`polygon` or `rle`.")


class Sam2SegmentationResponse(BaseModel):
    predictions: list[Sam2SegmentationPrediction]
    time: float = Field(..., description="Seconds this request took.")
    model_id: str = Field(..., description="The served model that answered.")


class RoboflowError(BaseModel):
    message: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": RoboflowError} for code in (400, 401, 404, 408, 413, 422, 500, 503)
}


def roboflow_error_body(status: int, message: str) -> bytes:
    """Roboflow's server's error shape, `{"message": ...}` (the SDK shows `message`)."""
    return orjson.dumps({"message": message})


# -- errors in Roboflow's shape, validation included ------------------------------------------


class RoboflowRoute(APIRoute):
    """Every error of these routes leaves as `{"message": ...}`, body validation included.

    Roboflow's server answers its own errors so (`with_route_exceptions`);
    FastAPI's 422 for a malformed body keeps its `detail` list here, with a
    `message` the SDK shows in its exception.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except ServiceError as exc:
                if status_of(exc) >= 500:
                    logger.error("%s %s: %s", request.method, request.url.path, exc.message)
                return _json_error(status_of(exc), exc.message, headers_of(exc))
            except (Cancelled, StarletteHTTPException):
                raise
            except Exception:
                logger.exception("%s %s failed", request.method, request.url.path)
                return _json_error(500, "Internal error.")

        return route


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(roboflow_error_body(status, message), status, headers, "application/json")


def _validation_error(exc: RequestValidationError) -> Response:
    """422: which fields are wrong, without echoing the input (it may be a whole image)."""
    errors: list[dict[str, Any]] = [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
        if isinstance(error, dict)
    ]
    shown = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in errors[:5]
    )
    body = orjson.dumps({"message": f"Invalid request: {shown}", "detail": errors})
    return Response(body, 422, media_type="application/json")


# -- which served model answers ---------------------------------------------------------------


def served_model(segmenter: Segmenter, version: str | None) -> str:
    """The served model for Roboflow's `sam2_version_id`.

    A served model id names itself. A Roboflow version id picks a served
    model of that size (SAM 2 before SAM 2.1, as Roboflow serves SAM 2's
    weights); when none is served, the default model answers: the SDK sends
    `hiera_tiny` on every call unless told otherwise, so a refusal would fail
    every default call on a server that serves another size. The answer names
    the model that answered. Anything else is a 400 listing what is accepted.
    """
    served = segmenter.served_model_ids
    if not version or version in served:
        return version or segmenter.default_model_id
    size = VERSION_SIZES.get(version)
    if size is None:
        shown = version if len(version) <= 100 else version[:100] + "..."
        raise bad_request(
            f"sam2_version_id must be one of {', '.join(VERSION_SIZES)} or a model this "
            f"server serves ({', '.join(served)}); got {shown!r}."
        )
    matches = [(family, model) for model in served for family in _family(model, size)]
    if matches:
        return min(matches, key=lambda match: match[0])[1]  # "" (SAM 2) before ".1"
    if version not in _substituted:
        _substituted.add(version)
        logger.info(
            "sam2_version_id %s: no served model of that size; the default model %s answers",
            version,
            segmenter.default_model_id,
        )
    return segmenter.default_model_id


def _family(model: str, size: str) -> list[str]:
    """[""] for SAM 2, [".1"] for SAM 2.1 when `model`'s name says it is of `size`."""
    found = _ARCHITECTURE.search(model.lower().rsplit("/", 1)[-1])
    if found is None or found.group(2).replace("-", "_") != size:
        return []
    return [found.group(1) or ""]


# -- images: bytes, URLs and ids --------------------------------------------------------------


class ClientIds:
    """Image ids clients chose → the SHA-256 ids of the images, per model; the least
    recently used is forgotten past `capacity`."""

    def __init__(self, capacity: int = CLIENT_IDS) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[tuple[str, str], str] = OrderedDict()

    def get(self, model: str, client_id: str) -> str | None:
        image_id = self._ids.get((model, client_id))
        if image_id is not None:
            self._ids.move_to_end((model, client_id))
        return image_id

    def put(self, model: str, client_id: str, image_id: str) -> None:
        self._ids[(model, client_id)] = image_id
        self._ids.move_to_end((model, client_id))
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


def _image_error(cause: str) -> ServiceError:
    """Roboflow's InputImageLoadError message, a 400."""
    return bad_request(f"Could not load input image. Cause: {cause}")


def decode_base64(value: Any) -> bytes:
    """A base64 image as Roboflow decodes it: a data-URL prefix stripped, lax base64."""
    if not isinstance(value, str):
        raise _image_error("a base64 image's value must be a string.")
    try:
        data = base64.b64decode(_DATA_URL.sub("", value, count=1))
    except (binascii.Error, ValueError):
        raise _image_error("Malformed base64 input image.") from None
    if not data:
        raise _image_error("Empty image payload.")
    return data


@dataclass
class Image:
    """The image a request names: its SHA-256 id once known, and how to get its bytes
    again (None: the request named it by id only)."""

    image_id: str
    reload: Callable[[], Awaitable[str]] | None


class Images:
    """Turns a request's `image` / `image_id` into an embedded image on one model."""

    def __init__(self, settings: Settings, admission: Admission) -> None:
        self.admission = admission
        self.downloader = Downloader(settings)
        self.urls = RememberedUrls()
        self.ids = ClientIds()

    async def resolve(
        self,
        request: Request,
        segmenter: Segmenter,
        model: str,
        image: InferenceRequestImage | None,
        client_id: str | None,
    ) -> Image:
        """Embedded (or found cached); a client's id now names it. 400/404 when it cannot be."""
        if image is None:
            if not client_id:
                raise bad_request("Must provide either image or cached image_id.")
            return Image(await self._known(segmenter, model, client_id), None)
        kind = image.type.lower()
        if kind == "base64":
            data = await run_in_threadpool(decode_base64, image.value)

            async def add() -> str:
                return await self._add(request, segmenter, model, data)

        elif kind == "url":
            url = image.value
            if not isinstance(url, str):
                raise _image_error("a url image's value must be a string.")

            async def add() -> str:
                data = await self.downloader.fetch(url)
                image_id = await self._add(request, segmenter, model, data)
                self.urls.put(model, url, image_id)
                return image_id

        elif kind in _IMAGE_TYPES:
            why = (
                " (a numpy image is a pickle, and unpickling runs code)" if "numpy" in kind else ""
            )
            raise _image_error(
                f"images of type {kind!r} are not accepted by this server{why}; send the image "
                "as base64 or url."
            )
        else:
            raise bad_request("Image declaration contains not recognised image type.")
        remembered = self.urls.get(model, image.value) if kind == "url" else None
        if remembered is not None and await _cached(segmenter, model, remembered):
            image_id = remembered
        else:
            image_id = await add()
        if client_id:
            self.ids.put(model, client_id, image_id)
        return Image(image_id, add)

    async def _known(self, segmenter: Segmenter, model: str, client_id: str) -> str:
        image_id = self.ids.get(model, client_id)
        if image_id is None and IMAGE_ID_PATTERN.match(client_id):
            image_id = client_id.lower()
        if image_id is None or not await _cached(segmenter, model, image_id):
            raise _not_cached(client_id, model)
        return image_id

    async def _add(self, request: Request, segmenter: Segmenter, model: str, data: bytes) -> str:
        try:
            info = await add_image_bytes(request, segmenter, self.admission, model, data)
        except ServiceError as exc:
            if exc.kind is ErrorKind.BAD_INPUT:
                raise _image_error(exc.message) from None
            raise
        return info.image_id


async def _cached(segmenter: Segmenter, model: str, image_id: str) -> bool:
    return await run_in_threadpool(segmenter.find_image, model, image_id) is not None


def _not_cached(client_id: str, model: str) -> ServiceError:
    shown = client_id if len(client_id) <= 80 else client_id[:80] + "..."
    return ServiceError(
        ErrorKind.NOT_FOUND,
        f"Image ID {shown} not in embedding cache for model {model} (never embedded, or "
        "evicted); send the image with the request.",
    )


# -- prompts ----------------------------------------------------------------------------------

# A prompt as the logits cache compares them: its box, and its points in order.
PromptKey = tuple[tuple[float, float, float, float] | None, tuple[tuple[float, float, bool], ...]]


def prompt_keys(prompts: Sequence[Sam2Prompt]) -> tuple[PromptKey, ...]:
    return tuple(
        (
            None if p.box is None else (p.box.x, p.box.y, p.box.width, p.box.height),
            tuple((point.x, point.y, point.positive) for point in p.points or ()),
        )
        for p in prompts
    )


@dataclass(frozen=True)
class Decode:
    """One decode: the prompt, and which of the request's prompts its objects answer."""

    indices: tuple[int, ...]
    prompt: Prompt


def plan_decodes(
    prompts: Sequence[Sam2Prompt],
    *,
    multimask_output: bool,
    limits: PromptLimits,
    masks: np.ndarray | None = None,
) -> list[Decode]:
    """The decodes that answer `prompts`, one prediction per prompt, in order.

    Prompts of one shape (as many points, a box or not) go in one batched
    decode, as the native API decodes B objects; Roboflow pads ragged
    prompts with "not a point" labels instead, which changes each mask with
    its neighbours, so prompts of different shapes are decoded apart. No
    prompt at all is one decode with nothing (the model's unprompted mask).
    `masks`: one low-res mask per prompt (from the logits cache): each
    prompt is then decoded alone, with its mask.
    """
    _check_counts(prompts, limits)
    if not prompts:
        return [Decode((0,), _prompt([], multimask_output, limits))]
    if masks is not None:
        return [
            Decode((i,), _prompt([p], multimask_output, limits, masks[i][None]))
            for i, p in enumerate(prompts)
        ]
    shapes: dict[tuple[int, bool], list[int]] = {}
    for index, p in enumerate(prompts):
        shapes.setdefault((len(p.points or ()), p.box is not None), []).append(index)
    decodes = []
    for (points, boxed), indices in shapes.items():
        if points == 0 and not boxed:  # empty prompts: one unprompted decode answers all
            decodes.append(Decode(tuple(indices), _prompt([], multimask_output, limits)))
            continue
        group = [prompts[i] for i in indices]
        decodes.append(Decode(tuple(indices), _prompt(group, multimask_output, limits)))
    return decodes


def _check_counts(prompts: Sequence[Sam2Prompt], limits: PromptLimits) -> None:
    if len(prompts) > limits.max_objects:
        raise bad_request(
            f"prompts holds {len(prompts)} prompts; this server segments at most "
            f"{limits.max_objects} objects per request (MAX_OBJECTS): split the request."
        )
    total = sum(len(p.points or ()) for p in prompts)
    if total > limits.max_total_points:
        raise bad_request(
            f"prompts hold {total} points in all; this server takes at most "
            f"{limits.max_total_points} per request (MAX_TOTAL_POINTS)."
        )


def _prompt(
    group: Sequence[Sam2Prompt],
    multimask_output: bool,
    limits: PromptLimits,
    mask: np.ndarray | None = None,
) -> Prompt:
    """Prompts of one shape as one `Prompt`: Nx2 points and a box for one, BxNx2 and Bx4 for B.

    The arrays are Roboflow's (`Sam2PromptSet.to_sam2_inputs`): a box becomes
    [x - w/2, y - h/2, x + w/2, y + h/2], a point's label is 1 if positive.
    """
    coords = labels = boxes = None
    if group and group[0].points:
        coords = np.array([[[q.x, q.y] for q in p.points or ()] for p in group], np.float64)
        labels = np.array([[int(q.positive) for q in p.points or ()] for p in group], np.int64)
    if group and group[0].box is not None:
        boxes = np.array([_corners(p.box) for p in group if p.box is not None], np.float64)
    if len(group) == 1:  # one object: the native API's plain arrays, not a batch of one
        coords = None if coords is None else coords[0]
        labels = None if labels is None else labels[0]
        boxes = None if boxes is None else boxes[0]
    try:
        return prompt_from_arrays(
            coords=coords,
            labels=labels,
            boxes=boxes,
            mask=mask,
            multimask_output=multimask_output,
            return_logits=True,  # the binary format answers logits; the others threshold at 0
            normalize_coords=True,
            limits=limits,
        )
    except ServiceError as exc:
        message = exc.message.replace("point_coords", "points").replace("point_labels", "points")
        raise bad_request(message) from None


def _corners(box: Box) -> list[float]:
    half_w, half_h = box.width / 2, box.height / 2
    return [box.x - half_w, box.y - half_h, box.x + half_w, box.y + half_h]


# -- low-res logits kept between requests (save_logits_to_cache / load_logits_from_cache) ------


class LogitsCache:
    """The best masks' low-res logits of earlier requests, by image and prompts.

    As Roboflow's SegmentAnything2: `load` finds, among this image's saved
    prompt sets (newest first), one that is a strict subset of the request's
    (each saved prompt matched by a distinct requested one with the same box
    and a superset of its points), preferring one point fewer than the
    request, else the most points; its logits become the `mask_input` of the
    request's prompts, in order. Unlike Roboflow's (which then fails),
    a saved set of another number of prompts is not a match. Bounded by the
    number of prompts held (`LOGITS_PROMPTS`), oldest out first.
    """

    def __init__(self, capacity: int = LOGITS_PROMPTS) -> None:
        self.capacity = capacity
        self._sets: OrderedDict[tuple[str, str, tuple[PromptKey, ...]], np.ndarray] = OrderedDict()
        self._held = 0

    def save(
        self, model: str, image_id: str, keys: tuple[PromptKey, ...], logits: np.ndarray
    ) -> None:
        """`logits`: one 256x256 per prompt, in the prompts' order."""
        key = (model, image_id, keys)
        old = self._sets.pop(key, None)
        self._held -= 0 if old is None else len(old)
        self._sets[key] = np.ascontiguousarray(logits, dtype=np.float32)
        self._held += len(logits)
        while self._held > self.capacity and self._sets:
            _, dropped = self._sets.popitem(last=False)
            self._held -= len(dropped)

    def load(self, model: str, image_id: str, keys: tuple[PromptKey, ...]) -> np.ndarray | None:
        if not keys:
            return None
        wanted = sum(len(points) for _, points in keys) - 1
        best: np.ndarray | None = None
        most = 0
        for (m, i, saved), logits in reversed(self._sets.items()):
            if m != model or i != image_id or len(saved) != len(keys):
                continue
            if not _strict_subset(saved, keys):
                continue
            size = sum(len(points) for _, points in saved)
            if size == wanted:
                return logits
            if size >= most:
                most, best = size, logits
        return best


def _strict_subset(sub: tuple[PromptKey, ...], sup: tuple[PromptKey, ...]) -> bool:
    if sub == sup:
        return False
    left = list(sup)
    for box, points in sub:
        match = next(
            (k for k, (b, p) in enumerate(left) if b == box and set(points) <= set(p)), None
        )
        if match is None:
            return False
        del left[match]
    return True


# -- encoding the answer ----------------------------------------------------------------------


@dataclass(frozen=True)
class Best:
    """Each prompt's most confident mask, in the request's order."""

    logits: np.ndarray  # P x H x W, float32: the mask is logits > 0, as the native API's
    scores: np.ndarray  # P
    low_res: np.ndarray  # P x 256 x 256


def best_of(decodes: Sequence[Decode], predictions: Sequence[Prediction], count: int) -> Best:
    """Candidates come best first (native order), so each object's first is its answer."""
    logits: list[np.ndarray] = [np.empty(0)] * count
    scores = np.zeros(count, dtype=np.float32)
    low_res: list[np.ndarray] = [np.empty(0)] * count
    for decode, prediction in zip(decodes, predictions, strict=True):
        masks, score, low = prediction.masks, prediction.scores, prediction.logits
        if score.ndim == 1:  # one object: C candidates
            masks, score, low = masks[None], score[None], low[None]
        for k, index in enumerate(decode.indices):
            row = min(k, len(masks) - 1)  # empty prompts share one decode
            logits[index], scores[index], low_res[index] = masks[row, 0], score[row, 0], low[row, 0]
    return Best(np.stack(logits), scores, np.stack(low_res))


def polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """Roboflow's `json` masks: every outer contour (no holes), [[]] for an empty mask."""
    contours = [rings[0] for rings in mask_polygons(mask, holes=False)]
    return contours or [[]]


def encode_answer(best: Best, mask_format: str, elapsed: float, model: str) -> bytes:
    if mask_format == "binary":
        buffer = io.BytesIO()
        np.savez_compressed(buffer, masks=best.logits, low_res_masks=best.low_res)
        return buffer.getvalue()
    predictions = []
    for logits, score in zip(best.logits, best.scores, strict=True):
        mask = logits > 0
        if mask_format == "rle":
            predictions.append(
                {"masks": encode_rle(mask), "confidence": float(score), "format": "rle"}
            )
        else:
            predictions.append(
                {"masks": polygons(mask), "confidence": float(score), "format": "polygon"}
            )
    return orjson.dumps({"predictions": predictions, "time": elapsed, "model_id": model})


# -- the routes -------------------------------------------------------------------------------


def build_roboflow_router(settings: Settings, admission: Admission) -> APIRouter:
    router = APIRouter(prefix=ROBOFLOW_PATH, tags=["roboflow"], route_class=RoboflowRoute)
    limits = prompt_limits(settings)
    images = Images(settings, admission)
    saved_logits = LogitsCache()

    @router.post(
        "/embed_image",
        response_model=Sam2EmbeddingResponse,
        responses=ERROR_RESPONSES,
        operation_id="roboflowSam2EmbedImage",
        summary="Roboflow inference: embed an image (SAM2)",
    )
    async def embed_image(
        request: Request, segmenter: SegmenterDep, body: Sam2EmbeddingRequest
    ) -> Response:
        started = time.perf_counter()
        model = start_tool_request(
            request, segmenter, served_model(segmenter, body.sam2_version_id)
        )
        image = await images.resolve(request, segmenter, model, body.image, body.image_id)
        content = {
            "image_id": body.image_id or image.image_id,
            "time": time.perf_counter() - started,
            "model_id": model,
        }
        return Response(
            orjson.dumps(content), headers={"X-Model-Id": model}, media_type="application/json"
        )

    @router.post(
        "/segment_image",
        response_model=Sam2SegmentationResponse,
        responses={
            200: {"content": {NPZ_TYPE: {}}, "description": "JSON; an npz body for `binary`."},
            **ERROR_RESPONSES,
        },
        operation_id="roboflowSam2SegmentImage",
        summary="Roboflow inference: segment an image with box and point prompts (SAM2)",
    )
    async def segment_image(
        request: Request, segmenter: SegmenterDep, body: Sam2SegmentationRequest
    ) -> Response:
        started = time.perf_counter()
        model = start_tool_request(
            request, segmenter, served_model(segmenter, body.sam2_version_id)
        )
        prompts = body.prompts.prompts or []
        keys = prompt_keys(prompts)
        decodes = plan_decodes(prompts, multimask_output=body.multimask_output, limits=limits)
        image = await images.resolve(request, segmenter, model, body.image, body.image_id)
        if body.load_logits_from_cache:
            masks = saved_logits.load(model, image.image_id, keys)
            if masks is not None:
                decodes = plan_decodes(
                    prompts, multimask_output=body.multimask_output, limits=limits, masks=masks
                )
        predictions = [
            await _decode(request, segmenter, admission, model, image, d) for d in decodes
        ]
        best = best_of(decodes, predictions, max(len(prompts), 1))
        if body.save_logits_to_cache and prompts:
            saved_logits.save(model, image.image_id, keys, best.low_res)
        mask_format = body.format or "json"
        encoded = await run_in_threadpool(
            encode_answer, best, mask_format, time.perf_counter() - started, model
        )
        media_type = NPZ_TYPE if mask_format == "binary" else "application/json"
        return Response(encoded, headers={"X-Model-Id": model}, media_type=media_type)

    return router


async def _decode(
    request: Request,
    segmenter: Segmenter,
    admission: Admission,
    model: str,
    image: Image,
    decode: Decode,
) -> Prediction:
    """A decode on the image's cached embedding; evicted meanwhile, embedded again once."""
    try:
        _, prediction = await segment_image_id(
            request, segmenter, admission, model, image.image_id, decode.prompt
        )
        return prediction
    except ImageNotCached:
        if image.reload is None:
            raise _not_cached(image.image_id, model) from None
    image.image_id = await image.reload()
    _, prediction = await segment_image_id(
        request, segmenter, admission, model, image.image_id, decode.prompt
    )
    return prediction
