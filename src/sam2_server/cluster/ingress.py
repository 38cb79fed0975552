"""The cluster's front door: route each request to the replica that holds its image.

It checks the request exactly as one server would (the same `RequestGuard`:
auth, size, slow bodies), derives its routing key (cluster/routing.py),
and hands it to the engine deployment with that key as the multiplexed
model id; the replica's answer streams back unchanged. `/health`, `/stats`
and `/metrics` are the cluster's, built from the replicas' reports in the
directory.

Retries: a request whose replica died before answering is sent again (Ray
routes it to a live one, which encodes the image again; a native `image_id`
is re-encoded from the directory's copy of the upload). A video request that
reached a replica without the session (Ray's router had not yet heard of a
new session, or spilled past a busy holder) is asked again after a short
wait; the last try lets the replica answer for itself, so an unknown video
is the usual 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sam2_server.api.app import add_request_guard, work_budget
from sam2_server.api.errors import json_error
from sam2_server.api.paths import IMAGES_PATH
from sam2_server.cluster.asgi import ELSEWHERE, ForwardedRequest, Head
from sam2_server.cluster.loopback import bind_replica_grpc_to_loopback
from sam2_server.cluster.routing import inline_image_key, route_of
from sam2_server.config import Settings
from sam2_server.domain import image_id_of

logger = logging.getLogger(__name__)

# Waits before each try: about 3 s in all, several times Serve's 0.1 s push of
# a replica's ids plus the controller's broadcast to the routers.
RETRY_DELAYS_S = (0.0, 0.1, 0.2, 0.4, 0.8, 1.6)
# A replica silent this long is counted out of /health, /stats and /metrics
# (reports come every 0.5 s; an encode holds the GIL only in short stretches).
REPORT_MAX_AGE_S = 5.0
_STARTUP_GRACE_S = 300.0
RETRY_AFTER_S = 1  # no replica has reported yet: LOADING, not ERROR
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Ingress:
    """The ingress deployment; Serve asks it for its ASGI app once it is built."""

    def __init__(
        self, settings: Settings, engine: DeploymentHandle, directory: DeploymentHandle
    ) -> None:
        bind_replica_grpc_to_loopback()  # before Serve binds it: cluster/loopback.py
        # Not `self.app`: Serve's ingress wrapper owns that name.
        self._front = build_ingress_app(settings, engine, directory)

    def __serve_build_asgi_app__(self) -> Starlette:
        return self._front


def build_ingress_app(
    settings: Settings, engine: DeploymentHandle, directory: DeploymentHandle
) -> Starlette:
    started = time.monotonic()

    async def reports() -> list[dict[str, Any]]:
        return await directory.reports.remote(REPORT_MAX_AGE_S)

    def starting() -> bool:
        return time.monotonic() - started < _STARTUP_GRACE_S

    async def health(request: Request) -> Response:
        replicas = await reports()
        body: dict[str, Any] = {"status": cluster_status(replicas, starting=starting())}
        unavailable = {k: v for r in replicas for k, v in r["unavailable"].items()}
        if unavailable:
            body["unavailable"] = unavailable
        return Response(orjson.dumps(body), media_type="application/json")

    async def stats(request: Request) -> Response:
        replicas = await reports()
        uploads = await directory.upload_stats.remote()
        body = cluster_stats(replicas, uploads, starting=starting())
        return Response(orjson.dumps(body), media_type="application/json")

    async def metrics(request: Request) -> Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(await reports()))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    budget = work_budget(settings)
    held = 0  # request bodies in this process (one event loop: no lock)

    async def forward(request: Request) -> Response:
        # Bodies wait here in memory until a replica takes them: bounded like one
        # server's work, by the declared length (or the largest allowed) up front.
        nonlocal held
        declared = request.headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else settings.max_request_bytes
        if held + size > budget and held > 0:
            return json_error(
                503, "The server is busy; retry shortly.", {"Retry-After": str(RETRY_AFTER_S)}
            )
        held += size
        try:
            return await _forward(request)
        finally:
            held -= size

    async def _forward(request: Request) -> Response:
        body = await request.body()  # bounded in size and time by the guard
        path = request.url.path
        route = route_of(request.method, path)
        key = route.key
        if route.upload:
            data = await _image_part(request, settings.max_field_bytes)
            if data is not None:
                key = image_id_of(data)
                if path.rstrip("/") == IMAGES_PATH:
                    await directory.put_upload.remote(key, data)
        elif key is None:
            key = inline_image_key(request.method, path, body)
        forwarded = ForwardedRequest(
            method=request.method,
            path=path,
            query_string=request.scope.get("query_string", b""),
            headers=tuple(request.scope["headers"]),
            body=body,
            client=request.scope.get("client"),
        )
        handle = engine.options(stream=True, multiplexed_model_id=key or "")
        for attempt, delay in enumerate(RETRY_DELAYS_S):
            await asyncio.sleep(delay)
            last_try = attempt == len(RETRY_DELAYS_S) - 1 or not route.video
            stream = handle.forward.remote(forwarded, last_try=last_try)
            try:
                head = await stream.__anext__()
            except StopAsyncIteration:
                return json_error(500, "the replica gave no answer")
            except RayActorError as exc:
                logger.warning(
                    "%s %s: replica lost (%s); trying another", request.method, path, exc
                )
                continue
            if head == ELSEWHERE:
                continue
            assert isinstance(head, Head)
            response = StreamingResponse(_rest(head.body, stream), status_code=head.status)
            response.raw_headers = list(head.headers)
            return response
        return json_error(
            503, "No replica could answer; try again.", {"Retry-After": str(RETRY_AFTER_S)}
        )

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/{path:path}", forward, methods=_METHODS),
        ]
    )
    add_request_guard(app, settings)
    return app


async def _image_part(request: Request, max_field_bytes: int) -> bytes | None:
    """The form's `image` file, to hash; None when there is none (the replica says why)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return None
    try:
        form = await request.form(max_part_size=max_field_bytes)
    except Exception:  # malformed: the replica answers with the usual error
        return None
    try:
        image = form.get("image")
        return await image.read() if isinstance(image, UploadFile) else None
    finally:
        await form.close()


async def _rest(first: bytes, stream: DeploymentResponseGenerator) -> AsyncIterator[bytes]:
    """The body chunks; a client that leaves cancels the replica's work."""
    finished = False
    try:
        if first:
            yield first
        async for chunk in stream:
            yield chunk
        finished = True
    finally:
        if not finished:
            stream.cancel()


def cluster_status(replicas: list[dict[str, Any]], *, starting: bool) -> str:
    """OK while any replica is; LOADING while one loads, or before any has reported
    during start-up; ERROR otherwise. /health and /stats both say this."""
    statuses = {r["status"] for r in replicas}
    if "OK" in statuses:
        return "OK"
    if "LOADING" in statuses or (not replicas and starting):
        return "LOADING"
    return "ERROR"


def cluster_stats(
    replicas: list[dict[str, Any]], uploads: dict[str, int], *, starting: bool
) -> dict[str, Any]:
    """One server's /stats summed over the replicas, then each replica's own."""
    totals = _sum([r["stats"] for r in replicas])
    if totals is None:  # no replica has reported
        totals = {}
    totals["status"] = cluster_status(replicas, starting=starting)
    return {
        **totals,
        "uploads": uploads,
        "replicas": [
            {
                "replica": r["replica"],
                "pid": r["pid"],
                "node": r["node"],
                "status": r["status"],
                "threads": r["threads"],
                "report_age_s": round(time.time() - r["received"], 3),
                **r["stats"],
            }
            for r in replicas
        ],
    }


def _sum(values: list[Any]) -> Any:
    """Numbers add up, dicts merge key by key; anything else is kept when all agree."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys = dict.fromkeys(k for v in present for k in v)
        return {k: _sum([v.get(k) for v in present]) for k in keys}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return sum(present)
    first = present[0]
    return first if all(v == first for v in present) else None


class _Merged:
    """Every replica's Prometheus samples, each labelled with its `replica`."""

    def __init__(self, replicas: list[dict[str, Any]]) -> None:
        self.replicas = replicas

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "sam2_cluster_replicas", "Engine replicas heard from lately.", len(self.replicas)
        )
        families: dict[str, Metric] = {}
        for report in self.replicas:
            for family in text_string_to_metric_families(report["metrics"]):
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                for sample in family.samples:
                    labels = {**sample.labels, "replica": report["replica"]}
                    merged.add_sample(sample.name, labels, sample.value, sample.timestamp)
        yield from families.values()
