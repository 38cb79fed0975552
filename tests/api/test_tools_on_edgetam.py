"""Every annotation tool's surface answers for EdgeTAM, picked the tool's own way.

One server lists both families in MODEL_ID (the reduced SAM2 checkpoint first,
so it is the default, and the random-weight EdgeTAM repository by its repo id).
Each tool selects EdgeTAM as that tool selects a model: Label Studio by the
project's `extra_params.model_id` at /setup, CVAT by the interactor (Nuclio
function) GET /api/functions lists for it, X-AnyLabeling by the `model` id from
its /v1/models list, Roboflow's SDK by `sam2_version_id`. Each mask must equal
the native API's answer for EdgeTAM on the same image and prompt, compared as
that tool's existing test compares it with SAM2's; and since the default model
would answer a tool that ignored the choice, every prompt here is first shown
to give SAM2 a different mask, so an answer from the wrong family fails.

The tools' own request shapes and readings are imported from their SAM2 tests,
so the two stay one description of each protocol.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pycocotools import mask as coco_mask

from sam2_server.api import create_app
from sam2_server.api.cvat import function_name
from sam2_server.codecs.brush import mask2rle
from tests.api import native
from tests.api.test_cvat import (
    CVAT_NEW,
    CVAT_OLD,
    cvat_function,
    invoke,
    payload,
    ui_mask_before_2_60,
    ui_mask_since_2_60,
)
from tests.api.test_labelstudio import (
    keypoint,
    only_region,
    pixels,
    predict_body,
    rectangle,
    region_mask,
    setup_body,
)
from tests.api.test_roboflow import center_box, from_polygons, from_rle, holes_filled
from tests.api.test_xanylabeling import drawn, outlined
from tests.conftest import image_bytes

# Every tool test here uses the same picture, so each model encodes it once.
DATA = image_bytes("groceries.jpg")
WIDTH, HEIGHT = 800, 534
DATA_URL = "data:image/jpeg;base64," + base64.b64encode(DATA).decode()
TOKEN = "tools-on-edgetam-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PROJECT = "23.1733222222"  # Label Studio's "<project id>.<created>"

POINT = [400.0, 250.0]
BOX = [100.0, 100.0, 500.0, 400.0]


@dataclass(frozen=True)
class Served:
    client: TestClient
    edgetam: str
    sam2: str  # the default model


@pytest.fixture(scope="module")
def served(reduced_model, hf_edgetam) -> Iterator[Served]:
    """Both families behind one token; CVAT's paths open (CVAT sends no credentials);
    Label Studio's batch pre-annotation answering automatic masks."""
    from sam2_server.config import Settings
    from sam2_server.engine import Engine

    sam2 = str(reduced_model.checkpoint)
    settings = Settings(
        model_ids=(sam2, hf_edgetam),
        model_config=str(reduced_model.config),
        device="cpu",
        auth_token=TOKEN,
        open_surfaces=("cvat",),
        label_studio_preannotate="automatic",
    )
    engine = Engine(settings)
    engine.load()
    with TestClient(create_app(settings, engine, load=False)) as client:
        yield Served(client, hf_edgetam, sam2)


def upload(served: Served, model: str) -> str:
    """DATA on the native API for `model` (encoded there once); its image id."""
    files = {"image": ("groceries.jpg", DATA, "image/jpeg")}
    uploaded = served.client.post(
        "/v1/images", data={"model_id": model}, files=files, headers=BEARER
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["model_id"] == model
    return str(uploaded.json()["image_id"])


def native_best(served: Served, model: str, **prompt: Any) -> np.ndarray:
    """The native API's first (best-scored) mask for `prompt` on DATA, by `model`."""
    return native.native_best(served.client, DATA, model_id=model, headers=BEARER, **prompt)[0]


def as_is(mask: np.ndarray) -> np.ndarray:
    return mask


def edgetam_best(
    served: Served, view: Callable[[np.ndarray], np.ndarray] = as_is, **prompt: Any
) -> np.ndarray:
    """EdgeTAM's best mask, checked to differ from SAM2's as the tool's answer is compared
    (`view`: what the tool's shapes can hold of a mask), so that a tool that answered with
    the default model instead could not pass the comparison."""
    want = native_best(served, served.edgetam, **prompt)
    assert want.any(), "the prompt must select something for the comparison to mean anything"
    assert not np.array_equal(view(want), view(native_best(served, served.sam2, **prompt)))
    return want


# -- Label Studio: the project's model, chosen in its Extra params ------------------------


@pytest.fixture(scope="module")
def edgetam_project(served: Served) -> str:
    """A project whose Model settings carry `{"model_id": <EdgeTAM>}` in Extra params."""
    body = setup_body(project=PROJECT, extra_params={"model_id": served.edgetam})
    response = served.client.post("/labelstudio/setup", json=body, auth=("label-studio", TOKEN))
    assert response.status_code == 200, response.text
    assert response.json() == {"model_version": served.edgetam}
    return PROJECT


def labelstudio_predict(served: Served, body: dict[str, Any]) -> dict[str, Any]:
    response = served.client.post("/labelstudio/predict", json=body, auth=("label-studio", TOKEN))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_labelstudio_project_on_edgetam_gets_edgetams_masks(
    served: Served, edgetam_project: str
) -> None:
    versions = served.client.request(
        "GET",
        "/labelstudio/versions",
        json={"project": edgetam_project},
        auth=("label-studio", TOKEN),
    )
    assert versions.status_code == 200, versions.text
    assert versions.json() == {"versions": [served.edgetam]}

    click = predict_body([keypoint(50, 46.8)], image=DATA_URL, project=edgetam_project)
    answer = labelstudio_predict(served, click)
    assert answer["results"][0]["model_version"] == served.edgetam
    point = [pixels(50, WIDTH), pixels(46.8, HEIGHT)]
    want = edgetam_best(served, points=[point], labels=[1])
    np.testing.assert_array_equal(region_mask(only_region(answer)), want)

    box = predict_body([rectangle(12.5, 18.75, 50, 56.25)], image=DATA_URL, project=edgetam_project)
    answer = labelstudio_predict(served, box)
    assert answer["results"][0]["model_version"] == served.edgetam
    x, y = pixels(12.5, WIDTH), pixels(18.75, HEIGHT)  # corner plus size, as Label Studio's
    corners = [x, y, x + pixels(50, WIDTH), y + pixels(56.25, HEIGHT)]
    want = edgetam_best(served, box=corners)
    np.testing.assert_array_equal(region_mask(only_region(answer)), want)


def test_labelstudio_preannotation_on_edgetam_is_edgetams_automatic_masks(
    served: Served,
) -> None:
    """A whole task of a project on EdgeTAM: EdgeTAM's automatic masks, as the native route
    gives them for the same parameters (few points, every mask kept: a dozen masks)."""
    params = {
        "points_per_side": 2,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,
    }
    extra = {"model_id": served.edgetam, "automatic": params}
    setup = setup_body(project="24.1", extra_params=extra)
    auth = ("label-studio", TOKEN)
    assert served.client.post("/labelstudio/setup", json=setup, auth=auth).status_code == 200
    task = {"id": 1, "data": {"image": DATA_URL}}
    answer = labelstudio_predict(served, {**predict_body(None, project="24.1"), "tasks": [task]})
    (prediction,) = answer["results"]
    assert prediction["model_version"] == served.edgetam

    native: dict[str, list[list[int]]] = {}
    for model in (served.edgetam, served.sam2):
        image_id = upload(served, model)
        assert image_id == hashlib.sha256(DATA).hexdigest()
        response = served.client.post(
            f"/v1/images/{image_id}/automatic-masks",
            json={"model_id": model, **params},
            headers=BEARER,
        )
        assert response.status_code == 200, response.text
        native[model] = [
            mask2rle(
                coco_mask.decode(
                    {
                        "size": r["segmentation"]["size"],
                        "counts": r["segmentation"]["counts"].encode(),
                    }
                ).astype(bool)
            )
            for r in response.json()["masks"]
        ]
    assert native[served.edgetam] != native[served.sam2]
    assert len(prediction["result"]) == len(native[served.edgetam]) > 1
    assert [region["value"]["rle"] for region in prediction["result"]] == native[served.edgetam]


# -- CVAT: EdgeTAM's own interactor, as GET /api/functions lists it ------------------------


@pytest.fixture(scope="module")
def edgetam_function(served: Served) -> str:
    """The function CVAT's AI Tools list shows for EdgeTAM (one per served model)."""
    listed = served.client.get("/api/functions")
    assert listed.status_code == 200, listed.text
    functions = {name: cvat_function(config) for name, config in listed.json().items()}
    assert set(functions) == {function_name(served.sam2), function_name(served.edgetam)}
    (name,) = (n for n, f in functions.items() if served.edgetam in f["name"])
    assert name == function_name(served.edgetam)
    function = functions[name]
    assert (function["kind"], function["state"]) == ("interactor", "ready")
    assert served.edgetam in function["description"]
    assert "default model" not in function["description"]
    one = served.client.get(f"/api/functions/{name}")
    assert one.status_code == 200
    assert cvat_function(one.json()) == function
    return name


@pytest.mark.parametrize(
    ("agent", "reader"), [(CVAT_NEW, ui_mask_since_2_60), (CVAT_OLD, ui_mask_before_2_60)]
)
def test_cvat_edgetam_interactor_gets_edgetams_masks(
    served: Served, edgetam_function: str, agent: str, reader: Any
) -> None:
    response = invoke(served.client, edgetam_function, payload([POINT], []), agent)
    assert response.status_code == 200, response.text
    want = edgetam_best(served, points=[POINT], labels=[1], multimask_output=True)
    np.testing.assert_array_equal(reader(response.json(), WIDTH, HEIGHT), want)

    box = [BOX[:2], BOX[2:]]
    response = invoke(served.client, edgetam_function, payload([], [], box), agent)
    assert response.status_code == 200, response.text
    want = edgetam_best(served, box=BOX, multimask_output=True)
    np.testing.assert_array_equal(reader(response.json(), WIDTH, HEIGHT), want)


# -- X-AnyLabeling: the `model` id its /v1/models lists for EdgeTAM -----------------------


@pytest.fixture(scope="module")
def edgetam_model_name(served: Served) -> str:
    listed = served.client.get("/xanylabeling/v1/models", headers={"Token": TOKEN})
    assert listed.status_code == 200, listed.text
    models = listed.json()["data"]
    (name,) = (n for n, m in models.items() if m["params"]["model_id"] == served.edgetam)
    assert served.edgetam in models[name]["display_name"]
    info = served.client.get(f"/xanylabeling/v1/models/{name}/info", headers={"Token": TOKEN})
    assert info.status_code == 200, info.text
    assert info.json()["data"] == {"model_id": name, **models[name]}
    return str(name)


def xanylabeling_shapes(
    served: Served, model: str, marks: list[dict[str, Any]], **params: Any
) -> list[dict[str, Any]]:
    """The body X-AnyLabeling's RemoteServer posts, exact polygons (epsilon 0)."""
    body = {
        "model": model,
        "image": DATA_URL,
        "params": {"conf_threshold": 0.0, "epsilon_factor": 0.0, "marks": marks, **params},
    }
    response = served.client.post("/xanylabeling/v1/predict", json=body, headers={"Token": TOKEN})
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    shapes: list[dict[str, Any]] = response.json()["data"]["shapes"]
    assert shapes
    return shapes


def test_xanylabeling_edgetam_model_gets_edgetams_masks(
    served: Served, edgetam_model_name: str
) -> None:
    """Polygons drawn back equal the native mask with holes filled (X-AnyLabeling's one
    ring per polygon), as tests/api/test_xanylabeling.py compares SAM2's."""
    point = [{"type": "point", "data": POINT, "label": 1}]
    shapes = xanylabeling_shapes(served, edgetam_model_name, point)  # single-mask output
    want = edgetam_best(served, outlined, points=[POINT], labels=[1], multimask_output=False)
    np.testing.assert_array_equal(drawn(shapes, HEIGHT, WIDTH), outlined(want))

    box = [{"type": "rectangle", "data": BOX, "label": 1}]
    shapes = xanylabeling_shapes(served, edgetam_model_name, box, multimask_output=True)
    want = edgetam_best(served, outlined, box=BOX, multimask_output=True)
    np.testing.assert_array_equal(drawn(shapes, HEIGHT, WIDTH), outlined(want))


# -- Roboflow's SDK: sam2_version_id naming the served EdgeTAM -----------------------------


def roboflow(served: Served, path: str, **body: Any) -> tuple[dict[str, Any], str]:
    """The answer and its X-Model-Id, the token as the SDK sends it (`api_key`)."""
    response = served.client.post(f"/sam2/{path}", json={"api_key": TOKEN, **body})
    assert response.status_code == 200, response.text
    return response.json(), response.headers["X-Model-Id"]


def test_roboflow_edgetam_version_gets_edgetams_masks(served: Served) -> None:
    image = {"type": "base64", "value": base64.b64encode(DATA).decode()}
    point = {"points": [{"x": POINT[0], "y": POINT[1], "positive": True}]}
    common = {"image": image, "prompts": [point], "sam2_version_id": served.edgetam}
    want = edgetam_best(served, holes_filled, points=[POINT], labels=[1])

    rle, header = roboflow(served, "segment_image", **common, format="rle")
    assert rle["model_id"] == header == served.edgetam
    [prediction] = rle["predictions"]
    np.testing.assert_array_equal(from_rle(prediction["masks"]), want)

    polygons, header = roboflow(served, "segment_image", **common)  # json, the default
    assert polygons["model_id"] == header == served.edgetam
    [prediction] = polygons["predictions"]
    contours = prediction["masks"]
    np.testing.assert_array_equal(from_polygons(contours, HEIGHT, WIDTH), holes_filled(want))


def test_roboflow_embeds_on_edgetam_and_segments_by_image_id(served: Served) -> None:
    """embed_image, then segment_image naming the image by the id it chose: both on
    EdgeTAM; the default model does not know that id."""
    image = {"type": "base64", "value": base64.b64encode(DATA).decode()}
    version = {"sam2_version_id": served.edgetam}
    embedded, header = roboflow(served, "embed_image", image=image, image_id="shelf", **version)
    assert embedded["model_id"] == header == served.edgetam
    assert embedded["image_id"] == "shelf"

    prompt = {"box": center_box(*BOX)}
    answer, header = roboflow(
        served, "segment_image", image_id="shelf", prompts=[prompt], format="rle", **version
    )
    assert answer["model_id"] == header == served.edgetam
    [prediction] = answer["predictions"]
    np.testing.assert_array_equal(from_rle(prediction["masks"]), edgetam_best(served, box=BOX))

    default = served.client.post(
        "/sam2/segment_image",
        json={"api_key": TOKEN, "image_id": "shelf", "prompts": [prompt]},
    )
    assert default.status_code == 404, default.text
    assert served.sam2 in default.json()["message"]
