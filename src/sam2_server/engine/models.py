"""Model resolution and loading: a `model_id` becomes a model of its family on a device.

A model id is either a Hugging Face repo id that the `sam2` package knows
(`facebook/sam2-hiera-*`, `facebook/sam2.1-hiera-*`), mapped to the package's
config and checkpoint file name exactly as `sam2.build_sam` maps them and
fetched through `huggingface_hub` (so the standard cache, `HF_HOME`,
`HUGGINGFACE_HUB_CACHE` and `HF_HUB_OFFLINE=1` behave as users expect), or a
path to a local checkpoint file with a config: the SAM2 family. Any other
Hugging Face repo id, or a local folder, is a `transformers` repository
(`config.json` + `model.safetensors`, processor files beside them) whose
family is what its own `config.json` says in `model_type` (family.py),
found through the same cache and the same offline rules.

Weights are only trusted once checked (`verify_checkpoint`): a file from the
Hugging Face cache must hash to the SHA-256 its blob is named by, a local zip
checkpoint must pass every member's CRC-32 (torch.load does not check them),
and torch.load itself only ever runs with `weights_only=True`; a safetensors
file (no pickle at all) must be as long as its header says. Every failure is
a `ModelLoadError` whose message is one line saying what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from sam2_server.engine.family import FAMILY_OF_MODEL_TYPE, SAM2
from sam2_server.errors import ConfigError

if TYPE_CHECKING:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

logger = logging.getLogger(__name__)

# Same post-processing `sam2.build_sam.build_sam2` applies by default
# (apply_postprocessing=True): fall back to multi-mask when one mask is unstable.
_POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


_CHUNK = 8 * 1024 * 1024  # big enough that hashing runs at memory speed, small enough to not matter
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")  # LFS blobs; small git files are named by a 40-hex sha1
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6; older files are a bare pickle
_DEVICES = "cpu, cuda, cuda:N, mps"
_verified: set[tuple[str, int, int]] = set()  # (file, size, mtime) that passed verify_checkpoint


# `SAM2ImagePredictor()` runs `torch.jit.script` on its transforms, which calls
# `ast.parse`; CPython 3.11 keeps the AST converter's recursion depth in
# per-interpreter state, so two threads parsing at once can fail with
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905,
# seen here when two automatic-mask requests started together). Every
# construction of a predictor in the server takes this lock.
SCRIPTING_LOCK = threading.Lock()


@contextlib.contextmanager
def scripting() -> Iterator[None]:
    """Where the library builds a predictor: under `SCRIPTING_LOCK`, and without the
    FutureWarning torch 2.14 prints for its `torch.jit.script` (the library's call, not
    ours: a user of the server or the CLI can do nothing about it)."""
    with SCRIPTING_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
        yield


def image_predictor(model: torch.nn.Module, **kwargs: Any) -> SAM2ImagePredictor:
    """`SAM2ImagePredictor(model, **kwargs)`, built under `scripting()`."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with scripting():
        predictor = SAM2ImagePredictor(model, **kwargs)
    fit_feature_sizes(predictor)
    return predictor


def fit_feature_sizes(predictor: SAM2ImagePredictor) -> None:
    """The backbone's feature map sizes for the model's input size, not always 1024's.

    `SAM2ImagePredictor` hard-codes them for a 1024x1024 input (256, 128 and 64
    per side), so a model configured with another `image_size` (which SAM2's
    modules and its video predictor support) fails in `set_image`. They are
    the input size over 4, 8 and 16; for 1024 this changes nothing.
    """
    size = predictor.model.image_size
    predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16,) * 2]


class ModelLoadError(Exception):
    """Any failure to load a model; the message is one line an operator can act on."""


class ModelNotFoundError(ModelLoadError):
    """The model's files are not where we looked. The message says how to get them."""


class CheckpointError(ModelLoadError):
    """The checkpoint is there but cannot be trusted: empty, truncated, corrupted or not weights."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's config and weights come from."""

    model_id: str
    # SAM2: a config name inside the sam2 package, or a YAML file path. Other families:
    # the repository's config.json (a file name in the HF repo, or a local path).
    config: str
    checkpoint: str  # a file name in the HF repo, or a local path
    repo_id: str | None  # None for a local checkpoint or folder
    family: str = SAM2  # family.py: decided here, from the sam2 table or config.json


# A transformers repository's weights: one safetensors file (never a pickle).
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
# The processor's settings, saved beside the weights when there are any.
HF_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def hf_model_table() -> dict[str, tuple[str, str]]:
    """The sam2 package's own id → (config, checkpoint name) table."""
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    return dict(HF_MODEL_ID_TO_FILENAMES)


def resolve_spec(model_id: str, config: str | None = None) -> ModelSpec:
    """Decide how `model_id` is loaded, without touching the disk's weights.

    The network is touched only for a repo id that is neither sam2's nor in the
    Hugging Face cache, to read its config.json (unless HF_HUB_OFFLINE is set).
    """
    table = hf_model_table()
    if model_id in table:
        config_name, filename = table[model_id]
        return ModelSpec(model_id, config or config_name, filename, model_id)
    path = Path(model_id).expanduser()
    if path.is_dir():
        return _folder_spec(model_id, path)
    if path.suffix in {".pt", ".pth", ".ckpt"} or path.exists():
        config = config or _config_for_checkpoint_name(path.name, table)
        if config is None:
            raise ModelNotFoundError(
                f"model {model_id!r}: cannot tell which SAM2 config this checkpoint uses; "
                "set MODEL_CONFIG (or --model-config) to a config name such as "
                "'configs/sam2.1/sam2.1_hiera_t.yaml' or to a YAML file."
            )
        return ModelSpec(model_id, config, str(path), None)
    if _REPO_ID.fullmatch(model_id):
        hub_config = _hub_config(model_id)
        if hub_config is not None:
            family = _family_of(model_id, hub_config)
            return ModelSpec(model_id, HF_CONFIG, HF_WEIGHTS, model_id, family)
    known = ", ".join(sorted(table))
    raise ModelNotFoundError(
        f"model {model_id!r} is neither a known SAM2 repo id ({known}), nor a checkpoint "
        f"file, nor a folder or Hugging Face repository with a {HF_CONFIG} (EdgeTAM: "
        f"`sam2-server download <repo id>` where the hub is reachable)."
    )


def _folder_spec(model_id: str, folder: Path) -> ModelSpec:
    """A local transformers repository: its config.json says which family it is."""
    config = folder / HF_CONFIG
    if not config.is_file():
        raise ModelNotFoundError(
            f"model {model_id!r} is a folder without a {HF_CONFIG}: give a SAM2 checkpoint "
            f"file, or a folder holding a repository's {HF_CONFIG} and {HF_WEIGHTS}."
        )
    family = _family_of(model_id, config)
    return ModelSpec(model_id, str(config), str(folder / HF_WEIGHTS), None, family)


def _hub_config(repo_id: str) -> Path | None:
    """The repository's config.json from the Hugging Face cache (or the hub when online and
    not cached); None when it is in neither."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id=repo_id, filename=HF_CONFIG)
    if isinstance(cached, str):
        return Path(cached)
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=HF_CONFIG))
    except Exception:  # no such repo, no network: "not here", as for weights
        return None


def hf_config(spec: ModelSpec) -> dict[str, Any]:
    """A transformers repository's config.json as a dict: from its folder, or from the
    Hugging Face cache (where `resolve_spec` found it)."""
    if spec.repo_id is None:
        return read_hf_config(Path(spec.config), spec.model_id)
    cached = _hub_config(spec.repo_id)
    if cached is None:
        raise ModelNotFoundError(
            f"model {spec.model_id!r}: its {HF_CONFIG} is not in the Hugging Face cache; "
            f"run `sam2-server download {spec.repo_id}`."
        )
    return read_hf_config(cached, spec.model_id)


def read_hf_config(path: Path, model_id: str) -> dict[str, Any]:
    """A repository's config.json as a dict, or one line saying why it cannot be read."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelNotFoundError(
            f"model {model_id!r}: {path} is not a readable JSON config "
            f"({_first_sentence(str(exc))})."
        ) from None
    if not isinstance(config, dict):
        raise ModelNotFoundError(f"model {model_id!r}: {path} is not a JSON object.")
    return config


def _family_of(model_id: str, config_path: Path) -> str:
    """The family that serves a repository, from its config.json's `model_type`."""
    model_type = read_hf_config(config_path, model_id).get("model_type")
    family = FAMILY_OF_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        served = ", ".join(sorted(FAMILY_OF_MODEL_TYPE))
        raise ModelNotFoundError(
            f"model {model_id!r}: its {HF_CONFIG} says model_type {model_type!r}; this server "
            f"serves SAM2 from Meta's checkpoints (facebook/sam2*, .pt files) and "
            f"repositories of model_type {served}."
        )
    return family


def _config_for_checkpoint_name(name: str, table: dict[str, tuple[str, str]]) -> str | None:
    for config_name, filename in table.values():
        if filename == name:
            return config_name
    return None


def fetch_checkpoint(spec: ModelSpec, *, download: bool = False) -> Path:
    """The local path of the checkpoint, verified.

    A file already in the Hugging Face cache is used without asking the hub
    (a server should start the same with or without network); otherwise, or
    with `download`, `hf_hub_download` fetches it, honouring `HF_HUB_OFFLINE`.
    The file is verified (`verify_checkpoint`) before it is returned, so a
    bad file is refused before the model is built and `sam2-server download`
    notices a damaged cache entry.
    """
    path = _locate_checkpoint(spec, download=download)
    verify_checkpoint(path, spec.repo_id)
    if spec.family != SAM2:
        _check_repository(spec, path, download=download)
    return path


def _check_repository(spec: ModelSpec, weights: Path, *, download: bool) -> None:
    """A transformers repository's other files lie beside its weights (one hub snapshot):
    the config always, the processor's settings when the repository has them."""
    if spec.repo_id is not None and download:
        from huggingface_hub import hf_hub_download

        for name in HF_PROCESSOR_FILES:
            with contextlib.suppress(Exception):  # optional: not every repository has each
                hf_hub_download(repo_id=spec.repo_id, filename=name)
    if not (weights.parent / HF_CONFIG).is_file():
        where = f"the snapshot of {spec.repo_id}" if spec.repo_id else str(weights.parent)
        hint = (
            f"run `sam2-server download {spec.repo_id}`"
            if spec.repo_id
            else "put the repository's files together"
        )
        raise ModelNotFoundError(
            f"model {spec.model_id!r}: {weights.name} has no {HF_CONFIG} beside it in "
            f"{where}; {hint}."
        )


def _locate_checkpoint(spec: ModelSpec, *, download: bool) -> Path:
    if spec.repo_id is None:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"model {spec.model_id!r}: no checkpoint file at {path}.")
        return path

    from huggingface_hub import (
        constants,
        get_hf_file_metadata,
        hf_hub_download,
        hf_hub_url,
        try_to_load_from_cache,
    )

    try:
        if not download:
            cached = try_to_load_from_cache(repo_id=spec.repo_id, filename=spec.checkpoint)
            if isinstance(cached, str):
                return Path(cached)
            if not constants.HF_HUB_OFFLINE:
                # One look at the hub, without its retries: a server starting with no
                # network says so at once, instead of five backed-off tries (about 25 s)
                # before the same answer. `sam2-server download` keeps the hub's retries.
                url = hf_hub_url(repo_id=spec.repo_id, filename=spec.checkpoint)
                get_hf_file_metadata(url, retry_on_errors=False)
        return Path(hf_hub_download(repo_id=spec.repo_id, filename=spec.checkpoint))
    except Exception as exc:  # offline, missing file, network down: all mean "not here"
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        hint = (
            "check the network and the repo id"
            if download
            else f"run `sam2-server download {spec.repo_id}` where the hub is reachable"
        )
        raise ModelNotFoundError(
            f"model {spec.model_id!r}: {spec.checkpoint} is not in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE}{offline} and could not be fetched "
            f"({type(exc).__name__}); {hint}."
        ) from exc


def verify_checkpoint(path: Path, repo_id: str | None = None) -> None:
    """Refuse a checkpoint that is empty, not what the hub served, or internally corrupt.

    torch.load notices neither a changed byte in a tensor nor a zeroed block:
    it would load and serve different answers. So every byte is checked once
    per load, before any model is built: a Hugging Face cache file against the
    SHA-256 its blob is named by (which covers the whole file, so its CRCs are
    not read again), any other zip checkpoint against its members' CRC-32s.
    A legacy (pre-zip) checkpoint carries no checksum and is left to torch.load.

    Cost, one read of the file (measured on a 2-core CPU host, page cache
    warm): SHA-256 about 0.12 s and CRC-32 about 0.08 s per 100 MB, i.e. about
    1.0 s / 0.7 s for a 900 MB hiera-large checkpoint (torch.load of it: 0.3 s).
    """
    remedy = _remedy(path, repo_id)
    stat = path.stat()
    if stat.st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); {remedy}.")
    # The start-up presence check and the load that follows verify the same
    # file: read it once. A file changed since (size or mtime) is read again.
    key = _verified_key(path, stat)
    if key in _verified:
        return
    if path.suffix == ".safetensors":
        _verify_safetensors_length(path, remedy)
    if not _verify_hub_digest(path, remedy):
        _verify_zip_crcs(path, remedy)
    _verified.add(key)


def _verify_safetensors_length(path: Path, remedy: str) -> None:
    """A safetensors file is an 8-byte header length, a JSON header naming each tensor's
    byte range, then the bytes: refuse one whose length is not what its header says
    (truncated, or with bytes appended) before the model is built."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = file.read(length) if 0 < length <= min(size - 8, 100 * 1024 * 1024) else b""
    try:
        tensors = json.loads(header) if header else None
        ends = [
            int(entry["data_offsets"][1])
            for name, entry in (tensors or {}).items()
            if name != "__metadata__"
        ]
    except (ValueError, TypeError, KeyError, IndexError):
        tensors = None
    if not isinstance(tensors, dict):
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a safetensors file (no readable header, "
            f"{size} bytes); {remedy}."
        )
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        raise CheckpointError(
            f"checkpoint {path} is {size} bytes but its header says {expected}: it is "
            f"truncated or modified; {remedy}."
        )


def _verified_key(path: Path, stat: os.stat_result | None = None) -> tuple[str, int, int]:
    stat = stat if stat is not None else path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def checkpoint_sha256(path: Path) -> str:
    """The checkpoint's SHA-256, reading the file only when it is not known already.

    A Hugging Face blob is named by its SHA-256, and `verify_checkpoint`
    compared the two when it verified the blob as it is now (size, mtime).
    """
    blob = _hub_blob(path)
    if blob is not None and _verified_key(path) in _verified:
        return blob.name
    return file_sha256(path)


def _hub_blob(path: Path) -> Path | None:
    """The cache blob behind `path` when it is a Hugging Face LFS file, named by its SHA-256.

    Small non-LFS files are named by a git sha1 instead, and a cache without
    symlinks (Windows) keeps real files under snapshots/: neither is checked.
    """
    blob = path.resolve()
    if blob.parent.name == "blobs" and _SHA256_NAME.fullmatch(blob.name):
        return blob
    return None


def _remedy(path: Path, repo_id: str | None) -> str:
    """What the operator should do about a bad file: for the hub, delete the blob itself.

    Deleting the snapshot link alone is not enough: hf_hub_download re-links
    an existing blob without downloading it again.
    """
    blob = _hub_blob(path)
    if blob is not None and repo_id:
        return f"delete {blob} and run `sam2-server download {repo_id}`"
    return "replace it with a good copy"


def _verify_hub_digest(path: Path, remedy: str) -> bool:
    """Compare a hub blob with the SHA-256 it is named by; False when there is none to compare."""
    blob = _hub_blob(path)
    if blob is None:
        return False
    actual = file_sha256(blob)
    if actual != blob.name:
        raise CheckpointError(
            f"checkpoint {path} does not match its SHA-256 (expected {blob.name[:12]}..., "
            f"got {actual[:12]}...): it is corrupted or modified; {remedy}."
        )
    return True


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in chunks into one reused buffer (a checkpoint can be GBs)."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as file:
        while read := file.readinto(buffer):
            digest.update(view[:read])
    return digest.hexdigest()


def _verify_zip_crcs(path: Path, remedy: str) -> None:
    """Read every member of a zip checkpoint to its end, where `zipfile` checks its CRC-32."""
    with path.open("rb") as file:
        if file.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return  # a legacy pickle checkpoint, or not a checkpoint: torch.load will tell
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint (a zip archive "
            f"without its central directory, {path.stat().st_size} bytes); {remedy}."
        ) from None
    with archive:
        for member in archive.infolist():
            _verify_member(archive, member, path, remedy)


def _verify_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, path: Path, remedy: str
) -> None:
    if member.CRC == 0 and member.file_size:
        # Saved with torch.serialization.set_crc32_options(False): no CRC was recorded.
        return
    try:
        with archive.open(member) as data:
            while data.read(_CHUNK):
                pass
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        problem = "CRC mismatch" if "CRC" in str(exc) else _first_sentence(str(exc))
        raise CheckpointError(
            f"checkpoint {path} is corrupt ({problem} in {member.filename}); {remedy}."
        ) from None


def _load_weights(path: Path, repo_id: str | None = None) -> object:
    """torch.load with `weights_only=True`, its failures turned into one line.

    PyTorch's own message for a file it cannot unpickle advises passing
    weights_only=False, i.e. running arbitrary code from a file that is already
    suspect; that advice is never passed on.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}).") from None
    except MemoryError:
        raise
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError...
        raise CheckpointError(_unloadable(path, exc, _remedy(path, repo_id))) from None


def _unloadable(path: Path, exc: BaseException, remedy: str) -> str:
    texts = [str(e) for e in _chain(exc)]
    for text in texts:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            return (
                f"checkpoint {path} holds a Python object ({found.group(1)}), not only tensors; "
                "only weights are loaded from checkpoints, for safety: save it as "
                "{'model': model.state_dict()}."
            )
    return f"checkpoint {path} is truncated or not a PyTorch checkpoint ({_detail(exc)}); {remedy}."


def _detail(exc: BaseException) -> str:
    """The first useful line of the exception chain that gives no unsafe advice."""
    for error in _chain(exc):
        text = _first_sentence(str(error))
        if text and "weights_only" not in text.lower() and "weights only" not in text.lower():
            return f"{type(error).__name__}: {text}"
    return type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    error: BaseException | None = exc
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _first_sentence(text: str) -> str:
    """One line, one sentence: torch's messages go on for paragraphs."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    return line.split(". ")[0].rstrip(".")[:200]


def load_config(config: str) -> DictConfig:
    """Read a SAM2 config: a name inside the sam2 package or a YAML file.

    Reading the YAML directly (instead of through Hydra's global search path)
    lets a config live outside the package, e.g. a fine-tuned or reduced model.
    """
    path = Path(config).expanduser()
    if not path.is_file():
        import sam2

        path = Path(sam2.__path__[0]) / config
    if not path.is_file():
        raise ModelNotFoundError(
            f"SAM2 config {config!r} is neither a file nor in the sam2 package."
        )
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    for key, value in _POSTPROCESSING.items():
        OmegaConf.update(cfg, f"model.sam_mask_decoder_extra_args.{key}", value, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def build_model(
    spec: ModelSpec,
    checkpoint: Path,
    device: torch.device,
    overrides: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """Instantiate the model from its config and load the weights strictly.

    Mirrors `sam2.build_sam.build_sam2` (same post-processing, strict
    state-dict load, eval mode) but fails with a message a user can act on.
    `overrides` set keys under `model` first, as `build_sam2_video_predictor`
    does to build the video predictor from the same config and weights.
    """
    from hydra.utils import instantiate

    cfg = load_config(spec.config)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, f"model.{key}", value, force_add=True)
    model = instantiate(cfg.model, _recursive_=True)
    state = _load_weights(checkpoint, spec.repo_id)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"model {spec.model_id!r}: {checkpoint} is not a SAM2 checkpoint (no 'model' key)."
        )
    mismatch = (
        f"model {spec.model_id!r}: checkpoint {checkpoint} does not match config {spec.config}"
    )
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelNotFoundError(f"{mismatch} ({first})") from None
    if missing or unexpected:
        raise ModelNotFoundError(
            f"{mismatch} ({len(missing)} missing, {len(unexpected)} unexpected weights, "
            f"e.g. {(missing or unexpected)[0]})."
        )
    built: torch.nn.Module = model.to(device).eval()
    return built


def select_device(requested: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless the operator asked for one.

    A requested device is checked here, at startup: a typo or a missing GPU
    would otherwise surface as a traceback from deep inside the first model
    load. Raises `ConfigError` with one line.
    """
    if requested:
        return _requested_device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _requested_device(requested: str) -> torch.device:
    try:
        device = torch.device(requested.strip())
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"DEVICE={requested!r} is not a torch device ({_DEVICES}).") from None
    if device.type == "cuda":
        _check_cuda(requested, device)
    elif device.type == "mps":
        _check_mps(requested, device)
    elif device.type != "cpu":
        raise ConfigError(f"DEVICE={requested!r} is not supported here ({_DEVICES}).")
    return device


def _check_cuda(requested: str, device: torch.device) -> None:
    if not torch.cuda.is_available():
        raise ConfigError(
            f"DEVICE={requested} but no CUDA GPU is visible (torch.cuda.is_available() is False)."
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"DEVICE={requested} but only {count} CUDA GPU(s) are visible "
            f"(cuda:0 to cuda:{count - 1}); check CUDA_VISIBLE_DEVICES."
        )


def _check_mps(requested: str, device: torch.device) -> None:
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise ConfigError(
            f"DEVICE={requested} but Apple MPS is not available "
            "(torch.backends.mps.is_available() is False)."
        )
    if device.index not in (None, 0):
        raise ConfigError(f"DEVICE={requested} but there is only one MPS device (mps or mps:0).")


def download(model_id: str) -> Path:
    """Fetch a model's checkpoint into the Hugging Face cache (with hub's progress bar);
    a transformers repository's config and processor files come with its weights."""
    spec = resolve_spec(model_id)
    if spec.repo_id is None:
        raise ModelNotFoundError(f"model {model_id!r} is a local checkpoint; nothing to download.")
    return fetch_checkpoint(spec, download=True)
