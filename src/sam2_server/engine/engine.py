"""The engine: image bytes + Prompt → Prediction, with SAM2ImagePredictor's semantics.

Two steps stay separate so that caching and batching can slot in between:
`embed` (the image encoder, ~95% of the work) and `decode` (prompt encoder and
mask decoder, cheap). `SAM2ImagePredictor` keeps one image as mutable hidden
state and is not thread-safe, so no predictor is shared between requests: the
image state lives in an immutable `Embedding`, and every call binds it to its
own short-lived predictor (a shallow copy sharing the model and transforms).
"""

from __future__ import annotations

import copy
import enum
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam2_server.config import Settings
from sam2_server.domain import Prediction, Prompt, sort_best_first
from sam2_server.engine.images import decode_image
from sam2_server.engine.models import (
    ModelSpec,
    build_model,
    fetch_checkpoint,
    resolve_spec,
    select_device,
)
from sam2_server.errors import OOM_ERROR, ServiceError

logger = logging.getLogger(__name__)


class Status(str, enum.Enum):
    LOADING = "LOADING"
    OK = "OK"
    ERROR = "ERROR"


@dataclass(frozen=True)
class Embedding:
    """Everything SAM2 needs to decode prompts on one image: the encoder's output.

    Treated as read-only once built: several requests may decode from it at once.
    """

    model_id: str
    image_embed: torch.Tensor  # 1 x 256 x 64 x 64
    high_res_feats: tuple[torch.Tensor, ...]  # 1 x 32 x 256 x 256, 1 x 64 x 128 x 128
    orig_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        tensors = (self.image_embed, *self.high_res_feats)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class LoadedModel:
    spec: ModelSpec
    predictor: SAM2ImagePredictor  # a template: copied per call, never given an image
    # The model's weights are shared by every call; torch modules in eval mode
    # are safe to call concurrently, but on one CPU or GPU concurrent forwards only
    # fight for the same cores, so calls are serialised per model.
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Timings:
    """Where the last request's time went; for logs and the latency note."""

    decode_image_s: float = 0.0
    encode_s: float = 0.0
    decode_s: float = 0.0


class Engine:
    """Loads the served models and answers prompts on images."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = select_device(settings.device)
        self._models: dict[str, LoadedModel] = {}
        self._status = Status.LOADING
        self.error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self._status.value

    @property
    def served_model_ids(self) -> tuple[str, ...]:
        return self.settings.model_ids

    @property
    def default_model_id(self) -> str:
        return self.settings.default_model_id

    def load(self) -> None:
        """Load every served model; status goes to OK, or ERROR with a one-line reason."""
        try:
            for model_id in self.settings.model_ids:
                self._models[model_id] = self._load_one(model_id)
        except Exception as exc:
            self.error = str(exc) or type(exc).__name__
            self._status = Status.ERROR
            logger.error("model loading failed: %s", self.error)
            raise
        self._status = Status.OK

    def _load_one(self, model_id: str) -> LoadedModel:
        started = time.perf_counter()
        spec = resolve_spec(model_id, self.settings.model_config)
        checkpoint = fetch_checkpoint(spec)
        model = build_model(spec, checkpoint, self.device)
        logger.info(
            "loaded %s (%s) on %s in %.1f s",
            model_id,
            checkpoint,
            self.device,
            time.perf_counter() - started,
        )
        return LoadedModel(spec, SAM2ImagePredictor(model))

    def _model(self, model_id: str) -> LoadedModel:
        try:
            return self._models[model_id]
        except KeyError:
            raise ServiceError(
                503, f"Model {model_id} is not loaded (status {self.status})."
            ) from None

    # -- the two steps ---------------------------------------------------------------------

    def embed(self, model_id: str, image_bytes: bytes, timings: Timings | None = None) -> Embedding:
        """Decode the upload and run the image encoder (SAM2ImagePredictor.set_image)."""
        loaded = self._model(model_id)
        t0 = time.perf_counter()
        image = decode_image(image_bytes, max_pixels=self.settings.max_image_pixels)
        t1 = time.perf_counter()
        predictor = copy.copy(loaded.predictor)
        with loaded.lock, _oom_guard():
            predictor.set_image(image)
        features = predictor._features
        assert features is not None
        assert predictor._orig_hw is not None
        if timings is not None:
            timings.decode_image_s = t1 - t0
            timings.encode_s = time.perf_counter() - t1
        return Embedding(
            model_id=model_id,
            image_embed=features["image_embed"],
            high_res_feats=tuple(features["high_res_feats"]),
            orig_hw=tuple(predictor._orig_hw[0]),  # type: ignore[arg-type]
        )

    def decode(
        self, embedding: Embedding, prompt: Prompt, timings: Timings | None = None
    ) -> Prediction:
        """Prompt encoder + mask decoder on a computed embedding (SAM2ImagePredictor.predict)."""
        loaded = self._model(embedding.model_id)
        t0 = time.perf_counter()
        predictor = _bind(loaded.predictor, embedding)
        with loaded.lock, _oom_guard():
            masks, scores, logits = predictor.predict(
                point_coords=prompt.point_coords,
                point_labels=prompt.point_labels,
                box=prompt.box,
                mask_input=prompt.mask_input,
                multimask_output=prompt.multimask_output,
                return_logits=prompt.return_logits,
                normalize_coords=prompt.normalize_coords,
            )
        result = sort_best_first(_float32(masks), _float32(scores), _float32(logits))
        if timings is not None:
            timings.decode_s = time.perf_counter() - t0
        return result

    def segment(
        self, model_id: str, image_bytes: bytes, prompt: Prompt, timings: Timings | None = None
    ) -> Prediction:
        return self.decode(self.embed(model_id, image_bytes, timings), prompt, timings)


def _bind(template: SAM2ImagePredictor, embedding: Embedding) -> SAM2ImagePredictor:
    """A predictor whose 'current image' is `embedding`, as if set_image had just run."""
    predictor = copy.copy(template)
    predictor._features = {
        "image_embed": embedding.image_embed,
        "high_res_feats": list(embedding.high_res_feats),
    }
    predictor._orig_hw = [embedding.orig_hw]
    predictor._is_image_set = True
    predictor._is_batch = False
    return predictor


def _float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


class _oom_guard:
    """Turn an accelerator OOM into the contract's 500 and leave the device usable."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if exc is not None and _is_oom(exc):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.error("out of memory: %s", exc)
            raise ServiceError(500, OOM_ERROR) from exc
        return False


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
