"""X-AnyLabeling-Server's protocol under /xanylabeling, in process.

Every polygon answer is rasterized and compared with the native API's mask
for the same image and prompt (holes filled: an X-AnyLabeling polygon is one
ring); the requests are the ones X-AnyLabeling's `RemoteServer` sends (see
tests/integrations/test_xanylabeling.py for the real client).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sam2_server.api import create_app
from sam2_server.api.xanylabeling import (
    model_ids,
    prediction_shapes,
    xanylabeling_error_body,
)
from sam2_server.codecs.polygons import mask_polygons, rasterize
from sam2_server.domain import Prediction
from tests.api.native import native_best
from tests.conftest import image_bytes

PREDICT = "/xanylabeling/v1/predict"
POINT = [170, 125]
BOX = [25, 90, 575, 285]


def unique_image() -> bytes:
    """truck.jpg at a third of its size as a PNG: small, and bytes no other test has cached."""
    truck = Image.open(io.BytesIO(image_bytes("truck.jpg"))).convert("RGB")
    pixels = np.array(truck.resize((truck.width // 3, truck.height // 3)))
    pixels[0, 0] = (1, 2, 3)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


IMAGE = unique_image()
DATA_URL = "data:image/png;base64," + base64.b64encode(IMAGE).decode()


def filled(mask: np.ndarray) -> np.ndarray:
    """`mask` with its holes filled: background not 4-connected to the border (the dual
    of the 8-connected regions OpenCV traces), found without any contour code."""
    background = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    _, labels = cv2.connectedComponents(background, connectivity=4)
    return (labels != labels[0, 0])[1:-1, 1:-1]


def outlined(mask: np.ndarray) -> np.ndarray:
    """What X-AnyLabeling polygons can hold of `mask`: its holes filled, less the regions
    with no area as a polygon (a single pixel, or a straight horizontal, vertical or
    diagonal one-pixel line), found from the 8-connected regions' sizes."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    width, height, area = (stats[:, k] for k in (cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT, 4))
    straight = (np.minimum(width, height) == 1) & (area == np.maximum(width, height))
    diagonal = (width == height) & (area == width)
    line = straight | diagonal
    line[0] = False  # the background
    return filled(mask & ~line[labels])


def held(points: list[list[float]]) -> list[list[float]]:
    """The points X-AnyLabeling's `Shape.add_point` keeps of a polygon: a point equal to
    the first closes it and is not added."""
    kept: list[list[float]] = []
    for point in points:
        if not kept or point != kept[0]:
            kept.append(point)
    return kept


def drawn(shapes: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """The shapes' polygons, as X-AnyLabeling holds them, drawn back to a mask."""
    polygons = [[[[int(x), int(y)] for x, y in held(shape["points"])]] for shape in shapes]
    return rasterize(polygons, height, width).astype(bool)


def native_mask(client: TestClient, **prompt: Any) -> tuple[np.ndarray, float]:
    """The native API's best mask and score for `prompt` on IMAGE (single-mask output)."""
    return native_best(client, IMAGE, multimask_output=False, **prompt)


@pytest.fixture(scope="module")
def model(client: TestClient) -> str:
    listed = client.get("/xanylabeling/v1/models")
    assert listed.status_code == 200
    return next(iter(listed.json()["data"]))


def predict(client: TestClient, model: str, marks: list[dict[str, Any]], **params: Any) -> Any:
    """The body RemoteServer.predict_shapes posts (params as it fills them)."""
    body = {
        "model": model,
        "image": DATA_URL,
        "params": {
            "conf_threshold": 0.0,
            "iou_threshold": 0.0,
            "epsilon_factor": 0.001,
            "marks": marks,
            **params,
        },
    }
    return client.post(PREDICT, json=body, headers={"Content-Type": "application/json"})


def test_models_list_sam2_with_its_buttons(client: TestClient, model: str) -> None:
    data = client.get("/xanylabeling/v1/models").json()
    served = client.app.state.segmenter.served_model_ids  # type: ignore[attr-defined]
    assert list(data["data"]) == list(model_ids(served))
    entry = data["data"][model]
    assert model == "sam2.1_hiera_reduced.pt"  # the checkpoint's file name, URL-safe
    assert entry["display_name"]
    widgets = {widget["name"]: widget["value"] for widget in entry["widgets"]}
    for button in (
        "button_add_point",
        "button_remove_point",
        "button_add_rect",
        "button_clear",
        "button_finish_object",
        "mask_fineness_value_label",
    ):
        assert widgets[button] is None
    # Their validator: an int in 1..100; the client maps 10 to epsilon 0.001.
    assert widgets["mask_fineness_slider"] == 10
    assert entry["batch_processing_mode"] == "default"
    assert entry["capabilities"] == {}
    assert entry["params"]["epsilon_factor"] == 0.001

    info = client.get(f"/xanylabeling/v1/models/{model}/info").json()
    assert info["success"] is True
    assert info["data"] == {"model_id": model, **entry}
    # The served id itself, slashes and all, names the same model.
    by_path = client.get(f"/xanylabeling/v1/models/{served[0]}/info")
    assert by_path.json()["data"]["model_id"] == model
    missing = client.get("/xanylabeling/v1/models/nope/info")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_model_ids_are_url_safe_distinct_and_stable() -> None:
    served = (
        "facebook/sam2-hiera-large",
        "/models/a/sam2.1_hiera_tiny.pt",
        "/models/b/sam2.1_hiera_tiny.pt",
        "C:\\weights\\my model.pt",
    )
    ids = model_ids(served)
    assert sorted(ids.values()) == sorted(served)
    assert ids["facebook-sam2-hiera-large"] == "facebook/sam2-hiera-large"
    assert ids["my-model.pt"] == "C:\\weights\\my model.pt"
    twins = [name for name in ids if name.startswith("sam2.1_hiera_tiny.pt-")]
    assert len(twins) == 2
    for name in ids:
        assert all(c.isalnum() or c in "._-" for c in name), name
    assert model_ids(tuple(reversed(served))) == {k: ids[k] for k in reversed(list(ids))}


def test_a_point_is_the_native_mask_as_polygons(client: TestClient, model: str) -> None:
    marks = [{"type": "point", "data": POINT, "label": 1}]
    answer = predict(client, model, marks, epsilon_factor=0.0)
    assert answer.status_code == 200, answer.text
    content = answer.json()
    assert content["success"] is True
    data = content["data"]
    assert data["description"] == ""
    assert data["replace"] is False
    shapes = data["shapes"]
    mask, score = native_mask(client, points=[POINT], labels=[1])
    assert mask.any()
    assert shapes
    for shape in shapes:
        assert shape["label"] == "AUTOLABEL_OBJECT"
        assert shape["shape_type"] == "polygon"
        assert len(shape["points"]) >= 3
        assert shape["points"][0] == shape["points"][-1]
        assert shape["score"] == pytest.approx(min(max(score, 0.0), 1.0), abs=1e-6)
    height, width = mask.shape
    np.testing.assert_array_equal(drawn(shapes, height, width), outlined(mask))

    # The default fineness: each ring within 0.001 of its perimeter of the exact one, so
    # every pixel that changes lies that close to the mask's boundary.
    simplified = predict(client, model, marks).json()["data"]["shapes"]
    perimeter = max(
        cv2.arcLength(np.array(shape["points"], np.float32).reshape(-1, 1, 2), True)
        for shape in shapes
    )
    exact = outlined(mask)
    boundary = exact & ~cv2.erode(exact.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    distance = cv2.distanceTransform((~boundary).astype(np.uint8), cv2.DIST_L2, 5)
    changed = drawn(simplified, height, width) ^ exact
    assert changed.any()
    assert distance[changed].max() <= 0.001 * perimeter + 1.5
    assert sum(len(s["points"]) for s in simplified) <= sum(len(s["points"]) for s in shapes)


def test_all_marks_are_one_prompt(client: TestClient, model: str) -> None:
    marks = [
        {"type": "rectangle", "data": [BOX[2], BOX[3], BOX[0], BOX[1]], "label": 1},  # drawn back
        {"type": "point", "data": POINT, "label": 1},
        {"type": "point", "data": [500, 200], "label": 0},
    ]
    shapes = predict(client, model, marks, epsilon_factor=0).json()["data"]["shapes"]
    mask, _ = native_mask(client, points=[POINT, [500, 200]], labels=[1, 0], box=BOX)
    np.testing.assert_array_equal(drawn(shapes, *mask.shape), outlined(mask))


def test_two_rectangles_are_two_objects_with_every_point(client: TestClient, model: str) -> None:
    second = [300, 100, 530, 270]
    marks = [
        {"type": "rectangle", "data": BOX, "label": 1},
        {"type": "rectangle", "data": second, "label": 1},
        {"type": "point", "data": POINT, "label": 1},
    ]
    answer = predict(client, model, marks, epsilon_factor=0, show_boxes=True)
    shapes = answer.json()["data"]["shapes"]
    boxes = [i for i, shape in enumerate(shapes) if shape["shape_type"] == "rectangle"]
    assert len(boxes) == 2
    first_object, second_object = shapes[: boxes[0]], shapes[boxes[0] + 1 : boxes[1]]
    for polygons, box in ((first_object, BOX), (second_object, second)):
        mask, _ = native_mask(client, points=[POINT], labels=[1], box=box)
        np.testing.assert_array_equal(drawn(polygons, *mask.shape), outlined(mask))
    ys, xs = np.nonzero(outlined(native_mask(client, points=[POINT], labels=[1], box=BOX)[0]))
    corners = [
        [xs.min(), ys.min()],
        [xs.max(), ys.min()],
        [xs.max(), ys.max()],
        [xs.min(), ys.max()],
    ]
    assert shapes[boxes[0]]["points"] == [[float(x), float(y)] for x, y in corners]
    assert shapes[boxes[0]]["label"] == "AUTOLABEL_OBJECT"


def test_every_click_after_the_first_reuses_the_embedding(client: TestClient, model: str) -> None:
    marks = [{"type": "point", "data": [100, 160], "label": 1}]
    pixels = np.array(Image.open(io.BytesIO(IMAGE)))
    pixels[0, 0] = (9, 9, 9)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    body = {
        "model": model,
        "image": "data:image/png;base64," + base64.b64encode(out.getvalue()).decode(),
        "params": {"marks": marks},
    }
    before = client.get("/stats").json()["encoded_images"]
    for count in range(3):
        assert client.post(PREDICT, json=body).status_code == 200
        body["params"]["marks"].append({"type": "point", "data": [110 + count, 160], "label": 0})
    assert client.get("/stats").json()["encoded_images"] == before + 1


def test_no_marks_is_no_shapes(client: TestClient, model: str) -> None:
    answer = predict(client, model, [])
    assert answer.status_code == 200
    assert answer.json() == {
        "success": True,
        "data": {"shapes": [], "description": "", "replace": False},
    }


def test_the_image_may_be_bare_base64_or_wrapped(client: TestClient, model: str) -> None:
    marks = [{"type": "point", "data": POINT, "label": 1}]
    expected = predict(client, model, marks).json()
    encoded = base64.b64encode(IMAGE).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    for image in (encoded, encoded.rstrip("="), "data:image/png;base64," + wrapped):
        body = {"model": model, "image": image, "params": {"marks": marks}}
        assert client.post(PREDICT, json=body).json() == expected


def error_of(answer: Any, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    content = answer.json()
    assert content["success"] is False
    assert content["error"]["code"] == code
    message: str = content["error"]["message"]
    assert message
    return message


@pytest.mark.parametrize(
    "image",
    [
        "data:image/png;base64,%%%%",
        "data:image/png,iVBORw0KGgo=",  # not base64
        "data:text/html;base64," + base64.b64encode(b"<p>hi</p>").decode(),
        "data:image/png;base64,",
        base64.b64encode(b"definitely not an image").decode(),
        base64.b64encode(IMAGE[: len(IMAGE) // 3]).decode(),  # truncated
        "data:image/png;base64",
    ],
)
def test_a_bad_image_is_invalid_image(client: TestClient, model: str, image: str) -> None:
    body = {"model": model, "image": image, "params": {"marks": [{"type": "point", "data": POINT}]}}
    error_of(client.post(PREDICT, json=body), 400, "INVALID_IMAGE")


def test_too_many_pixels_is_invalid_image(
    client: TestClient, model: str, reduced_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        reduced_engine, "settings", reduced_engine.settings.with_(max_image_pixels=1000)
    )
    for marks in ([], [{"type": "point", "data": POINT}]):
        body = {"model": model, "image": DATA_URL, "params": {"marks": marks}}
        message = error_of(client.post(PREDICT, json=body), 400, "INVALID_IMAGE")
        assert "MAX_IMAGE_PIXELS" in message


def test_an_unknown_model_is_model_not_found(client: TestClient) -> None:
    body = {"model": "facebook/sam2-hiera-nope", "image": DATA_URL, "params": {}}
    message = error_of(client.post(PREDICT, json=body), 404, "MODEL_NOT_FOUND")
    assert "sam2.1_hiera_reduced.pt" in message


@pytest.mark.parametrize(
    "body",
    [
        {"image": DATA_URL},
        {"model": 7, "image": DATA_URL},
        {"model": "m", "image": DATA_URL, "params": {"marks": [{"type": "point", "data": [1]}]}},
        {"model": "m", "image": DATA_URL, "params": {"marks": [{"type": "circle", "data": [1]}]}},
        {
            "model": "m",
            "image": DATA_URL,
            "params": {"marks": [{"type": "point", "data": [1, "2"]}]},
        },
        {
            "model": "m",
            "image": DATA_URL,
            "params": {"marks": [{"type": "point", "data": [1, 2], "label": 2}]},
        },
        {"model": "m", "image": DATA_URL, "params": {"epsilon_factor": -1}},
        {"model": "m", "image": DATA_URL, "params": {"marks": "point"}},
        [1, 2],
    ],
)
def test_a_malformed_body_is_invalid_request(client: TestClient, body: Any) -> None:
    message = error_of(client.post(PREDICT, json=body), 422, "INVALID_REQUEST")
    assert "iVBOR" not in message  # the input is not echoed (an image can be megabytes)


def test_invalid_json_and_nan_are_invalid_request(client: TestClient, model: str) -> None:
    headers = {"Content-Type": "application/json"}
    message = error_of(client.post(PREDICT, content=b"{", headers=headers), 422, "INVALID_REQUEST")
    assert "JSON" in message
    nan = (
        b'{"model": "' + model.encode() + b'", "image": "x", "params": '
        b'{"marks": [{"type": "point", "data": [NaN, 1]}]}}'
    )
    error_of(client.post(PREDICT, content=nan, headers=headers), 422, "INVALID_REQUEST")
    plain = {"Content-Type": "text/plain"}
    error_of(client.post(PREDICT, content=b"model=m", headers=plain), 422, "INVALID_REQUEST")


def test_marks_past_the_limits_are_invalid_params(client: TestClient, model: str) -> None:
    limit = client.app.state.settings.max_objects  # type: ignore[attr-defined]
    marks = [{"type": "rectangle", "data": [i, i, i + 50, i + 50]} for i in range(limit + 1)]
    assert "MAX_OBJECTS" in error_of(predict(client, model, marks), 400, "INVALID_PARAMS")


def test_unknown_paths_answer_in_the_protocol_shape(client: TestClient) -> None:
    error_of(client.post("/xanylabeling/v1/video/init", json={}), 404, "NOT_FOUND")
    message = error_of(client.get("/xanylabeling//v1/models"), 404, "NOT_FOUND")
    assert "trailing slash" in message


def test_health_answers_as_their_server(client: TestClient) -> None:
    health = client.get("/xanylabeling/health")
    assert health.status_code == 200
    content = health.json()
    assert content["status"] == "healthy"
    assert content["models_loaded"] == 1
    assert content["timestamp"].endswith("Z")


def test_the_guard_answers_in_the_protocol_shape(
    reduced_settings: Any, reduced_engine: Any
) -> None:
    settings = reduced_settings.with_(auth_token="secret", max_request_bytes=10_000)
    with TestClient(create_app(settings, reduced_engine, load=False)) as guarded:
        error_of(guarded.get("/xanylabeling/v1/models"), 401, "UNAUTHORIZED")
        error_of(
            guarded.get("/xanylabeling/v1/models", headers={"Token": "wrong"}), 401, "UNAUTHORIZED"
        )
        assert (
            guarded.get("/xanylabeling/v1/models", headers={"Token": "secret"}).status_code == 200
        )
        big = {"model": "m", "image": DATA_URL}
        answer = guarded.post(PREDICT, json=big, headers={"Token": "secret"})
        assert "MAX_REQUEST_BYTES" in error_of(answer, 413, "REQUEST_TOO_LARGE")
    body = xanylabeling_error_body(408, "slow")
    assert body == b'{"success":false,"error":{"code":"REQUEST_TIMEOUT","message":"slow"}}'


class Loading:
    """A segmenter still loading its models: every click is a 503 until it is done."""

    status = "LOADING"
    served_model_ids = ("facebook/sam2-hiera-large",)
    default_model_id = "facebook/sam2-hiera-large"

    def unavailable(self) -> dict[str, str]:
        return {}

    def stats(self) -> dict[str, Any]:
        return {}


def test_a_loading_server_is_unavailable_and_says_so(reduced_settings: Any) -> None:
    with TestClient(create_app(reduced_settings, Loading(), load=False)) as loading:  # type: ignore[arg-type]
        health = loading.get("/xanylabeling/health").json()
        assert health["status"] == "loading"
        assert health["models_loaded"] == 0
        assert health["timestamp"].endswith("Z")
        body = {"model": "facebook-sam2-hiera-large", "image": DATA_URL, "params": {}}
        answer = loading.post(PREDICT, json=body)
        error_of(answer, 503, "SERVICE_UNAVAILABLE")
        assert answer.headers["retry-after"] == "5"


# -- polygons of masks --------------------------------------------------------------------


def prediction_of(mask: np.ndarray, score: float = 0.9) -> Prediction:
    logits = np.where(mask, 5.0, -5.0).astype(np.float32)[None]
    return Prediction(logits, np.array([score], np.float32), np.zeros((1, 256, 256), np.float32))


def test_holes_are_filled_and_regions_without_area_left_out() -> None:
    mask = np.zeros((40, 50), bool)
    mask[5:30, 5:30] = True
    mask[10:20, 10:20] = False  # a hole ...
    mask[14:16, 14:16] = True  # ... with an island in it
    mask[35, 40] = True  # one pixel: no area
    mask[2, 40:48] = True  # a straight one-pixel line: no area
    mask[30:36, 2:8] = np.eye(6, dtype=bool)  # a diagonal one: no area
    mask[6:9, 44] = True
    mask[9, 45] = True  # an L, one pixel wide: three corners, kept
    shapes = prediction_shapes(
        prediction_of(mask, score=1.3), epsilon_factor=0.0, show_masks=True, show_boxes=False
    )
    assert len(shapes) == 2
    for shape in shapes:
        assert len(held(shape["points"])) >= 3
        assert shape["points"][0] == shape["points"][-1]
        assert shape["score"] == 1.0  # clamped into their schema's [0, 1]
    expected = filled(mask)
    expected[35, 40] = expected[2, 40:48] = False
    expected[30:36, 2:8] = False
    np.testing.assert_array_equal(outlined(mask), expected)
    np.testing.assert_array_equal(drawn(shapes, 40, 50), expected)


def test_a_region_touching_itself_keeps_its_pinch() -> None:
    """Two blocks joined by one pixel above them are one region whose outline starts
    at that pixel (OpenCV starts at the top-left) and passes it again between the
    blocks; X-AnyLabeling drops a point equal to the first, so no ring starts there."""
    mask = np.zeros((8, 12), bool)
    mask[0, 5] = True
    mask[1:5, 1:5] = True
    mask[1:5, 6:10] = True
    assert mask_polygons(mask, holes=False)[0][0][0] == [5, 0]  # the pinch comes first
    for region in (mask, mask[:, ::-1], np.ascontiguousarray(mask.T)):
        shapes = prediction_shapes(
            prediction_of(np.ascontiguousarray(region)),
            epsilon_factor=0.0,
            show_masks=True,
            show_boxes=False,
        )
        assert len(shapes) == 1
        np.testing.assert_array_equal(drawn(shapes, *region.shape), region)


def test_random_masks_round_trip_as_x_anylabeling_holds_them() -> None:
    rng = np.random.default_rng(16)
    for _ in range(40):
        noise = rng.random((48, 64)).astype(np.float32)
        blurred = cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(0.5, 3)))
        mask = blurred > np.quantile(blurred, rng.uniform(0.3, 0.9))
        shapes = prediction_shapes(
            prediction_of(mask), epsilon_factor=0.0, show_masks=True, show_boxes=False
        )
        np.testing.assert_array_equal(drawn(shapes, 48, 64), outlined(mask))


def test_an_empty_mask_is_no_shapes() -> None:
    empty = prediction_of(np.zeros((8, 8), bool))
    assert prediction_shapes(empty, epsilon_factor=0.001, show_masks=True, show_boxes=True) == []
