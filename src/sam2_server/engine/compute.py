"""Where and how the engine computes: the device, the precision, and the context of
every forward (inference mode, bf16 autocast, out-of-memory → the contract's 500).

Decided once at start from the settings and the machine (a CPU's features
decide whether bf16 is allowed there), so that every part of the engine, image,
automatic masks and video alike, computes in the same way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import torch

from sam2_server.config import GIB, OPENVINO_NOT_COMPILED, Settings
from sam2_server.engine.cpu import CpuFeatures, cpu_features, decide_precision
from sam2_server.engine.models import select_device
from sam2_server.errors import OOM_ERROR, ConfigError, ErrorKind, ServiceError

logger = logging.getLogger(__name__)

__all__ = ["Compute"]


class Compute:
    """The device and precision one engine computes with."""

    def __init__(self, settings: Settings) -> None:
        self.device = select_device(settings.device)
        # The CPU's features decide whether bf16 is allowed there (ConfigError if not).
        self.cpu: CpuFeatures | None = cpu_features() if self.device.type == "cpu" else None
        self.bf16 = decide_precision(settings.precision, self.device.type, self.cpu) == "bf16"
        if settings.encoder_backend == "openvino":
            _check_openvino(settings, self.device)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def start(self) -> None:
        """Process-wide switches, set once before the first model loads."""
        if self.on_cuda and self.bf16:
            # TF32 matmuls: the precision autocast already gives up, for free.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Inference mode, bf16 autocast where configured, and OOM → the contract's 500."""
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        try:
            with torch.inference_mode(), autocast:
                yield
        except Exception as exc:
            if not _is_oom(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.error("out of memory: %s", exc)
            raise ServiceError(ErrorKind.INTERNAL, OOM_ERROR) from exc

    def release_memory(self) -> None:
        """Give memory no tensor holds any more back to the card (after an unload)."""
        if self.on_cuda:
            torch.cuda.empty_cache()

    def default_cache_bytes(self) -> int:
        """1 GiB of host memory; on a GPU a quarter of its memory, at most 4 GiB, so the
        cache never starves inference on a small card."""
        if self.on_cuda:
            total = torch.cuda.get_device_properties(self.device).total_memory
            return min(4 * GIB, total // 4)
        return 1 * GIB

    def stats(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "precision": "bf16" if self.bf16 else "fp32",
        }

    def cpu_stats(self) -> dict[str, Any] | None:
        """What the precision was decided on (None off the CPU)."""
        return asdict(self.cpu) if self.cpu is not None else None

    def hardware(self) -> dict[int, dict[str, Any]]:
        """The GPU this engine computes on, keyed by CUDA index, for /hardware/*.

        One entry holds every field of Livepeer's `GPUComputeInfo` and
        `GPUUtilizationInfo` (the HTTP layer picks each shape's fields), as
        plain values so that api/ never touches torch. Only the engine's own
        device is listed: querying other GPUs would create a CUDA context (and
        spend memory) on each. Empty on CPU or MPS, as Livepeer's runner is
        without NVIDIA GPUs. Utilisation needs NVML (`pynvml`); without it
        torch cannot read it and the percentages are 0.
        """
        if not self.on_cuda:
            return {}
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        uuid = getattr(props, "uuid", None)
        return {
            index: {
                # NVML's form, which Livepeer's runner reports: "GPU-<uuid>".
                "id": f"GPU-{uuid}" if uuid is not None else f"cuda:{index}",
                "name": props.name,
                "memory_total": int(total),
                "memory_free": int(free),
                "major": props.major,
                "minor": props.minor,
                "utilization_compute": _nvml_percent(torch.cuda.utilization, index),
                "utilization_memory": _nvml_percent(torch.cuda.memory_usage, index),
            }
        }


def _nvml_percent(read: Callable[[int], int], index: int) -> int:
    """A percentage torch reads through NVML; 0 when NVML is not installed or fails."""
    try:
        return int(read(index))
    except Exception:  # ModuleNotFoundError (no pynvml), NVML errors: not worth a 500
        return 0


def _check_openvino(settings: Settings, device: torch.device) -> None:
    """ENCODER_BACKEND=openvino's requirements, each refused in one line at start."""
    from sam2_server.engine.openvino_backend import require_openvino

    if device.type != "cpu":
        raise ConfigError(
            f"ENCODER_BACKEND=openvino runs the encoder on the CPU, but DEVICE is {device}: "
            "set DEVICE=cpu, or ENCODER_BACKEND=torch."
        )
    if settings.compile_encoder:
        raise ConfigError(OPENVINO_NOT_COMPILED)
    require_openvino()


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
