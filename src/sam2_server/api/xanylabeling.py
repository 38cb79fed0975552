"""X-AnyLabeling-Server's protocol under /xanylabeling (docs/tools.md).

Stub: the routes are being built.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter

from sam2_server.api.admission import Admission
from sam2_server.api.paths import XANYLABELING_PATH
from sam2_server.config import Settings


def xanylabeling_error_body(status: int, message: str) -> bytes:
    """The error shape X-AnyLabeling's client reads, for the guard's 401/408/413."""
    code = "UNAUTHORIZED" if status == 401 else "INVALID_REQUEST"
    return orjson.dumps({"success": False, "error": {"code": code, "message": message}})


def build_xanylabeling_router(settings: Settings, admission: Admission) -> APIRouter:
    return APIRouter(prefix=XANYLABELING_PATH, tags=["x-anylabeling"])
