"""`GET /v1/models`: the models this server serves, whatever their family.

MODEL_ID may list models of several families (SAM2 through Meta's `sam2`,
EdgeTAM through `transformers`); a client (the page's model picker, the
CLI, a tool) asks here which there are before it names one in `model_id`.
Each is described from its config without loading it, so asking never
costs a load; `loaded` says whether a request would wait for one. Behind the
bearer token like the rest of /v1.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from sam2_server.api.deps import SegmenterDep, bearer_scheme
from sam2_server.api.paths import MODELS_PATH
from sam2_server.api.schemas import HTTPError


class ServedModel(BaseModel):
    """One served model."""

    model_id: str = Field(..., description="What requests name in `model_id`.")
    default: bool = Field(..., description="Whether requests that name no model get this one.")
    family: Literal["sam2", "edgetam"] | None = Field(
        ...,
        description=(
            "The model family, read from the model's own config (null while its files "
            "cannot be read: see `error`)."
        ),
    )
    input_size: int | None = Field(
        ..., description="The square side, in pixels, images are resized to for the encoder."
    )
    state: Literal["not loaded", "loading", "loaded", "error"] = Field(
        ..., description="Whether the model is in memory (models load on first use)."
    )
    loaded: bool = Field(..., description="`state` is `loaded`: no request waits for a load.")
    video: bool = Field(..., description="Whether it opens video sessions (/v1/videos).")
    automatic_masks: bool = Field(
        ..., description="Whether it generates automatic masks (/v1/images/{id}/automatic-masks)."
    )
    error: str | None = Field(
        ..., description="Why it cannot be served now (one line), or null when it can."
    )


class ModelsResponse(BaseModel):
    """The served models, in MODEL_ID's order."""

    default: str = Field(..., description="The id of the default model.")
    models: list[ServedModel]


def build_models_router() -> APIRouter:
    router = APIRouter(tags=["models"], dependencies=[Depends(bearer_scheme)])

    @router.get(
        MODELS_PATH,
        response_model=ModelsResponse,
        operation_id="list_models",
        responses={401: {"model": HTTPError}},
    )
    async def list_models(segmenter: SegmenterDep) -> ModelsResponse:
        # Describing reads config files (the first time): off the event loop.
        described = await run_in_threadpool(segmenter.describe_models)
        return ModelsResponse(
            default=segmenter.default_model_id,
            models=[ServedModel.model_validate(entry) for entry in described],
        )

    return router
