"""`GET /hardware/info` and `GET /hardware/stats`, as Livepeer's runner serves them.

go-livepeer's AI worker asks `/hardware/info` once, when it registers a runner
(ai/worker/container.go, `getRunnerHardware`), and forwards the answer to the
orchestrator and gateways; it parses it with the client generated from
ai-runner's openapi.yaml, so the schema names and fields here are that file's
(`HardwareInformation`, `HardwareStats`, `GPUComputeInfo`,
`GPUUtilizationInfo`; runner/src/runner/routes/hardware.py and
runner/src/runner/utils/hardware.py). Like the runner's, these routes take no
token. The GPU figures come from the engine through `Segmenter.hardware()`:
this module never imports torch.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from sam2_server import PIPELINE
from sam2_server.api.deps import SegmenterDep as Engine
from sam2_server.api.service import Segmenter


class GPUComputeInfo(BaseModel):
    """Model for detailed GPU compute information."""

    id: str
    name: str
    memory_total: int
    memory_free: int
    major: int
    minor: int


class GPUUtilizationInfo(BaseModel):
    """Model for GPU utilization statistics."""

    id: str
    name: str
    memory_total: int
    memory_free: int
    utilization_compute: int
    utilization_memory: int


class HardwareInformation(BaseModel):
    """Response model for GPU information."""

    pipeline: str
    model_id: str
    gpu_info: dict[int, GPUComputeInfo]


class HardwareStats(BaseModel):
    """Response model for real-time GPU statistics."""

    pipeline: str
    model_id: str
    gpu_stats: dict[int, GPUUtilizationInfo]


def build_hardware_router() -> APIRouter:
    """The two routes, each also under a trailing slash (hidden), as the runner has them."""
    router = APIRouter()

    @router.get("/hardware/info", response_model=HardwareInformation, operation_id="hardware_info")
    @router.get("/hardware/info/", response_model=HardwareInformation, include_in_schema=False)
    async def hardware_info(segmenter: Engine) -> HardwareInformation:
        gpus = await _gpus(segmenter)
        return HardwareInformation(
            **_who(segmenter), gpu_info={i: GPUComputeInfo.model_validate(g) for i, g in gpus}
        )

    @router.get("/hardware/stats", response_model=HardwareStats, operation_id="hardware_stats")
    @router.get("/hardware/stats/", response_model=HardwareStats, include_in_schema=False)
    async def hardware_stats(segmenter: Engine) -> HardwareStats:
        gpus = await _gpus(segmenter)
        return HardwareStats(
            **_who(segmenter), gpu_stats={i: GPUUtilizationInfo.model_validate(g) for i, g in gpus}
        )

    return router


async def _gpus(segmenter: Segmenter) -> list[tuple[int, dict[str, Any]]]:
    """The engine's GPUs, off the event loop as the runner does: the first CUDA query
    can be slow."""
    gpus = await run_in_threadpool(segmenter.hardware)
    return list(gpus.items())


def _who(segmenter: Segmenter) -> dict[str, Any]:
    return {"pipeline": PIPELINE, "model_id": segmenter.default_model_id}
