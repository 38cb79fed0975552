"""Livepeer's route for this pipeline: `POST /segment-anything-2`, exactly as the runner's.

A segment request goes through, in order: form validation (422), auth (401,
in the guard), `model_id` (400), array fields and work limits (400), the
image header and the answer's estimated size (400), admission by memory
budget (waits, or 503), inference in a worker thread, then the answer,
streamed when large.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.datastructures import UploadFile as StarletteUpload

from sam2_server.api.admission import Admission, estimate_work_bytes
from sam2_server.api.answers import Answers
from sam2_server.api.deps import bearer_scheme, get_segmenter
from sam2_server.api.native_fields import segment_answer
from sam2_server.api.observe import RequestRecord
from sam2_server.api.paths import SEGMENT_PATH
from sam2_server.api.pipeline import (
    check_finite,
    prompt_limits,
    require_ready,
    run_admitted,
    start_request,
)
from sam2_server.api.responses import TicketedStream, serialise
from sam2_server.api.schemas import RESPONSES, MasksResponse
from sam2_server.api.service import Segmenter
from sam2_server.codecs import encode_livepeer, estimate_livepeer_bytes, iter_livepeer
from sam2_server.codecs.native import MASK_FORMATS
from sam2_server.config import Settings
from sam2_server.domain import ImageInfo, Prediction, Prompt, Timings, Work, image_id_of
from sam2_server.errors import bad_request, field_too_large
from sam2_server.prompts import build_prompt

logger = logging.getLogger(__name__)

# Answers up to this size are built whole and sent with a Content-Length;
# larger ones are streamed in chunks so their text never exists whole.
STREAM_ABOVE_BYTES = 8 * 1024 * 1024

ARRAY_FIELDS = ("point_coords", "point_labels", "box", "mask_input")


def build_livepeer_router(settings: Settings, admission: Admission, answers: Answers) -> APIRouter:
    router = APIRouter()
    max_field_bytes = settings.max_field_bytes
    limits = prompt_limits(settings)

    @router.post(
        SEGMENT_PATH,
        response_model=MasksResponse,
        responses=RESPONSES,
        description="Segment objects in an image.",
        operation_id="genSegmentAnything2",
        summary="Segment Anything 2",
        tags=["generate"],
        openapi_extra={"x-speakeasy-name-override": "segmentAnything2"},
        form_limits={"max_part_size": max_field_bytes},
    )
    @router.post(
        SEGMENT_PATH + "/",
        response_model=MasksResponse,
        responses=RESPONSES,
        include_in_schema=False,
        form_limits={"max_part_size": max_field_bytes},
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
        mask_format: Annotated[
            str,
            Form(
                description=(
                    "Not in Livepeer's API: `rle`, `png` or `polygon` answers with the native "
                    "API's segment answer (binary masks in that format, scores, packed "
                    "low-res logits) instead of nested-list strings. Absent or empty: no "
                    "change."
                )
            ),
        ] = None,  # type: ignore[assignment]
        segmenter: Segmenter = Depends(get_segmenter),
        _token: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
    ) -> Response:
        # Order of checks as in the reference: (form 422, auth 401 already done),
        # model_id, array fields, then the image and inference.
        record, model = start_request(request, segmenter, model_id)
        native_format = _native_format(mask_format)
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
            # The native answer carries binary masks (logits > 0), as the predictor gives them.
            return_logits=return_logits and native_format is None,
            normalize_coords=normalize_coords,
            limits=limits,
        )
        require_ready(segmenter)
        # The header is read from the spooled upload: the image's bytes come
        # into memory only once the request is admitted.
        width, height = await run_in_threadpool(segmenter.image_size, image.file)
        candidates = 3 if prompt.multimask_output else 1
        objects = prompt.num_objects
        upload_bytes = image.size or 0
        record.details.update(image_bytes=upload_bytes, width=width, height=height, objects=objects)
        answer_bytes = 0
        if native_format is None:
            answer_bytes = estimate_livepeer_bytes(
                objects, candidates, height, width, binary_masks=not prompt.return_logits
            )
            _check_answer_size(answer_bytes, settings.max_response_bytes, prompt)
        cost = estimate_work_bytes(objects, candidates, height, width) + upload_bytes
        timings = Timings()

        def work(cancelled: Callable[[], bool]) -> tuple[str, Prediction]:
            image.file.seek(0)
            image_bytes = image.file.read()
            prediction = segmenter.segment(model, image_bytes, prompt, Work(timings, cancelled))
            # Only the native answer names the image; Livepeer's answer needs no second hash.
            image_id = "" if native_format is None else image_id_of(image_bytes)
            return image_id, check_finite(prediction)

        (image_id, prediction), ticket = await run_admitted(request, admission, cost, timings, work)
        if native_format is not None:
            named = ImageInfo(image_id, model, width, height, cached=False)
            return await segment_answer(
                record,
                ticket,
                prediction,
                named,
                native_format,
                answers,
                return_logits=True,
                # Exact polygons: the contract adds one field to Livepeer's form, mask_format.
                polygon_epsilon=0.0,
            )
        if answer_bytes <= STREAM_ABOVE_BYTES:
            return await serialise(record, ticket, partial(encode_livepeer, prediction))
        return TicketedStream(
            _timed_chunks(prediction, record),
            ticket,
            media_type="application/json",
            stall_timeout_s=settings.body_read_timeout_s,
        )

    return router


async def _field_text(value: str | UploadFile | None, name: str, limit: int) -> str | None:
    """An array field's text, whether sent as a form value or as a file part."""
    if not isinstance(value, StarletteUpload):
        return value
    if value.size is not None and value.size > limit:
        raise field_too_large(limit)
    data = await value.read(limit + 1)
    if len(data) > limit:
        raise field_too_large(limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad_request(f"Error parsing JSON for {name}: the file is not UTF-8 text.") from None


def _native_format(value: str | None) -> str | None:
    """`mask_format` on the Livepeer route: None (Livepeer's answer), or one of MASK_FORMATS."""
    if value is None or value.strip() == "":
        return None
    if value not in MASK_FORMATS:
        raise bad_request(
            f"mask_format must be one of {', '.join(MASK_FORMATS)}; got {value[:40]!r}."
        )
    return value


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
