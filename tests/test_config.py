"""Settings from the environment and flags."""

from __future__ import annotations

import pytest

from sam2_server.cli import _parser
from sam2_server.config import Settings, split_model_ids


def test_speed_settings_from_env():
    settings = Settings.from_env(
        {
            "CACHE_BYTES": "0",
            "PRECISION": "BF16",
            "COMPILE_ENCODER": "yes",
            "ENCODE_BATCH_SIZE": "4",
            "ENCODE_BATCH_WAIT_MS": "2.5",
        }
    )
    assert settings.cache_bytes == 0
    assert settings.precision == "bf16"
    assert settings.compile_encoder is True
    assert (settings.encode_batch_size, settings.encode_batch_wait_ms) == (4, 2.5)
    defaults = Settings.from_env({})
    assert defaults.cache_bytes is None
    assert defaults.precision == "auto"
    assert defaults.encode_batch_size is None


def test_automatic_and_video_bounds_from_env():
    settings = Settings.from_env(
        {
            "MAX_POINTS_PER_SIDE": "16",
            "MAX_CROP_LAYERS": "0",
            "MAX_POINTS_PER_BATCH": "32",
            "MAX_AUTOMATIC_WORK_BYTES": "3221225472",
            "VIDEO_MAX_SESSIONS": "2",
            "VIDEO_MAX_FRAMES": "300",
            "VIDEO_MAX_PIXELS": "2073600",
            "VIDEO_MAX_OBJECTS": "4",
            "VIDEO_IDLE_TIMEOUT": "90.5",
            "VIDEO_MEMORY_BYTES": "1073741824",
        }
    )
    assert (settings.max_points_per_side, settings.max_crop_layers) == (16, 0)
    assert settings.max_points_per_batch == 32
    assert settings.max_automatic_work_bytes == 3 * 2**30
    assert Settings.from_env({}).max_automatic_work_bytes is None  # half of RAM, or the budget
    assert (settings.video_max_sessions, settings.video_max_frames) == (2, 300)
    assert (settings.video_max_pixels, settings.video_max_objects) == (2073600, 4)
    assert settings.video_idle_timeout_s == 90.5
    assert settings.video_memory_bytes == 2**30
    assert Settings.from_env({}).video_memory_bytes is None  # a quarter of RAM, at most 8 GiB


def test_answer_cache_bytes_from_env():
    assert Settings.from_env({}).answer_cache_bytes == 256 * 2**20
    assert Settings.from_env({"ANSWER_CACHE_BYTES": "0"}).answer_cache_bytes == 0  # disabled
    assert Settings.from_env({"ANSWER_CACHE_BYTES": "1048576"}).answer_cache_bytes == 2**20


@pytest.mark.parametrize(
    "env",
    [
        {"PORT": "eighty"},
        {"ANSWER_CACHE_BYTES": "-1"},
        {"ANSWER_CACHE_BYTES": "lots"},
        {"PRECISION": "fp8"},
        {"COMPILE_ENCODER": "maybe"},
        {"ENCODE_BATCH_WAIT_MS": "soon"},
        {"MAX_REQUEST_BYTES": "0"},
        {"CACHE_BYTES": "-1"},
        {"MAX_POINTS_PER_SIDE": "0"},
        {"VIDEO_MAX_SESSIONS": "many"},
        {"VIDEO_IDLE_TIMEOUT": "0"},
        {"VIDEO_MEMORY_BYTES": "-5"},
        {"MAX_AUTOMATIC_WORK_BYTES": "lots"},
        {"AUTOMATIC_TIME_BUDGET": "-1"},
        {"AUTOMATIC_TIME_BUDGET": "soon"},
    ],
)
def test_bad_values_stop_with_the_variable_named(env):
    name = next(iter(env))
    with pytest.raises(SystemExit, match=name):
        Settings.from_env(env)


def test_the_automatic_time_budget():
    assert Settings.from_env({}).automatic_time_budget_s == 300.0
    assert Settings.from_env({"AUTOMATIC_TIME_BUDGET": "42.5"}).automatic_time_budget_s == 42.5
    assert Settings.from_env({"AUTOMATIC_TIME_BUDGET": "0"}).automatic_time_budget_s is None


def test_flags_override_env():
    args = _parser().parse_args(["serve", "--port", "9001", "--model-id", "a,b"])
    settings = Settings.from_env({"PORT": "8000", "MODEL_ID": "c"}).with_(
        port=args.port, model_ids=split_model_ids(args.model_id), host=args.host
    )
    assert settings.port == 9001
    assert settings.model_ids == ("a", "b")
    assert settings.host == "0.0.0.0"


def test_download_without_hub_fails_with_one_clear_line(capsys):
    from sam2_server.cli import main

    assert main(["download", "facebook/sam2-hiera-large"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sam2-server: model 'facebook/sam2-hiera-large'")
    assert "HF_HUB_OFFLINE" in err[-1]


def test_download_of_an_unknown_id_names_the_known_ones(capsys):
    from sam2_server.cli import main

    assert main(["download", "someone/model"]) == 1
    assert "facebook/sam2.1-hiera-tiny" in capsys.readouterr().err


def test_encoder_backend_from_env():
    assert Settings.from_env({}).encoder_backend == "torch"
    assert Settings.from_env({"ENCODER_BACKEND": "OpenVINO"}).encoder_backend == "openvino"
    with pytest.raises(SystemExit, match="ENCODER_BACKEND must be one of torch, openvino"):
        Settings.from_env({"ENCODER_BACKEND": "onnx"})


def test_openvino_backend_refuses_compile_encoder():
    settings = Settings(encoder_backend="openvino", compile_encoder=True)
    with pytest.raises(SystemExit, match="COMPILE_ENCODER applies to ENCODER_BACKEND=torch"):
        settings.validate()
    with pytest.raises(SystemExit, match="ENCODER_BACKEND must be one of"):
        Settings(encoder_backend="onnx").validate()
