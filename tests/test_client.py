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
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from PIL import Image

from sam2_server import client as client_module
from sam2_server.client import (
    AsyncClient,
    AutomaticMask,
    Client,
    Result,
    Sam2Error,
    encode_image,
    frame_files,
    pack,
    unpack,
)
from sam2_server.domain import Prompt
from tests.conftest import DATA, VIDEO_FRAMES, image_bytes
from tests.e2e.process import (
    Server,
    free_port,
    metric,
    requests_counted,
    serving_local,
    wait_until,
)

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


class Bodies:
    """The JSON bodies the client sends to the segment route, through an httpx event hook."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def hook(self, request: httpx.Request) -> None:
        if request.url.path.endswith("/segment"):
            self.sent.append(orjson.loads(request.content))

    async def ahook(self, request: httpx.Request) -> None:
        self.hook(request)


def test_refining_with_a_candidate_sends_its_reference(server: Server, reduced_engine) -> None:
    """`mask_input=result.logits[k]` goes as {answer_id, index} (a few bytes), and the
    answer is bit for bit the engine's on the packed logits; anything else goes packed."""
    data = image_bytes("groceries.jpg")
    bodies = Bodies()
    with Client(server.url, TOKEN, event_hooks={"request": [bodies.hook]}) as client:
        first = client.segment(data, points=POINTS[:1])
        assert re.fullmatch(r"[0-9a-f]{32}", first.answer_id or "")
        refined = client.segment(
            first.image_id, points=POINTS, labels=LABELS, mask_input=first.logits[2]
        )
        sent = bodies.sent[-1]
        assert sent["mask_input"] == {"answer_id": first.answer_id, "index": [0, 2]}
        assert len(orjson.dumps(sent)) < 300
        expected = engine_answer(
            reduced_engine, data, points=POINTS, labels=LABELS, mask_input=first.logits[2]
        )
        assert_same(refined, expected)
        # A refinement of the refinement, by its own reference (1 x 256 x 256 works too).
        again = client.segment(data, points=POINTS[:1], mask_input=refined.logits[:1])
        assert bodies.sent[-1]["mask_input"] == {"answer_id": refined.answer_id, "index": [0, 0]}
        assert_same(
            again,
            engine_answer(
                reduced_engine, data, points=POINTS[:1], labels=[1], mask_input=refined.logits[0]
            ),
        )
        # Several boxes: [b, k].
        boxes = client.segment(data, box=BOXES)
        client.segment(data, points=POINTS[:1], mask_input=boxes.logits[1, 2])
        assert bodies.sent[-1]["mask_input"] == {"answer_id": boxes.answer_id, "index": [1, 2]}
        # Logits changed in any way, or for another image, travel packed.
        changed = first.logits[0].copy()
        changed[0, 0] += 1
        client.segment(data, points=POINTS[:1], mask_input=changed)
        assert bodies.sent[-1]["mask_input"]["shape"] == [1, 256, 256]
        other = fresh_image(11)
        client.segment(other, points=POINTS[:1], mask_input=first.logits[0])
        assert bodies.sent[-1]["mask_input"]["shape"] == [1, 256, 256]
        assert "mask_input" not in bodies.sent[0]

    async def main() -> Result:
        async with AsyncClient(server.url, TOKEN, event_hooks={"request": [bodies.ahook]}) as a:
            one = await a.segment(data, points=POINTS[:1])
            return await a.segment(data, points=POINTS, labels=LABELS, mask_input=one.logits[2])

    assert_same(asyncio.run(main()), expected)
    assert bodies.sent[-1]["mask_input"]["index"] == [0, 2]


def answering(script: list[tuple[int, dict]]) -> tuple[httpx.MockTransport, list[tuple]]:
    """A transport answering each request with the next (status, JSON) of `script`; it
    records (method and route, the segment body's mask_input or None)."""
    seen: list[tuple] = []

    def handle(request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {_route(request.url.path)}"
        mask_input = None
        if route.endswith("/segment"):
            mask_input = orjson.loads(request.content).get("mask_input")
        seen.append((route, mask_input))
        status, body = script.pop(0)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle), seen


def segment_body(answer_id: str | None, candidates: int = 3) -> dict:
    from sam2_server.codecs.native import encode_rle

    logits = np.random.default_rng(candidates).normal(size=(candidates, 256, 256))
    return {
        "image_id": hashlib.sha256(b"image").hexdigest(),
        "model_id": "m",
        "width": 4,
        "height": 2,
        "answer_id": answer_id,
        "masks": [encode_rle(np.zeros((2, 4), bool))] * candidates,
        "scores": [0.5] * candidates,
        "logits": pack(logits.astype(np.float32)),
    }


NOT_KEPT = {"detail": {"msg": "answer 'a' is not kept on this server ...: send that answer's "}}
NOT_CACHED = {"detail": {"msg": "image ... is not cached; upload it again"}}


def test_an_answer_no_longer_kept_is_sent_packed_once() -> None:
    """A 404 to the reference: the same prompt with the packed logits, once; the client
    then forgets the reference. If the image went too, it is uploaded again as before."""
    upload = {"image_id": hashlib.sha256(b"image").hexdigest()}
    transport, seen = answering(
        [
            (404, NOT_CACHED),  # GET: not there
            (200, upload),
            (200, segment_body("a" * 32)),
            (404, NOT_KEPT),  # the reference: evicted
            (200, segment_body("b" * 32, 1)),  # packed: fine
            (200, segment_body("c" * 32, 1)),  # packed again: the reference is forgotten
        ]
    )
    with Client("http://sam2", transport=transport) as client:
        first = client.segment(b"image", points=POINTS)
        refined = client.segment(b"image", points=POINTS, mask_input=first.logits[1])
        client.segment(b"image", points=POINTS, mask_input=first.logits[1])
    assert refined.answer_id == "b" * 32
    routes = [route for route, _ in seen]
    assert routes == [
        "GET /v1/images/{id}",
        "POST /v1/images",
        *["POST /v1/images/{id}/segment"] * 4,
    ]
    assert seen[3][1] == {"answer_id": "a" * 32, "index": [0, 1]}
    assert seen[4][1]["shape"] == seen[5][1]["shape"] == [1, 256, 256]
    assert unpack(seen[4][1]).tobytes() == first.logits[1].tobytes()

    transport, seen = answering(
        [
            (404, NOT_CACHED),
            (200, upload),
            (200, segment_body("a" * 32)),
            (404, NOT_CACHED),  # the reference: the image is gone (its answers with it)
            (404, NOT_CACHED),  # packed: the image is gone
            (200, upload),
            (200, segment_body("d" * 32, 1)),
        ]
    )
    with Client("http://sam2", transport=transport) as client:
        first = client.segment(b"image", points=POINTS)
        assert client.segment(b"image", mask_input=first.logits[0]).answer_id == "d" * 32
    assert [route for route, _ in seen][3:] == [
        "POST /v1/images/{id}/segment",
        "POST /v1/images/{id}/segment",
        "POST /v1/images",
        "POST /v1/images/{id}/segment",
    ]
    assert "answer_id" in seen[3][1]
    assert seen[4][1]["shape"] == seen[6][1]["shape"] == [1, 256, 256]

    transport, seen = answering(
        [(404, NOT_CACHED), (200, upload), (200, segment_body("a" * 32)), (400, NOT_KEPT)]
    )
    with Client("http://sam2", transport=transport) as client:
        first = client.segment(b"image", points=POINTS)
        with pytest.raises(Sam2Error) as caught:  # any other error is the caller's
            client.segment(b"image", mask_input=first.logits[0])
    assert caught.value.status == 400
    assert len(seen) == 4


def test_a_server_that_keeps_no_answers_gets_packed_logits() -> None:
    upload = {"image_id": hashlib.sha256(b"image").hexdigest()}
    transport, seen = answering(
        [(404, NOT_CACHED), (200, upload), (200, segment_body(None)), (200, segment_body(None))]
    )
    with Client("http://sam2", transport=transport) as client:
        first = client.segment(b"image", points=POINTS)
        assert first.answer_id is None
        client.segment(b"image", mask_input=first.logits[0])
    assert seen[-1][1]["shape"] == [1, 256, 256]


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


# -- automatic masks ---------------------------------------------------------------------

# Random weights: masks the default thresholds would drop, and near duplicates kept.
RELAXED = {
    "points_per_side": 2,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
}


def small_photo() -> bytes:
    buffer = io.BytesIO()
    Image.open(DATA / "groceries.jpg").convert("RGB").resize((96, 64)).save(buffer, "PNG")
    return buffer.getvalue()


def engine_automatic(engine, data: bytes, **options) -> list:
    from sam2_server.codecs.automatic import rle_to_mask
    from sam2_server.domain import AutomaticParams

    image = engine.add_image(engine.default_model_id, data)
    _, records = engine.automatic_masks(
        engine.default_model_id, image.image_id, AutomaticParams(**options)
    )
    return [(rle_to_mask(r.segmentation), r) for r in records]


def assert_same_records(masks: list[AutomaticMask], expected: list) -> None:
    assert len(masks) == len(expected)
    for mask, (segmentation, record) in zip(masks, expected, strict=True):
        assert mask.segmentation.dtype == np.bool_
        np.testing.assert_array_equal(mask.segmentation, segmentation)
        for name in ("area", "bbox", "predicted_iou", "point_coords", "stability_score"):
            assert getattr(mask, name) == getattr(record, name), name
        assert mask.crop_box == record.crop_box
        assert list(mask.record()) == [
            "segmentation",
            "area",
            "bbox",
            "predicted_iou",
            "point_coords",
            "stability_score",
            "crop_box",
        ]


def test_automatic_masks_are_the_engines_and_upload_once(server: Server, reduced_engine) -> None:
    data = small_photo()
    client, calls = counted_client(server.url)
    with client:
        masks = client.automatic_masks(data, **RELAXED)
        assert calls.take() == [
            "GET /v1/images/{id}",
            "POST /v1/images",
            "POST /v1/images/{id}/automatic-masks",
        ]
        single = client.automatic_masks(data, multimask_output=False, **RELAXED)
        assert calls.take() == ["POST /v1/images/{id}/automatic-masks"]  # known: no upload
        with pytest.raises(Sam2Error) as caught:
            client.automatic_masks(data, points_per_side=0)
    assert caught.value.status == 400
    assert "points_per_side" in caught.value.message
    assert len(masks) == 12  # 4 points x 3 candidates, none dropped
    expected = engine_automatic(reduced_engine, data, **RELAXED)
    assert_same_records(masks, expected)
    assert len(single) == 4
    expected_single = engine_automatic(reduced_engine, data, multimask_output=False, **RELAXED)
    assert_same_records(single, expected_single)

    async def main() -> list[AutomaticMask]:
        async with AsyncClient(server.url, TOKEN) as client:
            return await client.automatic_masks(hashlib.sha256(data).hexdigest(), **RELAXED)

    assert_same_records(asyncio.run(main()), expected)


def test_automatic_progress_streams_and_gives_the_same_masks(server: Server) -> None:
    data = small_photo()
    options = {**RELAXED, "points_per_batch": 1}  # 4 batches
    seen: list[tuple[int, int]] = []
    calls = Calls()
    with Client(server.url, TOKEN, event_hooks={"request": [calls.hook]}) as client:
        plain = client.automatic_masks(data, **options)
        streamed = client.automatic_masks(data, progress=lambda *p: seen.append(p), **options)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(streamed) == len(plain) == 12
    for got, want in zip(streamed, plain, strict=True):
        np.testing.assert_array_equal(got.segmentation, want.segmentation)
        assert {k: v for k, v in got.record().items() if k != "segmentation"} == {
            k: v for k, v in want.record().items() if k != "segmentation"
        }

    async def main() -> list[AutomaticMask]:
        async with AsyncClient(server.url, TOKEN) as client:
            return await client.automatic_masks(data, progress=lambda *p: seen.append(p), **options)

    assert len(asyncio.run(main())) == 12
    assert seen[4:] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_leaving_during_progress_stops_the_servers_work(server: Server) -> None:
    """An exception in the progress callback (Ctrl-C, say) closes the connection: the
    server stops the generation, and logs and counts it as 499, not 200."""

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        raise Stop

    route = "/v1/images/{id}/automatic-masks"

    def counted(status: int) -> float:
        return requests_counted(server.url, route, status, TOKEN)

    before = counted(499), counted(200)
    slow = {**RELAXED, "points_per_side": 16, "points_per_batch": 4}  # 64 batches
    with Client(server.url, TOKEN) as client, pytest.raises(Stop):
        client.automatic_masks(small_photo(), progress=stop, **slow)
    assert wait_until(lambda: counted(499) != before[0], 60, 0.1), "no 499 for the request left"
    assert counted(200) == before[1]
    # The work stopped at its next batch and gave its memory back.
    stopped = wait_until(lambda: not metric(server.url, "sam2_inflight_requests", TOKEN), 60, 0.1)
    assert stopped, "the generation did not stop"


def test_an_automatic_error_line_is_a_sam2_error() -> None:
    lines = [{"progress": {"done": 1, "total": 2}}, {"error": {"status": 400, "msg": "too big"}}]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"image_id": "x"})
        assert request.headers["accept"] == "application/x-ndjson"
        body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        return httpx.Response(200, content=body, headers={"content-type": "application/x-ndjson"})

    seen: list[tuple[int, int]] = []
    transport = httpx.MockTransport(handle)
    with Client("http://sam2", transport=transport) as client, pytest.raises(Sam2Error) as caught:
        client.automatic_masks(b"image", progress=lambda *p: seen.append(p))
    assert (caught.value.status, caught.value.message) == (400, "too big")
    assert seen == [(1, 2)]


def test_automatic_options_are_the_librarys_names() -> None:
    with Client("http://127.0.0.1:9") as client, pytest.raises(TypeError, match="points_per_sid"):
        client.automatic_masks(b"not sent", points_per_sid=4)  # type: ignore[call-arg]


def test_a_server_without_the_new_routes_says_so() -> None:
    """An older sam2-server: the framework's plain 404s, not an eviction to retry."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {_route(request.url.path)}"
        seen.append(route)
        if route == "GET /v1/images/{id}":
            return httpx.Response(200, json={"image_id": "ab" * 32})
        return httpx.Response(404, json={"detail": "Not Found"})

    with Client("http://sam2", transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(
            Sam2Error, match=re.escape("has no POST /v1/images/{id}/automatic-masks")
        ):
            client.automatic_masks(b"image")
        with pytest.raises(Sam2Error, match="has no POST /v1/videos"):
            client.open_video(b"video")
    assert seen == [
        "GET /v1/images/{id}",
        "POST /v1/images/{id}/automatic-masks",
        "POST /v1/videos",
    ]


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


def test_a_livepeer_runner_has_no_automatic_masks(livepeer_only: str) -> None:
    with Client(livepeer_only, TOKEN) as client, pytest.raises(Sam2Error) as caught:
        client.automatic_masks(small_photo(), **RELAXED)
    assert caught.value.status == 404
    assert "Livepeer runner" in caught.value.message


def test_models_lists_what_the_server_serves(server: Server, reduced_model) -> None:
    """`models()` is GET /v1/models's list (the contract's fields), the same from both
    clients; a Livepeer runner has none, which the error says."""
    with Client(server.url, TOKEN) as client:
        listed = client.models()
    assert [m["model_id"] for m in listed] == [str(reduced_model.checkpoint)]
    (model,) = listed
    assert model["family"] == "sam2"
    assert model["default"] is True
    assert model["video"] is True
    assert model["automatic_masks"] is True
    assert model["input_size"] > 0

    async def from_async() -> list[dict]:
        async with AsyncClient(server.url, TOKEN) as client:
            return await client.models()

    assert asyncio.run(from_async()) == listed


def test_a_livepeer_runner_lists_no_models(livepeer_only: str) -> None:
    with Client(livepeer_only, TOKEN) as client, pytest.raises(Sam2Error) as caught:
        client.models()
    assert caught.value.status == 404
    assert "GET /v1/models" in caught.value.message


# -- video sessions: a real HTTP server in this process, on the shared video test engine --


@contextmanager
def serving_in_thread(app) -> Iterator[str]:
    """uvicorn on loopback in a thread: real streaming, without a process to start."""
    port = free_port()
    runner = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def video_server(video_settings, video_engine) -> Iterator[str]:
    from sam2_server.api import create_app

    with serving_in_thread(create_app(video_settings, video_engine, load=False)) as url:
        yield url


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """Three frames, named so that only a number-by-number sort orders them."""
    folder = tmp_path_factory.mktemp("clip")
    for name, frame in zip(("8.jpg", "9.jpg", "10.jpg"), VIDEO_FRAMES, strict=False):
        (folder / name).write_bytes(frame.read_bytes())
    return folder


VIDEO_POINTS = [[300.0, 200.0], [620.0, 310.0]]
VIDEO_BOX = [480.0, 90.0, 820.0, 420.0]


def engine_video(engine, frames: list[bytes], *propagations: dict) -> tuple[list, list]:
    """The engine's own answers to the prompts the tests send, then each propagation
    in turn, all in one session: (prompt frames, [frames of each propagation])."""
    from sam2_server.domain import VideoPrompt

    videos = engine.videos
    info = videos.open(engine.default_model_id, frames=[io.BytesIO(f) for f in frames])
    try:
        prompts = [
            videos.prompt(
                info.video_id,
                VideoPrompt(0, 1, np.array(VIDEO_POINTS, np.float32), np.array([1, 0]), None),
            ),
            videos.prompt(
                info.video_id, VideoPrompt(0, 2, None, None, np.array(VIDEO_BOX, np.float32))
            ),
        ]
        runs = []
        for run in propagations:
            steps = videos.propagate(
                info.video_id,
                run.get("start_frame_index"),
                run.get("max_frames"),
                run.get("reverse", False),
            )
            runs.append(list(steps))
        return prompts, runs
    finally:
        videos.close(info.video_id)


@pytest.fixture(scope="module")
def video_expected(video_engine) -> tuple[list, list, list]:
    """The engine's answers on the clip's frames: prompts, forward, then reverse from 2."""
    frames = [VIDEO_FRAMES[i].read_bytes() for i in range(3)]
    prompts, (forward, backward) = engine_video(
        video_engine, frames, {}, {"start_frame_index": 2, "reverse": True}
    )
    return prompts, forward, backward


def assert_frame(masks: dict[int, np.ndarray], expected) -> None:
    assert list(masks) == list(expected.object_ids)
    for mask, want in zip(masks.values(), expected.masks, strict=True):
        assert mask.dtype == np.bool_
        np.testing.assert_array_equal(mask, want)


def test_frame_files_are_in_frame_order(tmp_path: Path) -> None:
    names = ["10.jpg", "9.jpg", "00008.JPG", "frame_10.png", "frame_9.png", "b.webp", "a.jpeg"]
    for name in [*names, "notes.txt", ".hidden.jpg"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.jpg").mkdir()  # a folder, whatever its name
    ordered = ["00008.JPG", "9.jpg", "10.jpg", "a.jpeg", "b.webp", "frame_9.png", "frame_10.png"]
    assert [p.name for p in frame_files(tmp_path)] == ordered
    with pytest.raises(ValueError, match="holds no frame images"):
        frame_files(tmp_path / "sub.jpg")
    with pytest.raises(ValueError, match="not a folder"):
        frame_files(tmp_path / "10.jpg")


def test_video_arguments_are_checked_before_any_request(tmp_path: Path) -> None:
    with Client("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="either video"):
            client.open_video()
        with pytest.raises(ValueError, match="either video"):
            client.open_video(b"video", frames=[b"frame"])
        with pytest.raises(ValueError, match="no frame given"):
            client.open_video(frames=[])
        with pytest.raises(ValueError, match="not a folder"):
            client.open_video(frames=str(tmp_path / "nope"))
        text = tmp_path / "clip.txt"
        text.write_text("text")
        with text.open() as file, pytest.raises(TypeError, match="binary mode"):
            client.open_video(file)  # type: ignore[arg-type]


def test_a_video_session_gives_the_engines_masks(
    video_server: str, video_engine, clip: Path, video_expected
) -> None:
    prompts, forward, backward = video_expected
    with Client(video_server) as client, client.open_video(frames=clip) as video:
        assert (video.frames, video.width, video.height, video.fps) == (3, 960, 540, None)
        assert video.model_id == video_engine.default_model_id
        assert_frame(video.prompt(0, 1, points=VIDEO_POINTS, labels=[1, 0]), prompts[0])
        assert_frame(video.prompt(0, 2, box=VIDEO_BOX), prompts[1])
        assert video.objects() == [1, 2]
        frames_seen = list(video.propagate())
        assert [f.frame_index for f in frames_seen] == [0, 1, 2]
        for frame, expected in zip(frames_seen, forward, strict=True):
            assert_frame(frame.masks, expected)
        with video.propagate(start_frame_index=2, reverse=True) as propagation:
            for (frame_index, masks), expected in zip(propagation, backward, strict=True):
                assert frame_index == expected.frame_index
                assert_frame(masks, expected)
        assert [f.frame_index for f in backward] == [2, 1, 0]
    assert video.closed
    assert video_engine.videos.stats()["sessions"] == 0


def test_a_closed_propagation_frees_the_session_and_stops_the_work(
    video_server: str, video_engine
) -> None:
    with Client(video_server) as client, client.open_video(frames=VIDEO_FRAMES) as video:
        assert video.frames == 8
        video.prompt(0, 1, points=VIDEO_POINTS[:1])
        before = video_engine.videos.frames_propagated
        propagation = video.propagate()
        assert video_engine.videos.frames_propagated == before  # nothing sent yet: lazy
        assert next(propagation).frame_index == 0
        propagation.close()
        # Released at the frame in progress: a prompt soon succeeds.
        deadline = time.monotonic() + 30
        while True:
            try:
                masks = video.prompt(1, 1, points=VIDEO_POINTS[:1])
                break
            except Sam2Error as exc:
                if exc.status != 409 or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        assert list(masks) == [1]
        assert video_engine.videos.frames_propagated - before < 8
        assert list(propagation) == []  # closed for good


def test_video_errors_carry_the_servers_message(video_server: str) -> None:
    with Client(video_server) as client:
        with pytest.raises(Sam2Error) as caught:
            client.open_video(frames=[b"not an image"])
        assert caught.value.status == 400
        assert caught.value.message.startswith("frames[0]:")
        video = client.open_video(frames=VIDEO_FRAMES[:2])
        with video:
            propagation = video.propagate()
            with pytest.raises(Sam2Error) as caught:
                next(propagation)  # the request goes out here
            assert caught.value.status == 400
            assert "Nothing to propagate" in caught.value.message
            with pytest.raises(Sam2Error) as caught:
                video.prompt(2, 1, points=VIDEO_POINTS[:1])
            assert (caught.value.status, caught.value.message) == (
                400,
                "frame_index: 2 is not a frame of this video (0 to 1).",
            )
            for object_id in (3, 5):
                video.prompt(0, object_id, box=VIDEO_BOX)
            video.remove_object(3)
            assert video.objects() == [5]
            with pytest.raises(Sam2Error) as caught:
                video.remove_object(3)
            assert caught.value.status == 404
            video.reset()
            assert video.objects() == []
        assert video.closed
        with pytest.raises(Sam2Error) as caught:
            video.prompt(0, 1, box=VIDEO_BOX)
        assert caught.value.status == 404
        assert "No video session" in caught.value.message
        video.close()  # again: nothing to do
        client._run(client_module._close_video_flow(video.video_id))  # gone: still no error


def test_an_error_line_ends_the_stream_as_a_sam2_error() -> None:
    from sam2_server.codecs.native import encode_rle

    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    lines = [
        {"frame_index": 0, "objects": [{"object_id": 7, "mask": encode_rle(mask)}]},
        {"error": {"status": 503, "msg": "video memory full"}},
    ]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/videos":
            info = {"video_id": "ab" * 16, "model_id": "m", "frames": 2, "width": 6, "height": 4}
            return httpx.Response(201, json=info)
        if request.url.path.endswith("/propagate"):
            body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
            return httpx.Response(200, content=body)
        return httpx.Response(204)

    with Client("http://sam2", transport=httpx.MockTransport(handle)) as client:
        video = client.open_video(b"clip")
        assert video.fps is None
        propagation = video.propagate()
        first = next(propagation)
        assert first.frame_index == 0
        np.testing.assert_array_equal(first.masks[7], mask)
        with pytest.raises(Sam2Error) as caught:
            next(propagation)
        assert (caught.value.status, caught.value.message) == (503, "video memory full")
        assert list(propagation) == []


def test_async_video_sessions_give_the_same_masks(
    video_server: str, clip: Path, video_expected
) -> None:
    prompts, forward, _ = video_expected

    async def main() -> tuple[list, list, bool]:
        async with AsyncClient(video_server) as client:
            async with client.open_video(frames=clip) as video:
                answers = [
                    await video.prompt(0, 1, points=VIDEO_POINTS, labels=[1, 0]),
                    await video.prompt(0, 2, box=VIDEO_BOX),
                ]
                async with video.propagate() as propagation:
                    frames = [frame async for frame in propagation]
                assert await video.objects() == [1, 2]
            opened = await client.open_video(frames=[p.read_bytes() for p in VIDEO_FRAMES[:1]])
            assert opened.frames == 1
            await opened.aclose()
            return answers, frames, video.closed and opened.closed

    answers, frames, closed = asyncio.run(main())
    assert closed
    for masks, expected in zip(answers, prompts, strict=True):
        assert_frame(masks, expected)
    assert [f.frame_index for f in frames] == [0, 1, 2]
    for frame, expected in zip(frames, forward, strict=True):
        assert_frame(frame.masks, expected)


# -- a propagation left early: the session is busy until the frame in flight ends ---------


class HeldFrames:
    """The server's propagations, held: while `hold()` is on, each frame after a
    propagation's first one waits before it is answered (inside the engine's step, which
    owns the session all along, as a slow frame does) until `release()`. So a client
    that leaves after the first frame, once `in_flight` is set, leaves one in flight (a
    client that leaves between two frames finds the session free at once), for as long
    as the test needs, however loaded the machine."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.released.set()
        self.in_flight = threading.Event()  # a held frame is being computed

    def hold(self) -> None:
        self.in_flight.clear()
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def release_on_busy(self, response: httpx.Response) -> None:
        """A response hook: the frame in flight ends once the client has met it (a 409)."""
        if response.status_code == 409:
            self.release()

    async def arelease_on_busy(self, response: httpx.Response) -> None:
        self.release_on_busy(response)


@pytest.fixture
def held_frames(monkeypatch) -> Iterator[HeldFrames]:
    from sam2_server.engine.video_predictor import FixedVideoPredictor

    held = HeldFrames()
    real = FixedVideoPredictor.propagate_in_video

    def propagate_in_video(self, *args, **kwargs):
        for index, step in enumerate(real(self, *args, **kwargs)):
            if index > 0 and not held.released.is_set():
                held.in_flight.set()
                assert held.released.wait(timeout=30), "a held frame was never released"
            yield step

    monkeypatch.setattr(FixedVideoPredictor, "propagate_in_video", propagate_in_video)
    try:
        yield held
    finally:
        held.release()  # a step still waiting in the server's thread ends now


class SessionCalls:
    """The requests a session's client sends, as (method, last path segment)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def hook(self, request: httpx.Request) -> None:
        self.seen.append((request.method, request.url.path.rsplit("/", 1)[-1]))

    async def ahook(self, request: httpx.Request) -> None:
        self.hook(request)

    def take(self) -> list[tuple[str, str]]:
        seen, self.seen = self.seen, []
        return seen

    def tries(self, segment: str) -> int:
        """How many times the call ending in `segment` was sent since the last `take`."""
        return sum(1 for seen in self.take() if seen[1] == segment)


def test_calls_right_after_leaving_a_propagation_wait_for_the_frame_in_flight(
    video_server: str, video_engine, held_frames: HeldFrames
) -> None:
    """The README's pattern: `break` out of a propagation, then call the session at once.
    The server is still computing the next frame (it frees the session as that frame
    ends), so each first attempt is a 409; the client waits and sends it again."""
    calls = SessionCalls()
    hooks = {"request": [calls.hook], "response": [held_frames.release_on_busy]}
    with (
        Client(video_server, event_hooks=hooks) as client,
        client.open_video(frames=VIDEO_FRAMES[:4]) as video,
    ):
        video.prompt(0, 1, points=VIDEO_POINTS[:1])

        def leave_early() -> None:
            before = video_engine.videos.frames_propagated
            held_frames.hold()
            for i, (frame_index, masks) in enumerate(video.propagate()):
                assert (frame_index, 1 in masks) == (i, True)
                if i == 0:
                    assert held_frames.in_flight.wait(timeout=30)
                    break
            calls.take()
            # Frame 1 was in flight (it ends once the next call has met a 409); no
            # frame after it is computed.
            assert video_engine.videos.frames_propagated - before <= 2

        leave_early()
        masks = video.prompt(1, 2, box=VIDEO_BOX)
        assert list(masks) == [1, 2]
        assert calls.tries("prompts") >= 2  # busy first: the wait was exercised

        leave_early()
        video.remove_object(2)
        assert calls.tries("2") >= 2
        assert video.objects() == [1]

        leave_early()
        again = list(video.propagate(max_frames=1))  # a new propagation waits too
        assert [f.frame_index for f in again] == [0, 1]
        assert list(again[1].masks) == [1]
        assert calls.tries("propagate") >= 2

        leave_early()
        video.reset()
        assert calls.tries("reset") >= 2
        assert video.objects() == []
    assert video.closed


def test_a_busy_session_is_waited_for_only_after_leaving_and_only_so_long(
    video_server: str, held_frames: HeldFrames, monkeypatch
) -> None:
    """A 409 while this client still reads its propagation is raised at once (the server
    refuses to queue a call behind a propagation of unknown length); after leaving, the
    calls wait for at most BUSY_WAIT_S, then the 409 is raised as it is."""
    from sam2_server.client import _core

    monkeypatch.setattr(_core, "BUSY_WAIT_S", 1.0)
    calls = SessionCalls()
    with (
        Client(video_server, event_hooks={"request": [calls.hook]}) as client,
        client.open_video(frames=VIDEO_FRAMES[:3]) as video,
    ):
        video.prompt(0, 1, points=VIDEO_POINTS[:1])
        held_frames.hold()  # frame 1 does not end until released
        propagation = video.propagate()
        assert next(propagation).frame_index == 0
        calls.take()

        started = time.monotonic()
        with pytest.raises(Sam2Error) as busy:
            video.prompt(1, 1, points=VIDEO_POINTS[:1])
        assert busy.value.status == 409
        assert time.monotonic() - started < 0.5
        assert calls.take() == [("POST", "prompts")]  # once: not left, not waited for

        assert held_frames.in_flight.wait(timeout=30)
        propagation.close()
        started = time.monotonic()
        with pytest.raises(Sam2Error) as still_busy:
            video.prompt(1, 1, points=VIDEO_POINTS[:1])
        waited = time.monotonic() - started
        assert still_busy.value.status == 409
        assert "is busy" in still_busy.value.message
        assert 0.9 <= waited < 3.0
        tries = calls.take()
        assert set(tries) == {("POST", "prompts")}
        assert 3 <= len(tries) <= 10  # polled, the waits growing up to the cap

        # The frame ends: within the (default) bound, the call goes through.
        monkeypatch.setattr(_core, "BUSY_WAIT_S", 10.0)
        held_frames.release()
        assert list(video.prompt(1, 1, points=VIDEO_POINTS[:1])) == [1]


def test_async_calls_right_after_leaving_a_propagation_wait_too(
    video_server: str, held_frames: HeldFrames
) -> None:
    calls = SessionCalls()

    async def main() -> None:
        hooks = {"request": [calls.ahook], "response": [held_frames.arelease_on_busy]}
        async with AsyncClient(video_server, event_hooks=hooks) as client:
            async with client.open_video(frames=VIDEO_FRAMES[:3]) as video:
                await video.prompt(0, 1, points=VIDEO_POINTS[:1])

                async def leave_early() -> None:
                    held_frames.hold()
                    async with video.propagate() as frames:
                        async for frame in frames:
                            assert frame.frame_index == 0
                            in_flight = held_frames.in_flight.wait
                            assert await asyncio.to_thread(in_flight, 30)
                            break
                    calls.take()

                await leave_early()
                assert list(await video.prompt(1, 2, box=VIDEO_BOX)) == [1, 2]
                assert calls.tries("prompts") >= 2

                await leave_early()
                async with video.propagate(max_frames=1) as frames:
                    assert [f.frame_index async for f in frames] == [0, 1]
                assert calls.tries("propagate") >= 2

                await leave_early()
                await video.remove_object(2)
                assert calls.tries("2") >= 2

                await leave_early()
                await video.reset()
                assert calls.tries("reset") >= 2
                assert await video.objects() == []
            assert video.closed

    asyncio.run(main())


def _busy_server(busy: int, retry_after: str | None = "1") -> tuple[httpx.MockTransport, list]:
    """A stand-in server: once a propagation was asked for, the session's next `busy`
    calls are 409s (with `retry_after`), then it answers again. Gives the transport and
    the calls it was asked, as (method, last path segment)."""
    from sam2_server.codecs.native import encode_rle

    mask = encode_rle(np.ones((4, 6), dtype=bool))
    line = orjson.dumps({"frame_index": 0, "objects": [{"object_id": 1, "mask": mask}]})
    info = {"video_id": "ab" * 16, "model_id": "m", "frames": 2, "width": 6, "height": 4}
    asked: list[tuple[str, str]] = []
    state = {"propagated": False, "busy": busy}

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        asked.append((request.method, path.rsplit("/", 1)[-1]))
        if path == "/v1/videos":
            return httpx.Response(201, json=info)
        if request.method == "DELETE":
            return httpx.Response(204)
        if state["propagated"] and state["busy"]:
            state["busy"] -= 1
            headers = {} if retry_after is None else {"Retry-After": retry_after}
            return httpx.Response(409, headers=headers, json={"detail": {"msg": "busy"}})
        if path.endswith("/propagate"):
            state["propagated"] = True
            return httpx.Response(200, content=line + b"\n" + line + b"\n")
        return httpx.Response(200, content=line)

    return httpx.MockTransport(handle), asked


def test_only_a_409_right_after_leaving_is_sent_again() -> None:
    # Left early: two busy answers are waited out (0.05 s, then 0.1 s).
    transport, asked = _busy_server(busy=2)
    with Client("http://sam2", transport=transport) as client:
        video = client.open_video(b"clip")
        for _ in video.propagate():
            break
        assert list(video.prompt(0, 1, points=[[1, 1]])) == [1]
    assert asked == [("POST", "videos"), ("POST", "propagate")] + [("POST", "prompts")] * 3

    # Read to its end: nothing was left, a 409 is someone else's and raised at once.
    transport, asked = _busy_server(busy=2)
    with Client("http://sam2", transport=transport) as client:
        video = client.open_video(b"clip")
        assert len(list(video.propagate())) == 2
        with pytest.raises(Sam2Error) as busy:
            video.reset()
        assert (busy.value.status, busy.value.message) == (409, "busy")
    assert asked.count(("POST", "reset")) == 1

    # A 409 without Retry-After is not sam2-server's busy answer: raised at once.
    transport, asked = _busy_server(busy=2, retry_after=None)
    with Client("http://sam2", transport=transport) as client:
        video = client.open_video(b"clip")
        for _ in video.propagate():
            break
        with pytest.raises(Sam2Error):
            video.remove_object(1)
    assert asked.count(("DELETE", "1")) == 1


def test_retry_after_is_seconds_or_an_http_date() -> None:
    from email.utils import formatdate

    from sam2_server.client._core import _retry_after_s

    def retry_after(value: str | None) -> float | None:
        headers = {} if value is None else {"Retry-After": value}
        return _retry_after_s(httpx.Response(409, headers=headers))

    assert retry_after("1") == 1.0
    assert retry_after("0.5") == 0.5
    assert retry_after("-3") == 0.0
    assert 25 < retry_after(formatdate(time.time() + 30, usegmt=True)) <= 30  # type: ignore[operator]
    assert retry_after(formatdate(time.time() - 30, usegmt=True)) == 0.0
    assert retry_after("soon") is None
    assert retry_after(None) is None


# -- eviction (last: it pushes the shared images out of the cache) -----------------------


def evicted_after_a_click(client: Client, n: int) -> Result:
    """A click on `fresh_image(n)`, then two other uploads: the server's cache holds two
    images, so that one is gone (and its answers with it)."""
    before = client.segment(fresh_image(n), points=POINTS, labels=LABELS)
    client.upload(fresh_image(n + 1))
    client.upload(fresh_image(n + 2))
    return before


def test_an_evicted_image_is_uploaded_again_and_the_prompt_retried(server: Server) -> None:
    client, calls = counted_client(server.url)
    with client:
        before = evicted_after_a_click(client, 2)
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


def test_a_reference_on_an_evicted_image_falls_back_to_the_packed_logits(server: Server) -> None:
    """The image (and its answers with it) evicted: the reference's 404, the packed
    logits' 404, the upload again, the packed logits: the answer of a client that never
    had a reference."""
    client, calls = counted_client(server.url)
    with client:
        before = evicted_after_a_click(client, 5)
        calls.take()
        refined = client.segment(
            before.image_id, points=POINTS[:1], mask_input=before.logits[1], multimask_output=False
        )
        assert calls.take() == [
            "POST /v1/images/{id}/segment",  # by reference: 404, the image is gone
            "POST /v1/images/{id}/segment",  # packed: 404, the image is gone
            "POST /v1/images",
            "POST /v1/images/{id}/segment",
        ]
    with Client(server.url, TOKEN) as fresh:
        packed = fresh.segment(
            fresh_image(5),
            points=POINTS[:1],
            mask_input=before.logits[1].copy(),
            multimask_output=False,
        )
    assert_same(refined, packed)
