"""ENCODER_BACKEND=openvino: same answers as PyTorch, the converted model cached on disk.

On the reduced model at a 256x256 input (the video fixture's): converting it
takes about 10 s on two cores, the full-size 1024 models a minute or more
(bench/encoder_backends.py).
"""

from __future__ import annotations

import io
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("openvino")

from sam2_server.domain import AutomaticParams, Prompt
from sam2_server.engine import Engine, openvino_backend
from sam2_server.engine.compute import _check_openvino
from sam2_server.errors import ConfigError
from tests.conftest import VIDEO_TEST_OVERRIDES, image_bytes
from tests.synthetic import write_checkpoint

LOGITS_ATOL = 1e-4  # max abs difference of any logit, low-res or full-size
PROMPTS = [
    Prompt(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1])),
    Prompt(box=np.array([100.0, 100.0, 500.0, 400.0]), multimask_output=False),
    Prompt(point_coords=np.array([[120.0, 90.0], [400, 250]]), point_labels=np.array([1, 0])),
]
CROPS = AutomaticParams(
    points_per_side=2,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    box_nms_thresh=1.0,
    crop_n_layers=1,
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Every engine here converts into this folder, not the session's HF cache neighbour."""
    folder = tmp_path_factory.mktemp("openvino-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openvino_backend, "default_cache_dir", lambda: folder)
        yield folder


@pytest.fixture(scope="module")
def small_settings(video_settings):
    return video_settings


@pytest.fixture(scope="module")
def engines(small_settings, cache_dir):
    torch_engine = Engine(small_settings)
    ov_engine = Engine(small_settings.with_(encoder_backend="openvino"))
    for engine in (torch_engine, ov_engine):
        engine.load()
    return torch_engine, ov_engine


def test_answers_match_pytorch(engines):
    torch_engine, ov_engine = engines
    model_id = ov_engine.default_model_id
    data = image_bytes("groceries.jpg")
    a, b = torch_engine.embed(model_id, data), ov_engine.embed(model_id, data)
    for x, y in zip(
        (a.image_embed, *a.high_res_feats), (b.image_embed, *b.high_res_feats), strict=True
    ):
        assert x.shape == y.shape
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, x, atol=1e-3, rtol=1e-3)
    for prompt in PROMPTS:
        full = torch_engine.segment(model_id, data, prompt)
        ov = ov_engine.segment(model_id, data, prompt)
        # The documented tolerance (README "Speed"); measured: 4e-7, scores equal, masks 100%.
        assert np.abs(ov.logits - full.logits).max() < LOGITS_ATOL
        assert np.abs(ov.masks - full.masks).max() < LOGITS_ATOL  # full-size logits
        np.testing.assert_allclose(ov.scores, full.scores, rtol=0, atol=1e-5)
        assert ((ov.masks > 0) == (full.masks > 0)).mean() >= 0.9999


def test_the_encoder_is_replaced_and_stats_say_so(engines):
    _, ov_engine = engines
    model = ov_engine.models.images.loaded()[ov_engine.default_model_id].image.predictor.model
    assert isinstance(model.image_encoder, openvino_backend.OpenVinoImageEncoder)
    # The PyTorch encoder's weights are gone; the model's bytes count OpenVINO's.
    assert not any(n.startswith("image_encoder.") for n, _ in model.named_parameters())
    assert (
        ov_engine.models.images.loaded()[ov_engine.default_model_id].nbytes
        > model.image_encoder.nbytes
        > 0
    )
    stats = ov_engine.stats()
    assert stats["encoder_backend"] == "openvino"
    assert stats["precision"] == "fp32"
    assert stats["cpu_features"] is not None


def test_a_batch_encodes_image_by_image(engines):
    """ENCODE_BATCH_SIZE > 1 hands the encoder a batch; the network runs it one by one."""
    _, ov_engine = engines
    model_id = ov_engine.default_model_id
    names = ("groceries.jpg", "truck.jpg")
    singles = [ov_engine.embed(model_id, image_bytes(name)) for name in names]
    pictures = [Image.open(io.BytesIO(image_bytes(name))).convert("RGB") for name in names]
    batched = ov_engine.encoder.encode_batch(
        ov_engine.models.images.loaded()[model_id], model_id, pictures
    )
    for one, many in zip(singles, batched, strict=True):
        torch.testing.assert_close(many.image_embed, one.image_embed, atol=1e-5, rtol=1e-5)


def test_automatic_masks_with_crops_match_pytorch(engines):
    """Crops are encoded through the same replaced encoder; decoding stays PyTorch."""
    data = image_bytes("groceries.jpg")
    answers = []
    for engine in engines:
        info = engine.add_image(engine.default_model_id, data)
        answers.append(engine.automatic_masks(engine.default_model_id, info.image_id, CROPS)[1])
    full, ov = answers
    assert len(ov) == len(full) > 0
    for x, y in zip(full, ov, strict=True):
        assert x.crop_box == y.crop_box
        assert abs(x.predicted_iou - y.predicted_iou) < 1e-3
        assert abs(x.area - y.area) <= max(10, x.area // 1000)


def test_video_keeps_the_pytorch_encoder(engines):
    _, ov_engine = engines
    video = ov_engine.models.video_model(ov_engine.default_model_id)
    assert not isinstance(video.image_encoder, openvino_backend.OpenVinoImageEncoder)


def _counting_convert(monkeypatch):
    calls: list[float] = []
    original = openvino_backend.convert

    def convert(*args, **kwargs):
        calls.append(original(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(openvino_backend, "convert", convert)
    return calls


def test_the_converted_encoder_is_reused_and_replaced_when_the_checkpoint_changes(
    video_model, small_settings, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    monkeypatch.setattr(openvino_backend, "default_cache_dir", lambda: cache)
    calls = _counting_convert(monkeypatch)
    checkpoint = tmp_path / "model.pt"
    shutil.copy(video_model.checkpoint, checkpoint)
    settings = replace(small_settings, model_ids=(str(checkpoint),), encoder_backend="openvino")
    data = image_bytes("truck.jpg")

    def start() -> Engine:
        engine = Engine(settings)
        engine.load()
        return engine

    first = start().embed(str(checkpoint), data).image_embed
    assert len(calls) == 1
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1

    again = start().embed(str(checkpoint), data).image_embed
    assert len(calls) == 1  # second start: compiled from the cache, not converted
    torch.testing.assert_close(again, first, atol=0, rtol=0)

    write_checkpoint(checkpoint, overrides=VIDEO_TEST_OVERRIDES, seed=6)  # new weights
    changed = start().embed(str(checkpoint), data).image_embed
    assert len(calls) == 2
    assert not torch.allclose(changed, first)
    # The old entry is replaced by the new one; no staging folder is left.
    assert len(list(cache.iterdir())) == 1
    assert not (cache / entries[0].name).exists()


def test_openvino_version_is_part_of_the_key(video_model, small_settings):
    key = openvino_backend.cache_key(
        "m", video_model.checkpoint, small_settings.model_config or "", 256
    )
    assert key.digest() != replace(key, openvino_version="0.0.0").digest()
    assert key.digest() != replace(key, image_size=512).digest()
    assert key.digest() == replace(key, model_id="other").digest()  # the content, not the name


def test_refusals_are_one_line(small_settings):
    with pytest.raises(ConfigError, match="set DEVICE=cpu"):
        _check_openvino(small_settings.with_(encoder_backend="openvino"), torch.device("cuda"))
    with pytest.raises(ConfigError, match="COMPILE_ENCODER applies"):
        Engine(small_settings.with_(encoder_backend="openvino", compile_encoder=True))


def test_without_the_package_the_backend_is_refused_in_one_line(small_settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'sam2-server\[openvino\]'"):
        Engine(small_settings.with_(encoder_backend="openvino"))
