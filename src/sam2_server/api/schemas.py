"""Response models, named as in Livepeer's runner so generated clients match."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class MasksResponse(BaseModel):
    """Response model for object segmentation."""

    masks: str = Field(..., description="The generated masks.")
    scores: str = Field(..., description="The model's confidence scores for each generated mask.")
    logits: str = Field(
        ..., description="The raw, unnormalized predictions (logits) for the masks."
    )


class APIError(BaseModel):
    """API error response model."""

    msg: str = Field(..., description="The error message.")


class HTTPError(BaseModel):
    """HTTP error response model."""

    detail: APIError = Field(..., description="Detailed error information.")


class HealthCheck(BaseModel):
    status: Literal["OK", "ERROR", "IDLE", "LOADING"] = Field(
        "OK", description="The health status of the pipeline."
    )
    unavailable: dict[str, str] | None = Field(
        None, description="Models that failed to load, with the reason; absent when none."
    )


class VersionResponse(BaseModel):
    pipeline: str
    model_id: str
    version: str = Field(..., description="The version of the server.")
