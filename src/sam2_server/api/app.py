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

from sam2_server import __version__
from sam2_server.api.errors import install_error_handlers
from sam2_server.api.guard import RequestGuard
from sam2_server.api.routes import SEGMENT_PATH, build_router
from sam2_server.api.service import Segmenter
from sam2_server.config import Settings

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
    )
    app.state.segmenter = segmenter
    app.state.settings = settings
    app.include_router(build_router(settings.max_field_bytes))
    install_error_handlers(app)
    _describe_uploads_as_binary(app)
    app.add_middleware(
        RequestGuard,
        auth_token=settings.auth_token,
        protected_paths=(SEGMENT_PATH,),
        max_request_bytes=settings.max_request_bytes,
    )
    return app


def _describe_uploads_as_binary(app: FastAPI) -> None:
    """Write file fields as `format: binary`, as the reference's schema does.

    Recent FastAPI describes uploads with OpenAPI 3.1's `contentMediaType`;
    code generators built for 3.0 (go-livepeer's oapi-codegen, Speakeasy's
    SDKs) recognise a file only by `format: binary`.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for component in schema.get("components", {}).get("schemas", {}).values():
                for prop in component.get("properties", {}).values():
                    if prop.get("contentMediaType") == "application/octet-stream":
                        del prop["contentMediaType"]
                        prop["format"] = "binary"
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _load(segmenter: Segmenter) -> None:
    try:
        segmenter.load()
    except Exception:  # the segmenter logged and recorded why; /health now says ERROR
        logger.warning("no model loaded; /health reports ERROR and requests get 503")
