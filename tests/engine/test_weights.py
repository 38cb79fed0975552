"""Weights you can trust: damaged checkpoints are refused with one actionable line.

Every case goes through the engine's own path (`resolve_spec`, then
`fetch_checkpoint`, then `build_model`) on copies of the reduced random-weight
checkpoint, some of them laid out in a private Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam2_server.config import Settings
from sam2_server.engine import Engine
from sam2_server.engine.models import (
    CheckpointError,
    ModelLoadError,
    ModelNotFoundError,
    build_model,
    checkpoint_sha256,
    fetch_checkpoint,
    file_sha256,
    resolve_spec,
    select_device,
)
from sam2_server.errors import ConfigError
from tests.conftest import TINY_FILENAME, TINY_REPO, LocalModel, place_in_hf_cache

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def good_bytes(reduced_model: LocalModel) -> bytes:
    return reduced_model.checkpoint.read_bytes()


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty HF cache: the session cache (and its `hf_tiny`) stays untouched."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # read by conftest's place_in_hf_cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read by huggingface_hub
    return cache


def in_hf_cache(tmp_path: Path, data: bytes) -> Path:
    """The reduced weights as the hub would leave `facebook/sam2.1-hiera-tiny`; the blob's path."""
    staging = tmp_path / "staging.pt"
    staging.write_bytes(data)
    snapshot = place_in_hf_cache(TINY_REPO, TINY_FILENAME, staging)
    return snapshot.resolve()


def local_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "finetuned.pt"
    path.write_bytes(data)
    return path


def load(model_id: str, config: Path) -> torch.nn.Module:
    """What `Models._load_image_model` does, minus the predictor."""
    spec = resolve_spec(model_id, str(config))
    return build_model(spec, fetch_checkpoint(spec), CPU)


def refusal(model_id: str, config: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load(model_id, config)
    message = str(info.value)
    assert "\n" not in message
    assert "weights_only" not in message
    assert "weights only" not in message.lower()
    return message


def test_a_start_without_network_fails_at_once(hf_cache, monkeypatch, caplog):
    """No network (a hub that refuses connections on loopback), no cached file: one clear
    error without the hub's five backed-off retries (about 25 s), and no retry warnings."""
    import logging
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard: refused
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}",
    )
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        fetch_checkpoint(resolve_spec(TINY_REPO))
    assert time.monotonic() - started < 5
    assert "could not be fetched" in str(info.value)
    assert f"sam2-server download {TINY_REPO}" in str(info.value)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_the_hubs_warnings_are_printed_once(capsys):
    """huggingface_hub's own stderr handler is dropped: its records go through ours."""
    import logging

    from sam2_server.config import configure_logging

    configure_logging(Settings())
    logging.getLogger("huggingface_hub.test").warning("once")
    assert capsys.readouterr().err.count("once") <= 1
    assert logging.getLogger("huggingface_hub").handlers == []


def test_error_hierarchy():
    assert issubclass(ModelNotFoundError, ModelLoadError)
    assert issubclass(CheckpointError, ModelLoadError)
    assert not issubclass(CheckpointError, ModelNotFoundError)


# -- the Hugging Face cache: SHA-256 of the blob ----------------------------------------------


def test_untouched_hub_checkpoint_loads(hf_cache, tmp_path, reduced_model, good_bytes):
    in_hf_cache(tmp_path, good_bytes)
    model = load(TINY_REPO, reduced_model.config)
    assert not model.training


def test_a_verified_hub_blob_is_not_hashed_again(
    hf_cache, tmp_path, reduced_model, good_bytes, monkeypatch
):
    """Its name is the SHA-256 just checked; a local file, or a blob changed since, is read."""
    import sam2_server.engine.models as models

    blob = in_hf_cache(tmp_path, good_bytes)
    local = local_file(tmp_path, good_bytes)
    expected = file_sha256(local)
    fetch_checkpoint(resolve_spec(TINY_REPO, str(reduced_model.config)))  # verifies the blob
    reads: list[Path] = []
    monkeypatch.setattr(models, "file_sha256", lambda path: reads.append(path) or expected)
    assert checkpoint_sha256(blob) == blob.name == expected
    assert reads == []
    assert checkpoint_sha256(local) == expected
    assert reads == [local]
    blob.write_bytes(good_bytes + b"\0")  # changed after it was verified
    checkpoint_sha256(blob)
    assert reads == [local, blob]


def test_hub_blob_with_one_byte_changed_is_refused(hf_cache, tmp_path, reduced_model, good_bytes):
    blob = in_hf_cache(tmp_path, good_bytes)
    data = bytearray(good_bytes)
    data[len(data) // 2] ^= 0x01  # inside some tensor: torch.load alone would not notice
    blob.write_bytes(bytes(data))

    message = refusal(TINY_REPO, reduced_model.config)
    assert TINY_FILENAME in message
    assert "SHA-256" in message
    assert f"expected {blob.name[:12]}" in message
    assert "corrupted or modified" in message
    assert f"delete {blob}" in message
    assert f"sam2-server download {TINY_REPO}" in message


def test_empty_hub_blob_says_empty(hf_cache, tmp_path, reduced_model):
    blob = in_hf_cache(tmp_path, b"")
    message = refusal(TINY_REPO, reduced_model.config)
    assert "is empty (0 bytes)" in message
    assert f"delete {blob}" in message


# -- any checkpoint: empty, truncated, not a checkpoint, corrupt ----------------------------


def test_empty_checkpoint(tmp_path, reduced_model):
    path = local_file(tmp_path, b"")
    message = refusal(str(path), reduced_model.config)
    assert f"{path} is empty (0 bytes)" in message


def test_truncated_checkpoint(tmp_path, reduced_model, good_bytes):
    path = local_file(tmp_path, good_bytes[: len(good_bytes) // 2])
    message = refusal(str(path), reduced_model.config)
    assert f"{path} is truncated or not a PyTorch checkpoint" in message


def test_garbage_is_not_a_checkpoint(tmp_path, reduced_model):
    # torch.load's own message for this advises weights_only=False; it must not reach users.
    garbage = bytes(torch.randint(0, 256, (100_000,), generator=torch.Generator().manual_seed(3)))
    path = local_file(tmp_path, garbage)
    message = refusal(str(path), reduced_model.config)
    assert f"{path} is truncated or not a PyTorch checkpoint" in message


def test_text_is_not_a_checkpoint(tmp_path, reduced_model):
    path = local_file(tmp_path, b"version https://git-lfs.github.com/spec/v1\n")
    assert "not a PyTorch checkpoint" in refusal(str(path), reduced_model.config)


def test_block_of_zeros_in_the_middle_is_caught_by_crc(tmp_path, reduced_model, good_bytes):
    middle = len(good_bytes) // 2
    zeroed = good_bytes[:middle] + bytes(4096) + good_bytes[middle + 4096 :]
    path = local_file(tmp_path, zeroed)
    message = refusal(str(path), reduced_model.config)
    assert f"{path} is corrupt (CRC mismatch in " in message


def test_python_objects_are_not_unpickled(tmp_path, reduced_model):
    path = tmp_path / "with_objects.pt"
    torch.save({"model": {}, "where": Path("/tmp")}, path)
    message = refusal(str(path), reduced_model.config)
    assert "holds a Python object" in message
    assert "pathlib" in message


def test_checkpoint_without_model_key(tmp_path, reduced_model):
    path = tmp_path / "bare.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    assert "no 'model' key" in refusal(str(path), reduced_model.config)


# -- valid checkpoints without CRCs still load ----------------------------------------------


def test_legacy_pickle_checkpoint_loads(tmp_path, reduced_model):
    """Pre-1.6 format: no zip, no CRCs, but weights_only=True reads it."""
    state = torch.load(reduced_model.checkpoint, map_location="cpu", weights_only=True)
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert not load(str(path), reduced_model.config).training


def test_zip_saved_without_crcs_loads(tmp_path, reduced_model):
    state = torch.load(reduced_model.checkpoint, map_location="cpu", weights_only=True)
    path = tmp_path / "nocrc.pt"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert not load(str(path), reduced_model.config).training


def test_engine_reports_a_corrupt_checkpoint(tmp_path, reduced_model, good_bytes):
    middle = len(good_bytes) // 2
    path = local_file(tmp_path, good_bytes[:middle] + bytes(4096) + good_bytes[middle + 4096 :])
    engine = Engine(
        Settings(model_ids=(str(path),), model_config=str(reduced_model.config), device="cpu")
    )
    with pytest.raises(ModelLoadError):
        engine.load()
    assert engine.status == "ERROR"
    assert "CRC mismatch" in (engine.error or "")


# -- DEVICE -----------------------------------------------------------------------------------


def test_cpu_device_is_accepted():
    assert select_device("cpu") == CPU


@pytest.mark.parametrize("requested", ["banana", "cuda:x", "gpu"])
def test_device_that_is_not_a_torch_device(requested):
    with pytest.raises(ConfigError) as info:
        select_device(requested)
    assert str(info.value) == (
        f"DEVICE={requested!r} is not a torch device (cpu, cuda, cuda:N, mps)."
    )


def test_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        select_device("cuda")
    assert str(info.value) == (
        "DEVICE=cuda but no CUDA GPU is visible (torch.cuda.is_available() is False)."
    )


def test_cuda_index_beyond_the_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"DEVICE=cuda:7 but only 1 CUDA GPU"):
        select_device("cuda:7")
    assert select_device("cuda:0") == torch.device("cuda:0")


def test_mps_where_unavailable(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"DEVICE=mps but Apple MPS is not available"):
        select_device("mps")


def test_other_torch_devices_are_refused():
    with pytest.raises(ConfigError, match="not supported"):
        select_device("meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_device_count():
    beyond = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ConfigError, match=f"DEVICE={beyond} but only"):
        select_device(beyond)
    assert select_device("cuda").type == "cuda"


def test_device_messages_are_single_lines(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for requested in ("banana", "cuda", "cuda:3", "meta"):
        with pytest.raises(ConfigError) as info:
            select_device(requested)
        assert "\n" not in str(info.value)
