"""ENCODER_BACKEND=openvino: an image encoder compiled by OpenVINO for the CPU.

SAM2's (`install`, below) and EdgeTAM's (edgetam.py, through `compile_cached`
and `infer`): the conversion cache, compilation and inference are the same.

The image encoder is ~95% of a CPU request's work (see engine.py), and
OpenVINO's CPU plugin runs it faster than eager PyTorch (fused kernels, its
own threading). Only the encoder moves: `model.image_encoder` is replaced by
a module that runs the compiled network and returns the same dict
(`vision_features`, `vision_pos_enc`, `backbone_fpn`), so everything after it
stays the library's PyTorch code: `forward_image`'s projections, the prompt
encoder and mask decoder, automatic masks (whose crops are encoded through
the same module). Video sessions build their own PyTorch model (video.py),
so they never see this backend.

Converting takes seconds to minutes (tracing the whole Hiera), so the
converted network is kept on disk next to the Hugging Face cache, keyed by
the checkpoint's SHA-256, the OpenVINO version, the config and the input
size: a second start only compiles it, and a changed checkpoint (or an
upgraded OpenVINO) converts again and replaces the model's old entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam2_server.engine.models import checkpoint_sha256, file_sha256
from sam2_server.errors import ConfigError

logger = logging.getLogger(__name__)

FORMAT = 1  # bump when the converted network's inputs or outputs change
_META = "meta.json"
_XML = "encoder.xml"
_BIN = "encoder.bin"


def require_openvino() -> str:
    """OpenVINO's version, or ConfigError (one line) when the package is not installed."""
    try:
        import openvino
    except ImportError:
        raise ConfigError(
            "ENCODER_BACKEND=openvino needs the openvino package: "
            "pip install 'sam2-server[openvino]'."
        ) from None
    version: str = openvino.__version__
    return version


def default_cache_dir() -> Path:
    """`<HF_HUB_CACHE>/../sam2-server-openvino`: beside the weights it is made from."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).parent / "sam2-server-openvino"


@dataclass(frozen=True)
class CacheKey:
    """What the converted network depends on; any change means converting again."""

    model_id: str
    checkpoint_sha256: str
    openvino_version: str
    config: str  # the config's name, or a YAML file's path
    config_sha256: str  # a YAML file's content ("" for a config inside the sam2 package)
    image_size: int

    def digest(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if k != "model_id"}
        text = json.dumps({**fields, "format": FORMAT}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def meta(self) -> dict[str, Any]:
        return {**self.__dict__, "format": FORMAT}


def cache_key(model_id: str, checkpoint: Path, config: str, image_size: int) -> CacheKey:
    config_path = Path(config)
    config_sha = file_sha256(config_path) if config_path.is_file() else ""
    return CacheKey(
        model_id=model_id,
        checkpoint_sha256=checkpoint_sha256(checkpoint),
        openvino_version=require_openvino(),
        config=config,
        config_sha256=config_sha,
        image_size=image_size,
    )


class _EncoderOutputs(torch.nn.Module):
    """The image encoder with its dict flattened to a tuple, which conversion needs."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.encoder(image)
        return (out["vision_features"], *out["vision_pos_enc"], *out["backbone_fpn"])


def convert(network: torch.nn.Module, image_size: int, folder: Path) -> float:
    """Trace and convert `network` (fp32, CPU; a tensor in, a tuple of tensors out) to
    OpenVINO IR in `folder`; the seconds taken."""
    import openvino as ov

    started = time.perf_counter()
    example = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        # Hiera's padding checks become constants for this input size, as meant: the
        # network is traced for one size (the model's) and the predictor only feeds that.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        # OpenVINO traces with torch.jit.trace, which torch 2.14 deprecates (its problem).
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace", FutureWarning)
        converted = ov.convert_model(network.eval(), example_input=example)
    # Weights stay fp32 on disk: precision is the compile step's choice.
    ov.save_model(converted, folder / _XML, compress_to_fp16=False)
    return time.perf_counter() - started


def ensure_converted(
    key: CacheKey, network: torch.nn.Module, cache_dir: Path
) -> tuple[Path, float | None]:
    """The cached IR for `key` (converted now if missing); seconds spent converting, or None.

    Written to a temporary folder and renamed into place, so a start killed
    mid-conversion leaves no half entry (at most a `.converting-*` folder); the
    model id's entries for other keys
    (an older checkpoint or OpenVINO) are removed once the new one is there.
    """
    entry = cache_dir / key.digest()
    if _valid(entry, key):
        return entry, None
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=cache_dir))
    try:
        seconds = convert(network, key.image_size, staging)
        (staging / _META).write_text(json.dumps(key.meta(), indent=1))
        shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(staging, entry)
        except OSError:
            # Another process (a cluster replica) put the same entry in place meanwhile.
            if not _valid(entry, key):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_stale(cache_dir, key)
    return entry, seconds


def _valid(entry: Path, key: CacheKey) -> bool:
    try:
        meta = json.loads((entry / _META).read_text())
    except (OSError, ValueError):
        return False
    # The model id names the entry's owner (for `_remove_stale`), not its content: two ids
    # of one checkpoint share it.
    meta.pop("model_id", None)
    wanted = key.meta()
    wanted.pop("model_id")
    return meta == wanted and (entry / _XML).is_file() and (entry / _BIN).is_file()


def _remove_stale(cache_dir: Path, key: CacheKey) -> None:
    for meta_file in cache_dir.glob(f"*/{_META}"):
        entry = meta_file.parent
        if entry.name == key.digest():
            continue
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("model_id") == key.model_id:
            logger.info("removing %s's stale OpenVINO encoder %s", key.model_id, entry)
            shutil.rmtree(entry, ignore_errors=True)


class OpenVinoImageEncoder(torch.nn.Module):
    """Stands in for SAM2's `ImageEncoder`: same input, same dict out, computed by OpenVINO.

    A module (not a patched method) so that the PyTorch encoder's weights are
    freed once it replaces `model.image_encoder`. It has no parameters; its
    weights live in OpenVINO's memory (`nbytes`). One infer request per call:
    calls from several threads (engine.py serialises them per model anyway)
    never share one. A batch runs image by image; the network has batch 1.
    """

    def __init__(self, compiled: Any, nbytes: int, levels: int) -> None:
        super().__init__()
        self.compiled = compiled
        self.nbytes = nbytes
        self.levels = levels

    def forward(self, sample: torch.Tensor) -> dict[str, Any]:
        per_image = [self._one(sample[i : i + 1]) for i in range(sample.shape[0])]
        outputs = [torch.cat(parts) for parts in zip(*per_image, strict=True)]
        levels = self.levels
        return {
            "vision_features": outputs[0],
            "vision_pos_enc": outputs[1 : 1 + levels],
            "backbone_fpn": outputs[1 + levels :],
        }

    def _one(self, image: torch.Tensor) -> list[torch.Tensor]:
        return infer(self.compiled, image)


def infer(compiled: Any, image: torch.Tensor) -> list[torch.Tensor]:
    """One image (1 x 3 x S x S) through a compiled network: its outputs, in order, as
    tensors that own their memory. One infer request per call, so that calls from
    several threads never share one."""
    array = np.ascontiguousarray(image.detach().to("cpu", torch.float32).numpy())
    request = compiled.create_infer_request()
    result = request.infer({0: array})  # copies out: the tensors own their memory
    return [torch.from_numpy(np.asarray(result[port])) for port in compiled.outputs]


@dataclass(frozen=True)
class LoadReport:
    """How a load went, for the log and the benchmark."""

    entry: Path
    convert_s: float | None  # None: taken from the cache
    compile_s: float
    hash_s: float


def install(
    model: torch.nn.Module,
    model_id: str,
    checkpoint: Path,
    config: str,
    precision: str,
    cache_dir: Path | None = None,
) -> LoadReport:
    """Replace `model.image_encoder` (a SAM2Base on the CPU) by its OpenVINO compilation."""
    image_size = int(model.image_size)  # type: ignore[arg-type]  # SAM2Base's plain int
    t0 = time.perf_counter()
    key = cache_key(model_id, checkpoint, config, image_size)
    hash_s = time.perf_counter() - t0
    encoder = model.image_encoder
    assert isinstance(encoder, torch.nn.Module)
    compiled, report = compile_cached(key, _EncoderOutputs(encoder), precision, cache_dir, hash_s)
    levels = (len(compiled.outputs) - 1) // 2
    model.image_encoder = OpenVinoImageEncoder(compiled, network_bytes(report.entry), levels)
    return report


def compile_cached(
    key: CacheKey,
    network: torch.nn.Module,
    precision: str,
    cache_dir: Path | None = None,
    hash_s: float = 0.0,
) -> tuple[Any, LoadReport]:
    """`network` converted once (cached under `key`) and compiled for this CPU: f32
    unless bf16 is asked for by name, with the server's threads."""
    import openvino as ov

    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    entry, convert_s = ensure_converted(key, network, cache_dir)
    started = time.perf_counter()
    compiled = ov.Core().compile_model(
        str(entry / _XML),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            # The server's threads (torch's, set from OMP_NUM_THREADS or the cores; one
            # per CPU a cluster replica reserves), not OpenVINO's own guess.
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        },
    )
    return compiled, LoadReport(entry, convert_s, time.perf_counter() - started, hash_s)


def network_bytes(entry: Path) -> int:
    """The bytes of a converted network's weights (what its compilation holds)."""
    return (entry / _BIN).stat().st_size
