"""One test per row of the contract's error table: status code and body shape."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam2_server.api import create_app
from sam2_server.config import Settings
from tests.conftest import image_bytes

JPEG = ("g.jpg", image_bytes("groceries.jpg"), "image/jpeg")
PATH = "/segment-anything-2"


def tiny_png(
    size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def uncached_png() -> tuple[str, bytes, str]:
    """An image no earlier request sent: its embedding is not in the cache."""
    uncached_png.count += 1  # type: ignore[attr-defined]
    n = uncached_png.count  # type: ignore[attr-defined]
    return ("u.png", tiny_png(color=(n % 256, n // 256 % 256, 77)), "image/png")


uncached_png.count = 0  # type: ignore[attr-defined]


PNG = ("t.png", tiny_png(), "image/png")


def assert_error(response, status: int, *fragments: str) -> str:
    """The contract's `{"detail": {"msg": ...}}` shape, with the message checked."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail"}
    assert set(body["detail"]) == {"msg"}
    message = body["detail"]["msg"]
    assert isinstance(message, str)
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- 422: form validation ------------------------------------------------------------------


def test_missing_image_is_422_in_fastapi_shape(client):
    response = client.post(PATH, data={"point_coords": "[[1,1]]", "point_labels": "[1]"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    assert {"type", "loc", "msg", "input"} <= set(detail[0])
    assert detail[0]["loc"] == ["body", "image"]


@pytest.mark.parametrize("value", ["maybe", "2", "truthy"])
def test_bad_bool_is_422(client, value):
    response = client.post(PATH, data={"multimask_output": value}, files={"image": PNG})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "multimask_output"]


@pytest.mark.parametrize(
    ("value", "expected_c"),
    [
        ("true", 3),
        ("True", 3),
        ("1", 3),
        ("yes", 3),
        ("on", 3),
        ("false", 1),
        ("False", 1),
        ("0", 1),
        ("no", 1),
        ("off", 1),
    ],
)
def test_bool_spellings_accepted(client, value, expected_c):
    response = client.post(
        PATH,
        data={"multimask_output": value, "point_coords": "[[10,10]]", "point_labels": "[1]"},
        files={"image": PNG},
    )
    assert response.status_code == 200, response.text
    assert len(json.loads(response.json()["scores"])) == expected_c


# -- 401: auth -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_client(reduced_settings, reduced_engine):
    app = create_app(reduced_settings.with_(auth_token="s3cret"), reduced_engine, load=False)
    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic s3cret"},
        {"Authorization": "Bearer"},
        {"Authorization": "s3cret"},
    ],
)
def test_wrong_or_missing_token_is_401(auth_client, headers):
    response = auth_client.post(PATH, files={"image": PNG}, headers=headers)
    assert_error(response, 401, "Invalid bearer token.")
    assert response.headers["www-authenticate"] == "Bearer"


def test_right_token_is_accepted(auth_client):
    response = auth_client.post(
        PATH, files={"image": PNG}, headers={"Authorization": "Bearer s3cret"}
    )
    assert response.status_code == 200, response.text


def test_auth_is_checked_before_the_body(auth_client):
    # No image and a body that is not even multipart: a 422 would mean the body was parsed.
    response = auth_client.post(PATH, content=b"garbage", headers={"Content-Type": "text/plain"})
    assert_error(response, 401, "Invalid bearer token.")


def test_health_and_version_need_no_token(auth_client):
    assert auth_client.get("/health").status_code == 200
    assert auth_client.get("/version").status_code == 200


def test_no_token_configured_accepts_everyone(client):
    response = client.post(PATH, files={"image": PNG}, headers={"Authorization": "Bearer x"})
    assert response.status_code == 200


# -- 400: model_id, arrays, shapes ---------------------------------------------------------


def test_unserved_model_id_names_the_served_models(client, reduced_settings):
    response = client.post(
        PATH, data={"model_id": "facebook/sam2-hiera-large"}, files={"image": PNG}
    )
    message = assert_error(response, 400, "facebook/sam2-hiera-large")
    assert reduced_settings.model_ids[0] in message


def test_served_model_id_and_empty_model_id_are_accepted(client, reduced_settings):
    for model_id in ("", reduced_settings.model_ids[0]):
        response = client.post(PATH, data={"model_id": model_id}, files={"image": PNG})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("point_coords", "[[1, 2]"),
        ("point_labels", "[1,]"),
        ("box", "(1, 2, 3, 4)"),
        ("mask_input", "nope"),
        ("point_coords", "[[1, 2], [3, 4]]x"),
    ],
)
def test_array_field_not_json(client, field, value):
    response = client.post(PATH, data={field: value}, files={"image": PNG})
    assert_error(response, 400, f"Error parsing JSON for {field}: ")


def test_absurdly_nested_array(client):
    response = client.post(PATH, data={"box": "[" * 100_000 + "]" * 100_000}, files={"image": PNG})
    assert_error(response, 400, "Error parsing JSON for box", "nested too deeply")


def test_ragged_array(client):
    response = client.post(
        PATH, data={"point_coords": "[[1, 2], [3]]", "point_labels": "[1, 1]"}, files={"image": PNG}
    )
    assert_error(response, 400, "Error parsing JSON for point_coords", "ragged")


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"point_coords": "[[1, 2, 3]]", "point_labels": "[1]"}, ("point_coords", "Nx2", "1x3")),
        ({"point_coords": "[1, 2]", "point_labels": "[1]"}, ("point_coords", "Nx2")),
        ({"point_coords": "[[1, 2], [3, 4]]", "point_labels": "[1]"}, ("point_labels", "2")),
        ({"point_coords": "[[1, 2]]", "point_labels": "[2]"}, ("point_labels", "1", "0")),
        ({"point_coords": "[[1, 2]]"}, ("point_labels", "required")),
        ({"point_labels": "[1]"}, ("point_labels", "without point_coords")),
        ({"box": "[1, 2, 3]"}, ("box", "4")),
        ({"box": "[[1, 2, 3, 4, 5]]"}, ("box", "Bx4")),
        ({"mask_input": json.dumps(np.zeros((1, 64, 64)).tolist())}, ("mask_input", "1x256x256")),
        ({"mask_input": json.dumps(np.zeros((256, 256)).tolist())}, ("mask_input", "1x256x256")),
        ({"point_coords": "[[NaN, 2]]", "point_labels": "[1]"}, ("point_coords", "finite")),
        ({"box": "[0, 0, Infinity, 4]"}, ("box", "finite")),
        ({"point_coords": '[["a", 2]]', "point_labels": "[1]"}, ("point_coords", "numbers")),
        (
            {
                "box": "[[1, 1, 9, 9], [2, 2, 8, 8]]",
                "point_coords": "[[3, 3]]",
                "point_labels": "[1]",
            },
            ("point_coords", "2xNx2"),
        ),
    ],
)
def test_wrong_shapes_are_400_before_inference(client, monkeypatch, data, fragments):
    def must_not_run(*args, **kwargs):
        raise AssertionError("inference ran on an invalid prompt")

    monkeypatch.setattr(SAM2ImagePredictor, "set_image", must_not_run)
    monkeypatch.setattr(SAM2ImagePredictor, "predict", must_not_run)
    response = client.post(PATH, data=data, files={"image": PNG})
    assert_error(response, 400, *fragments)


# -- 400: the upload -----------------------------------------------------------------------


def test_not_an_image(client):
    response = client.post(PATH, files={"image": ("x.png", b"this is text", "image/png")})
    assert_error(response, 400, "image", "not an image")


def test_truncated_image(client):
    data = image_bytes("groceries.jpg")
    response = client.post(PATH, files={"image": ("g.jpg", data[: len(data) // 2], "image/jpeg")})
    assert_error(response, 400, "image", "truncated")


def test_empty_upload(client):
    response = client.post(PATH, files={"image": ("e.png", b"", "image/png")})
    assert_error(response, 400, "image", "empty")


def test_decompression_bomb(client, reduced_settings):
    buffer = io.BytesIO()
    Image.new("1", (20_000, 10_000)).save(buffer, format="PNG")  # 200 MP in ~30 KB
    assert len(buffer.getvalue()) < 100_000
    response = client.post(PATH, files={"image": ("bomb.png", buffer.getvalue(), "image/png")})
    assert_error(response, 400, "image", "20000x10000", str(reduced_settings.max_image_pixels))


# -- 413: sizes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_limits_client(reduced_settings, reduced_engine):
    settings = reduced_settings.with_(max_request_bytes=200_000, max_field_bytes=50_000)
    with TestClient(create_app(settings, reduced_engine, load=False)) as test_client:
        yield test_client


def test_request_too_large_is_413(small_limits_client):
    response = small_limits_client.post(
        PATH, files={"image": ("big.bin", b"0" * 300_000, "image/png")}
    )
    assert_error(response, 413, "200000", "MAX_REQUEST_BYTES")


def test_streamed_request_too_large_is_413(small_limits_client):
    def chunks():
        for _ in range(100):
            yield b"x" * 10_000

    response = small_limits_client.post(
        PATH, content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=abc"}
    )
    assert_error(response, 413, "MAX_REQUEST_BYTES")


def test_form_field_too_large_is_413(small_limits_client):
    response = small_limits_client.post(
        PATH, data={"mask_input": "[" + "0," * 40_000 + "0]"}, files={"image": PNG}
    )
    assert_error(response, 413, "50000", "MAX_FIELD_BYTES")


def test_default_limits_fit_a_full_precision_mask_input(client):
    """The reference's 1 MB part limit rejects this; it must pass (and then fail on shape only
    if wrong). Written as the reference prints float32 logits: 17 significant digits."""
    rng = np.random.default_rng(0)
    mask = (rng.standard_normal((1, 256, 256)) * 10).astype(np.float32)
    text = str(mask.astype(np.float64).tolist())
    assert len(text) > 1_024 * 1_024
    response = client.post(
        PATH,
        data={
            "mask_input": text,
            "point_coords": "[[10, 10]]",
            "point_labels": "[1]",
            "multimask_output": "false",
        },
        files={"image": PNG},
    )
    assert response.status_code == 200, response.text[:300]


# -- 500: the model ------------------------------------------------------------------------


def test_out_of_memory_is_500_and_server_keeps_serving(client, monkeypatch):
    original = SAM2ImagePredictor.set_image

    def oom(self, image):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SAM2ImagePredictor, "set_image", oom)
    image = uncached_png()
    response = client.post(PATH, files={"image": image})
    assert_error(response, 500, "Out of memory error. Try reducing input image resolution.")
    monkeypatch.setattr(SAM2ImagePredictor, "set_image", original)
    # The failed encode was not cached: the same image now succeeds.
    assert client.post(PATH, files={"image": image}).status_code == 200


def test_unexpected_error_is_500_with_details_only_in_log(client, monkeypatch, caplog):
    def boom(self, image):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(SAM2ImagePredictor, "set_image", boom)
    with caplog.at_level(logging.ERROR):
        response = client.post(PATH, files={"image": uncached_png()})
    message = assert_error(response, 500, "Segment-anything-2 pipeline error.")
    assert "secret" not in message
    assert "secret internal detail" in caplog.text


# -- other routes and shapes ---------------------------------------------------------------


def test_unknown_route_is_json(client):
    response = client.get("/nope")
    assert_error(response, 404)


def test_trailing_slash_is_accepted_and_hidden(client):
    response = client.post(PATH + "/", files={"image": PNG})
    assert response.status_code == 200
    assert PATH + "/" not in client.get("/openapi.json").json()["paths"]


def test_settings_defaults_match_reference_deployment():
    settings = Settings.from_env({})
    assert settings.port == 8000
    assert settings.default_model_id == "facebook/sam2-hiera-large"
    assert settings.auth_token is None
    env = {"MODEL_ID": "a, b", "AUTH_TOKEN": "t", "PORT": "9000"}
    parsed = Settings.from_env(env)
    assert parsed.model_ids == ("a", "b")
    assert (parsed.auth_token, parsed.port) == ("t", 9000)
