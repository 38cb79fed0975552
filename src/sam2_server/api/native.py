"""The native API's image routes: upload once, prompt by id, compact masks.

`POST /v1/images` encodes an upload (the expensive part, ~95% of a click)
and names it by the SHA-256 of its bytes; `POST /v1/images/{id}/segment`
then costs only the prompt decoder, and its answer is binary masks as COCO
RLE, PNG or polygons plus packed low-res logits: a few kilobytes instead of the
Livepeer route's tens of megabytes of JSON text. Names follow
`../shared/contract/native-api.md`; auth, limits, admission and the error
shape are those of the Livepeer route (see `pipeline.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictInt, field_validator

from sam2_server.api.admission import Admission, estimate_work_bytes
from sam2_server.api.answers import Answers
from sam2_server.api.deps import SegmenterDep, bearer_scheme
from sam2_server.api.native_fields import (
    ImageId,
    MaskOutputFields,
    cached_image,
    check_image_id,
    image_fields,
    in_native_names,
    json_array,
    ready_image,
    segment_answer,
    start_by_id,
)
from sam2_server.api.paths import IMAGES_PATH
from sam2_server.api.pipeline import (
    check_finite,
    check_model,
    prompt_limits,
    require_ready,
    run_admitted,
    start_request,
)
from sam2_server.api.responses import json_response
from sam2_server.api.schemas import NATIVE_RESPONSES, RequestBody
from sam2_server.codecs.native import unpack_array
from sam2_server.config import Settings
from sam2_server.domain import ImageInfo, Prediction, Prompt, Timings, Work
from sam2_server.errors import ImageNotCached, ServiceError, bad_request
from sam2_server.prompts import MASK_SHAPE, PromptLimits, check_numbers, prompt_from_arrays


class ImageResponse(BaseModel):
    """An image whose embedding the server holds."""

    image_id: str = Field(..., description="SHA-256 (hex) of the uploaded bytes.")
    model_id: str
    width: int
    height: int
    cached: bool = Field(..., description="True when the embedding was already there.")


class PackedArray(RequestBody):
    """Exact float32 values: little-endian bytes in C order, base64-encoded."""

    dtype: Literal["float32"] = "float32"
    shape: list[int]
    data: str = Field(..., description="base64 of the little-endian float32 bytes, C order.")


class AnswerReference(RequestBody):
    """An earlier answer's low-res logits, named instead of sent: the server kept them."""

    answer_id: str = Field(
        ..., max_length=128, description="The `answer_id` of an earlier answer on this image."
    )
    index: StrictInt | list[StrictInt] = Field(
        ...,
        description="Which of its candidates: k (best first), or [b, k] when it holds several "
        "objects (boxes).",
    )


class SegmentRequest(MaskOutputFields):
    """Prompts on an uploaded image, in pixels of the original image (XYXY boxes)."""

    model_id: str = Field("", description="Empty: the server's default model.")
    points: list[Any] | None = Field(None, description="Nx2, or BxNx2 with B boxes.")
    labels: list[Any] | None = Field(None, description="N (or BxN): 1 foreground, 0 background.")
    box: list[Any] | None = Field(None, description="[x0, y0, x1, y1], or Bx4.")
    mask_input: PackedArray | AnswerReference | None = Field(
        None,
        description="1x256x256 low-res logits, one of an earlier answer's: packed, or named "
        "by that answer's answer_id and the candidate's index (the same result, exactly).",
    )
    multimask_output: bool = True
    normalize_coords: bool = True
    return_logits: bool = Field(True, description="Include the low-res logits (packed).")

    @field_validator("model_id", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        return "" if value is None else value


class SegmentResponse(BaseModel):
    """Binary masks (logits > 0) at the image's size, best first per object."""

    image_id: str
    model_id: str
    width: int
    height: int
    answer_id: str | None = Field(
        ...,
        description="Names this answer's low-res logits, kept by the server for a later "
        "mask_input {answer_id, index} on this image (bounded, least recently used first, "
        "dropped with the image; a 404 then says to send the packed logits). Null when the "
        "server keeps none (ANSWER_CACHE_BYTES=0).",
    )
    masks: list[Any] = Field(
        ...,
        description="C masks (or B lists of C), in mask_format: COCO RLE {size, counts}, "
        "base64 PNG strings, or {size, polygons} (see PolygonMask).",
    )
    scores: list[Any] = Field(..., description="C (or BxC) predicted IoU scores.")
    logits: PackedArray | None = Field(
        None, description="Cx256x256 (or BxCx256x256) low-res logits; absent without return_logits."
    )


def build_native_router(settings: Settings, admission: Admission, answers: Answers) -> APIRouter:
    # The token is checked by the guard before the body is read; this only
    # declares the bearer scheme in the schema.
    router = APIRouter(prefix=IMAGES_PATH, tags=["images"], dependencies=[Depends(bearer_scheme)])
    limits = prompt_limits(settings)

    @router.post(
        "",
        response_model=ImageResponse,
        responses=NATIVE_RESPONSES,
        operation_id="uploadImage",
        summary="Upload an image once; prompt it by id afterwards",
    )
    async def upload_image(
        request: Request,
        segmenter: SegmenterDep,
        image: Annotated[UploadFile, File(description="Image to segment.")],
        model_id: Annotated[str, Form(description="Empty: the server's default model.")] = "",
    ) -> Response:
        record, model = start_request(request, segmenter, model_id)
        require_ready(segmenter)
        width, height = await run_in_threadpool(segmenter.image_size, image.file)
        upload_bytes = image.size or 0
        record.details.update(image_bytes=upload_bytes, width=width, height=height)
        timings = Timings()

        def work(cancelled: Callable[[], bool]) -> ImageInfo:
            image.file.seek(0)
            return segmenter.add_image(model, image.file.read(), Work(timings, cancelled))

        cost = estimate_work_bytes(0, 0, height, width) + upload_bytes
        info, ticket = await run_admitted(request, admission, cost, timings, work)
        ticket.release()
        return json_response(image_fields(info))

    @router.get(
        "/{image_id}",
        response_model=ImageResponse,
        responses=NATIVE_RESPONSES,
        operation_id="getImage",
        summary="Whether the server still holds an image's embedding (404 if not)",
    )
    async def get_image(
        segmenter: SegmenterDep,
        image_id: ImageId,
        model_id: Annotated[str, Query(description="Empty: the default model.")] = "",
    ) -> Response:
        model = check_model(segmenter, model_id)
        check_image_id(image_id, model)
        return json_response(image_fields(await cached_image(segmenter, model, image_id)))

    @router.post(
        "/{image_id}/segment",
        response_model=SegmentResponse,
        responses=NATIVE_RESPONSES,
        operation_id="segmentImage",
        summary="Segment an uploaded image with points, boxes and a mask",
    )
    async def segment_image(
        request: Request,
        segmenter: SegmenterDep,
        image_id: ImageId,
        body: SegmentRequest,
    ) -> Response:
        record, model = start_by_id(request, segmenter, body.model_id, image_id)
        prompt = await run_in_threadpool(_prompt, body, limits)
        epsilon = body.checked_epsilon()
        try:
            info = await ready_image(segmenter, model, image_id)
        except ImageNotCached:
            answers.drop_image(model, image_id)  # the answers go with their image
            raise
        if isinstance(body.mask_input, AnswerReference):
            named = answers.mask_input(
                body.mask_input.answer_id, body.mask_input.index, model, info.image_id
            )
            prompt = replace(prompt, mask_input=named)
        candidates = 3 if prompt.multimask_output else 1
        objects = prompt.num_objects
        record.details.update(width=info.width, height=info.height, objects=objects)
        timings = Timings()

        def work(cancelled: Callable[[], bool]) -> tuple[ImageInfo, Prediction]:
            found, prediction = segmenter.segment_cached(
                model, image_id, prompt, Work(timings, cancelled)
            )
            return found, check_finite(prediction)

        cost = estimate_work_bytes(objects, candidates, info.height, info.width)
        (found, prediction), ticket = await run_admitted(request, admission, cost, timings, work)
        return await segment_answer(
            record,
            ticket,
            prediction,
            found,
            body.mask_format,
            answers,
            return_logits=body.return_logits,
            polygon_epsilon=epsilon,
        )

    return router


def _prompt(body: SegmentRequest, limits: PromptLimits) -> Prompt:
    """The JSON body through the Livepeer route's checks, messages in native names.

    A mask_input by reference is checked with a stand-in of its shape (the same 400s
    as packed logits); the route puts the kept logits in its place."""
    try:
        mask = None
        if isinstance(body.mask_input, AnswerReference):
            mask = np.zeros(MASK_SHAPE, dtype=np.float32)
        elif body.mask_input is not None:
            try:
                mask = unpack_array(body.mask_input.model_dump())
            except ValueError as exc:
                raise bad_request(f"mask_input: {exc}.") from None
            check_numbers(mask, "mask_input")
        return prompt_from_arrays(
            coords=json_array(body.points, "point_coords"),
            labels=json_array(body.labels, "point_labels"),
            boxes=json_array(body.box, "box"),
            mask=mask,
            multimask_output=body.multimask_output,
            return_logits=False,  # binary masks, as the predictor thresholds them
            normalize_coords=body.normalize_coords,
            limits=limits,
        )
    except ServiceError as exc:
        raise in_native_names(exc) from None
