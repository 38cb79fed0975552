"""The operations routes: health and version (as Livepeer's runner has them), stats
and Prometheus metrics (the operator's; behind the token when one is set)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sam2_server import PIPELINE, __version__
from sam2_server.api.admission import Admission
from sam2_server.api.deps import SegmenterDep
from sam2_server.api.observe import Metrics
from sam2_server.api.schemas import HealthCheck, VersionResponse


def build_operations_router(admission: Admission, metrics: Metrics) -> APIRouter:
    router = APIRouter()

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
    async def health(segmenter: SegmenterDep) -> HealthCheck:
        # `unavailable` only when a model failed: a healthy answer stays exactly
        # the reference's `{"status": "OK"}`.
        return HealthCheck(
            status=segmenter.status,  # type: ignore[arg-type]
            unavailable=segmenter.unavailable() or None,
        )

    @router.get("/version", response_model=VersionResponse, operation_id="version")
    async def version(segmenter: SegmenterDep) -> VersionResponse:
        return VersionResponse(
            pipeline=PIPELINE, model_id=segmenter.default_model_id, version=__version__
        )

    @router.get("/stats", include_in_schema=False)
    async def stats(segmenter: SegmenterDep) -> dict[str, Any]:
        return segmenter.stats()

    return router
