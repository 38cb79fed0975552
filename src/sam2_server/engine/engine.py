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

Which models are in memory is the `ModelRegistry`'s business (see
registry.py): the default model loads at startup, the others on first use,
a broken one makes only itself unavailable, and the least recently used are
unloaded past MODEL_MEMORY_BYTES. A request takes one `LoadedModel` at its
start and uses it to its end, whatever the registry does meanwhile. Cached
embeddings outlive their model's unloading: same model id, same weights.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam2_server.config import OPENVINO_NOT_COMPILED, Settings
from sam2_server.domain import (
    AutomaticParams,
    ImageInfo,
    MaskRecord,
    Prediction,
    Prompt,
    Timings,
    sort_best_first,
)
from sam2_server.engine.automatic import AutomaticHooks, generate_masks, warnings_for
from sam2_server.engine.batching import Batcher
from sam2_server.engine.cache import EmbeddingCache
from sam2_server.engine.cpu import CpuFeatures, cpu_features, decide_precision
from sam2_server.engine.models import (
    ModelLoadError,
    ModelSpec,
    build_model,
    fetch_checkpoint,
    image_predictor,
    resolve_spec,
    select_device,
)
from sam2_server.engine.registry import ModelRegistry, ModelState, one_line
from sam2_server.engine.video import VIDEO_OVERRIDES, FixedVideoPredictor, VideoSessions
from sam2_server.errors import OOM_ERROR, Cancelled, ConfigError, ServiceError, image_not_cached
from sam2_server.images import decode_image, probe_image

logger = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2

__all__ = ["Embedding", "Engine", "LoadedModel", "Status", "Timings"]


class Status(str, enum.Enum):
    LOADING = "LOADING"
    OK = "OK"
    ERROR = "ERROR"


@dataclass(frozen=True)
class Embedding:
    """Everything SAM2 needs to decode prompts on one image: the encoder's output.

    Read-only once built: several requests may decode from it at once, and the
    cache may drop it while they do. It names its model but holds no
    reference to it, so the cache never keeps an unloaded model alive.
    """

    model_id: str
    image_embed: torch.Tensor  # 1 x 256 x 64 x 64
    high_res_feats: tuple[torch.Tensor, ...]  # 1 x 32 x 256 x 256, 1 x 64 x 128 x 128
    orig_hw: tuple[int, int]
    # The upload the embedding was computed from: automatic masks with crops
    # encode parts of the image again, long after the request that sent it.
    image_bytes: bytes = b""

    @property
    def nbytes(self) -> int:
        tensors = (self.image_embed, *self.high_res_feats)
        return sum(t.numel() * t.element_size() for t in tensors) + len(self.image_bytes)


@dataclass
class LoadedModel:
    spec: ModelSpec
    predictor: SAM2ImagePredictor  # a template: copied per call, never given an image
    nbytes: int  # parameters and buffers: what the model memory budget counts
    encode_lock: threading.Lock = field(default_factory=threading.Lock)
    decode_lock: threading.Lock = field(default_factory=threading.Lock)


class _EncodeJob:
    """One image for the batcher, and where its outcome goes.

    The batcher's thread keeps its last batch referenced while it waits for the
    next, so the caller empties the job once done with it: otherwise an
    unloaded model (or an evicted embedding) would stay pinned in memory.
    """

    __slots__ = ("embedding", "error", "image", "loaded", "model_id")

    def __init__(self, loaded: LoadedModel, model_id: str, image: Image.Image) -> None:
        self.loaded: LoadedModel | None = loaded
        self.model_id = model_id
        self.image: Image.Image | None = image
        self.embedding: Embedding | None = None
        self.error: BaseException | None = None

    def clear(self) -> None:
        self.loaded = self.image = self.embedding = self.error = None


class Engine:
    """Loads the served models and answers prompts on images."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = select_device(settings.device)
        on_cuda = self.device.type == "cuda"
        # The CPU's features decide whether bf16 is allowed there (ConfigError if not).
        self.cpu: CpuFeatures | None = cpu_features() if self.device.type == "cpu" else None
        self.bf16 = decide_precision(settings.precision, self.device.type, self.cpu) == "bf16"
        self.encoder_backend = settings.encoder_backend
        if self.encoder_backend == "openvino":
            _check_openvino(settings, self.device)
        cache_bytes = settings.cache_bytes
        if cache_bytes is None:
            cache_bytes = _default_cache_bytes(self.device)
        self.cache: EmbeddingCache[Embedding] = EmbeddingCache(cache_bytes)
        batch = settings.encode_batch_size
        self.encode_batch_size = batch if batch is not None else (8 if on_cuda else 1)
        model_bytes = settings.model_memory_bytes
        self._registry: ModelRegistry[LoadedModel] = ModelRegistry(
            settings.model_ids,
            self._load_one,
            size_of=lambda loaded: loaded.nbytes,
            max_bytes=model_bytes if model_bytes is not None else 8 * GIB,
            describe=_describe_failure,
            on_loaded=lambda _model_id: self._refresh_error(),
            on_error=self._load_failed,
            on_evict=self._unloaded,
        )
        # Called with (model id, one-line reason) for every failed load, at
        # startup or later; the CLI sets it to stop the server when asked to.
        self.on_load_error: Callable[[str, str], None] | None = None
        self.error: str | None = None  # the failures in one line, for /health's 503s
        self._error_lock = threading.Lock()
        self._started = False  # load() has finished
        # One batcher per model id, not per load: a batcher's thread never ends,
        # and jobs carry the model they run on, so an unloaded model is not pinned.
        self._batchers: dict[str, Batcher[_EncodeJob, _EncodeJob]] = {}
        self._batchers_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self.encoded_images = 0
        self._hits_by_id = 0  # native prompts on an image named by id
        # Where an upload named by id can be had again when its embedding is not
        # here: the cluster's upload store (cluster/), since a replica may be asked
        # about an image another replica encoded. None: a 404 once it is gone.
        self.fetch_upload: Callable[[str], bytes | None] | None = None
        # Video predictors: the same config and weights built as SAM2VideoPredictor,
        # loaded on a model's first video session, under the same memory budget.
        self._video_registry: ModelRegistry[FixedVideoPredictor] = ModelRegistry(
            settings.model_ids,
            self._load_video_one,
            size_of=_weight_bytes,
            max_bytes=self._registry.max_bytes,
            describe=_describe_failure,
            on_error=self._load_failed,
        )
        self._video_locks = {model_id: threading.Lock() for model_id in settings.model_ids}
        self.videos = VideoSessions(
            settings,
            self._video_predictor,
            self._compute_context,
            self._video_locks.__getitem__,
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """LOADING until load() ends; then OK while any served model is loaded or loadable."""
        if not self._started:
            return Status.LOADING.value
        return (Status.ERROR if self._registry.all_failed() else Status.OK).value

    @property
    def served_model_ids(self) -> tuple[str, ...]:
        return self.settings.model_ids

    @property
    def default_model_id(self) -> str:
        return self.settings.default_model_id

    def load(self) -> None:
        """Check that every served model is present, then load the default one.

        Failures are recorded per model (see `unavailable`), logged and passed
        to `on_load_error`; the others keep serving. Raises only when no
        served model can be served at all, with the failures as its message.
        """
        try:
            if self.device.type == "cuda" and self.bf16:
                # TF32 matmuls: the precision autocast already gives up, for free.
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
            for model_id in self.served_model_ids:
                self._registry.check(model_id, self._probe)
            if self._registry.state(self.default_model_id) is ModelState.NOT_LOADED:
                with contextlib.suppress(ServiceError):  # recorded by the registry
                    self._registry.get(self.default_model_id)
        finally:
            self._refresh_error()
            self._started = True
        if self._registry.all_failed():
            raise self._total_failure()

    def unavailable(self) -> dict[str, str]:
        """Served models that failed to load (model id → one-line reason), for /health."""
        return self._registry.unavailable()

    def _probe(self, model_id: str) -> None:
        """The cheap part of a load: the config is known and the weights are on disk, intact."""
        fetch_checkpoint(resolve_spec(model_id, self.settings.model_config))

    def _load_one(self, model_id: str) -> LoadedModel:
        started = time.perf_counter()
        spec = resolve_spec(model_id, self.settings.model_config)
        checkpoint = fetch_checkpoint(spec)
        model = build_model(spec, checkpoint, self.device)
        encoder_bytes = 0
        if self.encoder_backend == "openvino":
            encoder_bytes = self._install_openvino(model, model_id, checkpoint, spec)
        if self.settings.compile_encoder:
            # As sam2's own `compile_image_encoder` does; compiled per input shape.
            model.image_encoder.forward = torch.compile(
                model.image_encoder.forward, mode="max-autotune", fullgraph=True, dynamic=False
            )
        loaded = LoadedModel(spec, image_predictor(model), _weight_bytes(model) + encoder_bytes)
        if self.settings.compile_encoder:
            self._warm_up(loaded, model_id)
        logger.info(
            "loaded %s (%s, %.0f MB) on %s in %.1f s",
            model_id,
            checkpoint,
            loaded.nbytes / MIB,
            self.device,
            time.perf_counter() - started,
        )
        return loaded

    def _install_openvino(
        self, model: torch.nn.Module, model_id: str, checkpoint: Path, spec: ModelSpec
    ) -> int:
        """Swap the image encoder for its OpenVINO compilation; the bytes its weights take."""
        from sam2_server.engine import openvino_backend

        # Explicit f32 unless bf16 was asked for by name: `auto`'s bf16 on a native-bf16
        # CPU is PyTorch autocast's choice; OpenVINO is chosen for exact-enough speed.
        precision = "bf16" if self.settings.precision == "bf16" else "fp32"
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

    def _warm_up(self, loaded: LoadedModel, model_id: str) -> None:
        """Compile before the first request rather than during it."""
        image = Image.new("RGB", (64, 64))
        self._encode_one(loaded, model_id, image)

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
            self._registry.max_bytes / MIB,
        )
        if self.device.type == "cuda":
            # Returns the memory to the card once no request holds the model any more.
            torch.cuda.empty_cache()

    def _refresh_error(self) -> None:
        with self._error_lock:
            failures = self._registry.unavailable()
            self.error = "; ".join(_naming(m, r) for m, r in failures.items()) or None

    def _total_failure(self) -> Exception:
        """What load() raises when nothing can be served: the default model's kind of error."""
        message = self.error or "no served model could be loaded"
        kind = self._registry.error_type(self.default_model_id)
        if kind is not None and issubclass(kind, ModelLoadError):
            return kind(message)
        return ModelLoadError(message)

    def _model(self, model_id: str, cancelled: Callable[[], bool] | None = None) -> LoadedModel:
        """The loaded model for one request, loading it if needed (ServiceError 503 if not)."""
        self._require_started(model_id)
        before_load = None if cancelled is None else (lambda: _check(cancelled))
        return self._registry.get(model_id, before_load)

    def _require_started(self, model_id: str) -> None:
        if not self._started:
            raise ServiceError(
                503,
                f"{model_id} is unavailable: the server is still loading its models.",
                headers={"Retry-After": "5"},
            )

    @property
    def _models(self) -> dict[str, LoadedModel]:
        """The models in memory now (read by tests)."""
        return self._registry.loaded()

    def _load_video_one(self, model_id: str) -> FixedVideoPredictor:
        started = time.perf_counter()
        spec = resolve_spec(model_id, self.settings.model_config)
        model = build_model(spec, fetch_checkpoint(spec), self.device, VIDEO_OVERRIDES)
        assert isinstance(model, FixedVideoPredictor)
        logger.info(
            "loaded %s's video predictor on %s in %.1f s",
            model_id,
            self.device,
            time.perf_counter() - started,
        )
        return model

    def _video_predictor(
        self, model_id: str, cancelled: Callable[[], bool] | None = None
    ) -> FixedVideoPredictor:
        """The model's video predictor, loading it on first use (503 if it cannot be)."""
        self._require_started(model_id)
        before_load = None if cancelled is None else (lambda: _check(cancelled))
        return self._video_registry.get(model_id, before_load)

    # -- the two steps ---------------------------------------------------------------------

    def image_size(self, image: bytes | BinaryIO) -> tuple[int, int]:
        """(width, height) from the header alone, or ServiceError 400: cheap, before admission.

        `image` may be the bytes or a seekable file (an upload not read into memory yet).
        """
        return probe_image(image, max_pixels=self.settings.max_image_pixels)

    def embed(self, model_id: str, image_bytes: bytes, timings: Timings | None = None) -> Embedding:
        """The image's embedding: from the cache, or decoded and encoded once."""
        return self._embed(self._model(model_id), model_id, image_bytes, timings, None)

    def _embed(
        self,
        loaded: LoadedModel,
        model_id: str,
        image_bytes: bytes,
        timings: Timings | None,
        cancelled: Callable[[], bool] | None,
    ) -> Embedding:
        key = (model_id, image_id_of(image_bytes))

        def compute() -> Embedding:
            t0 = time.perf_counter()
            image = decode_image(image_bytes, max_pixels=self.settings.max_image_pixels)
            t1 = time.perf_counter()
            embedding = replace(self._encode(loaded, model_id, image), image_bytes=image_bytes)
            if timings is not None:
                timings.decode_image_s = t1 - t0
                timings.encode_s = time.perf_counter() - t1
                timings.cache_hit = False
            return embedding

        # Here and not inside `compute`: a computation other requests wait on
        # (single-flight) must not be abandoned because its first asker left.
        _check(cancelled)
        return self.cache.get_or_compute(key, compute)

    def _encode(self, loaded: LoadedModel, model_id: str, image: Image.Image) -> Embedding:
        if self.encode_batch_size <= 1:
            return self._encode_one(loaded, model_id, image)
        job = _EncodeJob(loaded, model_id, image)
        try:
            self._batcher(model_id)(job)
            if job.error is not None:
                raise job.error
            assert job.embedding is not None
            return job.embedding
        finally:
            job.clear()

    def _batcher(self, model_id: str) -> Batcher[_EncodeJob, _EncodeJob]:
        with self._batchers_lock:
            batcher = self._batchers.get(model_id)
            if batcher is None:
                batcher = self._batchers[model_id] = Batcher(
                    self._run_jobs,
                    max_batch=self.encode_batch_size,
                    max_wait_s=self.settings.encode_batch_wait_ms / 1000,
                    name=f"encode-{model_id}",
                )
            return batcher

    def _run_jobs(self, jobs: Sequence[_EncodeJob]) -> list[_EncodeJob]:
        """One batcher round: one forward per loaded model (two only around a reload)."""
        groups: dict[int, list[_EncodeJob]] = {}
        for job in jobs:
            groups.setdefault(id(job.loaded), []).append(job)
        for group in groups.values():
            loaded = group[0].loaded
            assert loaded is not None
            images = [job.image for job in group if job.image is not None]
            try:
                embeddings = self._encode_batch(loaded, group[0].model_id, images)
            except Exception as exc:  # each waiter raises it; other groups are unaffected
                for job in group:
                    job.error = exc
                continue
            for job, embedding in zip(group, embeddings, strict=True):
                job.embedding = embedding
        return list(jobs)

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
        return self._decode(self._model(embedding.model_id), embedding, prompt, timings)

    def _decode(
        self,
        loaded: LoadedModel,
        embedding: Embedding,
        prompt: Prompt,
        timings: Timings | None,
    ) -> Prediction:
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
        self,
        model_id: str,
        image_bytes: bytes,
        prompt: Prompt,
        timings: Timings | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Prediction:
        """Embed (or take from the cache) and decode, with one model from start to end.

        `cancelled()` is asked before each step that would start work (loading
        the model, encoding the image, decoding the prompt): when true,
        `Cancelled` is raised instead. A step already started runs to its end.
        """
        timings = timings if timings is not None else Timings()
        loaded = self._model(model_id, cancelled)
        embedding = self._embed(loaded, model_id, image_bytes, timings, cancelled)
        _check(cancelled)
        result = self._decode(loaded, embedding, prompt, timings)
        logger.debug(
            "segment on %s: %s, image decode %.3f s, encoder %.3f s, prompt decode %.3f s",
            model_id,
            "cache hit" if timings.cache_hit else "encoded",
            timings.decode_image_s,
            timings.encode_s,
            timings.decode_s,
        )
        return result

    # -- the native API: images by id ------------------------------------------------------

    def add_image(
        self,
        model_id: str,
        image_bytes: bytes,
        timings: Timings | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> ImageInfo:
        """Encode an upload (or find it cached) so later prompts can name it by id."""
        timings = timings if timings is not None else Timings()
        loaded = self._model(model_id, cancelled)
        embedding = self._embed(loaded, model_id, image_bytes, timings, cancelled)
        return _info(image_id_of(image_bytes), embedding, cached=timings.cache_hit)

    def find_image(self, model_id: str, image_id: str) -> ImageInfo | None:
        """The image's description when its embedding is cached for `model_id`, else None."""
        image_id = image_id.lower()
        embedding = self.cache.peek((model_id, image_id))
        if embedding is not None:
            return _info(image_id, embedding, cached=True)
        data = self._refetch(image_id)
        if data is None:
            return None
        # Described from the upload's header; the prompt's work encodes it again.
        width, height = probe_image(data, max_pixels=self.settings.max_image_pixels)
        return ImageInfo(image_id, model_id, width, height, cached=False)

    def _refetch(self, image_id: str) -> bytes | None:
        """The upload of `image_id` from `fetch_upload`, if there is one and it is intact."""
        if self.fetch_upload is None:
            return None
        data = self.fetch_upload(image_id)
        return data if data is not None and image_id_of(data) == image_id else None

    def _cached(
        self,
        loaded: LoadedModel,
        model_id: str,
        image_id: str,
        cancelled: Callable[[], bool] | None,
    ) -> Embedding | None:
        """The cached embedding of `image_id`, or one encoded again from `fetch_upload`."""
        image_id = image_id.lower()
        embedding = self.cache.peek((model_id, image_id))
        if embedding is not None:
            return embedding
        data = self._refetch(image_id)
        return None if data is None else self._embed(loaded, model_id, data, None, cancelled)

    def _by_id(
        self, model_id: str, image_id: str, cancelled: Callable[[], bool] | None
    ) -> tuple[LoadedModel, Embedding]:
        """The model and the cached embedding a native request names; 404 once it is gone."""
        loaded = self._model(model_id, cancelled)
        embedding = self._cached(loaded, model_id, image_id, cancelled)
        if embedding is None:
            raise image_not_cached(image_id, model_id)
        with self._counter_lock:
            self._hits_by_id += 1
        _check(cancelled)
        return loaded, embedding

    def segment_cached(
        self,
        model_id: str,
        image_id: str,
        prompt: Prompt,
        timings: Timings | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> tuple[ImageInfo, Prediction]:
        """Decode a prompt on an image uploaded before; 404 once its embedding is gone."""
        timings = timings if timings is not None else Timings()
        loaded, embedding = self._by_id(model_id, image_id, cancelled)
        prediction = self._decode(loaded, embedding, prompt, timings)
        return _info(image_id.lower(), embedding, cached=True), prediction

    def automatic_warnings(self, params: AutomaticParams) -> list[str]:
        """What `params` ask for that the library skips on this server (the answer says so)."""
        return warnings_for(params, self.device)

    def automatic_masks(
        self,
        model_id: str,
        image_id: str,
        params: AutomaticParams,
        timings: Timings | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> tuple[ImageInfo, list[MaskRecord]]:
        """SAM2AutomaticMaskGenerator on an image uploaded before; 404 once its embedding is gone.

        The whole image's features come from the cache (no encoder run); only
        the smaller crops of `crop_n_layers > 0` are decoded from the kept
        upload and encoded. `cancelled()` is asked before each batch of points
        and each crop encode (see engine/automatic.py).
        """
        timings = timings if timings is not None else Timings()
        loaded, embedding = self._by_id(model_id, image_id, cancelled)
        pixels = None
        if params.crop_n_layers > 0:
            if not embedding.image_bytes:  # not built by _embed: nothing to crop
                raise image_not_cached(image_id, model_id)
            t0 = time.perf_counter()
            image = decode_image(embedding.image_bytes, max_pixels=self.settings.max_image_pixels)
            pixels = np.array(image)
            timings.decode_image_s = time.perf_counter() - t0
        hooks = AutomaticHooks(
            loaded.encode_lock, loaded.decode_lock, cancelled, on_encoded=lambda: self._count(1)
        )
        t1 = time.perf_counter()
        with self._compute_context():
            records = generate_masks(loaded.predictor.model, embedding, params, hooks, pixels)
        # Encoding crops is a stage of its own in the log and metrics (reported as a miss).
        timings.encode_s = hooks.encode_s
        timings.decode_s = time.perf_counter() - t1 - hooks.encode_s
        timings.cache_hit = pixels is None
        logger.debug(
            "automatic masks on %s: %d masks, %d crop layers, crops encoded in %.3f s, "
            "mask generation %.3f s",
            model_id,
            len(records),
            params.crop_n_layers,
            timings.encode_s,
            timings.decode_s,
        )
        return _info(image_id.lower(), embedding, cached=True), records

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
        """Counters for /stats: cache hits and misses, images encoded, batches, models."""
        with self._batchers_lock:
            batchers = list(self._batchers.values())
        return {
            "status": self.status,
            "device": str(self.device),
            "precision": "bf16" if self.bf16 else "fp32",
            "encoder_backend": self.encoder_backend,
            # What the precision was decided on (None off the CPU).
            "cpu_features": asdict(self.cpu) if self.cpu is not None else None,
            "encoded_images": self.encoded_images,
            "prompts_by_image_id": self._hits_by_id,
            "encode_batches": (
                sum(b.batches for b in batchers) if self.encode_batch_size > 1 else None
            ),
            "cache": asdict(self.cache.stats()),
            "models": self._registry.snapshot(),
            "video": self.videos.stats(),
            "model_memory": {
                "bytes": self._registry.bytes,
                "max_bytes": self._registry.max_bytes,
                "loads": self._registry.loads,
                "evictions": self._registry.evictions,
            },
        }

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
        if self.device.type != "cuda":
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


def image_id_of(image_bytes: bytes) -> str:
    """The native API's image id: the SHA-256 of the uploaded bytes (also the cache key)."""
    return hashlib.sha256(image_bytes).hexdigest()


def _info(image_id: str, embedding: Embedding, *, cached: bool) -> ImageInfo:
    height, width = embedding.orig_hw
    return ImageInfo(image_id, embedding.model_id, width, height, cached)


def _check(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled()


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


def _describe_failure(exc: BaseException) -> str:
    """One line: our own load errors are written for operators; others get their type too."""
    return one_line(exc, with_type=not isinstance(exc, ModelLoadError))


def _naming(model_id: str, reason: str) -> str:
    """The reason, prefixed by the model id unless it names it already (models.py's do)."""
    return reason if model_id in reason else f"{model_id}: {reason}"


def _weight_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


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
