"""`POST /v1/images/{image_id}/automatic-masks`: segment everything on an uploaded image.

The parameters and answer are the sam2 library's `SAM2AutomaticMaskGenerator`
and its `generate()` records (`output_mode="coco_rle"`), names and defaults
included, so code written against the library reads the answer unchanged.
The work grows with points_per_side squared, times the crops of each crop
layer, so both are bounded by settings (400 past them); every other
parameter is checked against its meaningful range here, before admission,
rather than failing inside the library as a 500. Auth, model checks,
admission and the error shape are the other native routes' (`pipeline.py`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, get_type_hints

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, create_model, field_validator

from sam2_server.api.admission import Admission, estimate_work_bytes
from sam2_server.api.deps import SegmenterDep, bearer_scheme
from sam2_server.api.native_fields import (
    ImageId,
    MaskOutputFields,
    PolygonMask,
    ready_image,
    start_by_id,
)
from sam2_server.api.paths import IMAGES_PATH
from sam2_server.api.pipeline import automatic_limits, run_admitted, start_progressing
from sam2_server.api.responses import NDJSON, accepts_ndjson, progress_stream, serialise
from sam2_server.api.schemas import NATIVE_RESPONSES
from sam2_server.codecs.automatic import automatic_answer, estimate_answer_bytes
from sam2_server.config import Settings, machine_memory_bytes
from sam2_server.domain import AutomaticParams, ImageInfo, MaskRecord, Timings, Work
from sam2_server.errors import bad_request
from sam2_server.prompts import automatic_batches, check_automatic

MIB = 1024 * 1024
# The mask decoder's activations per point of a batch (the image embedding
# repeated per point, the two-way transformer, the upscaled features): a
# 64-point batch peaked 1.66 GB above the idle process on CPU in fp32,
# whatever the image size. Every SAM2 size shares this decoder.
DECODER_BYTES_PER_POINT = 28 * MIB
# Then every candidate of the batch is upsampled to the image's size as float32
# logits and thresholded: peak growth over the idle process was 1.8 GB for 192
# candidates on a 1800x1200 photo and 8.9 GB on a 4000x3000 one (CPU, fp32),
# i.e. about 3.9 bytes per candidate pixel; this allows 4.5.
BYTES_PER_CANDIDATE_PIXEL = 4.5

logger = logging.getLogger(__name__)


class _RequestFields(MaskOutputFields):
    """SAM2AutomaticMaskGenerator's parameters, with the library's defaults."""

    model_id: str = Field("", description="Empty: the server's default model.")

    @field_validator("model_id", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        return "" if value is None else value


def _generator_fields() -> dict[str, Any]:
    """The generator's parameters as request fields: names, types, defaults and
    descriptions all from `AutomaticParams`, their one home."""
    types = get_type_hints(AutomaticParams)
    return {
        param.name: (types[param.name], Field(param.default, description=param.metadata["help"]))
        for param in dataclasses.fields(AutomaticParams)
    }


if TYPE_CHECKING:  # the checker sees the base; FastAPI reads the full model
    AutomaticMasksRequest = _RequestFields
else:
    AutomaticMasksRequest = create_model(
        "AutomaticMasksRequest",
        __base__=_RequestFields,
        __doc__=_RequestFields.__doc__,
        __module__=__name__,
        **_generator_fields(),
    )


class CocoRle(BaseModel):
    """COCO RLE as pycocotools writes it, `counts` decoded to a string."""

    size: list[int] = Field(..., description="[height, width]")
    counts: str


class AutomaticMask(BaseModel):
    """One record of `SAM2AutomaticMaskGenerator.generate()`."""

    segmentation: CocoRle | str | PolygonMask = Field(
        ...,
        description="COCO RLE (mask_format rle), a base64 grayscale PNG (png), or "
        "{size, polygons} (polygon).",
    )
    area: int = Field(..., description="Pixels in the mask.")
    bbox: list[float] = Field(..., description="Box around the mask, XYWH.")
    predicted_iou: float
    point_coords: list[list[float]] = Field(..., description="The grid point that prompted it.")
    stability_score: float
    crop_box: list[float] = Field(..., description="The crop it was generated on, XYWH.")


class AutomaticMasksResponse(BaseModel):
    """Every mask the generator kept, in its order."""

    image_id: str
    model_id: str
    width: int
    height: int
    masks: list[AutomaticMask]
    warnings: list[str] | None = Field(
        None,
        description="What the parameters asked for that the library skipped on this server "
        "(e.g. min_mask_region_area without sam2's CUDA extension); absent when nothing was.",
    )


# With `Accept: application/x-ndjson`: the answer as lines, streamed as the work goes.
_LINE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": 'One line: {"progress": {"done", "total"}} after each batch of points '
    '(over the image and every crop), then {"result": <the JSON answer>}; a failure after '
    'the first line ends the stream with {"error": {"status", "msg"}}.',
    "properties": {
        "progress": {
            "type": "object",
            "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}},
            "required": ["done", "total"],
        },
        "result": {"$ref": "#/components/schemas/AutomaticMasksResponse"},
        "error": {
            "type": "object",
            "properties": {"status": {"type": "integer"}, "msg": {"type": "string"}},
            "required": ["status", "msg"],
        },
    },
}


def build_automatic_router(settings: Settings, admission: Admission) -> APIRouter:
    # The token is checked by the guard before the body is read; this only
    # declares the bearer scheme in the schema.
    router = APIRouter(prefix=IMAGES_PATH, tags=["images"], dependencies=[Depends(bearer_scheme)])
    work_ceiling = automatic_work_ceiling(settings, admission.budget)

    @router.post(
        "/{image_id}/automatic-masks",
        response_model=AutomaticMasksResponse,
        responses={200: {"content": {NDJSON: {"schema": _LINE_SCHEMA}}}, **NATIVE_RESPONSES},
        operation_id="automaticMasks",
        summary="Segment everything on an uploaded image (SAM2AutomaticMaskGenerator)",
    )
    async def automatic_masks(
        request: Request,
        segmenter: SegmenterDep,
        image_id: ImageId,
        body: AutomaticMasksRequest,
    ) -> Response:
        record, model = start_by_id(request, segmenter, body.model_id, image_id)
        params = automatic_params(body, settings)
        epsilon = body.checked_epsilon()
        info = await ready_image(segmenter, model, image_id)
        record.details.update(
            width=info.width,
            height=info.height,
            points_per_side=params.points_per_side,
            crop_n_layers=params.crop_n_layers,
        )
        timings = Timings()
        warnings = segmenter.automatic_warnings(params)
        for warning in warnings:
            logger.warning("automatic masks on %s: %s", image_id[:12], warning)

        def work(
            cancelled: Callable[[], bool], batch_done: Callable[[], None] | None = None
        ) -> tuple[ImageInfo, list[MaskRecord]]:
            progress = None if batch_done is None else (lambda _points: batch_done())
            return segmenter.automatic_masks(
                model, image_id, params, Work(timings, cancelled, progress)
            )

        def answer(result: tuple[ImageInfo, list[MaskRecord]]) -> bytes:
            found, records = result
            record.details["masks"] = len(records)
            _check_answer_size(records, body.mask_format, settings.max_response_bytes)
            return automatic_answer(
                records,
                image_id=found.image_id,
                model_id=model,
                width=found.width,
                height=found.height,
                mask_format=body.mask_format,
                polygon_epsilon=epsilon,
                warnings=warnings,
            )

        cost = automatic_work_bytes(params, info.height, info.width)
        _check_work(params, info.height, info.width, cost, work_ceiling)
        if accepts_ndjson(request):
            progressing = await start_progressing(request, admission, cost, timings, work)
            total = automatic_batches(params)
            stall_s = settings.body_read_timeout_s
            return await progress_stream(record, progressing, total, answer, stall_s)
        result, ticket = await run_admitted(request, admission, cost, timings, work)
        return await serialise(record, ticket, partial(answer, result))

    return router


def automatic_params(body: AutomaticMasksRequest, settings: Settings) -> AutomaticParams:
    """The body's parameters, or a 400 naming the first one out of its range or bound."""
    fields = body.model_dump(exclude={"model_id", "mask_format", "polygon_epsilon"})
    return check_automatic(AutomaticParams(**fields), automatic_limits(settings))


def automatic_work_bytes(params: AutomaticParams, height: int, width: int) -> int:
    """Peak working memory of one generation: one batch of points at a time.

    The mask decoder's activations for the batch, or, whichever is larger
    (they are freed before it), its candidates as full-size float logits with
    their thresholded copies; plus the pixels and a fixed share. The largest
    crop is the whole image; masks kept between batches are run-length
    encoded, small beside a batch.
    """
    return _batch_bytes(_batch_points(params), params, height, width)


def automatic_work_ceiling(settings: Settings, work_budget: int) -> int:
    """MAX_AUTOMATIC_WORK_BYTES, or half the machine's memory (the work budget if larger)."""
    if settings.max_automatic_work_bytes is not None:
        return settings.max_automatic_work_bytes
    return max(work_budget, machine_memory_bytes() // 2)


def _batch_points(params: AutomaticParams) -> int:
    return min(params.points_per_batch, params.points_per_side**2)


def _batch_bytes(points: int, params: AutomaticParams, height: int, width: int) -> int:
    pixels = height * width
    candidates = points * (3 if params.multimask_output else 1)
    upsampled = int(candidates * pixels * BYTES_PER_CANDIDATE_PIXEL)
    decoder = points * DECODER_BYTES_PER_POINT
    return max(decoder, upsampled) + estimate_work_bytes(0, 0, height, width)


def _check_work(params: AutomaticParams, height: int, width: int, cost: int, ceiling: int) -> None:
    """A 400 for a generation whose one batch needs more memory than this server allows.

    Admission runs a request larger than the shared budget alone, which is
    right while one request fits the machine; a batch grows with the image
    (192 candidates of a 36 MP image as float32 are 28 GB, more than many
    servers hold, and the kernel kills the process rather than failing the
    allocation), so past the ceiling it is refused before any work, saying
    which `points_per_batch` fits. That parameter only sets how many points
    are decoded at once.
    """
    if cost <= ceiling:
        return
    points = _batch_points(params)
    fits = next(
        (n for n in range(points, 0, -1) if _batch_bytes(n, params, height, width) <= ceiling), 0
    )
    mode = "with multimask_output" if params.multimask_output else "with one mask per point"
    if fits:
        advice = (
            f"use points_per_batch {fits} or less (it only sets how many points are "
            "decoded at once)" + (", or multimask_output=false" if params.multimask_output else "")
        )
    elif params.multimask_output:
        advice = "use multimask_output=false and a small points_per_batch, or a smaller image"
    else:
        advice = "use a smaller image"
    raise bad_request(
        f"points_per_batch {points} {mode} on this {width}x{height} image needs about "
        f"{cost / 2**30:.1f} GiB of working memory per batch, over this server's limit of "
        f"{ceiling / 2**30:.1f} GiB (MAX_AUTOMATIC_WORK_BYTES); {advice}."
    )


def _check_answer_size(records: list[MaskRecord], mask_format: str, limit: int) -> None:
    """Refuse an answer too large to send. Its size is known only after the work (how
    many masks pass the thresholds, how ragged they are), so say what to change."""
    estimate = estimate_answer_bytes(records, mask_format)
    if estimate <= limit:
        return
    smaller = ", or mask_format rle" if mask_format == "polygon" else ""
    raise bad_request(
        f"The answer would hold {len(records)} masks, about {estimate / 2**20:.1f} MiB, over "
        f"this server's limit of {limit / 2**20:.1f} MiB (MAX_RESPONSE_BYTES); raise "
        f"pred_iou_thresh or stability_score_thresh, or lower points_per_side{smaller}."
    )
