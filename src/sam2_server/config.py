"""Settings: the one place that reads the environment.

The environment variable names follow Livepeer's runner (`MODEL_ID`,
`AUTH_TOKEN`, `PORT`) so that a container configured for it runs this server
unchanged; CLI flags override them (see `cli/serve.py`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

_T = TypeVar("_T")

DEFAULT_MODEL_ID = "facebook/sam2-hiera-large"  # the Livepeer network's default

MIB = 1024 * 1024
GIB = 1024 * MIB

# The annotation tools' surfaces (api/labelstudio.py, cvat.py, xanylabeling.py,
# roboflow.py): OPEN_SURFACES names the ones answered without the token.
TOOL_SURFACES = ("labelstudio", "cvat", "xanylabeling", "roboflow")
LABEL_STUDIO_PREANNOTATE = ("none", "automatic")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ENCODER_BACKENDS = ("torch", "openvino")
# Refused at start by Settings.validate and by an Engine built from unchecked settings.
OPENVINO_NOT_COMPILED = (
    "COMPILE_ENCODER applies to ENCODER_BACKEND=torch; OpenVINO compiles the encoder "
    "itself: unset one of them."
)


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
    # "auto": bf16 autocast + TF32 on CUDA, exact fp32 elsewhere; or "fp32" / "bf16"
    # (on a CPU only with native bf16, see engine/cpu.py).
    precision: str = "auto"
    # The image encoder's runtime: "torch" (eager PyTorch) or "openvino" (the CPU only;
    # the `openvino` extra). Prompt decoding, automatic masks and video stay on PyTorch.
    encoder_backend: str = "torch"
    compile_encoder: bool = False  # torch.compile the image encoder (CUDA; slow start)
    # Concurrent cache misses encoded in one forward; None: 8 on CUDA, 1 (off) elsewhere.
    encode_batch_size: int | None = None
    encode_batch_wait_ms: float = 5.0

    # -- limits on work (each a 400 past it, naming the field) --
    # Points per object: the prompt tokens attend to each other, so cost grows
    # quadratically (40,000 points took 82 s); a person clicks a few dozen.
    max_points: int = 256
    # Objects (boxes, or point lists) per request: each one is a full-resolution answer.
    max_objects: int = 64
    # Points over all objects of one request.
    max_total_points: int = 4096
    # The answer's estimated size, from image size, candidates and objects, before any work.
    max_response_bytes: int = 512 * MIB
    # Segment answers' low-res logits kept for `mask_input: {"answer_id", "index"}` (3
    # candidates are 768 KiB), least recently used first past it; 0 keeps none.
    answer_cache_bytes: int = 256 * MIB

    # -- bounded memory under concurrency --
    # Estimated working memory of the requests running at once; None: a quarter
    # of the machine's memory, at most 8 GiB.
    work_memory_bytes: int | None = None
    # Requests waiting for that budget; past it a 503 with Retry-After.
    max_queue: int = 64

    # -- time --
    # A request body that sends nothing for this long is dropped (408).
    body_read_timeout_s: float = 30.0
    # And one that has not arrived whole after this long.
    body_total_timeout_s: float = 300.0
    # On SIGTERM: stop accepting, let work in flight finish for at most this long.
    drain_timeout_s: float = 30.0

    # -- models --
    # Exit (non-zero) when a model fails to load, for orchestrators that restart.
    exit_on_load_error: bool = False
    # Loaded models' weights; past it the least recently used model is unloaded.
    # None: 8 GiB (every SAM2 size fits at once, fp32 large is ~0.9 GB).
    model_memory_bytes: int | None = None

    # -- automatic masks (each a 400 past it): the work grows with the square of
    # points_per_side, and each crop layer multiplies it again --
    max_points_per_side: int = 64
    max_crop_layers: int = 2
    max_points_per_batch: int = 256
    # Grid points over the whole image and every crop: what one request costs in decoder
    # passes (the defaults take 1024; 32 per side with one crop layer halved, 2048).
    max_automatic_points: int = 4096
    # One generation's working memory, which grows with points_per_batch x candidates x
    # pixels (a 12 MP photo at the defaults: about 9 GB); past it a 400 naming the
    # points_per_batch that fits. None: half the machine's memory, or the work budget
    # (WORK_MEMORY_BYTES) if that is larger.
    max_automatic_work_bytes: int | None = None
    # Seconds one generation may take at the speed measured on this server: refused
    # (400, with the estimate) when it would take longer, stopped at twice as long.
    # None (AUTOMATIC_TIME_BUDGET=0): no budget.
    automatic_time_budget_s: float | None = 300.0

    # -- video sessions: each holds its frames (3 MiB each at the model's 1024x1024)
    # and SAM2's memory for every object on every frame tracked --
    video_max_sessions: int = 8  # open at once; past it 503 + Retry-After
    video_max_frames: int = 1000  # per session; past it 413
    video_max_pixels: int = 3840 * 2160  # per frame of the upload; past it 400
    video_max_objects: int = 32  # per session; past it 400
    video_idle_timeout_s: float = 600.0  # a session untouched this long is closed
    # All sessions' frames and state; None: a quarter of the machine's memory, at most 8 GiB.
    video_memory_bytes: int | None = None

    # -- a cluster (`serve --replicas N`), ignored otherwise --
    # Uploads the ingress keeps so any replica can encode a native image_id again.
    cluster_upload_bytes: int = 1 * GIB
    # Requests one engine replica takes at once (Ray Serve's max_ongoing_requests);
    # past it Ray routes elsewhere, even away from the replica holding the image.
    cluster_max_ongoing_requests: int = 8

    # -- the annotation tools' surfaces --
    # Surfaces answered without AUTH_TOKEN (names from TOOL_SURFACES): CVAT's calls to
    # its function dashboard carry no credentials. Every other surface needs the token.
    open_surfaces: tuple[str, ...] = ()
    # Hosts (host or host:port) whose image URLs the server may download (Label Studio
    # tasks, Roboflow's `url` images); the Label Studio host is added to them.
    download_hosts: tuple[str, ...] = ()
    download_max_bytes: int = 50 * MIB
    download_timeout_s: float = 20.0
    # Label Studio's address and a token for its uploads (/data/upload/...); without
    # them, the host and token its /setup call sends.
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    # A /predict without a prompt (batch pre-annotation): "none" answers no regions,
    # "automatic" answers automatic masks.
    label_studio_preannotate: str = "none"

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
        auth_token = env.get("AUTH_TOKEN")
        if auth_token is not None and auth_token.strip() == "":
            # An empty token must not silently mean "no auth": the operator meant one.
            raise SystemExit(
                "AUTH_TOKEN is set but empty; set a token, or unset AUTH_TOKEN to run without auth"
            )
        return cls(
            model_ids=model_ids,
            model_config=env.get("MODEL_CONFIG") or None,
            device=env.get("DEVICE") or None,
            auth_token=auth_token.strip() if auth_token else None,
            host=env.get("HOST", base.host),
            port=_int(env, "PORT", base.port),
            max_request_bytes=_int(env, "MAX_REQUEST_BYTES", base.max_request_bytes),
            max_field_bytes=_int(env, "MAX_FIELD_BYTES", base.max_field_bytes),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", base.max_image_pixels),
            log_level=_choice(env, "LOG_LEVEL", LOG_LEVELS, base.log_level),
            cache_bytes=_int(env, "CACHE_BYTES", None, allow_zero=True),
            precision=_choice(env, "PRECISION", ("auto", "fp32", "bf16"), base.precision),
            encoder_backend=_choice(env, "ENCODER_BACKEND", ENCODER_BACKENDS, base.encoder_backend),
            compile_encoder=_bool(env, "COMPILE_ENCODER", base.compile_encoder),
            encode_batch_size=_int(env, "ENCODE_BATCH_SIZE", None),
            encode_batch_wait_ms=_float(env, "ENCODE_BATCH_WAIT_MS", base.encode_batch_wait_ms),
            max_points=_int(env, "MAX_POINTS", base.max_points),
            max_objects=_int(env, "MAX_OBJECTS", base.max_objects),
            max_total_points=_int(env, "MAX_TOTAL_POINTS", base.max_total_points),
            max_response_bytes=_int(env, "MAX_RESPONSE_BYTES", base.max_response_bytes),
            answer_cache_bytes=_int(
                env, "ANSWER_CACHE_BYTES", base.answer_cache_bytes, allow_zero=True
            ),
            work_memory_bytes=_int(env, "WORK_MEMORY_BYTES", None),
            max_queue=_int(env, "MAX_QUEUE", base.max_queue, allow_zero=True),
            body_read_timeout_s=_float(
                env, "BODY_READ_TIMEOUT", base.body_read_timeout_s, positive=True
            ),
            body_total_timeout_s=_float(
                env, "BODY_TOTAL_TIMEOUT", base.body_total_timeout_s, positive=True
            ),
            drain_timeout_s=_float(env, "DRAIN_TIMEOUT", base.drain_timeout_s),
            exit_on_load_error=_bool(env, "EXIT_ON_LOAD_ERROR", base.exit_on_load_error),
            model_memory_bytes=_int(env, "MODEL_MEMORY_BYTES", None),
            max_points_per_side=_int(env, "MAX_POINTS_PER_SIDE", base.max_points_per_side),
            max_crop_layers=_int(env, "MAX_CROP_LAYERS", base.max_crop_layers, allow_zero=True),
            max_points_per_batch=_int(env, "MAX_POINTS_PER_BATCH", base.max_points_per_batch),
            max_automatic_points=_int(env, "MAX_AUTOMATIC_POINTS", base.max_automatic_points),
            max_automatic_work_bytes=_int(env, "MAX_AUTOMATIC_WORK_BYTES", None),
            automatic_time_budget_s=_float(
                env, "AUTOMATIC_TIME_BUDGET", base.automatic_time_budget_s or 0.0
            )
            or None,
            video_max_sessions=_int(env, "VIDEO_MAX_SESSIONS", base.video_max_sessions),
            video_max_frames=_int(env, "VIDEO_MAX_FRAMES", base.video_max_frames),
            video_max_pixels=_int(env, "VIDEO_MAX_PIXELS", base.video_max_pixels),
            video_max_objects=_int(env, "VIDEO_MAX_OBJECTS", base.video_max_objects),
            video_idle_timeout_s=_float(
                env, "VIDEO_IDLE_TIMEOUT", base.video_idle_timeout_s, positive=True
            ),
            video_memory_bytes=_int(env, "VIDEO_MEMORY_BYTES", None),
            cluster_upload_bytes=_int(
                env, "CLUSTER_UPLOAD_BYTES", base.cluster_upload_bytes, allow_zero=True
            ),
            cluster_max_ongoing_requests=_int(
                env, "CLUSTER_MAX_ONGOING_REQUESTS", base.cluster_max_ongoing_requests
            ),
            open_surfaces=_names(env, "OPEN_SURFACES", TOOL_SURFACES),
            download_hosts=_split_ids(env.get("DOWNLOAD_HOSTS", "")),
            download_max_bytes=_int(env, "DOWNLOAD_MAX_BYTES", base.download_max_bytes),
            download_timeout_s=_float(
                env, "DOWNLOAD_TIMEOUT", base.download_timeout_s, positive=True
            ),
            label_studio_url=(env.get("LABEL_STUDIO_URL") or "").strip().rstrip("/") or None,
            label_studio_api_key=(env.get("LABEL_STUDIO_API_KEY") or "").strip() or None,
            label_studio_preannotate=_choice(
                env,
                "LABEL_STUDIO_PREANNOTATE",
                LABEL_STUDIO_PREANNOTATE,
                base.label_studio_preannotate,
            ),
        )

    def validate(self) -> Settings:
        """Check values that may also come from flags; a bad one is a one-line exit."""
        if self.log_level not in LOG_LEVELS:
            raise SystemExit(
                f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if not 0 < self.port < 65536:
            raise SystemExit(f"port must be between 1 and 65535, got {self.port}")
        if not self.model_ids:
            raise SystemExit("no model to serve: MODEL_ID (or --model-id) is empty")
        if self.encoder_backend not in ENCODER_BACKENDS:
            raise SystemExit(
                f"ENCODER_BACKEND must be one of {', '.join(ENCODER_BACKENDS)}, "
                f"got {self.encoder_backend!r}"
            )
        if self.encoder_backend == "openvino" and self.compile_encoder:
            raise SystemExit(OPENVINO_NOT_COMPILED)
        return self


def _split_ids(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def split_model_ids(value: str | None) -> tuple[str, ...] | None:
    """Parse a comma-separated `--model-id` value; None when not given."""
    if value is None:
        return None
    return _split_ids(value) or None


def configure_logging(settings: Settings) -> None:
    """The server's log lines at LOG_LEVEL: one server, and each cluster replica alike."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # huggingface_hub gives its logger a stderr handler of its own, so each of its
    # warnings was printed twice (bare, then through ours): keep only ours.
    from huggingface_hub.utils import logging as hub_logging

    hub = hub_logging.get_logger()
    for handler in list(hub.handlers):
        hub.removeHandler(handler)


def machine_memory_bytes(fallback: int = 16 * GIB) -> int:
    """The machine's physical memory; `fallback` where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform has these names
        return fallback


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


def _float(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    raw = (env.get(name) or "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise SystemExit(
            f"{name} must be a {'positive' if positive else 'non-negative'} number, got {raw!r}"
        )
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


def _names(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of names from `choices`; an unknown one is an exit, not ignored."""
    names = tuple(part.lower() for part in _split_ids(env.get(name, "")))
    unknown = [part for part in names if part not in choices]
    if unknown:
        raise SystemExit(
            f"{name} names {', '.join(unknown)}; the surfaces are {', '.join(choices)}"
        )
    return names


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = (env.get(name) or "").strip().lower() or default
    if raw not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw
