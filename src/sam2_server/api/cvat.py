"""CVAT's interactor, as the Nuclio dashboard API that CVAT calls (docs/tools.md).

Stub: the routes are being built.
"""

from __future__ import annotations

from fastapi import APIRouter

from sam2_server.api.admission import Admission
from sam2_server.config import Settings


def build_cvat_router(settings: Settings, admission: Admission) -> APIRouter:
    return APIRouter(tags=["cvat"])
