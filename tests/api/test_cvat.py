"""CVAT's interactor surface, in process: the Nuclio dashboard paths CVAT calls.

What CVAT does with our answers is taken from its source (CVAT 2.73.0):
`cvat/apps/lambda_manager/views.py` (`LambdaGateway`, `LambdaFunction`),
cvat-ui `tools-control.tsx` before 2.60 and cvat-core `lambda-manager.ts` +
`rle-utils.ts` since. The helpers below restate those readings, so that each
mask is compared with the native API's best mask as CVAT's UI would draw it.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sam2_server.api import create_app
from sam2_server.api.cvat import cvat_mask_points, function_name, mask_bounds, reads_shapes
from tests.api import native
from tests.api.test_errors import assert_error
from tests.conftest import image_bytes

IMAGE = "groceries.jpg"  # 800 x 534
DATA = image_bytes(IMAGE)
WIDTH, HEIGHT = Image.open(io.BytesIO(DATA)).size
TOKEN = "cvat-token"
# What LambdaGateway._http sends with every call (CVAT's defaults), and its User-Agent
# (cvat/utils/http.py: f"CVAT/{__version__} {requests.utils.default_user_agent()}").
NUCLIO_HEADERS = {
    "x-nuclio-project-name": "cvat",
    "x-nuclio-function-namespace": "nuclio",
    "x-nuclio-invoke-via": "domain-name",
    "X-Nuclio-Invoke-Timeout": "120s",
}
CVAT_NEW = "CVAT/2.73.0 python-requests/2.32.3"  # reads `shapes`
CVAT_OLD = "CVAT/2.59.1 python-requests/2.32.3"  # reads `{mask, bounds}`

POINTS = [[420.0, 250.0], [300.5, 200.25]]  # positive, then negative
BOX = [[250.0, 120.0], [600.0, 420.0]]


# -- CVAT's own readings, restated from its source ---------------------------------------


def cvat_function(data: dict[str, Any]) -> dict[str, Any]:
    """`LambdaFunction.__init__` + `to_dict()` for an interactor (views.py), plus the
    `status.state` older CVATs read: raises where CVAT would fail to parse."""
    meta = data["metadata"]["annotations"]
    assert meta.get("type") in {"detector", "interactor", "reid", "tracker"}
    spec = json.loads(meta.get("spec") or "[]")
    assert isinstance(spec, list)
    return {
        "id": data["metadata"]["name"],
        "kind": meta["type"],
        "labels": [label["name"] for label in spec],
        "description": data["spec"]["description"],
        "port": data["status"].get("httpPort"),
        "state": data["status"]["state"],
        "name": meta.get("name", data["metadata"]["name"]),
        "min_pos_points": int(meta.get("min_pos_points", 1)),
        "min_neg_points": int(meta.get("min_neg_points", -1)),
        "startswith_box": bool(meta.get("startswith_box", False)),
        "startswith_box_optional": bool(meta.get("startswith_box_optional", False)),
        "version": int(meta.get("version", "1")),
        "help_message": meta.get("help_message", ""),
    }


def rle_to_mask(points: list[int], width: int, height: int) -> np.ndarray:
    """A mask shape's points (run lengths from a zero run, then the inclusive
    box), as cvat-core's `rle2Mask` and the canvas place it on the frame."""
    *runs, x1, y1, x2, y2 = points
    crop = np.zeros((y2 - y1 + 1) * (x2 - x1 + 1), dtype=bool)
    value, index = False, 0
    for run in runs:
        crop[index : index + run] = value
        index += run
        value = not value
    assert index == crop.size, "the runs must cover the box exactly"
    frame = np.zeros((height, width), dtype=bool)
    frame[y1 : y2 + 1, x1 : x2 + 1] = crop.reshape(y2 - y1 + 1, x2 - x1 + 1)
    return frame


def ui_mask_since_2_60(answer: dict[str, Any], width: int, height: int) -> np.ndarray:
    """cvat-core `LambdaManager.call` since 2.60: a bare `mask` is a whole frame at
    (0, 0); `shapes` of type mask are drawn (tools-control keeps only masks)."""
    frame = np.zeros((height, width), dtype=bool)
    if "mask" in answer:
        mask = np.array(answer["mask"]) > 0
        frame[: mask.shape[0], : mask.shape[1]] = mask
        return frame
    for shape in answer["shapes"]:
        if shape["type"] == "mask":
            frame |= rle_to_mask(shape["points"], width, height)
    return frame


def ui_mask_before_2_60(answer: dict[str, Any], width: int, height: int) -> np.ndarray:
    """tools-control.tsx before 2.60: the mask's RLE with `bounds` appended (or the
    mask as a whole frame without them), contours offset by bounds[0], bounds[1]."""
    mask = np.array(answer["mask"]) > 0
    if "bounds" in answer:
        x1, y1, x2, y2 = answer["bounds"]
        assert mask.shape == (y2 - y1 + 1, x2 - x1 + 1), "the crop must fill its bounds"
    else:
        x1, y1 = 0, 0
    frame = np.zeros((height, width), dtype=bool)
    frame[y1 : y1 + mask.shape[0], x1 : x1 + mask.shape[1]] = mask
    return frame


# -- the native API's answer, to compare with ---------------------------------------------


def native_best(client: TestClient, data: bytes, **prompt: Any) -> np.ndarray:
    return native.native_best(client, data, **prompt, multimask_output=True)[0]


def invoke(client: TestClient, name: str, body: dict[str, Any], agent: str | None = CVAT_NEW):
    """`LambdaGateway._invoke_via_dashboard`: the payload as JSON, the function named."""
    headers = {**NUCLIO_HEADERS, "x-nuclio-function-name": name, "x-nuclio-path": "/"}
    if agent is not None:
        headers["User-Agent"] = agent
    return client.post("/api/function_invocations", json=body, headers=headers)


def payload(pos: list[list[float]], neg: list[list[float]], box: Any = None) -> dict[str, Any]:
    """`LambdaFunction.invoke`'s interactor payload (views.py)."""
    return {
        "image": base64.b64encode(DATA).decode("utf-8"),
        "pos_points": pos,
        "neg_points": neg,
        "obj_bbox": box,
    }


@pytest.fixture(scope="module")
def name(client) -> str:
    (model_id,) = client.get("/api/functions", headers=NUCLIO_HEADERS).json().keys()
    return str(model_id)


# -- the function list ------------------------------------------------------------------


def test_functions_list_one_interactor_per_model_as_cvat_reads_it(client, reduced_settings):
    listed = client.get("/api/functions", headers=NUCLIO_HEADERS)
    assert listed.status_code == 200
    functions = listed.json()
    (model_id,) = reduced_settings.model_ids
    assert list(functions) == [function_name(model_id)]
    read = cvat_function(functions[function_name(model_id)])
    assert read["id"] == function_name(model_id)
    assert read["kind"] == "interactor"
    assert read["version"] >= 2  # the UI warns "Interactor API is outdated" below 2
    assert (read["min_pos_points"], read["min_neg_points"]) == (0, 0)
    assert read["startswith_box_optional"]
    assert not read["startswith_box"]
    assert read["labels"] == []
    assert read["state"] == "ready"
    assert read["port"] is None  # no "direct" invocation: see docs/tools.md
    assert model_id[-20:] in read["name"] or "..." in read["name"]
    assert "Segment Anything (" in read["description"]
    one = client.get(f"/api/functions/{read['id']}", headers=NUCLIO_HEADERS)
    assert one.status_code == 200
    assert one.json() == functions[read["id"]]


def test_function_names_are_stable_url_safe_and_distinct():
    ids = [
        "facebook/sam2.1-hiera-large",
        "facebook/sam2.1-hiera-tiny",
        "/models/A Very/Long Path/" + "x" * 200 + "/sam2_hiera_small.pt",
        "日本語",
        "",
    ]
    names = [function_name(model_id) for model_id in ids]
    assert len(set(names)) == len(names)
    assert names == [function_name(model_id) for model_id in ids]
    for name in names:
        # CVAT's FunctionViewSet.lookup_value_regex, and a DNS label as Nuclio's names are
        assert len(name) <= 63
        assert all(c.isascii() and (c.isalnum() or c == "-") for c in name)
        assert name == name.lower()
        assert not name.endswith("-")
    assert names[0].startswith("sam2-facebook-sam2-1-hiera-large-")
    assert "sam2-hiera-small-pt" in names[2]


def test_unknown_function_is_404(client):
    assert_error(client.get("/api/functions/nope", headers=NUCLIO_HEADERS), 404, "sam2-")
    response = invoke(client, "nope", payload([[1.0, 1.0]], []))
    assert_error(response, 404, "'nope' is not served here")


# -- invocations: the mask as CVAT's UI draws it equals the native API's best ---------------


@pytest.mark.parametrize(
    ("agent", "reader"),
    [
        (CVAT_NEW, ui_mask_since_2_60),
        (CVAT_OLD, ui_mask_before_2_60),
        (None, ui_mask_before_2_60),  # not CVAT's lambda manager: the documented {mask, bounds}
    ],
)
def test_points_give_the_native_best_mask(client, name, agent, reader):
    response = invoke(client, name, payload(POINTS[:1], POINTS[1:]), agent)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert ("shapes" in answer) == (agent == CVAT_NEW)
    want = native_best(client, DATA, points=POINTS, labels=[1, 0])
    assert want.any(), "the prompt must select something for the comparison to mean anything"
    np.testing.assert_array_equal(reader(answer, WIDTH, HEIGHT), want)


@pytest.mark.parametrize("agent", [CVAT_NEW, CVAT_OLD])
def test_box_and_points_give_the_native_best_mask(client, name, agent):
    reader = ui_mask_since_2_60 if agent == CVAT_NEW else ui_mask_before_2_60
    response = invoke(client, name, payload([[420.0, 250.0]], [], BOX), agent)
    assert response.status_code == 200, response.text
    box = [*BOX[0], *BOX[1]]
    want = native_best(client, DATA, points=[[420.0, 250.0]], labels=[1], box=box)
    assert want.any()
    np.testing.assert_array_equal(reader(response.json(), WIDTH, HEIGHT), want)
    only_box = invoke(client, name, payload([], [], BOX), agent)
    assert only_box.status_code == 200, only_box.text
    want = native_best(client, DATA, box=box)
    np.testing.assert_array_equal(reader(only_box.json(), WIDTH, HEIGHT), want)


def test_second_click_on_a_frame_is_a_cache_hit(client, name, reduced_engine):
    first = invoke(client, name, payload([[100.0, 100.0]], []))
    assert first.status_code == 200
    encoded = reduced_engine.stats()["encoded_images"]
    for pos, neg in [([[100.0, 100.0], [500.0, 300.0]], []), ([[100.0, 100.0]], [[5.0, 5.0]])]:
        again = invoke(client, name, payload(pos, neg))
        assert again.status_code == 200
    assert reduced_engine.stats()["encoded_images"] == encoded


def test_empty_prompt_and_empty_mask_answer_no_object(client, name):
    new = invoke(client, name, payload([], [], []), CVAT_NEW)
    assert new.status_code == 200
    assert new.json() == {"shapes": []}
    old = invoke(client, name, payload([], [], None), CVAT_OLD)
    assert old.status_code == 200
    assert old.json() == {"mask": [[0]], "bounds": [0, 0, 0, 0], "points": []}
    assert not ui_mask_before_2_60(old.json(), WIDTH, HEIGHT).any()


def test_cvat_mask_encoding_matches_cvat_sdk_rules():
    rng = np.random.default_rng(7)
    for _ in range(50):
        mask = np.zeros((13, 17), dtype=bool)
        y, x = rng.integers(0, 13), rng.integers(0, 17)
        mask[y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = True
        mask &= rng.random(mask.shape) < 0.8
        bounds = mask_bounds(mask)
        if bounds is None:
            continue
        points = cvat_mask_points(mask, bounds)
        assert all(isinstance(p, int) for p in points)
        assert points[-4:] == list(bounds)
        np.testing.assert_array_equal(rle_to_mask(points, 17, 13), mask)
    assert mask_bounds(np.zeros((3, 3), dtype=bool)) is None
    full = np.ones((2, 3), dtype=bool)
    assert cvat_mask_points(full, (0, 0, 2, 1)) == [0, 6, 0, 0, 2, 1]


def test_user_agent_picks_the_answer_shape():
    assert reads_shapes("CVAT/2.60.0 python-requests/2.32.3")
    assert reads_shapes("CVAT/2.80.1.dev0 python-requests/2.31.0")
    assert reads_shapes("CVAT/3.0.0 python-requests/2.32.3")
    assert not reads_shapes("CVAT/2.59.1 python-requests/2.32.3")
    assert not reads_shapes("CVAT/2.4.0 python-requests/2.28.2")
    assert not reads_shapes("python-requests/2.32.3")
    assert not reads_shapes("cvat_sdk/2.80.0")
    assert not reads_shapes("")


# -- errors: CVAT shows the status line ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"pos_points": [[1, 1]], "neg_points": []}, 400, "image must be"),
        ({**payload([[1, 1]], []), "image": "not base64!"}, 400, "not valid base64"),
        ({**payload([[1, 1]], []), "image": 12}, 400, "image must be"),
        (
            {**payload([[1, 1]], []), "image": base64.b64encode(b"text").decode()},
            400,
            "image:",
        ),
        (payload([[1, 2, 3]], []), 400, "pos_points must be a list of [x, y]"),
        (payload([[1, 1]], "x"), 400, "neg_points must be a list of [x, y]"),
        (payload([["a", 1]], []), 400, "only numbers"),
        (payload([[1e300, 1]], []), 400, "float32"),
        (payload([[1, 1]], [], [[0, 0], [5, 5], [9, 9], [12, 12]]), 400, "one box"),
        (payload([[1, 1]], [], {"x": 1}), 400, "obj_bbox must be"),
        (payload([[float(i), 1.0] for i in range(300)], []), 400, "point"),
    ],
)
def test_bad_invocations_are_400_naming_the_field(client, name, body, status, fragment):
    assert_error(invoke(client, name, body), status, fragment)


def test_invocation_needs_a_function_name_and_a_json_object(client):
    headers = {**NUCLIO_HEADERS, "x-nuclio-path": "/"}
    response = client.post("/api/function_invocations", json=payload([[1, 1]], []), headers=headers)
    assert_error(response, 400, "x-nuclio-function-name")
    named = {
        **headers,
        "x-nuclio-function-name": function_name(client.app.state.settings.model_ids[0]),
    }
    for content in (b"[1, 2]", b"{not json"):
        response = client.post("/api/function_invocations", content=content, headers=named)
        assert_error(response, 400, "invocation body")


# -- auth: the bearer token, unless OPEN_SURFACES=cvat ------------------------------------


def test_cvat_paths_need_the_token_unless_opened(reduced_settings, reduced_engine):
    name = function_name(reduced_settings.model_ids[0])
    body = payload([[420.0, 250.0]], [])
    closed = create_app(reduced_settings.with_(auth_token=TOKEN), reduced_engine, load=False)
    with TestClient(closed) as client:
        assert_error(client.get("/api/functions"), 401)
        assert_error(client.get(f"/api/functions/{name}"), 401)
        assert_error(invoke(client, name, body), 401)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/functions", headers=bearer).status_code == 200
    opened = create_app(
        reduced_settings.with_(auth_token=TOKEN, open_surfaces=("cvat",)),
        reduced_engine,
        load=False,
    )
    with TestClient(opened) as client:
        assert client.get("/api/functions", headers=NUCLIO_HEADERS).status_code == 200
        assert invoke(client, name, body).status_code == 200
        wrong = {"Authorization": "Bearer wrong"}
        assert_error(client.get("/api/functions", headers=wrong), 401)
        assert client.post("/v1/images", files={"image": ("f", DATA)}).status_code == 401
