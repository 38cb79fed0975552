"""CVAT's interactors, served as the Nuclio dashboard API that CVAT calls (docs/tools.md).

Self-hosted CVAT reaches its serverless functions through the Nuclio
dashboard, whose address is all its settings name (`CVAT_NUCLIO_SCHEME`,
`CVAT_NUCLIO_HOST`, `CVAT_NUCLIO_PORT`): its lambda manager
(`cvat/apps/lambda_manager/views.py`, `LambdaGateway`) lists functions with
`GET /api/functions`, reads one with `GET /api/functions/{name}`, and, with
`CVAT_NUCLIO_INVOKE_METHOD=dashboard`, invokes one with
`POST /api/function_invocations` naming it in `x-nuclio-function-name`. So
these paths are served at the root, one interactor per served model.

An invocation carries the whole frame as base64 on every click. Its bytes go
through the content-hash cache like any upload, so the second click on a
frame costs only the prompt decoder; the mask is the native API's best mask
(`multimask_output` on, the best-scored candidate) for the same prompt:
CVAT's positive points, then its negative points, and its box.

CVAT's reading of the answer changed in 2.60 (cvat-core `lambda-manager.ts`,
"Updated interaction pipeline"): before, the UI placed `{mask, bounds}` with
the mask cropped to the inclusive `bounds`; since, it takes `shapes` of type
`mask` in CVAT's run-length encoding and reads a bare `mask` as a whole frame
at (0, 0). CVAT's lambda manager names its version in its User-Agent
(`CVAT/2.73.0 python-requests/...`), so a CVAT from 2.60 gets `shapes` and
anyone else the cropped `{mask, bounds}`.

CVAT shows a function's failure as its status line only (`raise_for_status`
in `LambdaGateway._http`, passed on by `return_response`), so each error has
the status that says what went wrong; the body is this server's usual
`{"detail": {"msg": ...}}`, also written to the access log.

The "direct" invoke method, which CVAT uses by default outside Kubernetes,
posts to `host.docker.internal:<httpPort>/` with no function name: it cannot
choose among models nor pass the guard, so a function here has no `httpPort`
and the documentation sets `CVAT_NUCLIO_INVOKE_METHOD=dashboard`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from sam2_server.api.admission import Admission
from sam2_server.api.deps import SegmenterDep, bearer_scheme
from sam2_server.api.paths import CVAT_PATHS
from sam2_server.api.pipeline import prompt_limits, request_record
from sam2_server.api.responses import json_response
from sam2_server.api.schemas import NATIVE_RESPONSES
from sam2_server.api.service import Segmenter
from sam2_server.api.tool_pipeline import segment_bytes, start_tool_request
from sam2_server.config import Settings
from sam2_server.domain import Prompt
from sam2_server.errors import ErrorKind, ServiceError, bad_request
from sam2_server.prompts import PromptLimits, array_from_json, prompt_from_arrays

FUNCTIONS_PATH, INVOCATIONS_PATH = CVAT_PATHS
FUNCTION_HEADER = "x-nuclio-function-name"

# CVAT's UI warns below version 2 ("Interactor API is outdated").
INTERACTOR_VERSION = "2"
# The first CVAT whose UI reads interactor `shapes` (and a bare `mask` as a whole frame).
SHAPES_SINCE = (2, 60)
_CVAT_AGENT = re.compile(r"\bCVAT/(\d+)\.(\d+)")
_NOT_NAME = re.compile(r"[^a-z0-9]+")


def function_name(model_id: str) -> str:
    """The Nuclio function name of a served model: stable, and URL- and DNS-safe.

    CVAT puts it in URL paths (`[a-zA-Z0-9_.-]+`) and Nuclio names are DNS
    labels; the tail of the model id keeps it readable (the file name of a
    local checkpoint), a digest of the whole id keeps it unique.
    """
    slug = _NOT_NAME.sub("-", model_id.lower()).strip("-")[-40:].strip("-")
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:8]
    return f"sam2-{slug}-{digest}" if slug else f"sam2-{digest}"


def function_config(model_id: str, *, default: bool, unavailable: str | None) -> dict[str, Any]:
    """A Nuclio function config, with what `LambdaFunction.__init__` reads from it.

    Annotations are strings, as Nuclio's are: CVAT converts them with
    `int(...)` and `bool(...)` (so any non-empty string is true, and
    `startswith_box` is left out rather than set to "false").
    """
    shown = model_id if len(model_id) <= 80 else "..." + model_id[-77:]
    description = (
        f"Segment Anything ({shown}) on sam2-server: points and an optional box; the frame's "
        "embedding is cached, so further clicks on it cost only the prompt decoder."
    )
    if default:
        description += " The server's default model."
    return {
        "metadata": {
            "name": function_name(model_id),
            "namespace": "nuclio",
            "labels": {"nuclio.io/project-name": "cvat"},
            "annotations": {
                "type": "interactor",
                # The model id says which model (and family: SAM 2, EdgeTAM) answers.
                "name": f"{shown} (sam2-server)",
                "version": INTERACTOR_VERSION,
                "spec": "[]",
                "framework": "pytorch",
                "min_pos_points": "0",
                "min_neg_points": "0",
                "startswith_box_optional": "true",
                "help_message": (
                    "Positive points on the object, negative points off it, and optionally "
                    "a box around it."
                ),
            },
        },
        "spec": {"description": description},
        "status": {"state": "error" if unavailable else "ready", "message": unavailable or ""},
    }


def served_functions(segmenter: Segmenter) -> dict[str, dict[str, Any]]:
    """Every served model as a function config, by function name (Nuclio's list shape)."""
    unavailable = segmenter.unavailable()
    return {
        function_name(model_id): function_config(
            model_id,
            default=model_id == segmenter.default_model_id,
            unavailable=unavailable.get(model_id),
        )
        for model_id in segmenter.served_model_ids
    }


def model_of(segmenter: Segmenter, name: str | None) -> str:
    """The served model a function name stands for (400 without a name, 404 if unknown)."""
    if not name:
        raise bad_request(
            f"A function invocation names its function in the {FUNCTION_HEADER} header."
        )
    for model_id in segmenter.served_model_ids:
        if function_name(model_id) == name:
            return model_id
    raise unknown_function(segmenter, name)


def unknown_function(segmenter: Segmenter, name: str) -> ServiceError:
    """Nuclio's 404 for a function it does not have, naming the ones served here."""
    shown = name if len(name) <= 80 else name[:80] + "..."
    served = ", ".join(function_name(m) for m in segmenter.served_model_ids)
    return ServiceError(
        ErrorKind.NOT_FOUND, f"function {shown!r} is not served here; the functions are: {served}."
    )


def read_invocation(raw: bytes, limits: PromptLimits) -> tuple[bytes, Prompt | None]:
    """The frame's bytes and the prompt of an interactor invocation; None: nothing prompted.

    The body is what `LambdaFunction.invoke` posts for an interactor:
    `{image: base64, pos_points: [[x, y]...], neg_points: [...], obj_bbox:
    [[x1, y1], [x2, y2]] | [] | null}`; other fields (`threshold`,
    `text_prompts`) are ignored.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The invocation body is not JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise bad_request("The invocation body must be a JSON object.")
    image = _image(body.get("image"))
    positive = _points(body.get("pos_points"), "pos_points")
    negative = _points(body.get("neg_points"), "neg_points")
    box = _box(body.get("obj_bbox"))
    points = positive + negative
    if not points and box is None:
        return image, None
    return image, prompt_from_arrays(
        coords=np.array(points, dtype=np.float64) if points else None,
        labels=np.array([1] * len(positive) + [0] * len(negative)) if points else None,
        boxes=np.array(box, dtype=np.float64) if box is not None else None,
        mask=None,
        multimask_output=True,
        return_logits=False,
        normalize_coords=True,
        limits=limits,
    )


def _image(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise bad_request("image must be the frame's bytes as a base64 string.")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("image is not valid base64.") from None
    if not data:
        raise bad_request("image must be the frame's bytes as a base64 string.")
    return data


def _points(value: Any, name: str) -> list[list[float]]:
    """[[x, y], ...] in pixels; missing, null or [] is no points."""
    if value is None or value == []:
        return []
    if not isinstance(value, list):
        raise bad_request(f"{name} must be a list of [x, y] points.")
    array = array_from_json(value, name)
    if array.ndim != 2 or array.shape[1] != 2:
        raise bad_request(f"{name} must be a list of [x, y] points.")
    points: list[list[float]] = array.tolist()
    return points


def _box(value: Any) -> list[float] | None:
    """[[x1, y1], [x2, y2]] (top-left, bottom-right) as [x1, y1, x2, y2]; null or [] is none."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise bad_request("obj_bbox must be [[x1, y1], [x2, y2]] or null.")
    array = array_from_json(value, "obj_bbox")
    if array.shape != (2, 2):
        raise bad_request(
            "obj_bbox must be one box, [[x1, y1], [x2, y2]] (its top-left and bottom-right "
            "corners), or null."
        )
    box: list[float] = array.reshape(4).tolist()
    return box


def reads_shapes(user_agent: str) -> bool:
    """True for a CVAT (by its lambda manager's User-Agent) whose UI reads `shapes`."""
    found = _CVAT_AGENT.search(user_agent)
    return found is not None and (int(found[1]), int(found[2])) >= SHAPES_SINCE


def mask_bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The inclusive [x1, y1, x2, y2] around a mask's pixels; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[0]), int(rows[0]), int(columns[-1]), int(rows[-1])


def cvat_mask_points(mask: np.ndarray, bounds: tuple[int, int, int, int]) -> list[int]:
    """CVAT's mask encoding: the run lengths of the crop in row order, starting with a
    (possibly empty) run of zeros, then the inclusive bounds (`cvat_sdk.masks.encode_mask`)."""
    x1, y1, x2, y2 = bounds
    flat = mask[y1 : y2 + 1, x1 : x2 + 1].ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return [*runs, x1, y1, x2, y2]


def shapes_answer(mask: np.ndarray) -> bytes:
    """CVAT 2.60+: one mask shape, or none for an empty mask ("No shapes to display")."""
    bounds = mask_bounds(mask)
    shapes = []
    if bounds is not None:
        shapes.append({"type": "mask", "points": cvat_mask_points(mask, bounds), "attributes": []})
    return orjson.dumps({"shapes": shapes})


def cropped_answer(mask: np.ndarray) -> bytes:
    """Before CVAT 2.60: the mask (0/255) cropped to its inclusive `bounds`.

    An empty mask is one background pixel with empty `points`, which the UI
    takes as "no object" instead of looking for a contour that is not there.
    """
    bounds = mask_bounds(mask)
    if bounds is None:
        return orjson.dumps({"mask": [[0]], "bounds": [0, 0, 0, 0], "points": []})
    x1, y1, x2, y2 = bounds
    crop = np.where(mask[y1 : y2 + 1, x1 : x2 + 1], 255, 0).astype(np.uint8)
    return orjson.dumps(
        {"mask": crop, "bounds": [x1, y1, x2, y2]}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def build_cvat_router(settings: Settings, admission: Admission) -> APIRouter:
    # The guard checks the token (or lets CVAT in with OPEN_SURFACES=cvat)
    # before the body is read; this only declares the bearer scheme.
    router = APIRouter(tags=["cvat"], dependencies=[Depends(bearer_scheme)])
    limits = prompt_limits(settings)

    @router.get(
        FUNCTIONS_PATH,
        responses=NATIVE_RESPONSES,
        summary="CVAT: the interactors, one per served model (Nuclio's function list)",
    )
    async def list_functions(segmenter: SegmenterDep) -> Response:
        return json_response(served_functions(segmenter))

    @router.get(
        FUNCTIONS_PATH + "/{name}",
        responses=NATIVE_RESPONSES,
        summary="CVAT: one interactor (Nuclio's function config)",
    )
    async def get_function(segmenter: SegmenterDep, name: str) -> Response:
        function = served_functions(segmenter).get(name)
        if function is None:
            raise unknown_function(segmenter, name)
        return json_response(function)

    @router.post(
        INVOCATIONS_PATH,
        responses=NATIVE_RESPONSES,
        summary="CVAT: invoke an interactor named by x-nuclio-function-name",
    )
    async def invoke_function(request: Request, segmenter: SegmenterDep) -> Response:
        name = request.headers.get(FUNCTION_HEADER)
        model = start_tool_request(request, segmenter, model_of(segmenter, name))
        image, prompt = await run_in_threadpool(read_invocation, await request.body(), limits)
        shapes = reads_shapes(request.headers.get("user-agent", ""))
        request_record(request).details.update(function=name, answer="shapes" if shapes else "mask")
        encode = shapes_answer if shapes else cropped_answer
        if prompt is None:  # every prompt removed: nothing to segment
            return Response(encode(np.zeros((1, 1), dtype=bool)), media_type="application/json")
        _, prediction = await segment_bytes(request, segmenter, admission, model, image, prompt)
        best = prediction.masks[0] > 0
        return Response(await run_in_threadpool(encode, best), media_type="application/json")

    return router
