"""Operations: Prometheus metrics and one structured log line per request.

The outermost ASGI layer, so it sees every answer, including the guard's
401/408/413 and errors raised before a route runs. Routes add what only they
know (model, image size, stage timings, cache hit) to the request's
`RequestRecord`. The log line holds sizes, timings and ids, never payloads or
the token: it is safe to ship to a shared log store.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("sam2_server.access")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ACTIONS = {"segment", "automatic-masks", "prompts", "propagate", "reset", "objects"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass
class RequestRecord:
    """What the log line and the metrics say about one request."""

    request_id: str
    method: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)


def record_of(scope: Scope) -> RequestRecord | None:
    record = scope.get("state", {}).get("record")
    return record if isinstance(record, RequestRecord) else None


class Metrics:
    """The app's own registry (not the process-global one: tests build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sam2_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sam2_request_duration_seconds",
            "Whole request time, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "sam2_stage_duration_seconds",
            "Time in each stage of a segment request: image_decode and encode run on a "
            "cache miss only.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "sam2_queue_depth", "Requests waiting for admission.", registry=self.registry
        )
        self.inflight = Gauge(
            "sam2_inflight_requests",
            "Segment requests admitted and running.",
            registry=self.registry,
        )
        self.inflight_bytes = Gauge(
            "sam2_inflight_work_bytes",
            "Estimated working memory of the admitted requests.",
            registry=self.registry,
        )

    def watch(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Expose the engine's counters (cache, encodes, models) at scrape time."""
        self.registry.register(_EngineCollector(stats))

    def observe(self, record: RequestRecord, duration: float) -> None:
        self.requests.labels(record.route, str(record.status)).inc()
        self.latency.labels(record.route).observe(duration)
        for stage, seconds in record.stages.items():
            self.stages.labels(stage).observe(seconds)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        yield from _families(_CACHE_FAMILIES, stats.get("cache", {}))
        yield from _families(_ENCODER_FAMILIES, stats)
        models = stats.get("models")
        if isinstance(models, dict):
            loaded = GaugeMetricFamily(
                "sam2_model_loaded", "1 when the model is loaded, by model id.", labels=["model"]
            )
            for model_id, info in models.items():
                state = info.get("state") if isinstance(info, dict) else None
                loaded.add_metric([model_id], 1.0 if state == "loaded" else 0.0)
            yield loaded
        video = stats.get("video")
        if isinstance(video, dict):
            yield from _families(_VIDEO_FAMILIES, video)


# The engine's /stats counters as Prometheus families: (kind, name, key, help), read
# from one section of /stats each, in the order they are exposed.
_C, _G = CounterMetricFamily, GaugeMetricFamily
_Family = tuple[type[CounterMetricFamily | GaugeMetricFamily], str, str, str]
_CACHE_FAMILIES: tuple[_Family, ...] = (
    (_C, "sam2_cache_hits", "hits", "Embedding cache hits."),
    (_C, "sam2_cache_misses", "misses", "Embedding cache misses (images encoded)."),
    (_C, "sam2_cache_coalesced", "coalesced", "Requests that waited for another's encode."),
    (_C, "sam2_cache_evictions", "evictions", "Embeddings evicted from the cache."),
    (_G, "sam2_cache_bytes", "bytes", "Embedding cache size."),
    (_G, "sam2_cache_entries", "entries", "Embeddings cached."),
    (_G, "sam2_cache_max_bytes", "max_bytes", "Embedding cache bound."),
)
_ENCODER_FAMILIES: tuple[_Family, ...] = (
    (_C, "sam2_encoded_images", "encoded_images", "Images run through the image encoder."),
)
_VIDEO_FAMILIES: tuple[_Family, ...] = (
    (_G, "sam2_video_sessions", "sessions", "Video sessions open."),
    (_G, "sam2_video_bytes", "bytes", "Memory held by video sessions (frames and SAM2 state)."),
    (
        _C,
        "sam2_video_frames_propagated",
        "frames_propagated",
        "Frames computed by video propagations.",
    ),
    (_C, "sam2_video_sessions_expired", "expired", "Video sessions closed for being idle."),
)


def _families(families: Iterable[_Family], values: dict[str, Any]) -> Iterator[Metric]:
    for kind, name, key, doc in families:
        yield kind(name, doc, value=values.get(key, 0))


class Observer:
    """ASGI middleware: request id, metrics, and the access log line."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        routes: Iterable[str],
        prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = {route.rstrip("/") or "/" for route in routes}
        self.prefixes = tuple(prefix.rstrip("/") for prefix in prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(
            request_id=_request_id(scope),
            method=scope["method"],
            route=self._route(scope["path"]),
        )
        scope.setdefault("state", {})["record"] = record
        header = (b"x-request-id", record.request_id.encode())

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                record.request_bytes += len(message.get("body", b""))
            return message

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if not record.status:
                    record.status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), header]}
            elif message["type"] == "http.response.body":
                record.response_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, observed_send)
        except BaseException:
            record.status = record.status or 500
            raise
        finally:
            # Nothing sent and no error: the client left first (nginx's 499).
            record.status = record.status or 499
            duration = time.perf_counter() - record.started
            self.metrics.observe(record, duration)
            _log(record, duration)

    def _route(self, path: str) -> str:
        """A bounded label: ids in paths (/v1/images/<sha256>/segment) become `{id}`."""
        path = path.rstrip("/") or "/"
        if path in self.routes:
            return path
        for prefix in self.prefixes:
            if path == prefix:
                return path
            if path.startswith(prefix + "/"):
                parts = path[len(prefix) + 1 :].split("/")
                rest = "/".join(parts[1:2])  # the action after the id, if any
                return f"{prefix}/{{id}}" + (f"/{rest}" if rest in _ACTIONS else "")
        return "other"


def _request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is a plain token, so logs join across hops."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if _SAFE_ID.match(text):
                return text
    return uuid.uuid4().hex


def _log(record: RequestRecord, duration: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = {
        "request_id": record.request_id,
        "method": record.method,
        "route": record.route,
        "status": record.status,
        "duration_ms": round(duration * 1000, 1),
        "request_bytes": record.request_bytes,
        "response_bytes": record.response_bytes,
        **record.details,
    }
    if record.stages:
        line["stages_ms"] = {k: round(v * 1000, 1) for k, v in record.stages.items()}
    access_log.info(orjson.dumps(line).decode())
