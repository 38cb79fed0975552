"""Shared fixtures: seeded random-weight SAM2 checkpoints, made from the sam2
package's own configs, saved as real checkpoint files and loaded through the
same code paths a user's checkpoint takes.

- `reduced_model`: the package's hiera-tiny config with a much thinner image
  encoder (about 10x faster on CPU), saved as a YAML file plus a local `.pt`.
  Most parity tests use it: the server loads it as "local checkpoint + config".
- `hf_tiny`: the real `facebook/sam2.1-hiera-tiny` architecture, random weights,
  placed in a temporary Hugging Face cache exactly as `hf_hub_download` leaves
  files (blobs, snapshots, refs), so it resolves by repo id with
  `HF_HUB_OFFLINE=1`.

Nothing here touches the network: the cache is a temporary folder and the hub
is switched off before huggingface_hub is first imported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_HF_HOME = Path(tempfile.mkdtemp(prefix="sam2-server-hf-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_HF_HOME)
os.environ["HF_HUB_CACHE"] = str(_HF_HOME / "hub")
os.environ["HUGGINGFACE_HUB_CACHE"] = str(_HF_HOME / "hub")
os.environ.pop("AUTH_TOKEN", None)
os.environ.pop("MODEL_ID", None)

import pytest  # noqa: E402

DATA = Path(__file__).parent / "data"
TINY_REPO = "facebook/sam2.1-hiera-tiny"
TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TINY_FILENAME = "sam2.1_hiera_tiny.pt"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"

# A thinner Hiera trunk on the package's tiny config: same decoder, same 1024
# input and feature map sizes (SAM2ImagePredictor assumes them), ~10x cheaper.
REDUCED_OVERRIDES = [
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.memory_attention.num_layers=1",
]


@dataclass(frozen=True)
class LocalModel:
    checkpoint: Path
    config: Path  # a YAML file outside the sam2 package


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HF_HOME, ignore_errors=True)


def _random_state_dict(config_name: str, overrides: list[str], seed: int) -> dict:
    import sam2  # noqa: F401  (initialises Hydra's search path on the package's configs)
    import torch
    from hydra import compose
    from hydra.utils import instantiate

    cfg = compose(config_name=config_name, overrides=overrides)
    torch.manual_seed(seed)
    model = instantiate(cfg.model, _recursive_=True)
    # Default init leaves some embeddings at zero; give every weight a seeded
    # random value so that no test passes because something is all zeros.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.abs().sum() == 0:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return {"model": model.state_dict()}


@pytest.fixture(scope="session")
def reduced_model(tmp_path_factory: pytest.TempPathFactory) -> LocalModel:
    import sam2  # noqa: F401
    import torch
    from hydra import compose
    from omegaconf import OmegaConf

    folder = tmp_path_factory.mktemp("reduced")
    config = folder / "sam2.1_hiera_reduced.yaml"
    OmegaConf.save(compose(config_name=TINY_CONFIG, overrides=REDUCED_OVERRIDES), config)
    checkpoint = folder / "sam2.1_hiera_reduced.pt"
    torch.save(_random_state_dict(TINY_CONFIG, REDUCED_OVERRIDES, seed=1), checkpoint)
    return LocalModel(checkpoint, config)


def place_in_hf_cache(repo_id: str, filename: str, payload: Path) -> Path:
    """Lay out a file as hf_hub_download does: blobs/<sha256>, a snapshot link, refs/main."""
    repo = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo_id.replace('/', '--')}"
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    blob = repo / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(payload, blob)
    snapshot = repo / "snapshots" / FAKE_COMMIT / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    return snapshot


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The repo id of a random-weight hiera-tiny in the temporary HF cache."""
    import torch

    staging = tmp_path_factory.mktemp("staging") / TINY_FILENAME
    torch.save(_random_state_dict(TINY_CONFIG, [], seed=2), staging)
    place_in_hf_cache(TINY_REPO, TINY_FILENAME, staging)
    return TINY_REPO


@pytest.fixture(scope="session")
def reduced_settings(reduced_model: LocalModel):
    from sam2_server.config import Settings

    return Settings(
        model_ids=(str(reduced_model.checkpoint),),
        model_config=str(reduced_model.config),
        device="cpu",
    )


@pytest.fixture(scope="session")
def reduced_engine(reduced_settings):
    from sam2_server.engine import Engine

    engine = Engine(reduced_settings)
    engine.load()
    return engine


@pytest.fixture(scope="session")
def reference_predictor(reduced_model: LocalModel):
    """SAM2's own builder and predictor on the same checkpoint: the parity oracle."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = build_sam2(
        TINY_CONFIG,
        str(reduced_model.checkpoint),
        device="cpu",
        hydra_overrides_extra=REDUCED_OVERRIDES,
    )
    return SAM2ImagePredictor(model)


@pytest.fixture(scope="session")
def client(reduced_settings, reduced_engine) -> Iterator:
    from fastapi.testclient import TestClient

    from sam2_server.api import create_app

    app = create_app(reduced_settings, reduced_engine, load=False)
    with TestClient(app) as test_client:
        yield test_client


def image_bytes(name: str = "groceries.jpg") -> bytes:
    return (DATA / name).read_bytes()
