"""What the CPU can do, and the precision decided from it.

bfloat16 pays on a CPU only where the hardware computes it natively
(AVX512-BF16, AMX, or Arm's BF16 extension). Elsewhere PyTorch and OpenVINO
emulate it through fp32, which is slower than fp32 *and* less accurate, so
`PRECISION=bf16` there is refused at start rather than silently costing both.
The decision is a pure function of the requested precision, the device type
and the flag set, so it is tested with made-up CPUs.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sam2_server.errors import ConfigError

CPUINFO = Path("/proc/cpuinfo")

# Flags (x86 `flags`, Arm `Features`) that mean native bfloat16 arithmetic.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU as /stats reports it: its name and the features the precision depends on."""

    model: str
    avx2: bool
    avx512: bool
    bf16: bool  # native bfloat16 (AVX512-BF16, AMX-BF16 or Arm BF16)
    amx: bool

    @classmethod
    def from_flags(cls, flags: Iterable[str], model: str = "") -> CpuFeatures:
        names = frozenset(flags)
        return cls(
            model=model,
            avx2="avx2" in names,
            avx512="avx512f" in names,
            bf16=bool(names & BF16_FLAGS),
            amx=any(flag.startswith("amx_") for flag in names),
        )


def read_cpuinfo(path: Path = CPUINFO) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", {}) where there is none."""
    try:
        text = path.read_text()
    except OSError:  # not Linux: no flags known, so bf16 counts as not native
        return platform.processor(), frozenset()
    model = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in {"flags", "Features"} and not flags:
            flags = frozenset(value.split())
    return model, flags


def cpu_features() -> CpuFeatures:
    model, flags = read_cpuinfo()
    return CpuFeatures.from_flags(flags, model)


def decide_precision(requested: str, device_type: str, cpu: CpuFeatures | None) -> str:
    """ "fp32" or "bf16" for PRECISION=`requested` on `device_type`; ConfigError if impossible.

    auto: bf16 on CUDA (autocast + TF32) and on a CPU with native bf16, where it
    is the fast choice (1.6x on the encoder; answers within bf16's tolerance,
    bench/precision.py); exact fp32 elsewhere, where emulated bf16 would be
    8x slower. PRECISION=fp32 asks for answers bit-identical to the
    reference anywhere. bf16 on a CPU without native bf16: refused.
    """
    if requested == "auto":
        native = device_type == "cpu" and cpu is not None and cpu.bf16
        return "bf16" if device_type == "cuda" or native else "fp32"
    if requested == "bf16" and device_type == "cpu" and (cpu is None or not cpu.bf16):
        name = f" ({cpu.model})" if cpu is not None and cpu.model else ""
        raise ConfigError(
            f"PRECISION=bf16 needs a CPU with native bfloat16 (avx512_bf16, amx_bf16 or Arm "
            f"bf16); this CPU{name} has none, where bf16 is emulated, slower and less "
            "accurate than fp32: use PRECISION=fp32 or auto."
        )
    return requested
