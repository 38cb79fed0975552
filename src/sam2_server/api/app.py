"""The FastAPI application: routes, the request guard and the error handlers.

Model loading starts in a background thread when the app starts, so `/health`
answers `LOADING` at once (Livepeer's orchestrator polls it from the first
second) and flips to `OK` or `ERROR` when loading ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette

from sam2_server import __version__
from sam2_server.api.admission import Admission
from sam2_server.api.answers import Answers
from sam2_server.api.automatic import build_automatic_router
from sam2_server.api.cvat import build_cvat_router
from sam2_server.api.errors import install_error_handlers
from sam2_server.api.guard import API_KEY, BASIC, TOKEN_HEADER, RequestGuard, Surface
from sam2_server.api.hardware import build_hardware_router
from sam2_server.api.labelstudio import build_labelstudio_router, labelstudio_error_body
from sam2_server.api.livepeer import ARRAY_FIELDS, build_livepeer_router
from sam2_server.api.models import build_models_router
from sam2_server.api.native import build_native_router
from sam2_server.api.observe import Metrics, Observer
from sam2_server.api.operations import build_operations_router
from sam2_server.api.paths import (
    CVAT_PATHS,
    DOCS_FILES,
    HARDWARE_PATHS,
    IMAGES_PATH,
    LABEL_STUDIO_PATH,
    MODELS_PATH,
    OPS_PATHS,
    ROBOFLOW_PATH,
    ROUTES,
    SEGMENT_PATH,
    TOOL_PREFIXES,
    VIDEOS_PATH,
    XANYLABELING_PATH,
)
from sam2_server.api.roboflow import build_roboflow_router, roboflow_error_body
from sam2_server.api.service import Segmenter
from sam2_server.api.videos import build_video_router
from sam2_server.api.web import build_docs_router, build_web_router
from sam2_server.api.xanylabeling import build_xanylabeling_router, xanylabeling_error_body
from sam2_server.config import GIB, Settings, machine_memory_bytes

logger = logging.getLogger(__name__)


def create_app(settings: Settings, segmenter: Segmenter, *, load: bool = True) -> FastAPI:
    """Build the app around `segmenter`; with `load`, start loading its models on startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load:
            threading.Thread(
                target=_load, args=(segmenter,), name="model-loader", daemon=True
            ).start()
        yield

    app = FastAPI(
        title="sam2-server",
        description="Segment Anything 2 over HTTP, wire-compatible with Livepeer's AI runner.",
        version=__version__,
        lifespan=lifespan,
        # FastAPI's own /docs and /redoc load their scripts from a CDN: /docs is
        # served below with Swagger UI's files from this package (api/web.py).
        docs_url=None,
        redoc_url=None,
    )
    admission = Admission(work_budget(settings), settings.max_queue)
    answers = Answers(settings.answer_cache_bytes)  # the segment answers' logits, by answer_id
    metrics = Metrics()
    metrics.watch(segmenter.stats)
    app.state.segmenter = segmenter
    app.state.settings = settings
    app.state.admission = admission
    app.state.answers = answers
    app.state.metrics = metrics
    app.include_router(build_livepeer_router(settings, admission, answers))
    app.include_router(build_operations_router(admission, metrics))
    app.include_router(build_hardware_router())
    app.include_router(build_models_router())
    app.include_router(build_native_router(settings, admission, answers))
    app.include_router(build_automatic_router(settings, admission))
    app.include_router(build_video_router(settings, admission))
    app.include_router(build_labelstudio_router(settings, admission))
    app.include_router(build_cvat_router(settings, admission))
    app.include_router(build_xanylabeling_router(settings, admission))
    app.include_router(build_roboflow_router(settings, admission))
    app.include_router(build_web_router())
    app.include_router(build_docs_router(app.title, app.openapi_url or "/openapi.json"))
    install_error_handlers(app)
    _describe_uploads_as_binary(app)
    # Added last = outermost: the observer sees the guard's answers too.
    add_request_guard(app, settings)
    app.add_middleware(
        Observer,
        metrics=metrics,
        routes=(*ROUTES, *HARDWARE_PATHS, *DOCS_FILES),
        prefixes=(IMAGES_PATH, VIDEOS_PATH, *TOOL_PREFIXES),
    )
    return app


def add_request_guard(app: Starlette, settings: Settings) -> None:
    """Auth, size and time limits before a byte of the body is read (api/guard.py).

    The cluster's ingress (cluster/ingress.py) puts the same guard in front,
    so a refused request never reaches a replica.
    """
    app.add_middleware(
        RequestGuard,
        auth_token=settings.auth_token,
        surfaces=surfaces(settings),
        max_request_bytes=settings.max_request_bytes,
        read_timeout_s=settings.body_read_timeout_s,
        total_timeout_s=settings.body_total_timeout_s,
    )


def surfaces(settings: Settings) -> tuple[Surface, ...]:
    """Every path that needs the token, and how each tool may send it.

    Each tool authenticates the way its client does; all check the same
    token. OPEN_SURFACES opens a tool's surface by name (CVAT's calls to its
    function dashboard carry no credentials).
    """
    opened = set(settings.open_surfaces)
    return (
        Surface(
            "core",
            paths=(SEGMENT_PATH, *OPS_PATHS, MODELS_PATH),
            prefixes=(IMAGES_PATH, VIDEOS_PATH),
        ),
        Surface(
            "labelstudio",
            prefixes=(LABEL_STUDIO_PATH,),
            ways=frozenset({BASIC}),
            open="labelstudio" in opened,
            body=labelstudio_error_body,
            challenge=b'Basic realm="sam2-server"',
            # Label Studio posts its webhooks without credentials; the route only acknowledges.
            public=(LABEL_STUDIO_PATH + "/webhook",),
        ),
        Surface("cvat", prefixes=CVAT_PATHS, open="cvat" in opened),
        Surface(
            "xanylabeling",
            prefixes=(XANYLABELING_PATH,),
            ways=frozenset({TOKEN_HEADER}),
            open="xanylabeling" in opened,
            body=xanylabeling_error_body,
            challenge=b"Token",
            public=(XANYLABELING_PATH + "/health",),  # open on X-AnyLabeling-Server too
        ),
        Surface(
            "roboflow",
            prefixes=(ROBOFLOW_PATH,),
            ways=frozenset({API_KEY}),
            open="roboflow" in opened,
            body=roboflow_error_body,
        ),
    )


def work_budget(settings: Settings) -> int:
    """WORK_MEMORY_BYTES, or a quarter of the machine's memory, at most 8 GiB."""
    if settings.work_memory_bytes is not None:
        return settings.work_memory_bytes
    return min(8 * GIB, machine_memory_bytes() // 4)


def _describe_uploads_as_binary(app: FastAPI) -> None:
    """Write file fields as `format: binary`, as the reference's schema does.

    Recent FastAPI describes uploads with OpenAPI 3.1's `contentMediaType`;
    code generators built for 3.0 (go-livepeer's oapi-codegen, Speakeasy's
    SDKs) recognise a file only by `format: binary`. The array fields, which
    also accept a file part, are described as the reference's plain strings.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for title, component in schema.get("components", {}).get("schemas", {}).items():
                properties = component.get("properties", {})
                for name, prop in properties.items():
                    # Only the Livepeer form's fields (a form's body is `Body_...`): JSON
                    # bodies with the same names (the native mask_input) keep their types.
                    if name in ARRAY_FIELDS and "anyOf" in prop and title.startswith("Body_"):
                        properties[name] = {
                            "type": "string",
                            **{k: v for k, v in prop.items() if k in ("title", "description")},
                        }
                    elif prop.get("contentMediaType") == "application/octet-stream":
                        del prop["contentMediaType"]
                        prop["format"] = "binary"
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _load(segmenter: Segmenter) -> None:
    try:
        segmenter.load()
    except Exception:  # the segmenter logged and recorded why; /health now says ERROR
        logger.warning("no model loaded; /health reports ERROR and requests get 503")
