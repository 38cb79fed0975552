"""The engine: image bytes + Prompt → Prediction, with SAM2ImagePredictor's semantics.

Two steps stay separate: `embed` (image decoding and the image encoder, ~95%
of the work) and `decode` (prompt encoder and mask decoder, cheap). Between
them sit the embedding cache (a repeated image skips `embed`), single-flight
(concurrent requests on one new image encode it once) and, on GPUs, batching
of concurrent encodes.

`SAM2ImagePredictor` keeps one image as mutable hidden state and is not
thread-safe, so no predictor is shared between requests: the image state
lives in an immutable `Embedding`, and every call binds it to its own
short-lived predictor (a shallow copy sharing the model and transforms).
The encoder and the decoder are separate modules of the model with separate
locks, so decoding a cached image never waits for another image's encode.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam2_server.config import Settings
from sam2_server.domain import Prediction, Prompt, sort_best_first
from sam2_server.engine.batching import Batcher
from sam2_server.engine.cache import EmbeddingCache
from sam2_server.engine.images import decode_image
from sam2_server.engine.models import (
    ModelNotFoundError,
    ModelSpec,
    build_model,
    fetch_checkpoint,
    resolve_spec,
    select_device,
)
from sam2_server.errors import OOM_ERROR, ServiceError

logger = logging.getLogger(__name__)

GIB = 1024**3


class Status(str, enum.Enum):
    LOADING = "LOADING"
    OK = "OK"
    ERROR = "ERROR"


@dataclass(frozen=True)
class Embedding:
    """Everything SAM2 needs to decode prompts on one image: the encoder's output.

    Read-only once built: several requests may decode from it at once, and the
    cache may drop it while they do.
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
    encode_lock: threading.Lock = field(default_factory=threading.Lock)
    decode_lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: Batcher[Image.Image, Embedding] | None = None


@dataclass
class Timings:
    """Where one request's time went: logged at debug level, and read by measurement scripts."""

    decode_image_s: float = 0.0
    encode_s: float = 0.0
    decode_s: float = 0.0
    cache_hit: bool = True


class Engine:
    """Loads the served models and answers prompts on images."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = select_device(settings.device)
        on_cuda = self.device.type == "cuda"
        precision = settings.precision
        self.bf16 = precision == "bf16" or (precision == "auto" and on_cuda)
        cache_bytes = settings.cache_bytes
        if cache_bytes is None:
            cache_bytes = _default_cache_bytes(self.device)
        self.cache: EmbeddingCache[Embedding] = EmbeddingCache(cache_bytes)
        batch = settings.encode_batch_size
        self.encode_batch_size = batch if batch is not None else (8 if on_cuda else 1)
        self._models: dict[str, LoadedModel] = {}
        self._status = Status.LOADING
        self.error: str | None = None
        self._counter_lock = threading.Lock()
        self.encoded_images = 0

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
            if self.device.type == "cuda" and self.bf16:
                # TF32 matmuls: the precision autocast already gives up, for free.
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
            for model_id in self.settings.model_ids:
                self._models[model_id] = self._load_one(model_id)
        except Exception as exc:
            self.error = str(exc) or type(exc).__name__
            self._status = Status.ERROR
            if isinstance(exc, ModelNotFoundError):  # the message says it all: one line
                logger.error("model loading failed: %s", self.error)
            else:
                logger.exception("model loading failed: %s", self.error)
            raise
        self._status = Status.OK

    def _load_one(self, model_id: str) -> LoadedModel:
        started = time.perf_counter()
        spec = resolve_spec(model_id, self.settings.model_config)
        checkpoint = fetch_checkpoint(spec)
        model = build_model(spec, checkpoint, self.device)
        if self.settings.compile_encoder:
            # As sam2's own `compile_image_encoder` does; compiled per input shape.
            model.image_encoder.forward = torch.compile(
                model.image_encoder.forward, mode="max-autotune", fullgraph=True, dynamic=False
            )
        loaded = LoadedModel(spec, SAM2ImagePredictor(model))
        if self.encode_batch_size > 1:
            loaded.batcher = Batcher(
                lambda images: self._encode_batch(loaded, model_id, images),
                max_batch=self.encode_batch_size,
                max_wait_s=self.settings.encode_batch_wait_ms / 1000,
                name=f"encode-{model_id}",
            )
        if self.settings.compile_encoder:
            self._warm_up(loaded, model_id)
        logger.info(
            "loaded %s (%s) on %s in %.1f s",
            model_id,
            checkpoint,
            self.device,
            time.perf_counter() - started,
        )
        return loaded

    def _warm_up(self, loaded: LoadedModel, model_id: str) -> None:
        """Compile before the first request rather than during it."""
        image = Image.new("RGB", (64, 64))
        self._encode_one(loaded, model_id, image)

    def _model(self, model_id: str) -> LoadedModel:
        try:
            return self._models[model_id]
        except KeyError:
            raise ServiceError(
                503, f"Model {model_id} is not loaded (status {self.status})."
            ) from None

    # -- the two steps ---------------------------------------------------------------------

    def embed(self, model_id: str, image_bytes: bytes, timings: Timings | None = None) -> Embedding:
        """The image's embedding: from the cache, or decoded and encoded once."""
        loaded = self._model(model_id)
        key = (model_id, hashlib.sha256(image_bytes).hexdigest())

        def compute() -> Embedding:
            t0 = time.perf_counter()
            image = decode_image(image_bytes, max_pixels=self.settings.max_image_pixels)
            t1 = time.perf_counter()
            if loaded.batcher is not None:
                embedding = loaded.batcher(image)
            else:
                embedding = self._encode_one(loaded, model_id, image)
            if timings is not None:
                timings.decode_image_s = t1 - t0
                timings.encode_s = time.perf_counter() - t1
                timings.cache_hit = False
            return embedding

        return self.cache.get_or_compute(key, compute)

    def _encode_one(self, loaded: LoadedModel, model_id: str, image: Image.Image) -> Embedding:
        """SAM2ImagePredictor.set_image on a private predictor."""
        predictor = copy.copy(loaded.predictor)
        with loaded.encode_lock, self._compute_context():
            predictor.set_image(image)
        self._count(1)
        return _embedding_from(predictor, model_id, 0)

    def _encode_batch(
        self, loaded: LoadedModel, model_id: str, images: Sequence[Image.Image]
    ) -> list[Embedding]:
        """SAM2ImagePredictor.set_image_batch over concurrent misses (runs in the batcher)."""
        predictor = copy.copy(loaded.predictor)
        arrays = [np.array(image) for image in images]  # writable copies for torch
        with loaded.encode_lock, self._compute_context():
            predictor.set_image_batch(arrays)
        self._count(len(images))
        # Each embedding gets its own memory (not a view of the batch), so the
        # cache's byte count is what stays alive.
        return [_embedding_from(predictor, model_id, i, own=True) for i in range(len(images))]

    def decode(
        self, embedding: Embedding, prompt: Prompt, timings: Timings | None = None
    ) -> Prediction:
        """Prompt encoder + mask decoder on an embedding (SAM2ImagePredictor.predict)."""
        loaded = self._model(embedding.model_id)
        t0 = time.perf_counter()
        predictor = _bind(loaded.predictor, embedding)
        with loaded.decode_lock, self._compute_context():
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
        timings = timings if timings is not None else Timings()
        result = self.decode(self.embed(model_id, image_bytes, timings), prompt, timings)
        logger.debug(
            "segment on %s: %s, image decode %.3f s, encoder %.3f s, prompt decode %.3f s",
            model_id,
            "cache hit" if timings.cache_hit else "encoded",
            timings.decode_image_s,
            timings.encode_s,
            timings.decode_s,
        )
        return result

    # -- support ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _compute_context(self) -> Iterator[None]:
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
            raise ServiceError(500, OOM_ERROR) from exc

    def _count(self, images: int) -> None:
        with self._counter_lock:
            self.encoded_images += images

    def stats(self) -> dict[str, Any]:
        """Counters for /stats: cache hits and misses, images encoded, batches."""
        batches = [m.batcher for m in self._models.values() if m.batcher is not None]
        return {
            "status": self.status,
            "device": str(self.device),
            "precision": "bf16" if self.bf16 else "fp32",
            "encoded_images": self.encoded_images,
            "encode_batches": sum(b.batches for b in batches) if batches else None,
            "cache": asdict(self.cache.stats()),
        }


def _default_cache_bytes(device: torch.device) -> int:
    """1 GiB of host memory; on a GPU a quarter of its memory, at most 4 GiB, so the
    cache never starves inference on a small card."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return min(4 * GIB, total // 4)
    return 1 * GIB


def _embedding_from(
    predictor: SAM2ImagePredictor, model_id: str, index: int, *, own: bool = False
) -> Embedding:
    """Image `index` of what set_image / set_image_batch left in the predictor."""
    features = predictor._features
    orig_hw = predictor._orig_hw
    assert features is not None
    assert orig_hw is not None

    def pick(tensor: torch.Tensor) -> torch.Tensor:
        part = tensor[index : index + 1]
        return part.clone() if own else part

    return Embedding(
        model_id=model_id,
        image_embed=pick(features["image_embed"]),
        high_res_feats=tuple(pick(f) for f in features["high_res_feats"]),
        orig_hw=(int(orig_hw[index][0]), int(orig_hw[index][1])),
    )


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


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
