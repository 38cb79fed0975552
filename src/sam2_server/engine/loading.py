"""Which models are in memory, how they get there, and what a failed load means.

The default model loads at startup, the others on first use; a broken one
makes only itself unavailable (its reason in /health, retried after a while);
the least recently used are unloaded past MODEL_MEMORY_BYTES (the
`ModelRegistry`'s business). A request takes one `LoadedModel` at its start
and uses it to its end, whatever the registry does meanwhile. Video
predictors are the same config and weights built as SAM2VideoPredictor,
loaded on a model's first video session, under the same memory budget.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sam2_server.config import GIB, MIB, Settings
from sam2_server.engine import registry
from sam2_server.engine.compute import Compute
from sam2_server.engine.encoding import LoadedModel
from sam2_server.engine.family import SAM2, VideoPredictor
from sam2_server.engine.models import (
    ModelLoadError,
    ModelSpec,
    build_model,
    fetch_checkpoint,
    hf_config,
    image_predictor,
    load_config,
    resolve_spec,
)
from sam2_server.engine.registry import ModelRegistry, ModelState, one_line
from sam2_server.engine.sam2_family import Sam2Image
from sam2_server.engine.video_predictor import VIDEO_OVERRIDES, FixedVideoPredictor
from sam2_server.errors import ErrorKind, ServiceError, check_cancelled

logger = logging.getLogger(__name__)

__all__ = ["Models", "Status"]


class Status(str, enum.Enum):
    LOADING = "LOADING"
    OK = "OK"
    ERROR = "ERROR"


class Models:
    """The served models' image and video predictors, loaded, failed or unloaded."""

    def __init__(
        self,
        settings: Settings,
        compute: Compute,
        warm_up: Callable[[LoadedModel, str], None],
    ) -> None:
        self.settings = settings
        self.compute = compute
        self._warm_up = warm_up  # a first encode, so that compilation happens before requests
        model_bytes = settings.model_memory_bytes
        self.images: ModelRegistry[LoadedModel] = ModelRegistry(
            settings.model_ids,
            self._load_image_model,
            size_of=lambda loaded: loaded.nbytes,
            max_bytes=model_bytes if model_bytes is not None else 8 * GIB,
            describe=_describe_failure,
            on_loaded=lambda _model_id: self._refresh_error(),
            on_error=self._load_failed,
            on_evict=self._unloaded,
        )
        self.videos: ModelRegistry[VideoPredictor] = ModelRegistry(
            settings.model_ids,
            self._load_video_model,
            size_of=_video_bytes,
            max_bytes=self.images.max_bytes,
            describe=_describe_failure,
            on_error=self._load_failed,
        )
        # One video computation per model at a time (sessions share the predictor).
        self.video_locks = {model_id: threading.Lock() for model_id in settings.model_ids}
        # Called with (model id, one-line reason) for every failed load, at
        # startup or later; the CLI sets it to stop the server when asked to.
        self.on_load_error: Callable[[str, str], None] | None = None
        self.error: str | None = None  # the failures in one line, for /health's 503s
        self._error_lock = threading.Lock()
        self._traits: dict[str, _Traits] = {}  # what describe() learnt of each model's files
        self._traits_error: dict[str, tuple[float, str]] = {}  # (when, why) it was unreadable
        self.started = False  # load() has finished

    @property
    def default_model_id(self) -> str:
        return self.settings.default_model_id

    @property
    def status(self) -> str:
        """LOADING until load() ends; then OK while any served model is loaded or loadable."""
        status = Status.LOADING if not self.started else Status.OK
        if self.started and self.images.all_failed():
            status = Status.ERROR
        value: str = status.value
        return value

    def load(self) -> None:
        """Check that every served model is present, then load the default one.

        Failures are recorded per model (see `unavailable`), logged and passed
        to `on_load_error`; the others keep serving. Raises only when no
        served model can be served at all, with the failures as its message.
        """
        try:
            self.compute.start()
            for model_id in self.settings.model_ids:
                self.images.check(model_id, self._probe)
            if self.images.state(self.default_model_id) is ModelState.NOT_LOADED:
                with contextlib.suppress(ServiceError):  # recorded by the registry
                    self.images.get(self.default_model_id)
        finally:
            self._refresh_error()
            self.started = True
        if self.images.all_failed():
            raise self._total_failure()

    def unavailable(self) -> dict[str, str]:
        """Served models that failed to load (model id → one-line reason), for /health."""
        return self.images.unavailable()

    def image_model(
        self, model_id: str, cancelled: Callable[[], bool] | None = None
    ) -> LoadedModel:
        """The loaded model for one request, loading it if needed (unavailable if it cannot)."""
        self._require_started(model_id)
        return self.images.get(model_id, _before_load(cancelled))

    def video_model(
        self, model_id: str, cancelled: Callable[[], bool] | None = None
    ) -> VideoPredictor:
        """The model's video predictor, loading it on first use (unavailable if it cannot)."""
        self._require_started(model_id)
        traits = self._traits_of(model_id)
        if traits is not None and not traits.video:
            raise ServiceError(
                ErrorKind.BAD_INPUT,
                f"{model_id} is an {traits.family} image model (its config.json is not a "
                f"video model's): open the session with a model that does video "
                f"(GET /v1/models says which).",
            )
        return self.videos.get(model_id, _before_load(cancelled))

    def describe(self) -> list[dict[str, Any]]:
        """Each served model, for GET /v1/models: its family, input size, whether it is
        loaded, and what it does. Read from its config without loading it; a model whose
        files cannot be read says so in `error` (its family and size then null)."""
        described = []
        states = self.images.snapshot()
        for model_id in self.settings.model_ids:
            state = states.get(model_id, {})
            error = state.get("error")
            traits = self._traits_of(model_id)
            if traits is None and error is None and model_id in self._traits_error:
                error = self._traits_error[model_id][1]
            described.append(
                {
                    "model_id": model_id,
                    "default": model_id == self.default_model_id,
                    "family": traits.family if traits else None,
                    "input_size": traits.input_size if traits else None,
                    "state": state.get("state", ModelState.NOT_LOADED.value),
                    "loaded": state.get("state") == ModelState.LOADED.value,
                    "video": traits.video if traits else False,
                    "automatic_masks": traits is not None,
                    "error": error,
                }
            )
        return described

    def _traits_of(self, model_id: str) -> _Traits | None:
        """What a model is, from its config (cached once read); None if it cannot be read."""
        traits = self._traits.get(model_id)
        if traits is not None:
            return traits
        failed = self._traits_error.get(model_id)
        if failed is not None and time.monotonic() - failed[0] < registry.LOAD_RETRY_S:
            return None  # read again after a while, as a failed load is retried
        try:
            spec = resolve_spec(model_id, self.settings.model_config)
            traits = _traits(spec)
        except Exception as exc:  # missing or unreadable files: described, not raised
            self._traits_error[model_id] = (time.monotonic(), _describe_failure(exc))
            return None
        self._traits[model_id] = traits
        self._traits_error.pop(model_id, None)
        return traits

    def stats(self) -> dict[str, Any]:
        return {
            "bytes": self.images.bytes,
            "max_bytes": self.images.max_bytes,
            "loads": self.images.loads,
            "evictions": self.images.evictions,
        }

    # -- loading -----------------------------------------------------------------------------

    def _require_started(self, model_id: str) -> None:
        if not self.started:
            raise ServiceError(
                ErrorKind.UNAVAILABLE,
                f"{model_id} is unavailable: the server is still loading its models.",
                retry_after_s=5,
            )

    def _probe(self, model_id: str) -> None:
        """The cheap part of a load: the config is known and the weights are on disk, intact."""
        fetch_checkpoint(resolve_spec(model_id, self.settings.model_config))

    def _load_image_model(self, model_id: str) -> LoadedModel:
        started = time.perf_counter()
        spec = resolve_spec(model_id, self.settings.model_config)
        checkpoint = fetch_checkpoint(spec)
        if spec.family != SAM2:
            loaded = self._load_family_model(spec, checkpoint)
        else:
            loaded = self._load_sam2_model(spec, checkpoint)
        logger.info(
            "loaded %s (%s, %s, %.0f MB) on %s in %.1f s",
            model_id,
            spec.family,
            checkpoint,
            loaded.nbytes / MIB,
            self.compute.device,
            time.perf_counter() - started,
        )
        return loaded

    def _load_family_model(self, spec: ModelSpec, checkpoint: Path) -> LoadedModel:
        """Another family's model (family.py): today EdgeTAM, through transformers."""
        from sam2_server.engine import edgetam

        settings = self.settings
        if settings.compile_encoder:
            logger.warning(
                "%s: COMPILE_ENCODER applies to SAM2 models; this %s model's encoder runs "
                "in PyTorch (batch norms folded, channels_last) or, with "
                "ENCODER_BACKEND=openvino, on OpenVINO",
                spec.model_id,
                spec.family,
            )
        image = edgetam.load_image_model(
            spec,
            checkpoint,
            self.compute.device,
            backend=settings.encoder_backend,
            precision=self._openvino_precision(),
        )
        return LoadedModel(spec, image, weight_bytes(image.model) + image.cache_bytes)

    def _load_sam2_model(self, spec: ModelSpec, checkpoint: Path) -> LoadedModel:
        model_id = spec.model_id
        model = build_model(spec, checkpoint, self.compute.device)
        encoder_bytes = 0
        if self.settings.encoder_backend == "openvino":
            encoder_bytes = self._install_openvino(model, model_id, checkpoint, spec)
        if self.settings.compile_encoder:
            # As sam2's own `compile_image_encoder` does; compiled per input shape.
            encoder = model.image_encoder
            assert isinstance(encoder, torch.nn.Module)
            encoder.forward = torch.compile(
                encoder.forward, mode="max-autotune", fullgraph=True, dynamic=False
            )
        image = Sam2Image(image_predictor(model))
        loaded = LoadedModel(spec, image, weight_bytes(model) + encoder_bytes)
        if self.settings.compile_encoder:
            self._warm_up(loaded, model_id)
        return loaded

    def _install_openvino(
        self, model: torch.nn.Module, model_id: str, checkpoint: Path, spec: ModelSpec
    ) -> int:
        """Swap the image encoder for its OpenVINO compilation; the bytes its weights take."""
        from sam2_server.engine import openvino_backend

        precision = self._openvino_precision()
        report = openvino_backend.install(model, model_id, checkpoint, spec.config, precision)
        logger.info(
            "%s's image encoder on OpenVINO (%s): %s, checkpoint hashed in %.1f s, "
            "compiled in %.1f s",
            model_id,
            report.entry,
            "cached" if report.convert_s is None else f"converted in {report.convert_s:.1f} s",
            report.hash_s,
            report.compile_s,
        )
        encoder = model.image_encoder
        assert isinstance(encoder, openvino_backend.OpenVinoImageEncoder)
        return encoder.nbytes

    def _openvino_precision(self) -> str:
        """Explicit f32 unless bf16 was asked for by name: `auto`'s bf16 on a native-bf16
        CPU is PyTorch autocast's choice; OpenVINO is chosen for exact-enough speed."""
        return "bf16" if self.settings.precision == "bf16" else "fp32"

    def _load_video_model(self, model_id: str) -> VideoPredictor:
        started = time.perf_counter()
        spec = resolve_spec(model_id, self.settings.model_config)
        model: VideoPredictor
        if spec.family != SAM2:
            from sam2_server.engine import edgetam_video

            checkpoint = fetch_checkpoint(spec)
            model = edgetam_video.load_video_predictor(
                spec,
                checkpoint,
                self.compute.device,
                backend=self.settings.encoder_backend,
                precision=self._openvino_precision(),
            )
        else:
            built = build_model(spec, fetch_checkpoint(spec), self.compute.device, VIDEO_OVERRIDES)
            assert isinstance(built, FixedVideoPredictor)
            model = built
        logger.info(
            "loaded %s's video predictor on %s in %.1f s",
            model_id,
            self.compute.device,
            time.perf_counter() - started,
        )
        return model

    # -- failures and unloads ----------------------------------------------------------------

    def _load_failed(self, model_id: str, reason: str, exc: BaseException) -> None:
        """Every failed load or presence check: one log line, /health's summary, the hook."""
        named = _naming(model_id, reason)
        if isinstance(exc, ModelLoadError):  # the message says it all: one line
            logger.error("model loading failed: %s", named)
        else:
            logger.error("model loading failed: %s", named, exc_info=exc)
        self._refresh_error()
        callback = self.on_load_error
        if callback is not None:
            try:
                callback(model_id, reason)
            except Exception:
                logger.exception("on_load_error failed for %s", model_id)

    def _unloaded(self, model_id: str, nbytes: int) -> None:
        logger.info(
            "unloaded %s (%.0f MB): loaded models' weights past %.0f MB (MODEL_MEMORY_BYTES)",
            model_id,
            nbytes / MIB,
            self.images.max_bytes / MIB,
        )
        # Returns the memory to the card once no request holds the model any more.
        self.compute.release_memory()

    def _refresh_error(self) -> None:
        with self._error_lock:
            failures = self.images.unavailable()
            self.error = "; ".join(_naming(m, r) for m, r in failures.items()) or None

    def _total_failure(self) -> Exception:
        """What load() raises when nothing can be served: the default model's kind of error."""
        message = self.error or "no served model could be loaded"
        kind = self.images.error_type(self.default_model_id)
        if kind is not None and issubclass(kind, ModelLoadError):
            return kind(message)
        return ModelLoadError(message)


@dataclass(frozen=True)
class _Traits:
    """What a served model is, whether loaded or not."""

    family: str
    input_size: int
    video: bool


def _traits(spec: ModelSpec) -> _Traits:
    """What a model is, from its config alone (no weights read): SAM2's YAML, or another
    family's config.json (a video model's when its model_type is edgetam_video)."""
    if spec.family == SAM2:
        size = load_config(spec.config).model.image_size
        return _Traits(spec.family, int(size), video=True)
    raw = hf_config(spec)
    size = (raw.get("prompt_encoder_config") or {}).get("image_size", 1024)
    return _Traits(spec.family, int(size), video=raw.get("model_type") == "edgetam_video")


def _video_bytes(predictor: VideoPredictor) -> int:
    """A video predictor's weights: SAM2's is the network itself, another family's holds one."""
    held: Any = predictor
    return weight_bytes(held if isinstance(held, torch.nn.Module) else held.model)


def weight_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers: what the model memory budget counts."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _before_load(cancelled: Callable[[], bool] | None) -> Callable[[], None] | None:
    """Asked before a load starts: a request whose client left loads nothing."""
    return None if cancelled is None else (lambda: check_cancelled(cancelled))


def _describe_failure(exc: BaseException) -> str:
    """One line: our own load errors are written for operators; others get their type too."""
    return one_line(exc, with_type=not isinstance(exc, ModelLoadError))


def _naming(model_id: str, reason: str) -> str:
    """The reason, prefixed by the model id unless it names it already (models.py's do)."""
    return reason if model_id in reason else f"{model_id}: {reason}"
