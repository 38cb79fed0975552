"""Every error leaves as JSON in the contract's shape, from one place.

400/401/413/500/503 are `{"detail": {"msg": ...}}` (a plain-string `detail`
breaks the go-livepeer client); 422 keeps FastAPI's validation shape. The
layers below raise errors by kind (`sam2_server.errors`); `STATUS` is the one
table that says which status each kind is on the wire.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from sam2_server.api.guard import error_body
from sam2_server.api.paths import VIDEOS_PATH
from sam2_server.codecs.lines import error_line
from sam2_server.errors import (
    PIPELINE_ERROR,
    Cancelled,
    ErrorKind,
    ImageNotCached,
    ServiceError,
    field_too_large,
)
from sam2_server.frames import too_many_frames

logger = logging.getLogger(__name__)

STATUS: dict[ErrorKind, int] = {
    ErrorKind.BAD_INPUT: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.BUSY: 409,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNAVAILABLE: 503,
}

# What the engine cannot say without knowing the routes: how to get past it.
_REMEDY: dict[type[ServiceError], str] = {
    ImageNotCached: "; upload it again with POST /v1/images.",
}


def status_of(exc: ServiceError) -> int:
    return STATUS[exc.kind]


def message_of(exc: ServiceError) -> str:
    """The client's message: the error's own, and the remedy where the route knows one."""
    return exc.message + _REMEDY.get(type(exc), "")


def headers_of(exc: ServiceError) -> dict[str, str]:
    return {} if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}


def service_error_response(exc: ServiceError) -> Response:
    return json_error(status_of(exc), message_of(exc), headers_of(exc))


def service_error_line(exc: ServiceError) -> bytes:
    """The error as a stream's last line, once its headers are gone (`codecs.lines`)."""
    return error_line(status_of(exc), message_of(exc))


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status, headers, media_type="application/json")


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if status_of(exc) >= 500:
        logger.error("%s %s: %s", request.method, request.url.path, exc.message)
    return service_error_response(exc)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    settings = request.app.state.settings
    if _is_field_too_large(exc):
        return service_error_response(field_too_large(settings.max_field_bytes))
    if _is_too_many_parts(exc) and request.url.path.rstrip("/") == VIDEOS_PATH:
        # Frames past VIDEO_MAX_FRAMES: the same 413 as a clip with too many frames.
        return service_error_response(too_many_frames(settings.video_max_frames))
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return json_error(exc.status_code, message, dict(exc.headers or {}))


def _is_too_many_parts(exc: StarletteHTTPException) -> bool:
    """Starlette's multipart parser past its `max_files` (a 400 "Too many files")."""
    cause = exc.__context__
    return isinstance(cause, MultiPartException) and cause.message.startswith("Too many files")


def _is_field_too_large(exc: StarletteHTTPException) -> bool:
    """Starlette reports an oversize form field as a 400 raised while handling
    its MultiPartException; the contract wants a 413 for "too large"."""
    cause = exc.__context__
    return isinstance(cause, MultiPartException) and "exceeded maximum size" in cause.message


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 shape, but an upload sent where text was expected is described,
    not dumped (its repr names the server's temporary file)."""
    assert isinstance(exc, RequestValidationError)
    errors = [_describe_input(error) for error in exc.errors()]
    content = {"detail": jsonable_encoder(errors)}
    try:
        body = orjson.dumps(content)  # NaN in the echoed input becomes null, still JSON
    except TypeError:  # an integer past 64 bits in the echoed input
        body = orjson.dumps(_big_ints_as_text(content))
    return Response(body, 422, media_type="application/json")


def _big_ints_as_text(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _big_ints_as_text(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints_as_text(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)
    return value


def _describe_input(error: Any) -> Any:
    if not isinstance(error, dict):
        return error
    value = error.get("input")
    if isinstance(value, StarletteUpload):
        return {**error, "input": f"<file {value.filename or ''!r}, {value.size} bytes>"}
    return error


async def _cancelled(request: Request, exc: Exception) -> Response:
    """The client left before its work started: nobody will read this answer."""
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("%s %s failed", request.method, request.url.path)
    return json_error(500, PIPELINE_ERROR)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Cancelled, _cancelled)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unexpected)
