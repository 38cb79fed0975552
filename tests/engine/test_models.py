"""Model resolution and loading, through the code a user's checkpoint takes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_server.api.errors import status_of
from sam2_server.config import Settings
from sam2_server.domain import Prompt
from sam2_server.engine import Engine
from sam2_server.engine.models import (
    ModelNotFoundError,
    fetch_checkpoint,
    resolve_spec,
    select_device,
)
from sam2_server.errors import ServiceError
from tests.conftest import TINY_CONFIG, TINY_FILENAME, image_bytes


@pytest.mark.parametrize(
    ("model_id", "config", "filename"),
    [
        ("facebook/sam2-hiera-large", "configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt"),
        ("facebook/sam2-hiera-tiny", "configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt"),
        (
            "facebook/sam2.1-hiera-base-plus",
            "configs/sam2.1/sam2.1_hiera_b+.yaml",
            "sam2.1_hiera_base_plus.pt",
        ),
        (
            "facebook/sam2.1-hiera-small",
            "configs/sam2.1/sam2.1_hiera_s.yaml",
            "sam2.1_hiera_small.pt",
        ),
    ],
)
def test_hf_ids_map_like_sam2(model_id, config, filename):
    spec = resolve_spec(model_id)
    assert (spec.config, spec.checkpoint, spec.repo_id) == (config, filename, model_id)


def test_local_checkpoint_config_from_file_name(tmp_path):
    path = tmp_path / TINY_FILENAME
    path.write_bytes(b"")
    assert resolve_spec(str(path)).config == TINY_CONFIG


def test_local_checkpoint_with_unknown_name_needs_a_config(tmp_path):
    path = tmp_path / "finetuned.pt"
    path.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="MODEL_CONFIG"):
        resolve_spec(str(path))
    assert resolve_spec(str(path), "my.yaml").config == "my.yaml"


def test_unknown_id_lists_known_ones():
    with pytest.raises(ModelNotFoundError, match=r"facebook/sam2\.1-hiera-large"):
        resolve_spec("someone/else")


def test_missing_hf_model_says_which_where_and_how():
    with pytest.raises(ModelNotFoundError) as info:
        fetch_checkpoint(resolve_spec("facebook/sam2-hiera-large"))
    message = str(info.value)
    assert "facebook/sam2-hiera-large" in message
    assert "sam2_hiera_large.pt" in message
    assert "HF_HUB_OFFLINE" in message
    assert "sam2-server download facebook/sam2-hiera-large" in message


def test_hf_id_loads_from_the_cache_offline(hf_tiny):
    path = fetch_checkpoint(resolve_spec(hf_tiny))
    assert path.name == TINY_FILENAME
    assert path.is_file()


def test_engine_reports_error_when_load_fails():
    engine = Engine(Settings(model_ids=("facebook/sam2-hiera-small",), device="cpu"))
    assert engine.status == "LOADING"
    with pytest.raises(ModelNotFoundError):
        engine.load()
    assert engine.status == "ERROR"
    assert "sam2_hiera_small.pt" in (engine.error or "")


def test_checkpoint_that_does_not_match_config(reduced_model):
    engine = Engine(
        Settings(model_ids=(str(reduced_model.checkpoint),), model_config=TINY_CONFIG, device="cpu")
    )
    with pytest.raises(ModelNotFoundError, match="does not match config"):
        engine.load()


def test_cpu_is_fp32(reduced_engine):
    assert select_device() == torch.device("cpu") or torch.cuda.is_available()
    loaded = reduced_engine.models.images.loaded()[reduced_engine.default_model_id]
    model = loaded.image.predictor.model
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_embed_then_decode_equals_segment(reduced_engine):
    data = image_bytes("groceries.jpg")
    prompt = Prompt(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1]))
    embedding = reduced_engine.embed(reduced_engine.default_model_id, data)
    assert embedding.orig_hw == (534, 800)
    assert embedding.nbytes > 0
    first = reduced_engine.decode(embedding, prompt)
    again = reduced_engine.segment(reduced_engine.default_model_id, data, prompt)
    np.testing.assert_array_equal(first.masks, again.masks)
    np.testing.assert_array_equal(first.scores, again.scores)


def test_rgba_grayscale_and_palette_images_decode(reduced_engine):
    prompt = Prompt(point_coords=np.array([[5.0, 5.0]]), point_labels=np.array([1]))
    for mode in ("RGBA", "L", "P", "I;16"):
        buffer = io.BytesIO()
        Image.new(mode, (40, 30)).save(buffer, format="PNG")
        result = reduced_engine.segment(reduced_engine.default_model_id, buffer.getvalue(), prompt)
        assert result.masks.shape == (3, 30, 40)


def test_unloaded_model_is_503(reduced_engine):
    from sam2_server.engine.engine import Embedding

    stray = Embedding("not-served", torch.zeros(1), (), (1, 1))
    with pytest.raises(ServiceError) as info:
        reduced_engine.decode(stray, Prompt())
    assert status_of(info.value) == 503
