"""Response models, named as in Livepeer's runner so generated clients match, and the
OpenAPI error table every surface declares."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import status
from pydantic import BaseModel, ConfigDict, Field


class RequestBody(BaseModel):
    """A JSON request body: a field this server does not know is a 422 naming it.

    A misspelt parameter (`points_per_sid`) must not run silently with the
    defaults; clients that send an extra field learn at once that it is ignored
    nowhere and honoured nowhere.
    """

    model_config = ConfigDict(extra="forbid")


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


# The Livepeer route's declared answers (the reference's, 408 and 413 added).
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

# The native API's: the same errors, and 404 for an image or session it no longer holds.
NATIVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: spec for code, spec in RESPONSES.items() if code != 200},
    404: RESPONSES[400],
}
