"""Roboflow inference's SAM2 routes, /sam2/embed_image and /sam2/segment_image (docs/tools.md).

Stub: the routes are being built.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter

from sam2_server.api.admission import Admission
from sam2_server.api.paths import ROBOFLOW_PATH
from sam2_server.config import Settings


def roboflow_error_body(status: int, message: str) -> bytes:
    """The error shape Roboflow's SDK reads (`message`), for the guard's 401/408/413."""
    return orjson.dumps({"message": message})


def build_roboflow_router(settings: Settings, admission: Admission) -> APIRouter:
    return APIRouter(prefix=ROBOFLOW_PATH, tags=["roboflow"])
