"""Which CPU a benchmark's figures came from: machines differ (AVX-512 or AVX2 only,
native bf16 or not), so every bench prints it beside its ratios."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
