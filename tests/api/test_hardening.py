"""Limits on work, overflow, file parts, admission, streaming, metrics and logs,
in-process on the reduced model. Each case here failed (or killed the server)
before the hardening work."""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sam2_server.api import create_app
from sam2_server.api import livepeer as livepeer_module
from sam2_server.api.admission import Admission, estimate_work_bytes
from sam2_server.api.errors import headers_of, status_of
from sam2_server.codecs import encode_livepeer, estimate_livepeer_bytes
from sam2_server.config import Settings
from sam2_server.errors import ServiceError
from tests.api.test_errors import PNG, assert_error, tiny_png

PATH = "/segment-anything-2"
TOKEN = "s3cret"


def points(n: int, objects: int | None = None) -> dict[str, str]:
    coords = [[5 + i % 50, 5 + i % 40] for i in range(n)]
    labels = [1] * n
    if objects is None:
        return {"point_coords": json.dumps(coords), "point_labels": json.dumps(labels)}
    return {
        "point_coords": json.dumps([coords] * objects),
        "point_labels": json.dumps([labels] * objects),
    }


@pytest.fixture(scope="module")
def limited_client(reduced_settings, reduced_engine):
    settings = reduced_settings.with_(
        max_points=8, max_objects=3, max_total_points=12, max_response_bytes=4_000_000
    )
    with TestClient(create_app(settings, reduced_engine, load=False)) as client:
        yield client


# -- limits on work, both sides of each boundary -----------------------------------------


def test_points_per_object_limit(limited_client):
    assert limited_client.post(PATH, data=points(8), files={"image": PNG}).status_code == 200
    response = limited_client.post(PATH, data=points(9), files={"image": PNG})
    assert_error(response, 400, "point_coords", "9 points", "MAX_POINTS")


def test_objects_limit(limited_client):
    boxes = [[2, 2, 30, 30]] * 3
    response = limited_client.post(
        PATH, data={"box": json.dumps(boxes), "multimask_output": "false"}, files={"image": PNG}
    )
    assert response.status_code == 200
    response = limited_client.post(
        PATH, data={"box": json.dumps([*boxes, [1, 1, 9, 9]])}, files={"image": PNG}
    )
    assert_error(response, 400, "box", "4 objects", "MAX_OBJECTS")


def test_total_points_limit(limited_client):
    boxes = {"box": json.dumps([[2, 2, 30, 30]] * 3), "multimask_output": "false"}
    ok = {**points(4, objects=3), **boxes}
    assert limited_client.post(PATH, data=ok, files={"image": PNG}).status_code == 200
    over = {**points(5, objects=3), **boxes}
    response = limited_client.post(PATH, data=over, files={"image": PNG})
    assert_error(response, 400, "15 points", "MAX_TOTAL_POINTS")


def test_answer_size_limit_says_what_to_change(limited_client):
    # 4,000,000 bytes: a 400x300 image with three logit masks is ~6.7 MB; binary ~3.8 MB.
    image = ("big.png", tiny_png((400, 300)), "image/png")
    response = limited_client.post(PATH, data=points(1), files={"image": image})
    message = assert_error(response, 400, "MAX_RESPONSE_BYTES", "return_logits=false")
    assert "multimask_output=false" in message
    smaller = {**points(1), "return_logits": "false"}
    assert limited_client.post(PATH, data=smaller, files={"image": image}).status_code == 200


def test_answer_estimate_is_close_to_real_size(client):
    for size, logits in (((200, 150), True), ((200, 150), False), ((64, 48), True)):
        image = ("e.png", tiny_png(size), "image/png")
        data = {**points(2), "return_logits": str(logits).lower()}
        response = client.post(PATH, data=data, files={"image": image})
        assert response.status_code == 200
        estimate = estimate_livepeer_bytes(1, 3, size[1], size[0], binary_masks=not logits)
        assert 0.6 < len(response.content) / estimate < 1.25, (len(response.content), estimate)


def test_defaults_let_normal_use_through(client):
    from tests.conftest import image_bytes

    jpeg = ("g.jpg", image_bytes("groceries.jpg"), "image/jpeg")
    boxes = [[10 + i, 10, 200 + i, 200] for i in range(40)]
    data = {"box": json.dumps(boxes), "multimask_output": "false", "return_logits": "false"}
    assert client.post(PATH, data=data, files={"image": jpeg}).status_code == 200
    estimate = estimate_livepeer_bytes(1, 3, 768, 1024, binary_masks=False)
    assert estimate < 64 * 2**20  # a 1024x768 photo with the Livepeer defaults


# -- numbers that overflow float32 ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"point_coords": "[[1e308, 5]]", "point_labels": "[1]"}, "point_coords"),
        ({"box": "[0, 0, 1e39, 10]"}, "box"),
        ({"box": "[0, 0, 1e30, 10]"}, "box"),
        ({"mask_input": json.dumps([[[1e300] * 256] * 256])}, "mask_input"),
    ],
)
def test_numbers_beyond_float32_are_400(client, data, field):
    assert_error(client.post(PATH, data=data, files={"image": PNG}), 400, field)


# -- array fields as file parts ---------------------------------------------------------


def test_array_fields_as_file_parts_equal_text_fields(client):
    first = client.post(PATH, data=points(1), files={"image": PNG}).json()
    logits = np.array(json.loads(first["logits"]), dtype=np.float32)[:1]
    mask_text = json.dumps(logits.tolist())
    as_text = client.post(PATH, data={**points(1), "mask_input": mask_text}, files={"image": PNG})
    as_file = client.post(
        PATH,
        files={
            "image": PNG,
            "mask_input": ("logits.json", mask_text.encode(), "application/json"),
            "point_coords": ("p.json", points(1)["point_coords"].encode(), "text/plain"),
            "point_labels": ("l.json", b"[1]", "application/octet-stream"),
        },
    )
    assert as_text.status_code == as_file.status_code == 200, as_file.text
    assert as_text.content == as_file.content


def test_bad_file_part_is_a_400_and_internals_never_leak(client):
    response = client.post(
        PATH, files={"image": PNG, "point_coords": ("p.json", b"\xff\xfe[", "text/plain")}
    )
    assert_error(response, 400, "point_coords")
    response = client.post(
        PATH, files={"image": PNG, "multimask_output": ("x.txt", b"true", "text/plain")}
    )
    assert response.status_code == 422
    assert "SpooledTemporaryFile" not in response.text
    assert "tmp" not in response.text.lower()


def test_oversize_file_part_is_413(reduced_settings, reduced_engine):
    settings = reduced_settings.with_(max_field_bytes=1000)
    with TestClient(create_app(settings, reduced_engine, load=False)) as client:
        response = client.post(
            PATH, files={"image": PNG, "mask_input": ("m.json", b"[" * 2000, "text/plain")}
        )
    assert_error(response, 413, "MAX_FIELD_BYTES")


# -- auth on operations routes ----------------------------------------------------------


@pytest.fixture(scope="module")
def auth_client(reduced_settings, reduced_engine):
    app = create_app(reduced_settings.with_(auth_token=TOKEN), reduced_engine, load=False)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("path", ["/stats", "/metrics"])
def test_operations_routes_need_the_token(auth_client, path):
    assert_error(auth_client.get(path), 401, "Invalid bearer token.")
    response = auth_client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


def test_health_stays_open_with_auth(auth_client):
    assert auth_client.get("/health").json() == {"status": "OK"}


# -- metrics and the access log ---------------------------------------------------------


def test_metrics_count_requests_stages_and_cache(client):
    from tests.api.test_errors import uncached_png

    image = uncached_png()
    for _ in range(2):
        assert client.post(PATH, data=points(1), files={"image": image}).status_code == 200
    client.post(PATH, data={"box": "[1,2]"}, files={"image": image})
    text = client.get("/metrics").text
    assert 'sam2_requests_total{route="/segment-anything-2",status="200"}' in text
    assert 'sam2_requests_total{route="/segment-anything-2",status="400"}' in text
    for stage in ("image_decode", "encode", "prompt_decode", "serialise"):
        assert f'sam2_stage_duration_seconds_count{{stage="{stage}"}}' in text
    for name in (
        "sam2_cache_hits_total",
        "sam2_cache_misses_total",
        "sam2_cache_evictions_total",
        "sam2_cache_bytes",
        "sam2_queue_depth",
        "sam2_inflight_requests",
        "sam2_request_duration_seconds_bucket",
    ):
        assert name in text, name


def test_unknown_paths_share_one_metrics_label(client):
    for i in range(3):
        client.get(f"/nope-{i}")
    text = client.get("/metrics").text
    assert "nope" not in text
    assert 'route="other"' in text


def test_one_structured_log_line_per_request_without_payload_or_token(auth_client, caplog):
    caplog.set_level(logging.INFO, logger="sam2_server.access")
    coords = "[[17.25, 23.5]]"
    response = auth_client.post(
        PATH,
        headers={"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "req-42"},
        data={"point_coords": coords, "point_labels": "[1]"},
        files={"image": PNG},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42"
    lines = [r.getMessage() for r in caplog.records if r.name == "sam2_server.access"]
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["request_id"] == "req-42"
    assert (line["route"], line["status"]) == (PATH, 200)
    assert line["width"] == 64
    assert line["height"] == 48
    assert line["response_bytes"] == len(response.content)
    assert "cache_hit" in line
    assert "prompt_decode" in line["stages_ms"]
    assert TOKEN not in lines[0]
    assert "17.25" not in lines[0]


def test_a_request_refused_before_the_cache_says_nothing_of_it(caplog):
    """A 503 for an unavailable model never looked an embedding up: no `cache_hit`."""
    from tests.api.test_lifecycle import SlowLoader, wait_for

    segmenter = SlowLoader(fail=True)
    segmenter.release.set()
    with TestClient(create_app(Settings(), segmenter)) as client:
        wait_for(client, "ERROR")
        caplog.set_level(logging.INFO, logger="sam2_server.access")
        response = client.post(PATH, files={"image": PNG})
    assert response.status_code == 503
    lines = [r.getMessage() for r in caplog.records if r.name == "sam2_server.access"]
    line = json.loads(lines[-1])
    assert (line["route"], line["status"]) == (PATH, 503)
    assert "cache_hit" not in line


# -- admission and streaming ------------------------------------------------------------


def test_admission_queues_in_order_then_refuses_with_retry_after():
    async def scenario() -> None:
        admission = Admission(budget_bytes=100, max_queue=2)
        first = await admission.acquire(80)
        order: list[str] = []

        async def wait(name: str, cost: int) -> None:
            ticket = await admission.acquire(cost)
            order.append(name)
            ticket.release()

        waiters = [asyncio.create_task(wait("a", 50)), asyncio.create_task(wait("b", 10))]
        await asyncio.sleep(0)
        assert admission.queued == 2
        with pytest.raises(ServiceError) as info:
            await admission.acquire(1)
        assert status_of(info.value) == 503
        assert headers_of(info.value)["Retry-After"]
        first.release()
        await asyncio.gather(*waiters)
        assert order == ["a", "b"]
        assert (admission.in_use, admission.running, admission.queued) == (0, 0, 0)

    asyncio.run(scenario())


def test_admission_gives_up_a_cancelled_place_and_runs_oversize_alone():
    async def scenario() -> None:
        admission = Admission(budget_bytes=100, max_queue=4)
        huge = await admission.acquire(10**12)  # larger than the budget: runs alone
        assert admission.in_use == 100
        waiter = asyncio.create_task(admission.acquire(10))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert admission.queued == 0
        huge.release()
        ticket = await admission.acquire(10)
        ticket.release()
        assert admission.in_use == 0

    asyncio.run(scenario())


def test_work_estimate_grows_with_the_answer():
    small = estimate_work_bytes(1, 1, 480, 640)
    assert estimate_work_bytes(1, 3, 480, 640) > small
    assert estimate_work_bytes(64, 3, 6000, 6000) > 20 * 2**30


def test_queue_full_is_503_in_the_json_shape(reduced_settings, reduced_engine):
    settings = reduced_settings.with_(work_memory_bytes=1, max_queue=0)
    app = create_app(settings, reduced_engine, load=False)
    with TestClient(app) as client:
        # Hold the whole budget, as a long request would.
        ticket = asyncio.run(app.state.admission.acquire(1))
        try:
            response = client.post(PATH, data=points(1), files={"image": PNG})
        finally:
            ticket.release()
        assert_error(response, 503, "capacity")
        assert response.headers["retry-after"]
        assert client.post(PATH, data=points(1), files={"image": PNG}).status_code == 200


def test_large_answers_are_streamed_and_identical(client, reduced_engine, monkeypatch):
    image = ("s.png", tiny_png((120, 90)), "image/png")
    whole = client.post(PATH, data=points(2), files={"image": image})
    assert "content-length" in whole.headers
    monkeypatch.setattr(livepeer_module, "STREAM_ABOVE_BYTES", 1000)
    streamed = client.post(PATH, data=points(2), files={"image": image})
    assert streamed.status_code == 200
    assert streamed.headers.get("transfer-encoding") == "chunked" or (
        "content-length" not in streamed.headers
    )
    assert streamed.content == whole.content
    assert client.app.state.admission.in_use == 0  # the stream gave its budget back


def test_codec_chunks_join_to_the_whole_body():
    from sam2_server.codecs import iter_livepeer
    from sam2_server.domain import Prediction

    rng = np.random.default_rng(0)
    prediction = Prediction(
        rng.normal(size=(2, 3, 300, 400)).astype(np.float32),
        rng.random((2, 3)).astype(np.float32),
        rng.normal(size=(2, 3, 256, 256)).astype(np.float32),
    )
    chunks = list(iter_livepeer(prediction, chunk_bytes=1 << 16))
    assert len(chunks) >= 4
    assert max(len(c) for c in chunks) < 8 << 20
    assert b"".join(chunks) == encode_livepeer(prediction)


def test_a_small_png_of_6000x6000_with_defaults_is_refused_before_work(client):
    """105 KB on the wire, 1.3 GB of answer: refused from the header, nothing decoded."""
    import io
    import time

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (10, 200, 30)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 200_000
    before = client.get("/stats").json()["cache"]["misses"]
    started = time.monotonic()
    response = client.post(
        PATH, data=points(1), files={"image": ("big.png", buffer.getvalue(), "image/png")}
    )
    message = assert_error(response, 400, "MAX_RESPONSE_BYTES", "return_logits=false")
    assert "1239" in message or "GiB" in message or "MiB" in message
    assert time.monotonic() - started < 5
    assert client.get("/stats").json()["cache"]["misses"] == before
