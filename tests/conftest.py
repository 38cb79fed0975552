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
- `edgetam_repo` / `hf_edgetam`: EdgeTAM's real architecture (RepViT-M1 through
  transformers), random weights, saved as a Hugging Face repository folder
  (config.json, model.safetensors, the processor's settings) and placed in the
  same cache under the published repo id.

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
# The parity tests compare exact fp32 answers, and PRECISION=auto picks bf16 on a CPU
# with native bfloat16 (some CI machines have AVX512-BF16): server processes the tests
# start get fp32 by name, and in-process engines see a CPU without native bf16 (the
# `cpu_cannot_bf16` fixture below). engine/cpu.py's decision is tested with made-up CPUs.
os.environ["PRECISION"] = "fp32"

import pytest  # noqa: E402

from tests.synthetic import (  # noqa: E402
    REDUCED_OVERRIDES,
    TINY_CONFIG,
    VIDEO_TEST_OVERRIDES,
    write_checkpoint,
    write_config,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True, scope="session")
def cpu_cannot_bf16() -> Iterator[None]:
    """In-process engines decide `auto` as on a CPU without native bf16 (see above)."""
    from dataclasses import replace

    from sam2_server.engine import cpu

    real = cpu.cpu_features()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sam2_server.engine.compute.cpu_features", lambda: replace(real, bf16=False))
        yield


TINY_REPO = "facebook/sam2.1-hiera-tiny"
TINY_FILENAME = "sam2.1_hiera_tiny.pt"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class LocalModel:
    checkpoint: Path
    config: Path  # a YAML file outside the sam2 package


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def reduced_model(tmp_path_factory: pytest.TempPathFactory) -> LocalModel:
    folder = tmp_path_factory.mktemp("reduced")
    config = write_config(folder / "sam2.1_hiera_reduced.yaml", overrides=REDUCED_OVERRIDES)
    checkpoint = write_checkpoint(
        folder / "sam2.1_hiera_reduced.pt", overrides=REDUCED_OVERRIDES, seed=1
    )
    return LocalModel(checkpoint, config)


# Video tests: the reduced model at a 256x256 input (tests/synthetic.py's
# VIDEO_TEST_OVERRIDES, imported from here too), on the bedroom frames.
VIDEO_FRAMES = sorted((DATA / "video-bedroom").glob("*.jpg"))


@pytest.fixture(scope="session")
def video_model(tmp_path_factory: pytest.TempPathFactory) -> LocalModel:
    folder = tmp_path_factory.mktemp("video-model")
    config = write_config(folder / "sam2.1_hiera_video.yaml", overrides=VIDEO_TEST_OVERRIDES)
    checkpoint = write_checkpoint(
        folder / "sam2.1_hiera_video.pt", overrides=VIDEO_TEST_OVERRIDES, seed=5
    )
    return LocalModel(checkpoint, config)


@pytest.fixture(scope="session")
def video_settings(video_model: LocalModel):
    from sam2_server.config import Settings

    return Settings(
        model_ids=(str(video_model.checkpoint),),
        model_config=str(video_model.config),
        device="cpu",
        video_max_sessions=3,
        video_max_frames=8,
    )


@pytest.fixture(scope="session")
def video_engine(video_settings):
    from sam2_server.engine import Engine

    engine = Engine(video_settings)
    engine.load()
    return engine


@pytest.fixture(scope="session")
def video_client(video_settings, video_engine) -> Iterator:
    from fastapi.testclient import TestClient

    from sam2_server.api import create_app

    app = create_app(video_settings, video_engine, load=False)
    with TestClient(app) as test_client:
        yield test_client


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
    staging = write_checkpoint(tmp_path_factory.mktemp("staging") / TINY_FILENAME, seed=2)
    place_in_hf_cache(TINY_REPO, TINY_FILENAME, staging)
    return TINY_REPO


EDGETAM_REPO = "yonigozlan/EdgeTAM-hf"  # the published repository's id (model card)


@pytest.fixture(scope="session")
def edgetam_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight EdgeTAM repository folder, as transformers saves the published one."""
    from tests.synthetic import write_edgetam_repo

    return write_edgetam_repo(tmp_path_factory.mktemp("edgetam") / "EdgeTAM-hf", seed=7)


def place_repository_in_hf_cache(repo_id: str, folder: Path, staging: Path) -> Path:
    """Every file of a repository folder in the cache's layout; the snapshot folder."""
    snapshot = None
    for path in sorted(folder.iterdir()):
        copy = staging / path.name
        shutil.copyfile(path, copy)
        snapshot = place_in_hf_cache(repo_id, path.name, copy).parent
    assert snapshot is not None
    return snapshot


@pytest.fixture(scope="session")
def hf_edgetam(edgetam_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The repo id of the random-weight EdgeTAM in the temporary HF cache."""
    place_repository_in_hf_cache(EDGETAM_REPO, edgetam_repo, tmp_path_factory.mktemp("staging"))
    return EDGETAM_REPO


@pytest.fixture(scope="session")
def edgetam_engine(hf_edgetam: str):
    """An engine serving the EdgeTAM repository by its repo id, offline."""
    from sam2_server.config import Settings
    from sam2_server.engine import Engine

    engine = Engine(Settings(model_ids=(hf_edgetam,), device="cpu"))
    engine.load()
    return engine


@pytest.fixture(scope="session")
def edgetam_openvino(hf_edgetam: str, tmp_path_factory: pytest.TempPathFactory):
    """An engine serving the same EdgeTAM with ENCODER_BACKEND=openvino, its image and
    video models loaded, and the conversions that took (seconds each), into a cache of
    its own."""
    from sam2_server.config import Settings
    from sam2_server.engine import Engine, openvino_backend

    cache = tmp_path_factory.mktemp("openvino-edgetam")
    conversions: list[float] = []
    convert = openvino_backend.convert

    def counted(*args, **kwargs) -> float:
        conversions.append(convert(*args, **kwargs))
        return conversions[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openvino_backend, "default_cache_dir", lambda: cache)
        patch.setattr(openvino_backend, "convert", counted)
        engine = Engine(Settings(model_ids=(hf_edgetam,), device="cpu", encoder_backend="openvino"))
        engine.load()
        engine.models.video_model(hf_edgetam)
    return engine, conversions


@pytest.fixture(scope="session")
def edgetam_reference(edgetam_repo: Path):
    """transformers' own `EdgeTamModel` and `Sam2Processor` on the same folder, as the
    model card loads them (nothing folded, nothing cached): the parity oracle."""
    from transformers import EdgeTamModel, Sam2Processor

    model = EdgeTamModel.from_pretrained(edgetam_repo).eval()
    return model, Sam2Processor.from_pretrained(edgetam_repo)


@pytest.fixture(scope="session")
def edgetam_reference_features(edgetam_reference):
    """The oracle's `get_image_embeddings` of groceries.jpg (the processor's pixels), made
    once per run: the engine's parity tests (tests/engine/test_edgetam.py) and the API's
    (tests/api/test_models.py) both feed it to the oracle, and on CPU it costs an encode."""
    import torch
    from PIL import Image

    model, processor = edgetam_reference
    picture = Image.open(DATA / "groceries.jpg").convert("RGB")
    with torch.no_grad():
        return model.get_image_embeddings(
            processor(images=picture, return_tensors="pt")["pixel_values"]
        )


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
        hydra_overrides_extra=list(REDUCED_OVERRIDES),
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


@pytest.fixture(scope="session")
def video_reference(video_model: LocalModel):
    """The fixed library's answers on the bedroom frames (see tests/video_reference.py)."""
    from tests.video_reference import reference, reference_run

    return reference_run(reference(video_model))
