"""The native API (`/v1/images`): upload once, prompt by id, compact masks.

Every answer is compared with SAM2ImagePredictor on the same checkpoint:
binary masks (logits > 0) decoded with pycocotools or from the PNG equal the
predictor's `return_logits=False` masks, scores and packed logits are the
identical float32 values.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as coco_mask

from sam2_server.api import create_app
from sam2_server.codecs.native import pack_array, unpack_array
from sam2_server.codecs.polygons import rasterize
from tests.api.test_errors import assert_error
from tests.api.test_parity import BOX, BOXES, IMAGE, LABELS, POINTS, reference_answer
from tests.codecs.test_polygons import assert_within_tolerance
from tests.conftest import image_bytes

DATA = image_bytes(IMAGE)
IMAGE_ID = hashlib.sha256(DATA).hexdigest()
TOKEN = "native-token"


@pytest.fixture(scope="module")
def oracle(reference_predictor):
    reference_predictor.set_image(Image.open(io.BytesIO(DATA)).convert("RGB"))
    return reference_predictor


@pytest.fixture(scope="module")
def uploaded(client) -> str:
    response = client.post("/v1/images", files={"image": (IMAGE, DATA, "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()["image_id"]


def decode_masks(masks, mask_format: str) -> np.ndarray:
    if isinstance(masks, dict | str):
        if mask_format == "rle":
            assert isinstance(masks["counts"], str)
            rle = {"size": masks["size"], "counts": masks["counts"].encode()}
            return coco_mask.decode(rle).astype(bool)
        png = Image.open(io.BytesIO(base64.b64decode(masks)))
        assert png.mode == "L"
        pixels = np.array(png)
        assert set(np.unique(pixels)) <= {0, 255}
        return pixels == 255
    return np.stack([decode_masks(m, mask_format) for m in masks])


def segment(client, image_id: str, **body) -> dict:
    response = client.post(f"/v1/images/{image_id}/segment", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def without_answer_id(answer: dict) -> dict:
    """An answer but for its `answer_id`, which names each answer anew (test_answers.py)."""
    return {k: v for k, v in answer.items() if k != "answer_id"}


def assert_matches(answer: dict, want: dict, mask_format: str, *, logits: bool = True) -> None:
    masks = decode_masks(answer["masks"], mask_format)
    np.testing.assert_array_equal(masks, want["masks"] > 0)
    np.testing.assert_array_equal(np.array(answer["scores"], dtype=np.float32), want["scores"])
    if logits:
        np.testing.assert_array_equal(unpack_array(answer["logits"]), want["logits"])
    else:
        assert "logits" not in answer


def test_upload_names_the_image_by_its_sha256(client, uploaded):
    assert uploaded == IMAGE_ID
    again = client.post("/v1/images", files={"image": (IMAGE, DATA, "image/jpeg")}).json()
    assert again == {
        "image_id": IMAGE_ID,
        "model_id": again["model_id"],
        "width": 800,
        "height": 534,
        "cached": True,
    }


def test_get_image_is_200_when_cached_and_404_otherwise(client, uploaded):
    response = client.get(f"/v1/images/{uploaded}")
    assert response.status_code == 200
    assert response.json()["width"] == 800
    assert_error(client.get("/v1/images/" + "ab" * 32), 404, "upload it again")
    assert_error(client.get("/v1/images/not-a-hash"), 404, "POST /v1/images")
    assert_error(client.get(f"/v1/images/{uploaded}?model_id=nope"), 400, "nope")


CASES = {
    "points": {"points": POINTS, "labels": LABELS},
    "box": {"box": BOX},
    "points_and_box": {"points": POINTS, "labels": LABELS, "box": BOX},
    "several_boxes": {"box": BOXES},
    "several_boxes_with_points": {
        "box": BOXES,
        "points": [[[200, 200]], [[500, 300]]],
        "labels": [[1], [1]],
    },
    "single_mask": {"points": POINTS, "labels": LABELS, "multimask_output": False},
    "normalized": {"points": [[0.5, 0.45]], "labels": [1], "normalize_coords": False},
}
NAMES = {"points": "point_coords", "labels": "point_labels", "box": "box"}


@pytest.mark.parametrize("mask_format", ["rle", "png"])
@pytest.mark.parametrize("name", list(CASES))
def test_segment_equals_predictor(client, oracle, uploaded, name, mask_format):
    body = CASES[name]
    answer = segment(client, uploaded, **body, mask_format=mask_format)
    arrays = {NAMES[k]: np.array(v) for k, v in body.items() if k in NAMES}
    flags = {k: v for k, v in body.items() if k not in NAMES}
    want = reference_answer(oracle, **arrays, **flags, return_logits=False)
    assert_matches(answer, want, mask_format)
    assert (answer["image_id"], answer["width"], answer["height"]) == (IMAGE_ID, 800, 534)


def test_mask_input_round_trip_and_no_logits(client, oracle, uploaded):
    first = segment(client, uploaded, points=POINTS, labels=LABELS)
    low_res = unpack_array(first["logits"])[0][None]  # 1 x 256 x 256
    body = {"points": [[400, 250]], "labels": [1], "multimask_output": False}
    answer = segment(client, uploaded, **body, mask_input=pack_array(low_res))
    want = reference_answer(
        oracle,
        point_coords=np.array([[400, 250]]),
        point_labels=np.array([1]),
        mask_input=low_res,
        multimask_output=False,
        return_logits=False,
    )
    assert_matches(answer, want, "rle")
    bare = segment(client, uploaded, **body, mask_input=pack_array(low_res), return_logits=False)
    assert_matches(bare, want, "rle", logits=False)


@pytest.mark.parametrize("mask_format", ["rle", "png"])
def test_livepeer_route_with_mask_format_gives_the_native_answer(client, uploaded, mask_format):
    native = segment(client, uploaded, points=POINTS, labels=LABELS, mask_format=mask_format)
    response = client.post(
        "/segment-anything-2",
        data={
            "point_coords": json.dumps(POINTS),
            "point_labels": json.dumps(LABELS),
            "mask_format": mask_format,
        },
        files={"image": (IMAGE, DATA, "image/jpeg")},
    )
    assert response.status_code == 200
    assert without_answer_id(response.json()) == without_answer_id(native)
    assert response.json()["answer_id"] != native["answer_id"]  # each answer is named anew
    assert_error(
        client.post(
            "/segment-anything-2",
            data={"mask_format": "jpeg"},
            files={"image": (IMAGE, DATA, "image/jpeg")},
        ),
        400,
        "mask_format",
    )


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"points": [[1, 2, 3]], "labels": [1]}, 400, "points"),
        ({"points": [[1, 2]]}, 400, "labels"),
        ({"points": [[1, 2]], "labels": [2]}, 400, "labels"),
        ({"box": [1, 2, 3]}, 400, "box"),
        ({"box": [0, 0, 1e39, 5]}, 400, "box"),
        ({"points": [[1, "x"]], "labels": [1]}, 400, "points"),
        ({"mask_input": {"dtype": "float32", "shape": [1, 256, 256], "data": "!!"}}, 400, "base64"),
        ({"mask_input": {"dtype": "float32", "shape": [1, 2, 2], "data": "AAAA"}}, 400, "bytes"),
        (
            {"mask_input": pack_array(np.zeros((1, 8, 8), np.float32))},
            400,
            "mask_input must be 1x256x256",
        ),
        (
            {"mask_input": pack_array(np.full((1, 256, 256), np.nan, np.float32))},
            400,
            "finite",
        ),
        ({"box": [[0, 0, 5, 5]] * 65}, 400, "MAX_OBJECTS"),
    ],
)
def test_prompt_errors_are_400_naming_the_field(client, uploaded, body, status, fragment):
    response = client.post(f"/v1/images/{uploaded}/segment", json=body)
    assert_error(response, status, fragment)


def test_bad_json_and_bad_types_are_422(client, uploaded):
    path = f"/v1/images/{uploaded}/segment"
    assert (
        client.post(path, content=b"{", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert client.post(path, json={"mask_format": "gif"}).status_code == 422
    assert client.post(path, json={"multimask_output": "maybe"}).status_code == 422
    misspelt = client.post(path, json={"box": [1, 2, 30, 40], "multimask": False})
    assert misspelt.status_code == 422
    assert [e["loc"] for e in misspelt.json()["detail"]] == [["body", "multimask"]]


def test_segment_on_an_unknown_image_is_404(client):
    response = client.post("/v1/images/" + "cd" * 32 + "/segment", json={"box": BOX})
    assert_error(response, 404, "upload it again with POST /v1/images")


def test_evicted_image_is_404(reduced_settings, reduced_engine):
    settings = reduced_settings.with_(cache_bytes=0)
    from sam2_server.engine import Engine

    engine = Engine(settings)
    engine.load()
    with TestClient(create_app(settings, engine, load=False)) as client:
        upload = client.post("/v1/images", files={"image": (IMAGE, DATA, "image/jpeg")})
        assert upload.status_code == 200
        response = client.post(f"/v1/images/{IMAGE_ID}/segment", json={"box": BOX})
        assert_error(response, 404, "evicted")


def test_native_routes_need_the_token(reduced_settings, reduced_engine):
    app = create_app(reduced_settings.with_(auth_token=TOKEN), reduced_engine, load=False)
    with TestClient(app) as client:
        assert_error(client.get(f"/v1/images/{IMAGE_ID}"), 401, "Invalid bearer token.")
        assert_error(client.post("/v1/images", files={"image": (IMAGE, DATA, "image/jpeg")}), 401)
        assert_error(client.post(f"/v1/images/{IMAGE_ID}/segment", json={}), 401)
        ok = client.post(
            "/v1/images",
            files={"image": (IMAGE, DATA, "image/jpeg")},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert ok.status_code == 200


def test_native_routes_are_typed_in_openapi(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    upload = paths["/v1/images"]["post"]
    assert upload["operationId"] == "uploadImage"
    assert upload["security"] == [{"HTTPBearer": []}]
    segment_op = paths["/v1/images/{image_id}/segment"]["post"]
    body_ref = segment_op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref.endswith("/SegmentRequest")
    ok = segment_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/SegmentResponse")
    assert "404" in segment_op["responses"]
    assert "get" in paths["/v1/images/{image_id}"]
    components = schema["components"]["schemas"]
    assert set(components["SegmentRequest"]["properties"]) == {
        "model_id",
        "points",
        "labels",
        "box",
        "mask_input",
        "multimask_output",
        "normalize_coords",
        "return_logits",
        "mask_format",
        "polygon_epsilon",
    }
    request = components["SegmentRequest"]["properties"]
    assert request["mask_format"]["enum"] == ["rle", "png", "polygon"]
    assert (request["polygon_epsilon"]["minimum"], request["polygon_epsilon"]["maximum"]) == (
        0,
        1000.0,
    )
    assert "PackedArray" in components
    assert "PolygonMask" in components


def test_packed_arrays_round_trip_exactly():
    rng = np.random.default_rng(3)
    array = rng.normal(size=(2, 3, 4)).astype(np.float32)
    packed = pack_array(array)
    assert packed["shape"] == [2, 3, 4]
    assert len(base64.b64decode(packed["data"])) == array.nbytes
    np.testing.assert_array_equal(unpack_array(json.loads(json.dumps(packed))), array)


# -- mask_format "polygon" ---------------------------------------------------------------


def polygons_to_masks(masks) -> np.ndarray:
    """Nested polygon masks ({size, polygons}) drawn back to a bool array."""
    if isinstance(masks, dict):
        assert list(masks) == ["size", "polygons"]
        return rasterize(masks["polygons"], *masks["size"]).astype(bool)
    return np.stack([polygons_to_masks(m) for m in masks])


@pytest.mark.parametrize("name", ["points", "several_boxes_with_points", "single_mask"])
def test_polygon_masks_rasterize_to_the_rle_masks(client, uploaded, name):
    body = CASES[name]
    rle = segment(client, uploaded, **body, mask_format="rle")
    polygon = segment(client, uploaded, **body, mask_format="polygon")
    want = decode_masks(rle["masks"], "rle")
    assert want.any()
    np.testing.assert_array_equal(polygons_to_masks(polygon["masks"]), want)
    first = polygon["masks"][0] if want.ndim == 3 else polygon["masks"][0][0]
    assert first["size"] == [534, 800]
    assert {k: v for k, v in polygon.items() if k not in ("masks", "answer_id")} == {
        k: v for k, v in rle.items() if k not in ("masks", "answer_id")
    }


@pytest.mark.parametrize("epsilon", [2.0, 1000])
def test_simplified_polygons_stay_within_epsilon_of_the_mask(client, uploaded, epsilon):
    body = {"points": POINTS, "labels": LABELS, "return_logits": False}
    exact = segment(client, uploaded, **body, mask_format="polygon")
    simple = segment(client, uploaded, **body, mask_format="polygon", polygon_epsilon=epsilon)
    assert_within_tolerance(
        polygons_to_masks(simple["masks"]), polygons_to_masks(exact["masks"]), epsilon
    )

    def points(masks) -> int:
        return sum(len(ring) for m in masks for rings in m["polygons"] for ring in rings)

    assert points(simple["masks"]) < points(exact["masks"])


@pytest.mark.parametrize(
    "body",
    [
        {"mask_format": "polygon", "polygon_epsilon": -1},
        {"mask_format": "polygon", "polygon_epsilon": 1000.5},
        {"mask_format": "polygon", "polygon_epsilon": 1e300},
        {"mask_format": "rle", "polygon_epsilon": 2},
        {"polygon_epsilon": 0.5},
        {"mask_format": "png", "polygon_epsilon": 2},
    ],
)
def test_a_bad_polygon_epsilon_is_400_naming_it(client, uploaded, body):
    response = client.post(f"/v1/images/{uploaded}/segment", json={"box": BOX, **body})
    assert_error(response, 400, "polygon_epsilon")


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_polygon_epsilon_is_400_naming_it(client, uploaded, text):
    response = client.post(
        f"/v1/images/{uploaded}/segment",
        content=f'{{"box": [10, 10, 200, 200], "mask_format": "polygon", '
        f'"polygon_epsilon": {text}}}'.encode(),
        headers={"content-type": "application/json"},
    )
    assert_error(response, 400, "polygon_epsilon")
    assert (
        client.post(
            f"/v1/images/{uploaded}/segment",
            json={"box": BOX, "mask_format": "polygon", "polygon_epsilon": "wide"},
        ).status_code
        == 422
    )


def test_livepeer_route_answers_polygons_and_keeps_its_own_answer_without_mask_format(
    client, uploaded
):
    form = {"point_coords": json.dumps(POINTS), "point_labels": json.dumps(LABELS)}
    files = {"image": (IMAGE, DATA, "image/jpeg")}

    def livepeer(**extra):
        return client.post("/segment-anything-2", data={**form, **extra}, files=files)

    native = segment(client, uploaded, points=POINTS, labels=LABELS, mask_format="polygon")
    rle = segment(client, uploaded, points=POINTS, labels=LABELS, mask_format="rle")
    answer = livepeer(mask_format="polygon")
    assert answer.status_code == 200, answer.text
    assert without_answer_id(answer.json()) == without_answer_id(native)
    np.testing.assert_array_equal(
        polygons_to_masks(answer.json()["masks"]), decode_masks(rle["masks"], "rle")
    )
    # Livepeer's answer without mask_format; its form has only the contract's one extra
    # field, so a simplification asked of it is not read (the native route takes it).
    small = {"multimask_output": "false", "return_logits": "false"}
    plain = livepeer(**small)
    assert plain.status_code == 200
    assert set(plain.json()) == {"masks", "scores", "logits"}
    assert livepeer(**small, mask_format="").content == plain.content
    exact = livepeer(mask_format="polygon", polygon_epsilon="2").json()
    assert without_answer_id(exact) == without_answer_id(native)


def test_null_mask_format_and_epsilon_are_the_defaults_on_every_route(client, uploaded):
    """`null` for mask_format or polygon_epsilon means the default, on segment and on
    automatic masks alike (the video routes share the same fields: tests/api/test_videos.py)."""
    nulls = {"mask_format": None, "polygon_epsilon": None}
    segment = f"/v1/images/{uploaded}/segment"
    plain = client.post(segment, json={"box": BOX})
    with_nulls = client.post(segment, json={"box": BOX, **nulls})
    assert with_nulls.status_code == 200, with_nulls.text
    assert with_nulls.json()["masks"] == plain.json()["masks"]
    assert isinstance(with_nulls.json()["masks"][0], dict)  # rle
    polygons = client.post(
        segment, json={"box": BOX, "mask_format": "polygon", "polygon_epsilon": None}
    )
    assert polygons.status_code == 200, polygons.text
    automatic = client.post(
        f"/v1/images/{uploaded}/automatic-masks",
        json={"points_per_side": 2, "pred_iou_thresh": 0, "stability_score_thresh": 0, **nulls},
    )
    assert automatic.status_code == 200, automatic.text
