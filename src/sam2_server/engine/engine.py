"""The engine's front: image bytes + Prompt → Prediction, with SAM2ImagePredictor's semantics.

It matches the HTTP layer's `Segmenter` protocol (api/service.py) and only
composes the parts, each one job: `Compute` (device, precision, the compute
context), `Models` (loading, failures, unloading), `Encoder` (the embedding
cache, single-flight, batching), `decode` (a prompt on an embedding),
`generate_masks` (automatic masks on a cached embedding) and `VideoSessions`.

Two steps stay separate: `embed` (image decoding and the image encoder, ~95%
of the work) and `decode` (prompt encoder and mask decoder, cheap). A
request takes one `LoadedModel` at its start and uses it to its end,
whatever the registry does meanwhile. Cached embeddings outlive their
model's unloading: same model id, same weights.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from sam2_server.config import Settings
from sam2_server.domain import (
    AutomaticParams,
    ImageInfo,
    MaskRecord,
    Prediction,
    Prompt,
    Timings,
    Work,
    image_id_of,
)
from sam2_server.engine.automatic import AutomaticHooks, warnings_for
from sam2_server.engine.compute import Compute
from sam2_server.engine.decoding import decode
from sam2_server.engine.embedding import Embedding
from sam2_server.engine.encoding import Encoder, LoadedModel
from sam2_server.engine.loading import Models, Status
from sam2_server.engine.pacing import Deadline, Pacer, Plan, plan_of
from sam2_server.engine.video import VideoSessions
from sam2_server.errors import ImageNotCached, check_cancelled
from sam2_server.images import decode_image, probe_image

logger = logging.getLogger(__name__)

__all__ = ["Embedding", "Engine", "LoadedModel", "Status", "Timings"]


class Engine:
    """Loads the served models and answers prompts on images and videos."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.compute = Compute(settings)
        batch = settings.encode_batch_size
        cache_bytes = settings.cache_bytes
        if cache_bytes is None:
            cache_bytes = self.compute.default_cache_bytes()
        self.encoder = Encoder(
            self.compute,
            max_pixels=settings.max_image_pixels,
            cache_bytes=cache_bytes,
            batch_size=batch if batch is not None else (8 if self.compute.on_cuda else 1),
            batch_wait_s=settings.encode_batch_wait_ms / 1000,
        )
        self.models = Models(settings, self.compute, self._warm_up)
        self.pacer = Pacer(settings.automatic_time_budget_s)
        self._hits_by_id = 0  # native prompts on an image named by id
        self._hits_lock = threading.Lock()
        # Where an upload named by id can be had again when its embedding is not
        # here: the cluster's upload store (cluster/), since a replica may be asked
        # about an image another replica encoded. None: not found once it is gone.
        self.fetch_upload: Callable[[str], bytes | None] | None = None
        self.videos = VideoSessions(
            settings,
            self.models.video_model,
            self.compute.context,
            self.models.video_locks.__getitem__,
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self.models.status

    @property
    def error(self) -> str | None:
        return self.models.error

    @property
    def on_load_error(self) -> Callable[[str, str], None] | None:
        return self.models.on_load_error

    @on_load_error.setter
    def on_load_error(self, callback: Callable[[str, str], None] | None) -> None:
        self.models.on_load_error = callback

    @property
    def served_model_ids(self) -> tuple[str, ...]:
        return self.settings.model_ids

    @property
    def default_model_id(self) -> str:
        return self.settings.default_model_id

    def load(self) -> None:
        """Check every served model, load the default one (see `Models.load`)."""
        self.models.load()

    def unavailable(self) -> dict[str, str]:
        return self.models.unavailable()

    def describe_models(self) -> list[dict[str, Any]]:
        """Each served model: family, input size, loaded or not, video and automatic masks."""
        return self.models.describe()

    def _warm_up(self, loaded: LoadedModel, model_id: str) -> None:
        """Compile before the first request rather than during it."""
        self.encoder.encode_one(loaded, model_id, Image.new("RGB", (64, 64)))

    # -- the two steps ---------------------------------------------------------------------

    def image_size(self, image: bytes | BinaryIO) -> tuple[int, int]:
        """(width, height) from the header alone, or a bad-input error: cheap, before admission.

        `image` may be the bytes or a seekable file (an upload not read into memory yet).
        """
        return probe_image(image, max_pixels=self.settings.max_image_pixels)

    def embed(self, model_id: str, image_bytes: bytes, timings: Timings | None = None) -> Embedding:
        """The image's embedding: from the cache, or decoded and encoded once."""
        loaded = self.models.image_model(model_id)
        work = Work(timings if timings is not None else Timings())
        return self.encoder.embed(loaded, model_id, image_bytes, work)

    def decode(
        self, embedding: Embedding, prompt: Prompt, timings: Timings | None = None
    ) -> Prediction:
        """Prompt encoder + mask decoder on an embedding (SAM2ImagePredictor.predict)."""
        loaded = self.models.image_model(embedding.model_id)
        return decode(loaded, embedding, prompt, self.compute, timings)

    def segment(
        self, model_id: str, image_bytes: bytes, prompt: Prompt, work: Work | None = None
    ) -> Prediction:
        """Embed (or take from the cache) and decode, with one model from start to end.

        `work.cancelled()` is asked before each step that would start work
        (loading the model, encoding the image, decoding the prompt): when true,
        `Cancelled` is raised instead. A step already started runs to its end.
        """
        work = work if work is not None else Work()
        timings = work.timings
        loaded = self.models.image_model(model_id, work.cancelled)
        embedding = self.encoder.embed(loaded, model_id, image_bytes, work)
        check_cancelled(work.cancelled)
        result = decode(loaded, embedding, prompt, self.compute, timings)
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

    def add_image(self, model_id: str, image_bytes: bytes, work: Work | None = None) -> ImageInfo:
        """Encode an upload (or find it cached) so later prompts can name it by id."""
        work = work if work is not None else Work()
        loaded = self.models.image_model(model_id, work.cancelled)
        embedding = self.encoder.embed(loaded, model_id, image_bytes, work)
        return _info(image_id_of(image_bytes), embedding, cached=bool(work.timings.cache_hit))

    def find_image(self, model_id: str, image_id: str) -> ImageInfo | None:
        """The image's description when its embedding is cached for `model_id`, else None."""
        image_id = image_id.lower()
        embedding = self.encoder.cached(model_id, image_id)
        if embedding is not None:
            return _info(image_id, embedding, cached=True)
        data = self._refetch(image_id)
        if data is None:
            return None
        # Described from the upload's header; the prompt's work encodes it again.
        width, height = probe_image(data, max_pixels=self.settings.max_image_pixels)
        return ImageInfo(image_id, model_id, width, height, cached=False)

    def segment_cached(
        self, model_id: str, image_id: str, prompt: Prompt, work: Work | None = None
    ) -> tuple[ImageInfo, Prediction]:
        """Decode a prompt on an image uploaded before; not found once its embedding is gone."""
        work = work if work is not None else Work()
        loaded, embedding = self._by_id(model_id, image_id, work)
        prediction = decode(loaded, embedding, prompt, self.compute, work.timings)
        return _info(image_id.lower(), embedding, cached=True), prediction

    def automatic_warnings(self, params: AutomaticParams) -> list[str]:
        """What `params` ask for that the library skips on this server (the answer says so)."""
        return warnings_for(params, self.compute.device)

    def automatic_masks(
        self, model_id: str, image_id: str, params: AutomaticParams, work: Work | None = None
    ) -> tuple[ImageInfo, list[MaskRecord]]:
        """SAM2AutomaticMaskGenerator on an image uploaded before; not found once it is gone.

        The whole image's features come from the cache (no encoder run); only
        the smaller crops of `crop_n_layers > 0` are decoded from the kept
        upload and encoded. `work.cancelled()` is asked before each batch of
        points and each crop encode (see engine/automatic.py).
        """
        work = work if work is not None else Work()
        timings = work.timings
        loaded, embedding = self._by_id(model_id, image_id, work)
        pixels = None
        if params.crop_n_layers > 0:
            if not embedding.image_bytes:  # not built by the encoder: nothing to crop
                raise ImageNotCached(image_id, model_id)
            t0 = time.perf_counter()
            image = decode_image(embedding.image_bytes, max_pixels=self.settings.max_image_pixels)
            pixels = np.array(image)
            timings.decode_image_s = time.perf_counter() - t0
        hooks = self._automatic_hooks(loaded, model_id, plan_of(params, embedding.orig_hw), work)
        t1 = time.perf_counter()
        with self.compute.context():
            records = loaded.image.generate(embedding, params, hooks, pixels)
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

    def _automatic_hooks(
        self, loaded: LoadedModel, model_id: str, plan: Plan, work: Work
    ) -> AutomaticHooks:
        """The generation's share of the engine: locks, cancellation, counts, and the time
        budget: refused now when the model's measured speed says it would exceed it, or
        after the first batch on a model that has not run automatic masks before."""
        pacer = self.pacer
        pacer.check(model_id, plan)
        unmeasured = pacer.estimate(model_id, plan) is None
        units_per_point = plan.units / max(plan.points, 1)

        def on_batch(points: int, seconds: float) -> None:
            nonlocal unmeasured
            pacer.observe_batch(model_id, points * units_per_point, seconds)
            if work.progress is not None:
                work.progress(points)
            if unmeasured:
                unmeasured = False
                pacer.check(model_id, plan)

        def on_encoded(seconds: float) -> None:
            self.encoder.count(1)
            pacer.observe_encode(model_id, seconds)

        return AutomaticHooks(
            loaded.encode_lock,
            loaded.automatic_lock,
            work.cancelled,
            on_encoded=on_encoded,
            on_batch=on_batch,
            deadline=Deadline(pacer.budget_s).check,
        )

    def _refetch(self, image_id: str) -> bytes | None:
        """The upload of `image_id` from `fetch_upload`, if there is one and it is intact."""
        if self.fetch_upload is None:
            return None
        data = self.fetch_upload(image_id)
        return data if data is not None and image_id_of(data) == image_id else None

    def _by_id(self, model_id: str, image_id: str, work: Work) -> tuple[LoadedModel, Embedding]:
        """The model and the cached embedding a native request names (encoded again from
        `fetch_upload` where there is one); not found once it is gone."""
        loaded = self.models.image_model(model_id, work.cancelled)
        image_id = image_id.lower()
        embedding = self.encoder.cached(model_id, image_id)
        if embedding is not None:
            work.timings.cache_hit = True
        else:
            data = self._refetch(image_id)
            if data is None:
                raise ImageNotCached(image_id, model_id)
            embedding = self.encoder.embed(loaded, model_id, data, work)
        with self._hits_lock:
            self._hits_by_id += 1
        check_cancelled(work.cancelled)
        return loaded, embedding

    # -- what the operator sees --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for /stats: cache hits and misses, images encoded, batches, models."""
        return {
            "status": self.status,
            **self.compute.stats(),
            "encoder_backend": self.settings.encoder_backend,
            "cpu_features": self.compute.cpu_stats(),
            "encoded_images": self.encoder.encoded_images,
            "prompts_by_image_id": self._hits_by_id,
            "encode_batches": self.encoder.batches,
            "cache": asdict(self.encoder.cache.stats()),
            "models": self.models.images.snapshot(),
            "video": self.videos.stats(),
            "model_memory": self.models.stats(),
        }

    def hardware(self) -> dict[int, dict[str, Any]]:
        """The GPU this engine computes on, for /hardware/* (see `Compute.hardware`)."""
        return self.compute.hardware()


def _info(image_id: str, embedding: Embedding, *, cached: bool) -> ImageInfo:
    height, width = embedding.orig_hw
    return ImageInfo(image_id, embedding.model_id, width, height, cached)
