"""The cluster's parts without a Ray cluster: routing keys, the directory, the merges,
and the in-process ASGI driver."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route as StarletteRoute

from sam2_server.cluster.asgi import ForwardedRequest, Head, Lifespan, run_http
from sam2_server.cluster.directory import Directory
from sam2_server.cluster.routing import (
    ANY,
    UPLOAD,
    Route,
    inline_image_key,
    route_of,
    video_id_of,
)
from sam2_server.domain import image_id_of

pytest.importorskip("ray")

IMAGE_ID = "ab" * 32


def test_routing_keys() -> None:
    assert route_of("POST", "/segment-anything-2") == UPLOAD
    assert route_of("POST", "/v1/images") == UPLOAD
    assert route_of("POST", "/v1/images/") == UPLOAD
    assert route_of("GET", "/v1/images") == ANY
    assert route_of("POST", f"/v1/images/{IMAGE_ID.upper()}/segment") == Route(key=IMAGE_ID)
    assert route_of("GET", f"/v1/images/{IMAGE_ID}") == Route(key=IMAGE_ID)
    assert route_of("GET", "/v1/images/not-an-id") == ANY  # the replica answers its 404
    assert route_of("POST", "/v1/videos") == ANY  # a new session: any replica
    video = route_of("POST", "/v1/videos/0f1e/propagate")
    assert video == Route(key="0f1e", video=True)
    assert video_id_of("/v1/videos/0f1e") == "0f1e"
    assert video_id_of("/v1/videos") is None
    assert video_id_of(f"/v1/images/{IMAGE_ID}") is None
    for path in ("/health", "/", "/docs", "/hardware/info", "/v1/imagesX/1"):
        assert route_of("GET", path) == ANY


def test_a_tools_inline_image_is_keyed_by_its_decoded_bytes() -> None:
    """CVAT, X-AnyLabeling and Roboflow re-send the image on every click: each click
    is keyed by the SHA-256 the engine caches the decoded image under."""
    import base64

    import orjson

    data = b"\xff\xd8 some image bytes"
    key = image_id_of(data)
    encoded = base64.b64encode(data).decode()
    bodies = {
        "/api/function_invocations": {"image": encoded, "pos_points": [[1, 2]]},
        "/xanylabeling/v1/predict": {"image": f"data:image/jpeg;base64,{encoded}"},
        "/sam2/segment_image": {"image": {"type": "base64", "value": encoded}},
        "/sam2/embed_image": {"image": {"type": "base64", "value": encoded}},
    }
    for path, body in bodies.items():
        assert inline_image_key("POST", path, orjson.dumps(body)) == key, path
    url_image = {"image": {"type": "url", "value": "http://example.com/a.jpg"}}
    assert inline_image_key("POST", "/sam2/segment_image", orjson.dumps(url_image)) is None
    assert inline_image_key("POST", "/sam2/segment_image", b"not json") is None
    assert inline_image_key("POST", "/sam2/segment_image", b"[1, 2]") is None
    assert inline_image_key("GET", "/xanylabeling/v1/predict", b"{}") is None
    assert inline_image_key("POST", "/v1/images", orjson.dumps({"image": encoded})) is None


def test_the_directory_keeps_uploads_within_its_bytes() -> None:
    async def run() -> None:
        directory = Directory(upload_bytes=10)
        await directory.put_upload("a", b"1234")
        await directory.put_upload("b", b"1234")
        assert await directory.get_upload("a") == b"1234"  # a is now the most recent
        await directory.put_upload("c", b"1234")  # 12 > 10: b, the least recent, goes
        assert await directory.get_upload("b") is None
        assert await directory.get_upload("a") == b"1234"
        await directory.put_upload("huge", b"x" * 11)  # larger than the store: not kept
        assert await directory.get_upload("huge") is None
        assert await directory.upload_stats() == {"images": 2, "bytes": 8, "max_bytes": 10}

    asyncio.run(run())


def test_the_directory_forgets_silent_replicas() -> None:
    async def run() -> None:
        directory = Directory(upload_bytes=0)
        await directory.report({"replica": "r1", "started": 2.0})
        await directory.report({"replica": "r2", "started": 1.0})
        assert [r["replica"] for r in await directory.reports(5.0)] == ["r2", "r1"]
        directory._reports["r1"]["received"] -= 10
        assert [r["replica"] for r in await directory.reports(5.0)] == ["r2"]

    asyncio.run(run())


def test_cluster_stats_sum_the_replicas() -> None:
    ingress = pytest.importorskip("sam2_server.cluster.ingress")
    reports = [
        {
            "replica": name,
            "pid": pid,
            "node": "n",
            "status": status,
            "threads": 1,
            "received": 0.0,
            "stats": {
                "status": status,
                "device": "cpu",
                "encoded_images": encoded,
                "encode_batches": None,
                "cache": {"hits": encoded * 2, "misses": encoded},
                "models": {"m": {"state": status}},
            },
        }
        for name, pid, status, encoded in (("a", 1, "OK", 2), ("b", 2, "LOADING", 3))
    ]
    stats = ingress.cluster_stats(reports, {"images": 0}, starting=False)
    assert stats["status"] == "OK"
    assert stats["encoded_images"] == 5
    assert stats["cache"] == {"hits": 10, "misses": 5}
    assert stats["device"] == "cpu"
    assert stats["encode_batches"] is None
    assert stats["models"] == {"m": {"state": None}}  # the replicas disagree
    assert [(r["replica"], r["encoded_images"]) for r in stats["replicas"]] == [("a", 2), ("b", 3)]


def test_health_and_stats_say_the_same_status() -> None:
    ingress = pytest.importorskip("sam2_server.cluster.ingress")

    def replicas(*statuses: str) -> list[dict]:
        return [{"status": status} for status in statuses]

    cases = [
        (replicas("ERROR", "OK"), False, "OK"),
        (replicas("ERROR", "LOADING"), False, "LOADING"),
        (replicas("ERROR"), True, "ERROR"),
        (replicas(), True, "LOADING"),  # none has reported yet, during start-up
        (replicas(), False, "ERROR"),
    ]
    for reports, starting, status in cases:
        assert ingress.cluster_status(reports, starting=starting) == status
    # Before any replica reports, /stats has a status and no counters (it used to fail).
    stats = ingress.cluster_stats([], {"images": 0}, starting=True)
    assert stats == {"status": "LOADING", "uploads": {"images": 0}, "replicas": []}


def test_metrics_keep_every_replicas_series_with_a_label() -> None:
    ingress = pytest.importorskip("sam2_server.cluster.ingress")
    texts = []
    for count in (1, 2):
        registry = CollectorRegistry()
        counter = Counter("sam2_requests", "Requests.", ["route"], registry=registry)
        counter.labels("/x").inc(count)
        texts.append(generate_latest(registry).decode())
    merged = CollectorRegistry(auto_describe=False)
    merged.register(
        ingress._Merged(
            [{"replica": "a", "metrics": texts[0]}, {"replica": "b", "metrics": texts[1]}]
        )
    )
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(merged).decode())}
    totals = {
        s.labels["replica"]: s.value
        for s in families["sam2_requests"].samples
        if s.name == "sam2_requests_total"
    }
    assert totals == {"a": 1.0, "b": 2.0}
    assert families["sam2_cluster_replicas"].samples[0].value == 2


async def _lines(request: Request) -> StreamingResponse:
    async def lines():
        for index in range(1000):
            app.state.sent = index
            yield f"{index}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"body": (await request.body()).decode(), "q": request.url.query})


app = Starlette(
    routes=[StarletteRoute("/lines", _lines), StarletteRoute("/echo", _echo, methods=["POST"])]
)


def test_the_app_answers_a_forwarded_request() -> None:
    async def run() -> list[Head | bytes]:
        request = ForwardedRequest(
            "POST", "/echo", b"a=1", ((b"content-type", b"text/plain"),), b"hello"
        )
        return [item async for item in run_http(app, request)]

    items = asyncio.run(run())
    assert isinstance(items[0], Head)
    assert items[0].status == 200
    assert items[0].body == b'{"body":"hello","q":"a=1"}'  # the whole answer, with the head
    assert items[1:] == []


def test_a_consumer_that_leaves_stops_the_stream() -> None:
    async def run() -> int:
        stream = run_http(app, ForwardedRequest("GET", "/lines"))
        head = await stream.__anext__()
        assert isinstance(head, Head)
        assert head.body in (b"", b"0\n")
        if not head.body:
            assert await stream.__anext__() == b"0\n"
        await stream.aclose()  # what Ray does when the ingress cancels the call
        sent = app.state.sent
        await asyncio.sleep(0.2)
        assert app.state.sent == sent  # nothing computed after the consumer left
        return sent

    assert asyncio.run(run()) < 5


def test_the_lifespan_runs_startup() -> None:
    started: list[str] = []

    async def lifespan(scope, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                started.append("up")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                started.append("down")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def run() -> None:
        lifespan_runner = Lifespan(lifespan)
        await lifespan_runner.start()
        assert started == ["up"]
        await lifespan_runner.stop()

    asyncio.run(run())
    assert started == ["up", "down"]
