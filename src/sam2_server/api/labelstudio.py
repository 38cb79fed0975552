"""Label Studio's ML backend protocol under /labelstudio (docs/tools.md).

Stub: the routes are being built.
"""

from __future__ import annotations

from fastapi import APIRouter

from sam2_server.api.admission import Admission
from sam2_server.api.paths import LABEL_STUDIO_PATH
from sam2_server.config import Settings


def build_labelstudio_router(settings: Settings, admission: Admission) -> APIRouter:
    return APIRouter(prefix=LABEL_STUDIO_PATH, tags=["label studio"])
