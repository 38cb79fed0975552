"""One engine replica: the server's own app around its own Engine, on Ray Serve.

Each replica holds a bounded embedding cache and its video sessions, and
tells Ray's router which images and sessions it holds through Serve's model
multiplexing: a held id is a "loaded model" (`_hold`), so a request carrying
that id as its multiplexed model id is routed here first (docs/scaling.md).
The cache's eviction stays the engine's business; an id still advertised
after its embedding was evicted only costs an encode, as on one machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import torch
from prometheus_client import generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle

from sam2_server.api import create_app
from sam2_server.api.paths import VIDEOS_PATH
from sam2_server.cluster.asgi import ELSEWHERE, ForwardedRequest, Head, Lifespan, run_http
from sam2_server.cluster.loopback import bind_replica_grpc_to_loopback
from sam2_server.cluster.routing import video_id_of
from sam2_server.config import Settings, configure_logging
from sam2_server.engine import Engine

logger = logging.getLogger(__name__)

# Ids a replica advertises (Serve's LRU of "loaded models"; its default of 3 would
# forget images still being clicked). Above what an embedding cache holds: the
# default 1 GiB keeps about 170-250 embeddings of a 1024x1024 model.
IDS_PER_REPLICA = 512
REPORT_INTERVAL_S = 0.5
_UPLOAD_TIMEOUT_S = 30.0


class _Held:
    """What Serve's multiplexing keeps per id: nothing; the engine holds the data."""

    def __init__(self, key: str) -> None:
        self.key = key


class EngineReplica:
    async def __init__(self, settings: Settings, directory: DeploymentHandle) -> None:
        bind_replica_grpc_to_loopback()  # before Serve binds it: cluster/loopback.py
        # As `sam2-server serve` logs; Ray keeps each replica's output in its session logs.
        configure_logging(settings)
        self.settings = settings
        self.directory = directory
        self.engine = Engine(settings)
        self.engine.fetch_upload = self._fetch_upload
        self.app = create_app(settings, self.engine)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.started = time.time()
        self._lifespan = Lifespan(self.app)
        await self._lifespan.start()  # starts loading the models in the background
        # Ready (so routed to) once loaded: a replacement replica must not take
        # clicks with a 503 "loading" while its siblings could answer them.
        while self.engine.status == "LOADING":
            await asyncio.sleep(0.1)
        self._reporter = asyncio.create_task(self._report_forever())
        logger.info("replica %s (pid %d) started", self.replica_id, os.getpid())

    @serve.multiplexed(max_num_models_per_replica=IDS_PER_REPLICA)
    async def _hold(self, key: str) -> _Held:
        return _Held(key)

    async def forward(
        self, request: ForwardedRequest, last_try: bool = False
    ) -> AsyncIterator[Head | bytes]:
        """The app's answer to `request`, streamed: a Head, then body chunks."""
        video_id = video_id_of(request.path)
        if video_id is not None:
            if not self.engine.videos.holds(video_id) and not last_try:
                yield ELSEWHERE
                return
            await self._hold(video_id)  # most recently used: stays advertised
        else:
            key = serve.get_multiplexed_model_id()
            if key:
                await self._hold(key)  # advertised while it is being encoded, as Serve intends
        if request.method == "POST" and request.path.rstrip("/") == VIDEOS_PATH:
            async for item in self._open_video(request):
                yield item
            return
        async for item in run_http(self.app, request):
            yield item

    async def _open_video(self, request: ForwardedRequest) -> AsyncIterator[Head | bytes]:
        """A new session: advertise its id before the client can name it."""
        head: Head | None = None
        chunks: list[bytes] = []
        async for item in run_http(self.app, request):
            if isinstance(item, Head):
                head = item
                chunks.append(item.body)
            else:
                chunks.append(item)
        if head is None:
            return
        body = b"".join(chunks)
        if head.status < 300:
            try:
                await self._hold(orjson.loads(body)["video_id"])
            except (ValueError, KeyError, TypeError):
                logger.warning("a new video session's answer has no video_id")
        yield replace(head, body=body)

    def _fetch_upload(self, image_id: str) -> bytes | None:
        """The upload kept by the directory (called in an engine worker thread: blocking)."""
        return self.directory.get_upload.remote(image_id).result(timeout_s=_UPLOAD_TIMEOUT_S)

    def report(self) -> dict[str, Any]:
        return {
            "replica": self.replica_id,
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "started": self.started,
            "threads": torch.get_num_threads(),  # Ray sets OMP_NUM_THREADS to the replica's CPUs
            "status": self.engine.status,
            "unavailable": self.engine.unavailable(),
            "stats": self.engine.stats(),
            "metrics": generate_latest(self.app.state.metrics.registry).decode(),
        }

    async def _report_forever(self) -> None:
        while True:
            try:
                await self.directory.report.remote(self.report())
            except Exception:  # the directory restarting: try again next time
                logger.warning("could not report to the directory", exc_info=True)
            await asyncio.sleep(REPORT_INTERVAL_S)
