"""The HTTP answer, parsed with json.loads, equals SAM2ImagePredictor on the same checkpoint.

The oracle is sam2's own `build_sam2` + `SAM2ImagePredictor`, built separately
from the server's loader; outputs are sorted best-first as the reference does.
Equality is exact: the server prints each float32 so that it parses back to
the same float32.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import image_bytes

IMAGE = "groceries.jpg"  # 800 x 534


@pytest.fixture(scope="module")
def oracle(reference_predictor):
    reference_predictor.set_image(Image.open(io.BytesIO(image_bytes(IMAGE))).convert("RGB"))
    return reference_predictor


def reference_answer(predictor, **kwargs) -> dict[str, np.ndarray]:
    kwargs.setdefault("return_logits", True)
    masks, scores, logits = predictor.predict(**kwargs)
    if scores.ndim == 1:
        order = np.argsort(scores)[::-1]
        return {"masks": masks[order], "scores": scores[order], "logits": logits[order]}
    sorted_parts: dict[str, list[np.ndarray]] = {"masks": [], "scores": [], "logits": []}
    for b in range(scores.shape[0]):
        order = np.argsort(scores[b])[::-1]
        sorted_parts["masks"].append(masks[b][order])
        sorted_parts["scores"].append(scores[b][order])
        sorted_parts["logits"].append(logits[b][order])
    return {k: np.stack(v) for k, v in sorted_parts.items()}


def post(client, **form) -> dict[str, np.ndarray]:
    data = {k: (json.dumps(v) if isinstance(v, list) else str(v)) for k, v in form.items()}
    response = client.post(
        "/segment-anything-2", data=data, files={"image": (IMAGE, image_bytes(IMAGE), "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    body = json.loads(response.content)
    assert set(body) == {"masks", "scores", "logits"}
    assert all(isinstance(v, str) for v in body.values())
    return {k: np.array(json.loads(v), dtype=np.float32) for k, v in body.items()}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for key in ("masks", "scores", "logits"):
        expected = np.asarray(want[key], dtype=np.float32)
        assert got[key].shape == expected.shape, key
        np.testing.assert_array_equal(got[key], expected, err_msg=key)


POINTS = [[400, 250], [120, 90]]
LABELS = [1, 0]
BOX = [100, 100, 500, 400]
BOXES = [[50, 50, 300, 300], [350, 100, 700, 500]]

CASES = {
    "points": ({"point_coords": POINTS, "point_labels": LABELS}, {}),
    "box": ({"box": BOX}, {}),
    "points_and_box": ({"point_coords": POINTS, "point_labels": LABELS, "box": BOX}, {}),
    "box_as_1x4": ({"box": [BOX]}, {}),
    "several_boxes": ({"box": BOXES}, {}),
    "several_boxes_with_points": (
        {"box": BOXES, "point_coords": [[[200, 200]], [[500, 300]]], "point_labels": [[1], [1]]},
        {},
    ),
    "single_mask": ({"point_coords": POINTS, "point_labels": LABELS}, {"multimask_output": False}),
    "binary_masks": ({"point_coords": POINTS, "point_labels": LABELS}, {"return_logits": False}),
    "normalized_coords": (
        {"point_coords": [[0.5, 0.45]], "point_labels": [1]},
        {"normalize_coords": False},
    ),
    "no_prompt": ({}, {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_http_answer_equals_predictor(client, oracle, name):
    arrays, flags = CASES[name]
    got = post(client, **arrays, **{k: str(v).lower() for k, v in flags.items()})
    want = reference_answer(oracle, **{k: np.array(v) for k, v in arrays.items()}, **flags)
    assert_same(got, want)
    if "return_logits" in flags:
        assert set(np.unique(got["masks"])) <= {0.0, 1.0}
    expected_c = 1 if flags.get("multimask_output") is False else 3
    assert got["scores"].shape[-1] == expected_c
    assert np.all(np.diff(got["scores"], axis=-1) <= 0), "sorted best first"


def test_mask_input_round_trip(client, oracle):
    first = post(client, point_coords=POINTS, point_labels=LABELS)
    low_res = first["logits"][0][None]  # 1 x 256 x 256, as a client would slice it
    assert low_res.shape == (1, 256, 256)
    got = post(
        client,
        point_coords=[[400, 250]],
        point_labels=[1],
        mask_input=low_res.tolist(),
        multimask_output="false",
    )
    want = reference_answer(
        oracle,
        point_coords=np.array([[400, 250]]),
        point_labels=np.array([1]),
        mask_input=low_res,
        multimask_output=False,
    )
    assert_same(got, want)


def test_masks_are_at_original_size(client):
    got = post(client, point_coords=POINTS, point_labels=LABELS)
    assert got["masks"].shape == (3, 534, 800)
    assert got["logits"].shape == (3, 256, 256)
    assert np.abs(got["logits"]).max() <= 32.0
