"""The routes of Livepeer's runner for this pipeline: segment, health, version;
and operations: stats, metrics.

A segment request goes through, in order: form validation (422), auth (401,
in the guard), `model_id` (400), array fields and work limits (400), the
image header and the answer's estimated size (400), admission by memory
budget (waits, or 503), inference in a worker thread, then the answer,
streamed when large.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from sam2_server import PIPELINE, __version__
from sam2_server.api.admission import Admission, Ticket, estimate_work_bytes
from sam2_server.api.forms import PromptLimits, build_prompt
from sam2_server.api.observe import Metrics, RequestRecord, record_of
from sam2_server.api.schemas import HealthCheck, HTTPError, MasksResponse, VersionResponse
from sam2_server.api.service import Segmenter
from sam2_server.codecs import encode_livepeer, estimate_livepeer_bytes, iter_livepeer
from sam2_server.config import Settings
from sam2_server.domain import Prediction, Prompt, Timings
from sam2_server.errors import PIPELINE_ERROR, Cancelled, ServiceError, bad_request

logger = logging.getLogger(__name__)

SEGMENT_PATH = "/segment-anything-2"
OPS_PATHS = ("/stats", "/metrics")
ROUTES = (SEGMENT_PATH, "/health", "/version", *OPS_PATHS, "/openapi.json", "/docs")

# Answers up to this size are built whole and sent with a Content-Length;
# larger ones are streamed in chunks so their text never exists whole.
STREAM_ABOVE_BYTES = 8 * 1024 * 1024

ARRAY_FIELDS = ("point_coords", "point_labels", "box", "mask_input")

RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_200_OK: {
        "content": {"application/json": {"schema": {"x-speakeasy-name-override": "data"}}},
    },
    status.HTTP_400_BAD_REQUEST: {"model": HTTPError},
    status.HTTP_401_UNAUTHORIZED: {"model": HTTPError},
    408: {"model": HTTPError},
    413: {"model": HTTPError},
    status.HTTP_500_INTERNAL_SERVER_ERROR: {"model": HTTPError},
    status.HTTP_503_SERVICE_UNAVAILABLE: {"model": HTTPError},
}

# The token itself is checked by `RequestGuard` before the body is read; this
# dependency only declares the bearer scheme in the OpenAPI schema, as the
# reference does.
bearer_scheme = HTTPBearer(auto_error=False)


def get_segmenter(request: Request) -> Segmenter:
    segmenter: Segmenter = request.app.state.segmenter
    return segmenter


def build_router(settings: Settings, admission: Admission, metrics: Metrics) -> APIRouter:
    router = APIRouter()
    max_field_bytes = settings.max_field_bytes
    form_limits = {"max_part_size": max_field_bytes}
    limits = PromptLimits(
        max_points=settings.max_points,
        max_objects=settings.max_objects,
        max_total_points=settings.max_total_points,
    )

    @router.post(
        SEGMENT_PATH,
        response_model=MasksResponse,
        responses=RESPONSES,
        description="Segment objects in an image.",
        operation_id="genSegmentAnything2",
        summary="Segment Anything 2",
        tags=["generate"],
        openapi_extra={"x-speakeasy-name-override": "segmentAnything2"},
        form_limits=form_limits,
    )
    @router.post(
        SEGMENT_PATH + "/",
        response_model=MasksResponse,
        responses=RESPONSES,
        include_in_schema=False,
        form_limits=form_limits,
    )
    # The optional array fields have a None default, as in the reference; they
    # also accept a file part (curl's natural `-F mask_input=@logits.json`).
    # The schema still says plain `string` (see app.py): go-livepeer's code
    # generator reads OpenAPI 3.0 types, not `anyOf`.
    async def segment_anything_2(
        request: Request,
        image: Annotated[UploadFile, File(description="Image to segment.", media_type="image/*")],
        model_id: Annotated[
            str, Form(description="Hugging Face model ID used for image generation.")
        ] = "",
        point_coords: Annotated[
            str | UploadFile,
            Form(
                description=(
                    "Nx2 array of point prompts to the model, where each point is in (X,Y) "
                    "in pixels."
                )
            ),
        ] = None,  # type: ignore[assignment]
        point_labels: Annotated[
            str | UploadFile,
            Form(
                description=(
                    "Labels for the point prompts, where 1 indicates a foreground point "
                    "and 0 indicates a background point."
                )
            ),
        ] = None,  # type: ignore[assignment]
        box: Annotated[
            str | UploadFile,
            Form(
                description=(
                    "A length 4 array given as a box prompt to the model, in XYXY format; "
                    "or Bx4 for several objects."
                )
            ),
        ] = None,  # type: ignore[assignment]
        mask_input: Annotated[
            str | UploadFile,
            Form(
                description=(
                    "A low-resolution mask input to the model, typically from a previous "
                    "prediction iteration, with the form 1xHxW (H=W=256 for SAM)."
                )
            ),
        ] = None,  # type: ignore[assignment]
        multimask_output: Annotated[
            bool,
            Form(
                description=(
                    "If true, the model will return three masks for ambiguous input "
                    "prompts, often producing better masks than a single prediction."
                )
            ),
        ] = True,
        return_logits: Annotated[
            bool,
            Form(
                description=(
                    "If true, returns un-thresholded mask logits instead of a binary mask."
                )
            ),
        ] = True,
        normalize_coords: Annotated[
            bool,
            Form(
                description=(
                    "If true, the point coordinates will be normalized to the range [0,1], "
                    "with point_coords expected to be with respect to image dimensions."
                )
            ),
        ] = True,
        segmenter: Segmenter = Depends(get_segmenter),
        _token: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
    ) -> Response:
        # Order of checks as in the reference: (form 422, auth 401 already done),
        # model_id, array fields, then the image and inference.
        record = record_of(request.scope) or RequestRecord("-", "POST", SEGMENT_PATH)
        served = segmenter.served_model_ids
        if model_id and model_id not in served:
            # The reference's message; the echo is cut so a huge value is not sent back.
            shown = model_id if len(model_id) <= 200 else model_id[:200] + "..."
            raise bad_request(
                f"pipeline configured with {', '.join(served)} but called with {shown}."
            )
        model = model_id or segmenter.default_model_id
        record.details["model"] = model
        fields = [point_coords, point_labels, box, mask_input]
        texts = [
            await _field_text(value, name, max_field_bytes)
            for name, value in zip(ARRAY_FIELDS, fields, strict=True)
        ]
        # Off the event loop too: a 16 MB mask_input takes a while to parse.
        prompt = await run_in_threadpool(
            build_prompt,
            point_coords=texts[0],
            point_labels=texts[1],
            box=texts[2],
            mask_input=texts[3],
            multimask_output=multimask_output,
            return_logits=return_logits,
            normalize_coords=normalize_coords,
            limits=limits,
        )
        _require_ready(segmenter)
        # The header is read from the spooled upload: the image's bytes come
        # into memory only once the request is admitted.
        width, height = await run_in_threadpool(segmenter.image_size, image.file)
        candidates = 3 if prompt.multimask_output else 1
        objects = prompt.num_objects
        upload_bytes = image.size or 0
        record.details.update(image_bytes=upload_bytes, width=width, height=height, objects=objects)
        answer_bytes = estimate_livepeer_bytes(
            objects, candidates, height, width, binary_masks=not prompt.return_logits
        )
        _check_answer_size(answer_bytes, settings.max_response_bytes, prompt)
        cost = estimate_work_bytes(objects, candidates, height, width) + upload_bytes
        timings = Timings()
        async with _watch_disconnect(request.receive) as gone:
            ticket = await _admit(admission, cost, gone)
            try:
                await image.seek(0)
                image_bytes = await image.read()
                prediction = await run_in_threadpool(
                    _segment, segmenter, model, image_bytes, prompt, timings, gone.is_set
                )
            except BaseException:
                ticket.release()
                raise
            finally:
                _record_timings(record, timings)
        if answer_bytes <= STREAM_ABOVE_BYTES:
            try:
                started = time.perf_counter()
                body = await run_in_threadpool(encode_livepeer, prediction)
                record.stages["serialise"] = time.perf_counter() - started
            finally:
                ticket.release()
            return Response(body, media_type="application/json")
        return _TicketedStream(
            _timed_chunks(prediction, record),
            ticket,
            media_type="application/json",
            stall_timeout_s=settings.body_read_timeout_s,
        )

    @router.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        metrics.queue_depth.set(admission.queued)
        metrics.inflight.set(admission.running)
        metrics.inflight_bytes.set(admission.in_use)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get(
        "/health",
        response_model=HealthCheck,
        response_model_exclude_none=True,
        operation_id="health",
    )
    async def health(segmenter: Segmenter = Depends(get_segmenter)) -> HealthCheck:
        # `unavailable` only when a model failed: a healthy answer stays exactly
        # the reference's `{"status": "OK"}`.
        return HealthCheck(
            status=segmenter.status,  # type: ignore[arg-type]
            unavailable=segmenter.unavailable() or None,
        )

    @router.get("/version", response_model=VersionResponse, operation_id="version")
    async def version(segmenter: Segmenter = Depends(get_segmenter)) -> VersionResponse:
        return VersionResponse(
            pipeline=PIPELINE, model_id=segmenter.default_model_id, version=__version__
        )

    @router.get("/stats", include_in_schema=False)
    async def stats(segmenter: Segmenter = Depends(get_segmenter)) -> dict[str, Any]:
        return segmenter.stats()

    return router


async def _field_text(value: str | UploadFile | None, name: str, limit: int) -> str | None:
    """An array field's text, whether sent as a form value or as a file part."""
    if not isinstance(value, StarletteUpload):
        return value
    if value.size is not None and value.size > limit:
        raise ServiceError(
            413, f"A form field exceeds this server's limit of {limit} bytes (MAX_FIELD_BYTES)."
        )
    data = await value.read(limit + 1)
    if len(data) > limit:
        raise ServiceError(
            413, f"A form field exceeds this server's limit of {limit} bytes (MAX_FIELD_BYTES)."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad_request(f"Error parsing JSON for {name}: the file is not UTF-8 text.") from None


def _check_answer_size(estimate: int, limit: int, prompt: Prompt) -> None:
    """Refuse, before any work, an answer too large to send; say what to change."""
    if estimate <= limit:
        return
    hints = []
    if prompt.return_logits:
        hints.append("return_logits=false (0/1 masks, about 3x smaller)")
    if prompt.multimask_output:
        hints.append("multimask_output=false (one mask instead of three)")
    if prompt.num_objects > 1:
        hints.append("fewer boxes per request")
    hints.append("a smaller image")
    raise bad_request(
        f"The answer would be about {estimate / 2**20:.1f} MiB, over this server's limit of "
        f"{limit / 2**20:.1f} MiB (MAX_RESPONSE_BYTES); send {' or '.join(hints)}."
    )


@contextlib.asynccontextmanager
async def _watch_disconnect(receive: Receive) -> AsyncIterator[threading.Event]:
    """An event set when the client goes away while its request waits or runs.

    The body is fully read by now, so the next ASGI message can only be the
    disconnect; work that has not started yet is then abandoned.
    """
    gone = threading.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    task = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        task.cancel()


async def _admit(admission: Admission, cost: int, gone: threading.Event) -> Ticket:
    """Wait for budget, giving the place up if the client leaves meanwhile."""
    waiting = asyncio.ensure_future(admission.acquire(cost))
    while not waiting.done():
        await asyncio.wait({waiting}, timeout=0.25)
        if gone.is_set() and not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            raise Cancelled()
    return waiting.result()


def _segment(
    segmenter: Segmenter,
    model_id: str,
    image_bytes: bytes,
    prompt: Prompt,
    timings: Timings,
    cancelled: Any,
) -> Prediction:
    """Inference in a worker thread.

    As in the reference, a failure the engine did not classify is logged with
    its details and answered with the generic message only.
    """
    try:
        prediction = segmenter.segment(
            model_id, image_bytes, prompt, timings=timings, cancelled=cancelled
        )
    except (ServiceError, Cancelled):
        raise
    except Exception as exc:
        logger.exception("segment-anything-2 failed on model %s", model_id)
        raise ServiceError(500, PIPELINE_ERROR) from exc
    if not (np.isfinite(prediction.scores).all() and np.isfinite(prediction.logits).all()):
        # JSON has no spelling for these: every number would arrive as null.
        raise bad_request(
            "The prompt drove the model outside float32's range (non-finite output); "
            "check the magnitudes of point_coords, box and mask_input."
        )
    return prediction


def _record_timings(record: RequestRecord, timings: Timings) -> None:
    record.details["cache_hit"] = timings.cache_hit
    if not timings.cache_hit:
        record.stages["image_decode"] = timings.decode_image_s
        record.stages["encode"] = timings.encode_s
    if timings.decode_s:
        record.stages["prompt_decode"] = timings.decode_s


def _timed_chunks(prediction: Prediction, record: RequestRecord) -> Iterator[bytes]:
    """The streamed answer, adding the time spent writing it to the record."""
    chunks = iter_livepeer(prediction)
    spent = 0.0
    while True:
        started = time.perf_counter()
        chunk = next(chunks, None)
        spent += time.perf_counter() - started
        record.stages["serialise"] = spent
        if chunk is None:
            return
        yield chunk


class _TicketedStream(StreamingResponse):
    """A streamed answer that holds its admission ticket until the last byte
    is sent, or the client goes away: the prediction's memory lives that long.

    A client that stops reading would hold that memory forever (the socket's
    buffers fill and every send waits), so a send that makes no progress for
    `stall_timeout_s` ends the response and closes the connection.
    """

    def __init__(
        self, content: Iterator[bytes], ticket: Ticket, media_type: str, stall_timeout_s: float
    ) -> None:
        super().__init__(content, media_type=media_type)
        self.ticket = ticket
        self.stall_timeout_s = stall_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), timeout=self.stall_timeout_s)
            except asyncio.TimeoutError:
                raise OSError("client stopped reading the answer") from None

        try:
            await super().__call__(scope, receive, timed_send)
        except (OSError, ClientDisconnect) as exc:
            # The client left or stopped reading: nothing to answer, and the
            # unfinished response makes the server close the connection.
            logger.info("answer not delivered: %s", exc or "client disconnected")
        finally:
            self.ticket.release()


def _require_ready(segmenter: Segmenter) -> None:
    """503 while the start-up load runs. After it, even with every model failed
    (ERROR), requests go on to the engine: its 503 names the model and why, and
    it retries a failed load after a while, so a fixed file needs no restart."""
    if segmenter.status == "LOADING":
        raise ServiceError(
            503, "The model is still loading; retry shortly.", headers={"Retry-After": "5"}
        )
