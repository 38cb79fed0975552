"""Roboflow inference's /sam2 routes, in process, against the native API's answers.

Each prediction is checked against the native API (`/v1/images/{id}/segment`)
for the same image and prompt: the RLE and the npz logits give its best mask
exactly; the `json` polygons are Roboflow's (outer contours only), so they
rasterize to the best mask with its holes filled, exactly.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pycocotools import mask as coco_mask

from sam2_server.api import create_app
from sam2_server.api.roboflow import (
    ClientIds,
    LogitsCache,
    Sam2Prompt,
    polygons,
    prompt_keys,
    served_model,
)
from sam2_server.codecs.native import pack_array, unpack_array
from sam2_server.codecs.polygons import rasterize
from sam2_server.errors import ServiceError
from tests.conftest import image_bytes

DATA = image_bytes("groceries.jpg")  # 800 x 534
OTHER = image_bytes("truck.jpg")
B64 = base64.b64encode(DATA).decode()
SHA = hashlib.sha256(DATA).hexdigest()


def image(data: bytes = DATA) -> dict[str, str]:
    return {"type": "base64", "value": base64.b64encode(data).decode()}


def roboflow(client: TestClient, path: str = "segment_image", **body: Any) -> dict[str, Any]:
    answer = client.post(f"/sam2/{path}", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def native(client: TestClient, data: bytes = DATA, **body: Any) -> dict[str, Any]:
    """The native API's answer: masks (C or BxC, bool), scores, logits."""
    uploaded = client.post("/v1/images", files={"image": ("i.jpg", data, "image/jpeg")})
    assert uploaded.status_code == 200, uploaded.text
    answer = client.post(f"/v1/images/{uploaded.json()['image_id']}/segment", json=body)
    assert answer.status_code == 200, answer.text
    content = answer.json()
    return {
        "masks": np.array(_decode_nested(content["masks"])),
        "scores": np.array(content["scores"], dtype=np.float32),
        "logits": unpack_array(content["logits"]),
    }


def _decode_nested(masks: Any) -> Any:
    if isinstance(masks, dict):
        return coco_mask.decode({"size": masks["size"], "counts": masks["counts"].encode()}) > 0
    return [_decode_nested(m) for m in masks]


def from_rle(masks: dict[str, Any]) -> np.ndarray:
    assert isinstance(masks["counts"], str)
    return coco_mask.decode({"size": masks["size"], "counts": masks["counts"].encode()}) > 0


def from_polygons(contours: list[list[list[int]]], height: int, width: int) -> np.ndarray:
    """Every contour filled, as a Roboflow user draws the `json` masks."""
    drawn = rasterize([[ring] for ring in contours if ring], height, width)
    return drawn.astype(bool)


def holes_filled(mask: np.ndarray) -> np.ndarray:
    """The mask with every background region that does not reach the border filled."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)  # 4-connected, from the outside
    outside = (flood == 1) & (padded == 0)
    return ~outside[1:-1, 1:-1]


def center_box(x0: float, y0: float, x1: float, y1: float) -> dict[str, float]:
    return {"x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "width": x1 - x0, "height": y1 - y0}


POINT_PROMPT = {"points": [{"x": 400, "y": 250, "positive": True}]}
BOX_CORNERS = [100.0, 100.0, 500.0, 400.0]
BOX_PROMPT = {"box": center_box(*BOX_CORNERS)}


@pytest.mark.parametrize(
    ("prompt", "native_prompt"),
    [
        (POINT_PROMPT, {"points": [[400, 250]], "labels": [1]}),
        (BOX_PROMPT, {"box": BOX_CORNERS}),
        (
            {
                "box": center_box(*BOX_CORNERS),
                "points": [
                    {"x": 300, "y": 200, "positive": True},
                    {"x": 120, "y": 90, "positive": False},
                ],
            },
            {"box": BOX_CORNERS, "points": [[300, 200], [120, 90]], "labels": [1, 0]},
        ),
    ],
    ids=["point", "box", "box+points"],
)
def test_each_format_gives_the_native_best_mask(client, prompt, native_prompt):
    want = native(client, **native_prompt)
    best, score = want["masks"][0], want["scores"][0]

    rle = roboflow(client, image=image(), prompts={"prompts": [prompt]}, format="rle")
    assert rle["model_id"]
    assert isinstance(rle["time"], float)
    [prediction] = rle["predictions"]
    assert prediction["format"] == "rle"
    assert prediction["masks"]["size"] == [534, 800]
    np.testing.assert_array_equal(from_rle(prediction["masks"]), best)
    assert prediction["confidence"] == pytest.approx(float(score), abs=0, rel=0)

    json = roboflow(client, image=image(), prompts={"prompts": [prompt]})  # json is the default
    [prediction] = json["predictions"]
    assert prediction["format"] == "polygon"
    assert prediction["confidence"] == rle["predictions"][0]["confidence"]
    contours = prediction["masks"]
    assert all(isinstance(v, int) for ring in contours for point in ring for v in point)
    np.testing.assert_array_equal(from_polygons(contours, 534, 800), holes_filled(best))

    answer = client.post(
        "/sam2/segment_image", json={"image": image(), "prompts": [prompt], "format": "binary"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    npz = np.load(io.BytesIO(answer.content))
    assert npz["masks"].shape == (1, 534, 800)
    assert npz["masks"].dtype == np.float32
    np.testing.assert_array_equal(npz["masks"][0] > 0, best)
    np.testing.assert_array_equal(npz["low_res_masks"][0], want["logits"][0])


def test_polygons_are_roboflows_outer_contours():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:12, 2:12] = True
    mask[5:8, 5:8] = False  # a hole: filled, as RETR_EXTERNAL gives it
    mask[15:18, 20:25] = True
    contours = polygons(mask)
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    assert contours == [c.reshape(-1, 2).tolist() for c in found]
    np.testing.assert_array_equal(from_polygons(contours, 20, 30), holes_filled(mask))
    assert polygons(np.zeros((4, 4), dtype=bool)) == [[]]  # Roboflow's empty mask


def test_one_prediction_per_prompt_in_order(client):
    """A batch of one shape is the native batch; prompts of other shapes decode apart."""
    boxes = [[50.0, 50.0, 300.0, 300.0], [350.0, 100.0, 700.0, 500.0]]
    prompts = [
        {"box": center_box(*boxes[0])},
        {"points": [{"x": 400, "y": 250, "positive": True}]},
        {"box": center_box(*boxes[1])},
        {
            "points": [
                {"x": 400, "y": 250, "positive": True},
                {"x": 120, "y": 90, "positive": False},
            ]
        },
    ]
    answer = roboflow(client, image=image(), prompts=prompts, format="rle", multimask_output=False)
    masks = [from_rle(p["masks"]) for p in answer["predictions"]]
    assert len(masks) == 4
    batch = native(client, box=boxes, multimask_output=False)
    np.testing.assert_array_equal(masks[0], batch["masks"][0][0])
    np.testing.assert_array_equal(masks[2], batch["masks"][1][0])
    one = native(client, points=[[400, 250]], labels=[1], multimask_output=False)
    np.testing.assert_array_equal(masks[1], one["masks"][0])
    two = native(client, points=[[400, 250], [120, 90]], labels=[1, 0], multimask_output=False)
    np.testing.assert_array_equal(masks[3], two["masks"][0])
    assert answer["predictions"][3]["confidence"] == pytest.approx(float(two["scores"][0]))


def test_no_prompt_is_one_unprompted_prediction(client):
    want = native(client)
    for prompts in (None, [], {"prompts": None}):
        body: dict[str, Any] = {"image": image(), "format": "rle"}
        if prompts is not None:
            body["prompts"] = prompts
        [prediction] = roboflow(client, **body)["predictions"]
        np.testing.assert_array_equal(from_rle(prediction["masks"]), want["masks"][0])


def test_embed_then_segment_by_the_clients_id_or_ours(client):
    embedded = roboflow(client, "embed_image", image=image(), image_id="my-photo")
    assert embedded["image_id"] == "my-photo"
    assert embedded["time"] >= 0
    ours = roboflow(client, "embed_image", image=image())
    assert ours["image_id"] == SHA
    want = native(client, points=[[400, 250]], labels=[1])["masks"][0]
    for image_id in ("my-photo", SHA):
        answer = roboflow(client, image_id=image_id, prompts=[POINT_PROMPT], format="rle")
        np.testing.assert_array_equal(from_rle(answer["predictions"][0]["masks"]), want)
    # An id embedded without the image: known ids answer, others are a 404 that says why.
    again = roboflow(client, "embed_image", image_id="my-photo")
    assert again["image_id"] == "my-photo"
    unknown = client.post("/sam2/segment_image", json={"image_id": "never", "prompts": []})
    assert unknown.status_code == 404
    assert "never" in unknown.json()["message"]
    assert "not in embedding cache" in unknown.json()["message"]
    assert client.post("/sam2/embed_image", json={"image_id": "never"}).status_code == 404
    neither = client.post("/sam2/segment_image", json={"prompts": []})
    assert neither.status_code == 400
    assert neither.json() == {"message": "Must provide either image or cached image_id."}


def test_a_request_with_the_image_rebinds_the_clients_id(client):
    """Roboflow answers from whatever the id named first; the image sent decides here."""
    roboflow(client, "embed_image", image=image(), image_id="reused")
    roboflow(client, "embed_image", image=image(OTHER), image_id="reused")
    by_id = roboflow(client, image_id="reused", prompts=[POINT_PROMPT], format="rle")
    want = native(client, OTHER, points=[[400, 250]], labels=[1])["masks"][0]
    np.testing.assert_array_equal(from_rle(by_id["predictions"][0]["masks"]), want)


def test_logits_saved_then_loaded_for_the_next_click(client):
    first = {"points": [{"x": 400, "y": 250, "positive": True}]}
    second = {"points": [*first["points"], {"x": 120, "y": 90, "positive": False}]}
    saved = client.post(
        "/sam2/segment_image",
        json={
            "image": image(),
            "prompts": [first],
            "format": "binary",
            "save_logits_to_cache": True,
        },
    )
    low_res = np.load(io.BytesIO(saved.content))["low_res_masks"][0]
    answer = roboflow(
        client, image=image(), prompts=[second], format="rle", load_logits_from_cache=True
    )
    want = native(
        client,
        points=[[400, 250], [120, 90]],
        labels=[1, 0],
        mask_input=pack_array(low_res[None]),
    )
    np.testing.assert_array_equal(from_rle(answer["predictions"][0]["masks"]), want["masks"][0])
    # Nothing saved for another image: the request decodes without a mask.
    other = roboflow(
        client, image=image(OTHER), prompts=[second], format="rle", load_logits_from_cache=True
    )
    plain = native(client, OTHER, points=[[400, 250], [120, 90]], labels=[1, 0])
    np.testing.assert_array_equal(from_rle(other["predictions"][0]["masks"]), plain["masks"][0])


def test_logits_cache_matches_roboflows_search():
    def keys(*prompts: dict[str, Any]) -> tuple:
        return prompt_keys([Sam2Prompt.model_validate(p) for p in prompts])

    p = lambda x, positive=True: {"x": x, "y": 1, "positive": positive}  # noqa: E731
    cache = LogitsCache(capacity=3)
    one = np.full((1, 256, 256), 1.0, dtype=np.float32)
    two = np.full((1, 256, 256), 2.0, dtype=np.float32)
    cache.save("m", "img", keys({"points": [p(1)]}), one)
    cache.save("m", "img", keys({"points": [p(1), p(2)]}), two)
    assert cache.load("m", "img", keys({"points": [p(1), p(2), p(3)]})) is two  # one fewer
    assert cache.load("m", "img", keys({"points": [p(1), p(3)]})) is one  # the only subset
    assert cache.load("m", "img", keys({"points": [p(1), p(2)]})) is one  # not itself
    assert cache.load("m", "img", keys({"points": [p(3)]})) is None
    assert cache.load("m", "other", keys({"points": [p(1), p(2)]})) is None
    assert cache.load("x", "img", keys({"points": [p(1), p(2)]})) is None
    # The box must be the same; points are compared as sets.
    box = {"x": 5, "y": 5, "width": 2, "height": 2}
    assert cache.load("m", "img", keys({"box": box, "points": [p(1), p(2)]})) is None
    # Bounded by prompts held: the oldest set goes first.
    cache.save("m", "img2", keys({"points": [p(1)]}, {"points": [p(2)]}), np.zeros((2, 256, 256)))
    assert cache.load("m", "img", keys({"points": [p(1), p(3)]})) is None


def test_client_ids_are_bounded():
    ids = ClientIds(capacity=2)
    ids.put("m", "a", "1")
    ids.put("m", "b", "2")
    assert ids.get("m", "a") == "1"  # a is now the most recent
    ids.put("m", "c", "3")
    assert ids.get("m", "b") is None
    assert ids.get("m", "a") == "1"
    assert ids.get("m", "c") == "3"
    assert ids.get("other", "a") is None


class FakeSegmenter:
    def __init__(self, *served: str) -> None:
        self.served_model_ids = served
        self.default_model_id = served[0]


def test_version_ids_pick_a_served_model_of_that_size():
    both = FakeSegmenter(
        "facebook/sam2.1-hiera-large",
        "facebook/sam2-hiera-tiny",
        "/w/sam2.1_hiera_tiny.pt",
        "/w/sam2.1_hiera_base_plus.pt",
    )
    assert served_model(both, "hiera_tiny") == "facebook/sam2-hiera-tiny"  # SAM 2 as Roboflow's
    assert served_model(both, "hiera_large") == "facebook/sam2.1-hiera-large"
    assert served_model(both, "hiera_b_plus") == "/w/sam2.1_hiera_base_plus.pt"
    assert served_model(both, "/w/sam2.1_hiera_tiny.pt") == "/w/sam2.1_hiera_tiny.pt"
    assert served_model(both, None) == "facebook/sam2.1-hiera-large"
    # A size not served: the default answers (the SDK sends hiera_tiny unless told otherwise).
    assert served_model(both, "hiera_small") == "facebook/sam2.1-hiera-large"
    assert served_model(FakeSegmenter("/w/sam2_hiera_tinyx.pt"), "hiera_tiny") == (
        "/w/sam2_hiera_tinyx.pt"
    )
    with pytest.raises(ServiceError, match="hiera_tiny, hiera_small, hiera_b_plus, hiera_large"):
        served_model(both, "hiera_huge")


def test_the_answer_names_the_model_that_answered(client):
    answer = client.post(
        "/sam2/segment_image",
        json={"image": image(), "prompts": [POINT_PROMPT], "sam2_version_id": "hiera_large"},
    )
    served = client.get("/version").json()["model_id"]
    assert answer.status_code == 200
    assert answer.json()["model_id"] == answer.headers["x-model-id"] == served
    refused = client.post("/sam2/segment_image", json={"image": image(), "sam2_version_id": "v9"})
    assert refused.status_code == 400
    assert "sam2_version_id" in refused.json()["message"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"image": {"type": "numpy", "value": "gASV"}}, 400, "not accepted by this server"),
        ({"image": {"type": "file", "value": "/etc/passwd"}}, 400, "not accepted by this server"),
        ({"image": {"type": "jpeg", "value": B64}}, 400, "not recognised image type"),
        ({"image": {"type": "base64", "value": "QUJDR"}}, 400, "Malformed base64"),
        ({"image": {"type": "base64", "value": ""}}, 400, "Empty image payload"),
        ({"image": {"type": "base64", "value": 12}}, 400, "must be a string"),
        ({"image": {"type": "base64", "value": "aGVsbG8gd29ybGQ="}}, 400, "Could not load input"),
        ({"image": {"type": "url", "value": "http://169.254.169.254/x"}}, 400, "DOWNLOAD_HOSTS"),
        ({"image": {"value": B64}}, 422, "image.type"),
        ({"image": image(), "format": "png"}, 422, "format"),
        ({"image": image(), "prompts": [{"box": {"x": 1, "y": 2}}]}, 422, "width"),
        ({"image": image(), "prompts": [{"points": [{"x": 1, "y": 2}]}]}, 422, "positive"),
        ({"image": image(), "prompts": [{"box": {**BOX_PROMPT["box"], "x": 1e12}}]}, 400, "box"),
        ({"image": image(), "prompts": [POINT_PROMPT] * 65}, 400, "MAX_OBJECTS"),
        ({"image": image(), "image_id": "x" * 300}, 422, "image_id"),
    ],
)
def test_errors_are_in_roboflows_shape(client, body, status, fragment):
    answer = client.post("/sam2/segment_image", json=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert fragment in answer.json()["message"]
    if status == 422:
        assert answer.json()["detail"]
        assert "input" not in answer.json()["detail"][0]


def test_malformed_json_and_nan_are_422_in_roboflows_shape(client):
    answer = client.post(
        "/sam2/segment_image", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422
    assert answer.json()["message"].startswith("Invalid request")
    nan = (
        b'{"image": {"type": "base64", "value": "QQ=="}, '
        b'"prompts": [{"points": [{"x": NaN, "y": 1, "positive": true}]}]}'
    )
    answer = client.post(
        "/sam2/segment_image", content=nan, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422
    assert "prompts.prompts.0.points.0.x" in answer.json()["message"]


class Images(BaseHTTPRequestHandler):
    served = 0

    def do_GET(self) -> None:
        type(self).served += 1
        self.send_response(200)
        self.send_header("content-length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_url_images_from_allowed_hosts_only_downloaded_once(
    reduced_settings, reduced_engine, image_host
):
    settings = replace(reduced_settings, download_hosts=(image_host,))
    with TestClient(create_app(settings, reduced_engine, load=False)) as client:
        url = {"type": "url", "value": f"http://{image_host}/photo.jpg"}
        first = roboflow(client, image=url, prompts=[POINT_PROMPT], format="rle")
        second = roboflow(client, image=url, prompts=[POINT_PROMPT], format="rle")
        assert Images.served == 1  # the second click neither downloads nor encodes again
        assert first["predictions"] == second["predictions"]
        want = native(client, points=[[400, 250]], labels=[1])["masks"][0]
        np.testing.assert_array_equal(from_rle(first["predictions"][0]["masks"]), want)
        elsewhere = client.post(
            "/sam2/segment_image",
            json={"image": {"type": "url", "value": "http://localhost:1/x.jpg"}},
        )
        assert elsewhere.status_code == 400
        assert "not a host this server downloads from" in elsewhere.json()["message"]


def test_routes_are_described_in_openapi(client):
    paths = client.get("/openapi.json").json()["paths"]
    segment = paths["/sam2/segment_image"]["post"]
    assert segment["operationId"] == "roboflowSam2SegmentImage"
    assert "application/octet-stream" in segment["responses"]["200"]["content"]
    assert paths["/sam2/embed_image"]["post"]["operationId"] == "roboflowSam2EmbedImage"
