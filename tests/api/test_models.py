"""`GET /v1/models`, and every image surface serving an EdgeTAM model beside a SAM2 one.

One server lists both families in MODEL_ID (the reduced SAM2 checkpoint, and
the random-weight EdgeTAM repository in the HF cache by its repo id); each
surface answers for EdgeTAM with the shapes it gives for SAM2, and the values
of transformers' own classes (tests/engine/test_edgetam.py's oracle).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sam2_server.api import create_app
from sam2_server.codecs.native import pack_array, unpack_array
from sam2_server.domain import MASK_RECORD_FIELDS, Prompt
from tests.api.test_native import decode_masks
from tests.conftest import image_bytes
from tests.engine.test_edgetam import (
    LABELS,
    POINTS,
    SMALL,
    TOLERANCE,
    picture,
    reference_answer,
)

IMAGE = "groceries.jpg"
DATA = image_bytes(IMAGE)
TOKEN = "models-token"
MISSING = "someone/not-in-the-cache"


@pytest.fixture(scope="module")
def served(reduced_model, hf_edgetam):
    """A server whose MODEL_ID lists a SAM2 checkpoint, EdgeTAM by repo id, and a model
    whose files are nowhere."""
    from sam2_server.config import Settings
    from sam2_server.engine import Engine

    settings = Settings(
        model_ids=(str(reduced_model.checkpoint), hf_edgetam, MISSING),
        model_config=str(reduced_model.config),
        device="cpu",
        auth_token=TOKEN,
    )
    engine = Engine(settings)
    engine.load()
    with TestClient(create_app(settings, engine, load=False)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client, engine


def models(client) -> dict:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    return response.json()


def test_models_are_behind_the_token(served):
    client, _ = served
    response = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    anonymous = TestClient(client.app)
    assert anonymous.get("/v1/models").status_code == 401


def test_models_list_each_family_from_its_config(served, reduced_model, hf_edgetam):
    client, _ = served
    body = models(client)
    sam2, edgetam, missing = body["models"]
    assert body["default"] == str(reduced_model.checkpoint)
    assert sam2 == {
        "model_id": str(reduced_model.checkpoint),
        "default": True,
        "family": "sam2",
        "input_size": 1024,
        "state": "loaded",
        "loaded": True,
        "video": True,
        "automatic_masks": True,
        "error": None,
    }
    assert edgetam["model_id"] == hf_edgetam
    assert (edgetam["family"], edgetam["input_size"], edgetam["default"]) == (
        "edgetam",
        1024,
        False,
    )
    assert (edgetam["video"], edgetam["automatic_masks"], edgetam["error"]) == (True, True, None)
    assert missing["model_id"] == MISSING
    assert (missing["family"], missing["input_size"], missing["loaded"]) == (None, None, False)
    assert missing["state"] == "error"
    assert MISSING in missing["error"]
    assert not missing["video"]


def test_loading_on_first_use_shows_in_models(served, hf_edgetam):
    client, _ = served
    entry = next(m for m in models(client)["models"] if m["model_id"] == hf_edgetam)
    if not entry["loaded"]:
        assert entry["state"] == "not loaded"
    response = client.post(
        "/v1/images", data={"model_id": hf_edgetam}, files={"image": (IMAGE, DATA, "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    entry = next(m for m in models(client)["models"] if m["model_id"] == hf_edgetam)
    assert (entry["state"], entry["loaded"]) == ("loaded", True)


def test_the_models_route_is_in_the_schema(served):
    client, _ = served
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/models"]["get"]
    assert operation["operationId"] == "list_models"
    assert "401" in operation["responses"]


def test_livepeer_route_answers_edgetam_in_sam2s_shapes(
    served, hf_edgetam, edgetam_reference, edgetam_reference_features
):
    client, engine = served
    form = {"model_id": hf_edgetam, "point_coords": json.dumps(POINTS), "point_labels": "[1, 0]"}
    response = client.post(
        "/segment-anything-2", data=form, files={"image": (IMAGE, DATA, "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    body = {k: np.array(json.loads(v), dtype=np.float32) for k, v in response.json().items()}
    assert body["masks"].shape == (3, 534, 800)
    assert body["scores"].shape == (3,)
    assert body["logits"].shape == (3, 256, 256)
    # The engine's own answer, printed exactly; the oracle's within tolerance.
    prompt = Prompt(point_coords=np.array(POINTS), point_labels=np.array(LABELS))
    direct = engine.segment(hf_edgetam, DATA, prompt)
    np.testing.assert_array_equal(body["masks"], direct.masks)
    np.testing.assert_array_equal(body["scores"], direct.scores)
    np.testing.assert_array_equal(body["logits"], direct.logits)
    want = reference_answer(
        edgetam_reference,
        edgetam_reference_features,
        picture(),
        point_coords=np.array(POINTS),
        point_labels=np.array(LABELS),
    )
    np.testing.assert_allclose(body["scores"], want["scores"], atol=TOLERANCE)
    np.testing.assert_allclose(body["logits"], want["logits"], atol=TOLERANCE)
    assert (np.diff(body["scores"]) <= 0).all()


def test_native_api_and_mask_input_round_trip_on_edgetam(
    served, hf_edgetam, edgetam_reference, edgetam_reference_features
):
    client, _ = served
    upload = client.post(
        "/v1/images", data={"model_id": hf_edgetam}, files={"image": (IMAGE, DATA, "image/jpeg")}
    ).json()
    assert (upload["model_id"], upload["width"], upload["height"]) == (hf_edgetam, 800, 534)
    path = f"/v1/images/{upload['image_id']}/segment"
    first = client.post(path, json={"model_id": hf_edgetam, "points": POINTS, "labels": LABELS})
    assert first.status_code == 200, first.text
    low_res = unpack_array(first.json()["logits"])[0][None]
    assert low_res.shape == (1, 256, 256)
    again = {"points": [[400, 250]], "labels": [1], "multimask_output": False}
    answer = client.post(
        path, json={"model_id": hf_edgetam, **again, "mask_input": pack_array(low_res)}
    ).json()
    want = reference_answer(
        edgetam_reference,
        edgetam_reference_features,
        picture(),
        point_coords=np.array([[400, 250]]),
        point_labels=np.array([1]),
        mask_input=low_res,
        multimask_output=False,
    )
    masks = decode_masks(answer["masks"], "rle")
    assert masks.shape == (1, 534, 800)
    differ = masks != (want["mask_logits"] > 0)
    assert not differ[np.abs(want["mask_logits"]) > TOLERANCE].any()
    np.testing.assert_allclose(answer["scores"], want["scores"], atol=TOLERANCE)
    np.testing.assert_allclose(unpack_array(answer["logits"]), want["logits"], atol=TOLERANCE)
    # The image is cached per model: the SAM2 model has not seen it.
    other = client.post(path, json={"points": POINTS, "labels": LABELS})
    assert other.status_code == 404


def test_automatic_masks_on_edgetam_have_sam2s_record_format(served, hf_edgetam):
    client, _ = served
    upload = client.post(
        "/v1/images", data={"model_id": hf_edgetam}, files={"image": ("s.png", SMALL, "image/png")}
    ).json()
    body = {
        "model_id": hf_edgetam,
        "points_per_side": 2,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
    }
    response = client.post(f"/v1/images/{upload['image_id']}/automatic-masks", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_id"] == hf_edgetam
    assert answer["masks"]
    for record in answer["masks"]:
        assert set(MASK_RECORD_FIELDS) <= set(record)
        assert record["crop_box"] == [0, 0, 200, 134]


def test_a_video_session_over_http_on_edgetam(served, hf_edgetam):
    """The same routes and answers as SAM2's sessions (tests/api/test_videos.py); the
    values are tested against transformers in tests/engine/test_edgetam_video.py."""
    import orjson

    from tests.api.test_videos import _decode
    from tests.conftest import VIDEO_FRAMES

    client, _ = served
    frames = [("frames", (p.name, p.read_bytes(), "image/jpeg")) for p in VIDEO_FRAMES[:2]]
    opened = client.post("/v1/videos", data={"model_id": hf_edgetam}, files=frames)
    assert opened.status_code == 201, opened.text
    video_id = opened.json()["video_id"]
    assert opened.json()["model_id"] == hf_edgetam
    try:
        prompt = {"frame_index": 1, "object_id": 5, "points": [[300, 200]], "labels": [1]}
        answer = client.post(f"/v1/videos/{video_id}/prompts", json=prompt)
        assert answer.status_code == 200, answer.text
        assert [o["object_id"] for o in answer.json()["objects"]] == [5]
        assert _decode(answer.json()["objects"][0]["mask"]).shape == (540, 960)
        response = client.post(f"/v1/videos/{video_id}/propagate", json={"reverse": True})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [orjson.loads(line) for line in response.text.splitlines()]
        assert [line["frame_index"] for line in lines] == [1, 0]
        assert all(_decode(line["objects"][0]["mask"]).any() for line in lines)
    finally:
        assert client.delete(f"/v1/videos/{video_id}").status_code in (200, 204)
