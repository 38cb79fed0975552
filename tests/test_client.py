"""`sam2_server.client` against a real server process, and against a Livepeer-only one.

The server runs the reduced model in fp32 on the CPU, so every answer must be
bit-identical to the in-process engine's on the same bytes. Its embedding cache
holds two images (CACHE_BYTES), so a third upload evicts the first: that is
how the client's upload-again-and-retry is exercised. A "plain Livepeer
runner" is a small app in this process that forwards only
`POST /segment-anything-2` to the real server: its `/v1` routes do not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from PIL import Image

from sam2_server.client import (
    AsyncClient,
    Client,
    Result,
    Sam2Error,
    encode_image,
    pack,
    unpack,
)
from sam2_server.domain import Prompt
from tests.conftest import DATA, image_bytes
from tests.e2e.process import Server, free_port, serving_local

TOKEN = "client-token"
# The reduced model's embedding is 16.8 MB (fp32): room for two images, not three.
CACHE_BYTES = 40_000_000
POINTS = [[420.0, 300.0], [200.0, 150.0]]
LABELS = [1, 0]
BOXES = [[50.0, 60.0, 400.0, 380.0], [380.0, 120.0, 780.0, 500.0]]


@pytest.fixture(scope="module")
def server(reduced_model) -> Iterator[Server]:
    with serving_local(reduced_model, AUTH_TOKEN=TOKEN, CACHE_BYTES=str(CACHE_BYTES)) as server:
        yield server


@pytest.fixture(scope="module")
def livepeer_only(server: Server) -> Iterator[str]:
    """A 'Livepeer runner': POST /segment-anything-2 forwarded to the real server, nothing else."""
    app = FastAPI()

    @app.post("/segment-anything-2")
    async def forward(request: Request) -> Response:
        headers = {
            k: v for k, v in request.headers.items() if k in ("content-type", "authorization")
        }
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            upstream = await http.post(
                "/segment-anything-2", content=await request.body(), headers=headers
            )
        return Response(
            upstream.content,
            upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )

    port = free_port()
    runner = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started:
        assert time.monotonic() < deadline, "the Livepeer stand-in did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.should_exit = True
        thread.join(timeout=10)


class Calls:
    """Counts the client's requests (method and path), through an httpx event hook."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def hook(self, request: httpx.Request) -> None:
        self.seen.append(f"{request.method} {_route(request.url.path)}")

    async def ahook(self, request: httpx.Request) -> None:
        self.hook(request)

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


def _route(path: str) -> str:
    parts = path.split("/")
    return "/".join("{id}" if len(part) == 64 else part for part in parts)


def counted_client(url: str, token: str | None = TOKEN) -> tuple[Client, Calls]:
    calls = Calls()
    return Client(url, token, event_hooks={"request": [calls.hook]}), calls


def engine_answer(
    engine,
    data: bytes,
    *,
    points=None,
    labels=None,
    box=None,
    mask_input=None,
    multimask_output: bool = True,
) -> Result:
    """What the server must answer: the in-process engine on the same bytes (0/1 masks)."""

    def array(value, dtype):
        return None if value is None else np.asarray(value, dtype=dtype)

    prompt = Prompt(
        point_coords=array(points, np.float64),
        point_labels=array(labels, np.int64),
        box=array(box, np.float64),
        mask_input=None
        if mask_input is None
        else array(mask_input, np.float32).reshape(1, 256, 256),
        multimask_output=multimask_output,
        return_logits=False,
    )
    prediction = engine.segment(engine.default_model_id, data, prompt)
    image_id = hashlib.sha256(data).hexdigest()
    return Result(image_id, prediction.masks > 0, prediction.scores, prediction.logits)


def assert_same(result: Result, expected: Result, *, same_image: bool = True) -> None:
    if same_image:
        assert result.image_id == expected.image_id
    assert result.masks.dtype == np.bool_
    assert result.scores.dtype == np.float32
    assert result.logits.dtype == np.float32
    assert result.masks.shape == expected.masks.shape
    np.testing.assert_array_equal(result.masks, expected.masks)
    np.testing.assert_array_equal(result.scores, expected.scores)
    np.testing.assert_array_equal(result.logits, expected.logits)


def fresh_image(n: int) -> bytes:
    """A PNG no other test sends, so it is not on the server yet."""
    image = Image.open(DATA / "truck.jpg").convert("RGB").resize((320, 240))
    image.putpixel((n, n), (n % 256, 0, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- unit: no server ---------------------------------------------------------------------


def test_images_are_encoded_losslessly_and_named_by_their_bytes(tmp_path: Path) -> None:
    jpeg = image_bytes("groceries.jpg")
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg)
    assert encode_image(jpeg) == jpeg
    assert encode_image(path) == encode_image(str(path)) == jpeg
    pil = Image.open(io.BytesIO(jpeg)).convert("RGB")
    png = encode_image(pil)
    assert png.startswith(b"\x89PNG")
    assert encode_image(np.asarray(pil)) == png  # same pixels, same bytes, same id
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(pil))
    with pytest.raises(ValueError, match="uint8"):
        encode_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(TypeError):
        encode_image(42)  # type: ignore[arg-type]


def test_packed_arrays_are_exact() -> None:
    values = np.random.default_rng(0).normal(size=(2, 3, 256, 256)).astype(np.float32)
    packed = pack(values)
    assert packed["dtype"] == "float32"
    assert packed["shape"] == [2, 3, 256, 256]
    assert unpack(packed).tobytes() == values.tobytes()


def test_bad_mask_input_is_refused_before_any_request() -> None:
    with Client("http://127.0.0.1:9") as client, pytest.raises(ValueError, match="256"):
        client.segment(b"not sent", mask_input=np.zeros((3, 256, 256), np.float32))


def scripted(answers: dict[str, list[int]]) -> tuple[httpx.MockTransport, list[str]]:
    """A transport answering each route with the next status of its list (JSON errors)."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {_route(request.url.path)}"
        seen.append(route)
        status = answers[route].pop(0)
        if status != 200:
            return httpx.Response(status, json={"detail": {"msg": f"{route} says no"}})
        if route == "POST /v1/images":
            return httpx.Response(200, json={"image_id": "ab" * 32})
        raise AssertionError(f"unexpected {route}")

    return httpx.MockTransport(handle), seen


def test_the_upload_and_retry_happen_once() -> None:
    """An image evicted again at once (a cache too small): one retry, then the 404."""
    transport, seen = scripted(
        {
            "GET /v1/images/{id}": [404],
            "POST /v1/images": [200, 200],
            "POST /v1/images/{id}/segment": [404, 404],
        }
    )
    with Client("http://sam2", transport=transport) as client, pytest.raises(Sam2Error) as caught:
        client.segment(b"\x89PNG...", points=POINTS)
    assert (caught.value.status, caught.value.message) == (
        404,
        "POST /v1/images/{id}/segment says no",
    )
    assert seen == [
        "GET /v1/images/{id}",
        "POST /v1/images",
        "POST /v1/images/{id}/segment",
        "POST /v1/images",
        "POST /v1/images/{id}/segment",
    ]


@pytest.mark.parametrize("missing", [404, 405])
def test_a_missing_upload_route_means_a_livepeer_runner(missing: int) -> None:
    transport, seen = scripted(
        {
            "GET /v1/images/{id}": [404],
            "POST /v1/images": [missing],
            "POST /segment-anything-2": [400, 400],
        }
    )
    with Client("http://sam2", transport=transport) as client:
        with pytest.raises(Sam2Error, match="segment-anything-2 says no"):
            client.segment(b"image", points=POINTS)
        assert client.native is False
        with pytest.raises(Sam2Error):
            client.segment(b"image", points=POINTS)
    assert seen == [
        "GET /v1/images/{id}",
        "POST /v1/images",
        "POST /segment-anything-2",
        "POST /segment-anything-2",
    ]


def test_a_64_hex_name_of_an_existing_file_is_a_path(tmp_path: Path, monkeypatch) -> None:
    name = "ef" * 32
    (tmp_path / name).write_bytes(b"file bytes")
    monkeypatch.chdir(tmp_path)
    transport, seen = scripted({"POST /v1/images": [200]})
    with Client("http://sam2", transport=transport) as client:
        assert client.upload(name) == "ab" * 32  # the server's id
    assert seen == ["POST /v1/images"]
    from sam2_server.client import _resolve

    assert _resolve(name)[0] is not None  # a path: the bytes are sent
    assert _resolve("01" * 32)[0] is None  # no such file: an id


# -- against the real server -------------------------------------------------------------


def test_upload_answers_the_sha256_of_the_bytes(server: Server, tmp_path: Path) -> None:
    data = image_bytes("groceries.jpg")
    path = tmp_path / "groceries.jpg"
    path.write_bytes(data)
    with Client(server.url, TOKEN) as client:
        assert client.upload(data) == hashlib.sha256(data).hexdigest()
        assert client.upload(path) == hashlib.sha256(data).hexdigest()
        assert client.native is True


def test_every_kind_of_image_gives_the_engines_answer(
    server: Server, reduced_engine, tmp_path: Path
) -> None:
    jpeg = image_bytes("groceries.jpg")
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg)
    pil = Image.open(io.BytesIO(jpeg)).convert("RGB")
    png_id = hashlib.sha256(encode_image(pil)).hexdigest()
    expected = engine_answer(reduced_engine, jpeg, points=POINTS, labels=LABELS)
    with Client(server.url, TOKEN) as client:
        for image in (jpeg, path, str(path), expected.image_id):
            assert_same(client.segment(image, points=POINTS, labels=LABELS), expected)
        # Sent as a PNG of the same pixels: another id, the same embedding and answer.
        for image in (pil, np.asarray(pil)):
            result = client.segment(image, points=POINTS, labels=LABELS)
            assert result.image_id == png_id
            assert_same(result, expected, same_image=False)
        client.segment(expected.image_id, points=POINTS, labels=LABELS)  # the JPEG stays cached


def test_an_image_on_the_server_is_not_uploaded_again(server: Server) -> None:
    data = fresh_image(1)
    client, calls = counted_client(server.url)
    with client:
        client.segment(data, points=POINTS)  # labels default to foreground
        assert calls.take() == [
            "GET /v1/images/{id}",
            "POST /v1/images",
            "POST /v1/images/{id}/segment",
        ]
        client.segment(data, points=POINTS)
        assert calls.take() == ["POST /v1/images/{id}/segment"]
    other, calls = counted_client(server.url)  # a new client asks first
    with other:
        other.segment(data, box=BOXES[0])
        assert calls.take() == ["GET /v1/images/{id}", "POST /v1/images/{id}/segment"]


def test_an_unknown_id_is_a_404_with_the_servers_message(server: Server) -> None:
    with Client(server.url, TOKEN) as client, pytest.raises(Sam2Error) as caught:
        client.segment("ab" * 32, points=POINTS)
    assert caught.value.status == 404
    assert "upload it again" in caught.value.message


def test_mask_input_round_trip(server: Server, reduced_engine) -> None:
    data = image_bytes("groceries.jpg")
    with Client(server.url, TOKEN) as client:
        first = client.segment(data, points=POINTS[:1])
        refined = client.segment(
            first.image_id, points=POINTS[:1], mask_input=first.logits[0], multimask_output=False
        )
    expected = engine_answer(
        reduced_engine,
        data,
        points=POINTS[:1],
        labels=[1],
        mask_input=first.logits[0],
        multimask_output=False,
    )
    assert refined.masks.shape == (1, 534, 800)
    assert_same(refined, expected)


def test_several_boxes_give_one_set_of_candidates_per_box(server: Server, reduced_engine) -> None:
    data = image_bytes("groceries.jpg")
    with Client(server.url, TOKEN) as client:
        result = client.segment(data, box=BOXES)
    assert result.masks.shape == (2, 3, 534, 800)
    assert result.scores.shape == (2, 3)
    assert result.logits.shape == (2, 3, 256, 256)
    assert_same(result, engine_answer(reduced_engine, data, box=BOXES))


def test_errors_carry_the_servers_message(server: Server) -> None:
    data = image_bytes("groceries.jpg")
    with Client(server.url, "wrong") as client, pytest.raises(Sam2Error) as caught:
        client.segment(data, points=POINTS)
    assert (caught.value.status, caught.value.message) == (401, "Invalid bearer token.")
    with Client(server.url, TOKEN) as client:
        with pytest.raises(Sam2Error) as caught:
            client.segment(data, points=POINTS, labels=[1, 2])
        assert caught.value.status == 400
        assert "labels must be 1" in caught.value.message
        with pytest.raises(Sam2Error) as caught:
            client.upload(b"not an image")
        assert caught.value.status == 400
        assert caught.value.message.startswith("image:")
        assert str(caught.value).startswith("HTTP 400: image:")


def test_async_client_gives_the_same_answers(server: Server, reduced_engine) -> None:
    data = image_bytes("groceries.jpg")
    calls = Calls()

    async def main() -> tuple[str, list[Result]]:
        async with AsyncClient(server.url, TOKEN, event_hooks={"request": [calls.ahook]}) as client:
            image_id = await client.upload(data)
            results = await asyncio.gather(
                client.segment(image_id, points=POINTS, labels=LABELS),
                client.segment(data, box=BOXES),
                client.segment(DATA / "groceries.jpg", points=POINTS, labels=LABELS),
            )
            return image_id, list(results)

    image_id, (by_id, boxes, by_path) = asyncio.run(main())
    assert image_id == hashlib.sha256(data).hexdigest()
    assert_same(by_id, engine_answer(reduced_engine, data, points=POINTS, labels=LABELS))
    assert_same(boxes, engine_answer(reduced_engine, data, box=BOXES))
    assert_same(by_path, by_id)
    assert calls.seen.count("POST /v1/images") == 1


# -- against a Livepeer runner -----------------------------------------------------------


def test_falls_back_to_the_livepeer_route(livepeer_only: str, reduced_engine) -> None:
    data = image_bytes("groceries.jpg")
    client, calls = counted_client(livepeer_only)
    with client:
        result = client.segment(data, points=POINTS, labels=LABELS)
        assert client.native is False
        assert calls.take() == [
            "GET /v1/images/{id}",
            "POST /v1/images",
            "POST /segment-anything-2",
        ]
        assert_same(result, engine_answer(reduced_engine, data, points=POINTS, labels=LABELS))
        # Remembered: straight to the Livepeer route, also by id for an image it was given.
        image_id = client.upload(data)
        boxes = client.segment(image_id, box=BOXES)
        assert calls.take() == ["POST /segment-anything-2"]
        assert_same(boxes, engine_answer(reduced_engine, data, box=BOXES))
        with pytest.raises(Sam2Error) as caught:
            client.segment("cd" * 32, points=POINTS)
        assert caught.value.status == 404
        assert "pass the image itself" in caught.value.message
        with pytest.raises(Sam2Error) as caught:
            client.segment(data, points=POINTS, labels=[1])
        assert caught.value.status == 400
        assert "point_labels" in caught.value.message


def test_async_client_falls_back_too(livepeer_only: str, reduced_engine) -> None:
    data = image_bytes("groceries.jpg")

    async def main() -> tuple[bool | None, Result]:
        async with AsyncClient(livepeer_only, TOKEN) as client:
            result = await client.segment(data, points=POINTS, labels=LABELS)
            return client.native, result

    native, result = asyncio.run(main())
    assert native is False
    assert_same(result, engine_answer(reduced_engine, data, points=POINTS, labels=LABELS))


# -- eviction (last: it pushes the shared images out of the cache) -----------------------


def test_an_evicted_image_is_uploaded_again_and_the_prompt_retried(server: Server) -> None:
    first, second, third = fresh_image(2), fresh_image(3), fresh_image(4)
    client, calls = counted_client(server.url)
    with client:
        before = client.segment(first, points=POINTS, labels=LABELS)
        client.upload(second)
        client.upload(third)  # the cache holds two: `first` is gone
        status = httpx.get(
            f"{server.url}/v1/images/{before.image_id}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ).status_code
        assert status == 404
        calls.take()
        after = client.segment(before.image_id, points=POINTS, labels=LABELS)  # by id: bytes kept
        assert calls.take() == [
            "POST /v1/images/{id}/segment",
            "POST /v1/images",
            "POST /v1/images/{id}/segment",
        ]
    assert_same(after, before)
