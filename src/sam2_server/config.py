"""Settings: the one place that reads the environment.

The environment variable names follow Livepeer's runner (`MODEL_ID`,
`AUTH_TOKEN`, `PORT`) so that a container configured for it runs this server
unchanged; CLI flags override them (see `cli.py`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

_T = TypeVar("_T")

DEFAULT_MODEL_ID = "facebook/sam2-hiera-large"  # the Livepeer network's default

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told. Immutable: build a new one with `with_`."""

    # Models served, the first is the default used when a request's model_id is empty.
    model_ids: tuple[str, ...] = (DEFAULT_MODEL_ID,)
    # SAM2 config (a name inside the sam2 package, or a YAML file) for local
    # checkpoints whose file name does not tell it.
    model_config: str | None = None
    device: str | None = None  # None: CUDA, then MPS, then CPU
    auth_token: str | None = None
    host: str = "0.0.0.0"
    port: int = 8000
    # Whole request body. A 1800x1200 JPEG is ~0.3 MB, a PNG of a 24 MP photo ~50 MB.
    max_request_bytes: int = 100 * MIB
    # One non-file form field. A 1x256x256 mask_input written the way the
    # reference prints floats is ~1.5 MB; Starlette's default of 1 MB rejects it.
    max_field_bytes: int = 16 * MIB
    # Decoded image size; a decompression bomb is a small file over this.
    max_image_pixels: int = 40_000_000
    log_level: str = "info"
    # Embedding cache bound; None: 1 GiB on CPU/MPS, on CUDA a quarter of the GPU's memory
    # up to 4 GiB. 0 disables the cache.
    cache_bytes: int | None = None
    # "auto": bf16 autocast + TF32 on CUDA, exact fp32 elsewhere; or "fp32" / "bf16".
    precision: str = "auto"
    compile_encoder: bool = False  # torch.compile the image encoder (CUDA; slow start)
    # Concurrent cache misses encoded in one forward; None: 8 on CUDA, 1 (off) elsewhere.
    encode_batch_size: int | None = None
    encode_batch_wait_ms: float = 5.0

    @property
    def default_model_id(self) -> str:
        return self.model_ids[0]

    def with_(self, **changes: Any) -> Settings:
        """A copy with `changes`; None values are ignored so CLI flags left unset keep the env."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        base = cls()
        model_ids = _split_ids(env.get("MODEL_ID", "")) or base.model_ids
        return cls(
            model_ids=model_ids,
            model_config=env.get("MODEL_CONFIG") or None,
            device=env.get("DEVICE") or None,
            auth_token=env.get("AUTH_TOKEN") or None,
            host=env.get("HOST", base.host),
            port=_int(env, "PORT", base.port),
            max_request_bytes=_int(env, "MAX_REQUEST_BYTES", base.max_request_bytes),
            max_field_bytes=_int(env, "MAX_FIELD_BYTES", base.max_field_bytes),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", base.max_image_pixels),
            log_level=env.get("LOG_LEVEL", base.log_level).lower(),
            cache_bytes=_int(env, "CACHE_BYTES", None, allow_zero=True),
            precision=_choice(env, "PRECISION", ("auto", "fp32", "bf16"), base.precision),
            compile_encoder=_bool(env, "COMPILE_ENCODER", base.compile_encoder),
            encode_batch_size=_int(env, "ENCODE_BATCH_SIZE", None),
            encode_batch_wait_ms=_float(env, "ENCODE_BATCH_WAIT_MS", base.encode_batch_wait_ms),
        )


def _split_ids(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def split_model_ids(value: str | None) -> tuple[str, ...] | None:
    """Parse a comma-separated `--model-id` value; None when not given."""
    if value is None:
        return None
    return _split_ids(value) or None


def _int(env: Mapping[str, str], name: str, default: _T, *, allow_zero: bool = False) -> int | _T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise SystemExit(f"{name} must be positive, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise SystemExit(f"{name} must not be negative, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SystemExit(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw
