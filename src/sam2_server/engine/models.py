"""Model resolution and loading: a `model_id` becomes a SAM2 model on a device.

A model id is either a Hugging Face repo id that the `sam2` package knows
(`facebook/sam2-hiera-*`, `facebook/sam2.1-hiera-*`), mapped to the package's
config and checkpoint file name exactly as `sam2.build_sam` maps them and
fetched through `huggingface_hub` (so the standard cache, `HF_HOME`,
`HUGGINGFACE_HUB_CACHE` and `HF_HUB_OFFLINE=1` behave as users expect), or a
path to a local checkpoint file with a config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger(__name__)

# Same post-processing `sam2.build_sam.build_sam2` applies by default
# (apply_postprocessing=True): fall back to multi-mask when one mask is unstable.
_POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


class ModelNotFoundError(Exception):
    """The model's files are not where we looked. The message says how to get them."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's config and weights come from."""

    model_id: str
    config: str  # a config name inside the sam2 package, or a YAML file path
    checkpoint: str  # a file name in the HF repo, or a local path
    repo_id: str | None  # None for a local checkpoint


def hf_model_table() -> dict[str, tuple[str, str]]:
    """The sam2 package's own id → (config, checkpoint name) table."""
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    return dict(HF_MODEL_ID_TO_FILENAMES)


def resolve_spec(model_id: str, config: str | None = None) -> ModelSpec:
    """Decide how `model_id` is loaded, without touching the network or the disk's weights."""
    table = hf_model_table()
    if model_id in table:
        config_name, filename = table[model_id]
        return ModelSpec(model_id, config or config_name, filename, model_id)
    path = Path(model_id).expanduser()
    if path.suffix in {".pt", ".pth", ".ckpt"} or path.exists():
        config = config or _config_for_checkpoint_name(path.name, table)
        if config is None:
            raise ModelNotFoundError(
                f"model {model_id!r}: cannot tell which SAM2 config this checkpoint uses; "
                "set MODEL_CONFIG (or --model-config) to a config name such as "
                "'configs/sam2.1/sam2.1_hiera_t.yaml' or to a YAML file."
            )
        return ModelSpec(model_id, config, str(path), None)
    known = ", ".join(sorted(table))
    raise ModelNotFoundError(
        f"model {model_id!r} is neither a known SAM2 repo id ({known}) nor a checkpoint file."
    )


def _config_for_checkpoint_name(name: str, table: dict[str, tuple[str, str]]) -> str | None:
    for config_name, filename in table.values():
        if filename == name:
            return config_name
    return None


def fetch_checkpoint(spec: ModelSpec, *, download: bool = False) -> Path:
    """The local path of the checkpoint.

    A file already in the Hugging Face cache is used without asking the hub
    (a server should start the same with or without network); otherwise, or
    with `download`, `hf_hub_download` fetches it, honouring `HF_HUB_OFFLINE`.
    """
    if spec.repo_id is None:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"model {spec.model_id!r}: no checkpoint file at {path}.")
        return path

    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    if not download:
        cached = try_to_load_from_cache(repo_id=spec.repo_id, filename=spec.checkpoint)
        if isinstance(cached, str):
            return Path(cached)
    try:
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


def build_model(spec: ModelSpec, checkpoint: Path, device: torch.device) -> torch.nn.Module:
    """Instantiate the model from its config and load the weights strictly.

    Mirrors `sam2.build_sam.build_sam2` (same post-processing, strict
    state-dict load, eval mode) but fails with a message a user can act on.
    """
    from hydra.utils import instantiate

    cfg = load_config(spec.config)
    model = instantiate(cfg.model, _recursive_=True)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ModelNotFoundError(
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
    return model.to(device).eval()


def select_device(requested: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless the operator asked for one."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def download(model_id: str) -> Path:
    """Fetch a model's checkpoint into the Hugging Face cache (with hub's progress bar)."""
    spec = resolve_spec(model_id)
    if spec.repo_id is None:
        raise ModelNotFoundError(f"model {model_id!r} is a local checkpoint; nothing to download.")
    return fetch_checkpoint(spec, download=True)
