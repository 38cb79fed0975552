"""Label Studio's ML backend protocol (`api/labelstudio.py`), in process.

Requests are shaped as Label Studio 1.23 sends them (`ml/api_connector.py`:
/setup's `project`, `schema`, `hostname`, `access_token`, `extra_params`;
/predict's `tasks`, `project`, `label_config`, `params.context.result` with
the frontend's keypoint and rectangle regions). Every mask is compared with
the native API's answer for the same image and prompt; the real Label Studio
drives the same routes in tests/integrations/test_labelstudio.py.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pycocotools import mask as coco_mask

from sam2_server.api import create_app
from sam2_server.codecs.brush import decode_mask, mask2rle
from tests.api.native import native_best
from tests.api.test_downloads import FileServer, file_server, reply
from tests.conftest import image_bytes

IMAGE = image_bytes("groceries.jpg")  # 800 x 534
WIDTH, HEIGHT = 800, 534
DATA_URL = "data:image/jpeg;base64," + base64.b64encode(IMAGE).decode()
PROJECT = "7.1733222222"

CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="brush" toName="image">
    <Label value="Car" background="red"/>
    <Label value="Person" background="blue"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Car" smart="true"/>
    <Label value="Person" smart="true"/>
    <Label value="Tree" smart="true"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="Car"/>
    <Label value="Person"/>
  </RectangleLabels>
</View>"""


# -- what Label Studio's frontend and connector send ---------------------------------------


def keypoint(
    x: float, y: float, *, positive: bool = True, label: str = "Car", **extra: Any
) -> dict[str, Any]:
    """A smart keypoint as the frontend serializes it; x, y in percent."""
    return {
        "id": "kp" + str(abs(hash((x, y))) % 1000),
        "type": "keypointlabels",
        "from_name": "kp",
        "to_name": "image",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
        "is_positive": positive,
        **extra,
    }


def rectangle(
    x: float, y: float, w: float, h: float, *, rotation: float = 0, label: str = "Car"
) -> dict[str, Any]:
    return {
        "id": "rect1",
        "type": "rectanglelabels",
        "from_name": "rect",
        "to_name": "image",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": rotation,
            "rectanglelabels": [label],
        },
    }


def predict_body(
    regions: list[dict[str, Any]] | None,
    *,
    image: str = DATA_URL,
    config: str = CONFIG,
    project: str = PROJECT,
    task: dict[str, Any] | None = None,
) -> dict[str, Any]:
    task = task or {"id": 11, "data": {"image": image}, "annotations": [], "predictions": []}
    context = None if regions is None else {"result": regions}
    return {
        "tasks": [task],
        "project": project,
        "label_config": config,
        "params": {"login": None, "password": None, "context": context},
    }


def setup_body(project: str = PROJECT, **changes: Any) -> dict[str, Any]:
    return {
        "project": project,
        "schema": CONFIG,
        "hostname": "http://localhost:8080",
        "access_token": "0123456789abcdef0123456789abcdef01234567",
        "extra_params": None,
        **changes,
    }


def pixels(percent: float, size: int) -> float:
    return percent * size / 100


def only_region(answer: dict[str, Any]) -> dict[str, Any]:
    assert set(answer) == {"results"}
    (prediction,) = answer["results"]
    assert set(prediction) == {"result", "score", "model_version"}
    (region,) = prediction["result"]
    return region


def region_mask(region: dict[str, Any]) -> np.ndarray:
    value = region["value"]
    assert value["format"] == "rle"
    return decode_mask(value["rle"], region["original_height"], region["original_width"])


def assert_ls_error(response: Any, status: int, *fragments: str) -> str:
    """label-studio-ml-backend's error shape, `{"status", "detail"}`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"status", "detail"}, body
    assert body["status"] == status
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return str(body["detail"])


def encoded_images(client: TestClient) -> int:
    return int(client.get("/stats").json()["encoded_images"])


@pytest.fixture(scope="module")
def model_id(client: TestClient) -> str:
    return str(client.get("/labelstudio/versions").json()["versions"][0])


# -- the connection: health and setup -----------------------------------------------------


@pytest.mark.parametrize("path", ["/labelstudio/health", "/labelstudio", "/labelstudio/"])
def test_health_answers_at_once(client: TestClient, path: str) -> None:
    started = time.perf_counter()
    response = client.get(path)
    assert time.perf_counter() - started < 1
    assert response.status_code == 200
    assert response.json()["status"] == "UP"
    assert response.json()["model_class"] == "sam2-server"


def test_setup_answers_the_model_version(client: TestClient, model_id: str) -> None:
    started = time.perf_counter()
    response = client.post("/labelstudio/setup", json=setup_body())
    assert time.perf_counter() - started < 3
    assert response.status_code == 200, response.text
    assert response.json() == {"model_version": model_id}


def test_setup_can_choose_a_served_model(client: TestClient, model_id: str) -> None:
    body = setup_body(extra_params={"model_id": model_id})
    assert client.post("/labelstudio/setup", json=body).json() == {"model_version": model_id}
    wrong = setup_body(extra_params={"model_id": "facebook/sam2.1-hiera-huge"})
    assert_ls_error(client.post("/labelstudio/setup", json=wrong), 400, "hiera-huge")


def test_setup_refuses_a_config_without_brush_labels(client: TestClient) -> None:
    config = '<View><Image name="i" value="$image"/><KeyPointLabels name="k" toName="i"/></View>'
    response = client.post("/labelstudio/setup", json=setup_body(schema=config))
    assert_ls_error(response, 400, "BrushLabels")


@pytest.mark.parametrize(
    "config",
    [
        # billion laughs: entities that expand to gigabytes
        '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
        ']><View><Image name="i" value="&c;"/></View>',
        # an external entity: a file of the server's
        '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<View><Image name="i" value="&x;"/></View>',
        '<!DOCTYPE View SYSTEM "http://169.254.169.254/x.dtd"><View/>',
    ],
)
def test_setup_refuses_doctypes_and_entities(client: TestClient, config: str) -> None:
    response = client.post("/labelstudio/setup", json=setup_body(schema=config))
    assert_ls_error(response, 400, "not allowed")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400(
    client: TestClient, body: bytes, fragment: str
) -> None:
    for path in ("/labelstudio/setup", "/labelstudio/predict"):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert_ls_error(response, 400, fragment)


def test_a_label_config_that_is_not_xml_is_a_400(client: TestClient) -> None:
    response = client.post("/labelstudio/setup", json=setup_body(schema="<View><Image"))
    assert_ls_error(response, 400, "not valid XML")


# -- interactive clicks -------------------------------------------------------------------


def test_a_keypoint_is_the_native_apis_best_mask(client: TestClient, model_id: str) -> None:
    response = client.post("/labelstudio/predict", json=predict_body([keypoint(40.5, 55.25)]))
    assert response.status_code == 200, response.text
    answer = response.json()
    region = only_region(answer)
    want, score = native_best(
        client, IMAGE, points=[[pixels(40.5, WIDTH), pixels(55.25, HEIGHT)]], labels=[1]
    )
    np.testing.assert_array_equal(region_mask(region), want)
    assert answer["results"][0]["score"] == score
    assert answer["results"][0]["model_version"] == model_id
    assert {k: v for k, v in region.items() if k not in ("id", "value")} == {
        "type": "brushlabels",
        "from_name": "brush",
        "to_name": "image",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
    }
    assert set(region["value"]) == {"format", "rle", "brushlabels"}
    assert region["value"]["brushlabels"] == ["Car"]
    assert want.any()


def test_every_region_of_a_context_is_one_prompt(client: TestClient) -> None:
    regions = [
        keypoint(30, 40),
        keypoint(60, 50, positive=False),
        keypoint(45, 45),
        rectangle(20, 25, 50, 40),
    ]
    region = only_region(client.post("/labelstudio/predict", json=predict_body(regions)).json())
    want, _ = native_best(
        client,
        IMAGE,
        points=[
            [pixels(30, WIDTH), pixels(40, HEIGHT)],
            [pixels(60, WIDTH), pixels(50, HEIGHT)],
            [pixels(45, WIDTH), pixels(45, HEIGHT)],
        ],
        labels=[1, 0, 1],
        box=[pixels(20, WIDTH), pixels(25, HEIGHT), pixels(70, WIDTH), pixels(65, HEIGHT)],
    )
    np.testing.assert_array_equal(region_mask(region), want)


def test_a_rectangle_alone_is_a_box_prompt(client: TestClient) -> None:
    body = predict_body([rectangle(10, 20, 35, 50, label="Person")])
    region = only_region(client.post("/labelstudio/predict", json=body).json())
    box = [pixels(10, WIDTH), pixels(20, HEIGHT), pixels(45, WIDTH), pixels(70, HEIGHT)]
    want, _ = native_best(client, IMAGE, box=box)
    np.testing.assert_array_equal(region_mask(region), want)
    assert region["value"]["brushlabels"] == ["Person"]


def test_a_rotated_rectangle_prompts_with_its_bounding_box(client: TestClient) -> None:
    """Label Studio turns a rectangle about its top-left corner, clockwise on screen."""
    body = predict_body([rectangle(50, 20, 20, 30, rotation=90)])
    region = only_region(client.post("/labelstudio/predict", json=body).json())
    x, y = pixels(50, WIDTH), pixels(20, HEIGHT)
    w, h = pixels(20, WIDTH), pixels(30, HEIGHT)
    want, _ = native_best(client, IMAGE, box=[x - h, y, x, y + w])
    np.testing.assert_array_equal(region_mask(region), want)


def test_a_keypoint_without_is_positive_is_a_positive_point(client: TestClient) -> None:
    point = keypoint(40, 50)
    del point["is_positive"]
    region = only_region(client.post("/labelstudio/predict", json=predict_body([point])).json())
    want, _ = native_best(
        client, IMAGE, points=[[pixels(40, WIDTH), pixels(50, HEIGHT)]], labels=[1]
    )
    np.testing.assert_array_equal(region_mask(region), want)


@pytest.mark.parametrize(
    ("clicked", "brushed"),
    [("Person", ["Person"]), ("Tree", ["Car"]), ("Car", ["Car"])],
)
def test_the_clicked_label_is_the_brush_label_where_the_brush_has_it(
    client: TestClient, clicked: str, brushed: list[str]
) -> None:
    body = predict_body([keypoint(40, 50, label=clicked)])
    region = only_region(client.post("/labelstudio/predict", json=body).json())
    assert region["value"]["brushlabels"] == brushed


def test_the_brush_control_is_the_one_on_the_same_image_with_the_label(
    client: TestClient,
) -> None:
    config = """<View>
      <Image name="left" value="$other"/>
      <Image name="right" value="$picture"/>
      <BrushLabels name="on_left" toName="left"><Label value="Tree"/></BrushLabels>
      <BrushLabels name="plain" toName="right"><Label value="Car"/></BrushLabels>
      <BrushLabels name="trees" toName="left,right"><Label value="Tree"/></BrushLabels>
      <KeyPointLabels name="kp" toName="right" smart="true"><Label value="Tree"/></KeyPointLabels>
    </View>"""
    task = {"id": 3, "data": {"picture": DATA_URL, "other": "http://example.com/x.jpg"}}
    point = keypoint(40, 50, label="Tree", to_name="right")
    body = predict_body([point], config=config, task=task)
    region = only_region(client.post("/labelstudio/predict", json=body).json())
    assert (region["from_name"], region["to_name"]) == ("trees", "right")
    assert region["value"]["brushlabels"] == ["Tree"]


def test_regions_on_another_image_are_left_out(client: TestClient) -> None:
    config = CONFIG.replace("</View>", '<Image name="second" value="$second"/></View>')
    task = {"id": 3, "data": {"image": DATA_URL, "second": "http://example.com/x.jpg"}}
    regions = [keypoint(40, 50), keypoint(10, 10, to_name="second")]
    body = predict_body(regions, config=config, task=task)
    region = only_region(client.post("/labelstudio/predict", json=body).json())
    want, _ = native_best(
        client, IMAGE, points=[[pixels(40, WIDTH), pixels(50, HEIGHT)]], labels=[1]
    )
    np.testing.assert_array_equal(region_mask(region), want)


def test_a_value_list_image_takes_the_regions_item(client: TestClient) -> None:
    config = CONFIG.replace('value="$image"', 'valueList="$images"')
    task = {"id": 3, "data": {"images": ["http://example.com/never.jpg", DATA_URL]}}
    body = predict_body([keypoint(40, 50, item_index=1)], config=config, task=task)
    region = only_region(client.post("/labelstudio/predict", json=body).json())
    assert region["item_index"] == 1
    want, _ = native_best(
        client, IMAGE, points=[[pixels(40, WIDTH), pixels(50, HEIGHT)]], labels=[1]
    )
    np.testing.assert_array_equal(region_mask(region), want)


def test_without_a_context_the_answer_is_empty(client: TestClient) -> None:
    """Batch pre-annotation (LABEL_STUDIO_PREANNOTATE=none): no predictions are stored."""
    tasks = [{"id": i, "data": {"image": DATA_URL}} for i in range(3)]
    body = {**predict_body(None), "tasks": tasks}
    response = client.post("/labelstudio/predict", json=body)
    assert response.status_code == 200
    assert response.json() == {"results": []}


def test_a_context_without_points_or_boxes_is_an_empty_result(
    client: TestClient, model_id: str
) -> None:
    choice = {"type": "choices", "from_name": "c", "to_name": "image", "value": {"choices": ["a"]}}
    for regions in ([], [choice]):
        response = client.post("/labelstudio/predict", json=predict_body(regions))
        assert response.json() == {
            "results": [{"result": [], "score": 0.0, "model_version": model_id}]
        }


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"value": {"x": "40", "y": 50}}, "value.x"),
        ({"value": {"y": 50}}, "value.x"),
        ({"is_positive": "yes"}, "is_positive"),
        ({"original_width": 0}, "original_width"),
        ({"original_height": "534"}, "original_height"),
        ({"image_rotation": 90}, "rotated"),
        ({"original_width": 600}, "600x534"),  # not the file's size
        ({"to_name": "nowhere"}, "nowhere"),
        ({"item_index": "1"}, "item_index"),
        ({"value": {"x": 1e30, "y": 50}}, "point_coords"),  # the native API's bound
    ],
)
def test_a_malformed_region_is_a_400_naming_it(
    client: TestClient, change: dict[str, Any], fragment: str
) -> None:
    body = predict_body([{**keypoint(40, 50), **change}])
    assert_ls_error(client.post("/labelstudio/predict", json=body), 400, fragment)


def test_nan_cannot_arrive(client: TestClient) -> None:
    body = json.dumps(predict_body([keypoint(float("nan"), 50)])).encode()  # Python writes NaN
    response = client.post(
        "/labelstudio/predict", content=body, headers={"content-type": "application/json"}
    )
    assert_ls_error(response, 400, "not JSON")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"tasks": "x", "params": {"context": {"result": []}}}, "tasks"),
        ({"tasks": [], "params": {"context": {"result": [keypoint(1, 1)]}}}, "tasks is empty"),
        ({"tasks": [{"data": {}}], "params": "x"}, "params"),
        ({"tasks": [{"data": {}}], "params": {"context": {"result": {}}}}, "list of regions"),
        ({"tasks": [{"data": {}}], "params": {"context": {"result": [3]}}}, "result[0]"),
    ],
)
def test_a_malformed_request_is_a_400(
    client: TestClient, body: dict[str, Any], fragment: str
) -> None:
    assert_ls_error(client.post("/labelstudio/predict", json=body), 400, fragment)


def test_a_config_without_a_brush_on_the_image_is_a_400(client: TestClient) -> None:
    config = CONFIG.replace(
        'toName="image">\n    <Label value="Car" background',
        'toName="x">\n    <Label value="Car" background',
    )
    body = predict_body([keypoint(40, 50)], config=config)
    assert_ls_error(client.post("/labelstudio/predict", json=body), 400, "BrushLabels")


@pytest.mark.parametrize(
    ("image", "status", "fragment"),
    [
        ("/data/upload/7/a.jpg", 400, "LABEL_STUDIO_URL"),
        ("s3://bucket/a.jpg", 400, "LABEL_STUDIO_URL"),
        ("ftp://example.com/a.jpg", 400, "ftp"),
        ("file:///etc/passwd", 400, "file"),
        ("just-a-name.jpg", 400, "not a URL"),
        ("http://169.254.169.254/latest/meta-data/", 400, "DOWNLOAD_HOSTS"),
        ("http://127.0.0.1:1/admin", 400, "DOWNLOAD_HOSTS"),
        ("data:image/jpeg;base64", 400, "data: URL"),
        ("data:image/jpeg;base64,@@@@", 400, "image"),
    ],
)
def test_task_images_that_cannot_be_fetched_are_refused(
    client: TestClient, image: str, status: int, fragment: str
) -> None:
    body = predict_body([keypoint(40, 50)], image=image, project="unknown.1")
    assert_ls_error(client.post("/labelstudio/predict", json=body), status, fragment)


def test_a_task_without_the_image_field_is_a_400(client: TestClient) -> None:
    body = predict_body([keypoint(40, 50)], task={"id": 1, "data": {"picture": DATA_URL}})
    assert_ls_error(client.post("/labelstudio/predict", json=body), 400, "data.image")


def test_optional_routes_answer(client: TestClient, model_id: str) -> None:
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 7}, "annotation": {"id": 1}}
    assert client.post("/labelstudio/webhook", json=event).status_code == 200
    assert client.get("/labelstudio/versions").json() == {"versions": [model_id]}
    metrics = client.get("/labelstudio/metrics").json()
    assert set(metrics) >= {"downloads", "remembered_urls", "predictions"}
    assert_ls_error(client.post("/labelstudio/train", json={}), 400, "does not train")


# -- images Label Studio serves ------------------------------------------------------------


@pytest.fixture
def label_studio() -> Iterator[FileServer]:
    """Label Studio's file routes: /data/upload/<project>/<file> needs the project's token."""
    with file_server() as server:
        yield server


def serve_upload(server: FileServer, path: str, token_header: str, body: bytes = IMAGE) -> None:
    def upload(handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.headers.get("Authorization") != token_header:
            reply(handler, 401, b'{"detail": "Authentication credentials were not provided."}')
        else:
            reply(handler, 200, body, {"Content-Type": "image/jpeg"})

    server.routes[path] = upload


def unique_copy(name: str, note: str) -> bytes:
    """The photo as PNG bytes no other test sends: the session's engine and its cache are
    shared, so only bytes of this test's own make its encode count."""
    text = PngInfo()
    text.add_text("Comment", note)
    buffer = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(name))).save(buffer, format="PNG", pnginfo=text)
    return buffer.getvalue()


def connect(client: TestClient, server: FileServer, project: str, token: str) -> None:
    body = setup_body(project=project, hostname=server.url, access_token=token)
    assert client.post("/labelstudio/setup", json=body).status_code == 200


def test_an_upload_is_fetched_once_with_the_token_setup_gave(
    client: TestClient, label_studio: FileServer
) -> None:
    token = "9f0e" * 10
    path = "/data/upload/7/1a2b-truck.png"
    truck = unique_copy("truck.jpg", "test_an_upload_is_fetched_once_with_the_token_setup_gave")
    serve_upload(label_studio, path, f"Token {token}", truck)
    connect(client, label_studio, "7.1001", token)
    encoded = encoded_images(client)
    body = predict_body(
        [{**keypoint(50, 50), "original_width": 1800, "original_height": 1200}],
        image=path,
        project="7.1001",
    )
    first = client.post("/labelstudio/predict", json=body)
    assert first.status_code == 200, first.text
    assert len(label_studio.requests_to(path)) == 1
    assert encoded_images(client) == encoded + 1

    again = [keypoint(50, 50), keypoint(20, 30, positive=False)]
    for region in again:
        region.update(original_width=1800, original_height=1200)
    second = client.post(
        "/labelstudio/predict", json=predict_body(again, image=path, project="7.1001")
    )
    assert second.status_code == 200, second.text
    assert len(label_studio.requests_to(path)) == 1  # no new download
    assert encoded_images(client) == encoded + 1  # no new encode
    want, _ = native_best(client, truck, points=[[900.0, 600.0], [360.0, 360.0]], labels=[1, 0])
    np.testing.assert_array_equal(region_mask(only_region(second.json())), want)


def test_a_personal_access_token_is_sent_as_bearer(
    client: TestClient, label_studio: FileServer
) -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    jwt = f"{header}.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"
    serve_upload(label_studio, "/data/upload/8/a.jpg", f"Bearer {jwt}")
    connect(client, label_studio, "8.1", jwt)
    body = predict_body([keypoint(40, 50)], image="/data/upload/8/a.jpg", project="8.1")
    assert client.post("/labelstudio/predict", json=body).status_code == 200


def test_an_upload_falls_back_to_the_storage_proxy(
    client: TestClient, label_studio: FileServer
) -> None:
    """As the SDK does: /data/upload/... and /storage-data/uploaded/?filepath=upload/..."""
    serve_upload(label_studio, "/storage-data/uploaded/?filepath=upload/9/b.jpg", "Token t9")
    connect(client, label_studio, "9.1", "t9")
    body = predict_body([keypoint(40, 50)], image="/data/upload/9/b.jpg", project="9.1")
    assert client.post("/labelstudio/predict", json=body).status_code == 200
    assert [s.path for s in label_studio.seen] == [
        "/data/upload/9/b.jpg",
        "/storage-data/uploaded/?filepath=upload/9/b.jpg",
    ]


def test_a_wrong_token_is_a_400_that_says_which(
    client: TestClient, label_studio: FileServer
) -> None:
    serve_upload(label_studio, "/data/upload/10/a.jpg", "Token right")
    connect(client, label_studio, "10.1", "wrong")
    body = predict_body([keypoint(40, 50)], image="/data/upload/10/a.jpg", project="10.1")
    message = assert_ls_error(
        client.post("/labelstudio/predict", json=body), 400, "HTTP 401", "LABEL_STUDIO_API_KEY"
    )
    assert "wrong" not in message


def test_a_cloud_uri_is_presigned_through_label_studio(
    client: TestClient, label_studio: FileServer
) -> None:
    uri = "s3://bucket/photos/a.jpg"
    encoded = base64.urlsafe_b64encode(uri.encode()).decode()
    serve_upload(label_studio, f"/tasks/12/presign/?fileuri={encoded}", "Token t12")
    connect(client, label_studio, "12.1", "t12")
    task = {"id": 12, "data": {"image": uri}}
    body = predict_body([keypoint(40, 50)], task=task, project="12.1")
    assert client.post("/labelstudio/predict", json=body).status_code == 200


def test_the_setup_host_is_allowed_for_its_project_only(
    client: TestClient, label_studio: FileServer
) -> None:
    label_studio.serve("/public/a.jpg", IMAGE)
    connect(client, label_studio, "13.1", "t13")
    url = label_studio.url + "/public/a.jpg"
    ok = client.post(
        "/labelstudio/predict", json=predict_body([keypoint(40, 50)], image=url, project="13.1")
    )
    assert ok.status_code == 200, ok.text
    assert label_studio.seen[0].headers["authorization"] == "Token t13"  # its own host
    other = predict_body([keypoint(40, 50)], image=url, project="14.1")
    assert_ls_error(client.post("/labelstudio/predict", json=other), 400, "DOWNLOAD_HOSTS")


def test_other_allowed_hosts_get_no_token(
    reduced_settings: Any, reduced_engine: Any, label_studio: FileServer
) -> None:
    with file_server() as images:
        images.serve("/a.jpg", IMAGE)
        settings = replace(reduced_settings, download_hosts=(images.host,))
        with TestClient(create_app(settings, reduced_engine, load=False)) as other:
            connect(other, label_studio, "15.1", "t15")
            body = predict_body([keypoint(40, 50)], image=images.url + "/a.jpg", project="15.1")
            assert other.post("/labelstudio/predict", json=body).status_code == 200
        assert "authorization" not in images.seen[0].headers


def test_label_studio_url_pins_the_host_setup_names(
    reduced_settings: Any, reduced_engine: Any, label_studio: FileServer
) -> None:
    serve_upload(label_studio, "/data/upload/16/a.jpg", "Token operator-key")
    settings = replace(
        reduced_settings,
        label_studio_url=label_studio.url,
        label_studio_api_key="operator-key",
    )
    with TestClient(create_app(settings, reduced_engine, load=False)) as pinned:
        body = setup_body(project="16.1", hostname="http://evil.example", access_token="x")
        assert pinned.post("/labelstudio/setup", json=body).status_code == 200
        click = predict_body([keypoint(40, 50)], image="/data/upload/16/a.jpg", project="16.1")
        assert pinned.post("/labelstudio/predict", json=click).status_code == 200
        # Without any /setup (a restarted server): the pinned URL and key still serve.
        unknown = {**click, "project": "16.2"}
        label_studio.seen.clear()
        assert pinned.post("/labelstudio/predict", json=unknown).status_code == 200


def test_concurrent_clicks_on_a_new_task_download_once(
    client: TestClient, label_studio: FileServer
) -> None:
    gate = threading.Event()
    path = "/data/upload/17/cars.jpg"
    cars = image_bytes("cars.jpg")

    def slow(handler: http.server.BaseHTTPRequestHandler) -> None:
        gate.wait(5)
        reply(handler, 200, cars, {"Content-Type": "image/jpeg"})

    label_studio.routes[path] = slow
    connect(client, label_studio, "17.1", "t17")
    point = {**keypoint(40, 50), "original_width": 2250, "original_height": 1500}
    body = predict_body([point], image=path, project="17.1")
    answers: list[int] = []

    def click() -> None:
        answers.append(client.post("/labelstudio/predict", json=body).status_code)

    clicks = [threading.Thread(target=click) for _ in range(3)]
    for thread in clicks:
        thread.start()
    time.sleep(0.5)
    gate.set()
    for thread in clicks:
        thread.join(60)
    assert answers == [200, 200, 200]
    assert len(label_studio.requests_to(path)) == 1


def test_an_evicted_embedding_downloads_again(
    reduced_settings: Any, label_studio: FileServer
) -> None:
    """A URL is trusted only while its embedding is cached: after eviction, fetch again."""
    from sam2_server.engine import Engine

    settings = replace(reduced_settings, cache_bytes=24 * 1024 * 1024)  # about one embedding
    engine = Engine(settings)
    engine.load()
    serve_upload(label_studio, "/data/upload/18/a.jpg", "Token t18")
    serve_upload(label_studio, "/data/upload/18/b.jpg", "Token t18", image_bytes("truck.jpg"))
    with TestClient(create_app(settings, engine, load=False)) as small:
        connect(small, label_studio, "18.1", "t18")
        a = predict_body([keypoint(40, 50)], image="/data/upload/18/a.jpg", project="18.1")
        b_point = {**keypoint(40, 50), "original_width": 1800, "original_height": 1200}
        b = predict_body([b_point], image="/data/upload/18/b.jpg", project="18.1")
        for body in (a, a, b, a):
            assert small.post("/labelstudio/predict", json=body).status_code == 200
        assert len(label_studio.requests_to("/data/upload/18/a.jpg")) == 2
        assert small.get("/labelstudio/metrics").json()["remembered_urls"] == 1


def test_an_inline_image_over_the_download_limit_is_a_413(
    reduced_settings: Any, reduced_engine: Any
) -> None:
    settings = replace(reduced_settings, download_max_bytes=len(IMAGE) - 1)
    with TestClient(create_app(settings, reduced_engine, load=False)) as capped:
        body = predict_body([keypoint(40, 50)])
        assert_ls_error(capped.post("/labelstudio/predict", json=body), 413, "DOWNLOAD_MAX_BYTES")


# -- auth, as Label Studio sends it ------------------------------------------------------


def test_basic_auth_carries_the_token_as_its_password(
    reduced_settings: Any, reduced_engine: Any
) -> None:
    settings = replace(reduced_settings, auth_token="ls-secret")
    with TestClient(create_app(settings, reduced_engine, load=False)) as guarded:
        assert guarded.get("/labelstudio/health").status_code == 401
        assert guarded.get("/labelstudio/health", auth=("anyone", "wrong")).status_code == 401
        ok = guarded.get("/labelstudio/health", auth=("anyone", "ls-secret"))
        assert ok.status_code == 200
        setup = guarded.post("/labelstudio/setup", json=setup_body(), auth=("u", "ls-secret"))
        assert setup.status_code == 200


# -- automatic pre-annotation -------------------------------------------------------------


def test_automatic_preannotation_is_the_native_automatic_masks(
    reduced_settings: Any, reduced_engine: Any
) -> None:
    settings = replace(reduced_settings, label_studio_preannotate="automatic")
    # Few points, every mask kept (no thresholds, no NMS): a dozen masks in about 2 s.
    params = {
        "points_per_side": 2,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,
    }
    with TestClient(create_app(settings, reduced_engine, load=False)) as auto:
        setup = setup_body(project="19.1", extra_params={"automatic": params})
        assert auto.post("/labelstudio/setup", json=setup).status_code == 200
        tasks = [{"id": 1, "data": {"image": DATA_URL}}]
        body = {**predict_body(None, project="19.1"), "tasks": tasks}
        response = auto.post("/labelstudio/predict", json=body)
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["results"]
        image_id = hashlib.sha256(IMAGE).hexdigest()
        native = auto.post(f"/v1/images/{image_id}/automatic-masks", json=params).json()
    assert len(prediction["result"]) == len(native["masks"]) > 1
    for region, record in zip(prediction["result"], native["masks"], strict=True):
        rle = record["segmentation"]
        want = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        # Encoded, not decoded: the codec is one-to-one, and encoding is vectorised.
        assert region["value"]["rle"] == mask2rle(want.astype(bool))
        assert (region["from_name"], region["value"]["brushlabels"]) == ("brush", ["Car"])
        assert region["score"] == record["predicted_iou"]


def test_automatic_parameters_are_checked_at_setup(client: TestClient) -> None:
    for automatic, fragment in (
        ({"points_per_side": 10_000}, "points_per_side"),
        ({"nonsense": 1}, "nonsense"),
        ("dense", "extra_params.automatic"),
    ):
        body = setup_body(extra_params={"automatic": automatic})
        assert_ls_error(client.post("/labelstudio/setup", json=body), 400, fragment)
