"""The routes of Livepeer's runner for this pipeline: segment, health, version."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sam2_server import PIPELINE, __version__
from sam2_server.api.forms import build_prompt
from sam2_server.api.schemas import HealthCheck, HTTPError, MasksResponse, VersionResponse
from sam2_server.api.service import Segmenter
from sam2_server.codecs import encode_livepeer
from sam2_server.domain import Prompt
from sam2_server.errors import PIPELINE_ERROR, ServiceError, bad_request

logger = logging.getLogger(__name__)

SEGMENT_PATH = "/segment-anything-2"

RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_200_OK: {
        "content": {"application/json": {"schema": {"x-speakeasy-name-override": "data"}}},
    },
    status.HTTP_400_BAD_REQUEST: {"model": HTTPError},
    status.HTTP_401_UNAUTHORIZED: {"model": HTTPError},
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


def build_router(max_field_bytes: int) -> APIRouter:
    router = APIRouter()
    form_limits = {"max_part_size": max_field_bytes}

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
    # The optional array fields are typed `str` with a None default, exactly as in
    # the reference, so the OpenAPI schema says `string` and not `anyOf[string,
    # null]` (OpenAPI 3.1), which the go-livepeer code generator cannot read.
    async def segment_anything_2(
        image: Annotated[UploadFile, File(description="Image to segment.", media_type="image/*")],
        model_id: Annotated[
            str, Form(description="Hugging Face model ID used for image generation.")
        ] = "",
        point_coords: Annotated[
            str,
            Form(
                description=(
                    "Nx2 array of point prompts to the model, where each point is in (X,Y) "
                    "in pixels."
                )
            ),
        ] = None,  # type: ignore[assignment]
        point_labels: Annotated[
            str,
            Form(
                description=(
                    "Labels for the point prompts, where 1 indicates a foreground point "
                    "and 0 indicates a background point."
                )
            ),
        ] = None,  # type: ignore[assignment]
        box: Annotated[
            str,
            Form(
                description=(
                    "A length 4 array given as a box prompt to the model, in XYXY format; "
                    "or Bx4 for several objects."
                )
            ),
        ] = None,  # type: ignore[assignment]
        mask_input: Annotated[
            str,
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
        served = segmenter.served_model_ids
        if model_id and model_id not in served:
            raise bad_request(
                f"pipeline configured with {', '.join(served)} but called with {model_id}."
            )
        # Off the event loop too: a 16 MB mask_input takes a while to parse.
        prompt = await run_in_threadpool(
            build_prompt,
            point_coords=point_coords,
            point_labels=point_labels,
            box=box,
            mask_input=mask_input,
            multimask_output=multimask_output,
            return_logits=return_logits,
            normalize_coords=normalize_coords,
        )
        _require_ready(segmenter)
        image_bytes = await image.read()
        body = await run_in_threadpool(
            _segment_and_encode,
            segmenter,
            model_id or segmenter.default_model_id,
            image_bytes,
            prompt,
        )
        return Response(body, media_type="application/json")

    @router.get("/health", response_model=HealthCheck, operation_id="health")
    async def health(segmenter: Segmenter = Depends(get_segmenter)) -> HealthCheck:
        return HealthCheck(status=segmenter.status)  # type: ignore[arg-type]

    @router.get("/version", response_model=VersionResponse, operation_id="version")
    async def version(segmenter: Segmenter = Depends(get_segmenter)) -> VersionResponse:
        return VersionResponse(
            pipeline=PIPELINE, model_id=segmenter.default_model_id, version=__version__
        )

    @router.get("/stats", include_in_schema=False)
    async def stats(segmenter: Segmenter = Depends(get_segmenter)) -> dict[str, Any]:
        return segmenter.stats()

    return router


def _segment_and_encode(
    segmenter: Segmenter, model_id: str, image_bytes: bytes, prompt: Prompt
) -> bytes:
    """Inference and serialisation together, in a worker thread: both are CPU-heavy.

    As in the reference, a failure the engine did not classify is logged with
    its details and answered with the generic message only.
    """
    try:
        return encode_livepeer(segmenter.segment(model_id, image_bytes, prompt))
    except ServiceError:
        raise
    except Exception as exc:
        logger.exception("segment-anything-2 failed on model %s", model_id)
        raise ServiceError(500, PIPELINE_ERROR) from exc


def _require_ready(segmenter: Segmenter) -> None:
    state = segmenter.status
    if state == "LOADING":
        raise ServiceError(
            503, "The model is still loading; retry shortly.", headers={"Retry-After": "5"}
        )
    if state != "OK":
        raise ServiceError(503, f"The model failed to load: {segmenter.error or 'unknown error'}")
