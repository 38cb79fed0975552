"""Image bytes → an `Embedding`, each image encoded once: the cache, single-flight, batching.

The encoder is ~95% of a click's work, so it is spent once per image: the
embedding cache answers a repeated image (keyed by model and image id),
single-flight makes concurrent requests on one new image share one encode,
and on GPUs concurrent misses share one forward (`Batcher`). The encoder
runs under its model's encode lock, separate from the decode lock, so
decoding a cached image never waits for another image's encode.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from PIL import Image

from sam2_server.domain import Work, image_id_of
from sam2_server.engine.batching import Batcher
from sam2_server.engine.cache import EmbeddingCache
from sam2_server.engine.compute import Compute
from sam2_server.engine.embedding import Embedding
from sam2_server.engine.family import ImageModel
from sam2_server.engine.models import ModelSpec
from sam2_server.errors import check_cancelled
from sam2_server.images import decode_image

__all__ = ["Encoder", "LoadedModel"]


@dataclass
class LoadedModel:
    """One served model in memory, as a request holds it from its start to its end."""

    spec: ModelSpec
    image: ImageModel  # its family's image side (family.py): shared, stateless per call
    nbytes: int  # parameters and buffers: what the model memory budget counts
    encode_lock: threading.Lock = field(default_factory=threading.Lock)
    decode_lock: threading.Lock = field(default_factory=threading.Lock)  # clicks
    automatic_lock: threading.Lock = field(default_factory=threading.Lock)  # generations


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


class Encoder:
    """Embeddings of uploads, cached by (model id, image id)."""

    def __init__(
        self,
        compute: Compute,
        *,
        max_pixels: int,
        cache_bytes: int,
        batch_size: int,
        batch_wait_s: float,
    ) -> None:
        self.compute = compute
        self.max_pixels = max_pixels
        self.cache: EmbeddingCache[Embedding] = EmbeddingCache(cache_bytes)
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        # One batcher per model id, not per load: a batcher's thread never ends,
        # and jobs carry the model they run on, so an unloaded model is not pinned.
        self._batchers: dict[str, Batcher[_EncodeJob, _EncodeJob]] = {}
        self._batchers_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self.encoded_images = 0

    def embed(
        self,
        loaded: LoadedModel,
        model_id: str,
        image_bytes: bytes,
        work: Work,
    ) -> Embedding:
        """The image's embedding: from the cache, or decoded and encoded once (its time
        in `work.timings`)."""
        timings = work.timings
        key = (model_id, image_id_of(image_bytes))

        def compute() -> Embedding:
            t0 = time.perf_counter()
            image = decode_image(image_bytes, max_pixels=self.max_pixels)
            t1 = time.perf_counter()
            embedding = replace(self._encode(loaded, model_id, image), image_bytes=image_bytes)
            timings.decode_image_s = t1 - t0
            timings.encode_s = time.perf_counter() - t1
            timings.cache_hit = False
            return embedding

        # Here and not inside `compute`: a computation other requests wait on
        # (single-flight) must not be abandoned because its first asker left.
        check_cancelled(work.cancelled)
        embedding = self.cache.get_or_compute(key, compute)
        if timings.cache_hit is None:  # `compute` did not run for this request
            timings.cache_hit = True
        return embedding

    def cached(self, model_id: str, image_id: str) -> Embedding | None:
        """The cached embedding of `image_id` for `model_id`, without touching its recency."""
        return self.cache.peek((model_id, image_id))

    def count(self, images: int) -> None:
        """Images run through an encoder (crops of automatic masks count too)."""
        with self._counter_lock:
            self.encoded_images += images

    @property
    def batches(self) -> int | None:
        """Batched forwards run so far; None when encodes are not batched."""
        if self.batch_size <= 1:
            return None
        with self._batchers_lock:
            batchers = list(self._batchers.values())
        return sum(b.batches for b in batchers)

    def encode_one(self, loaded: LoadedModel, model_id: str, image: Image.Image) -> Embedding:
        """One image through the model's encoder (SAM2: `set_image`)."""
        with loaded.encode_lock, self.compute.context():
            embedding = loaded.image.encode_one(image, model_id)
        self.count(1)
        return embedding

    def encode_batch(
        self, loaded: LoadedModel, model_id: str, images: Sequence[Image.Image]
    ) -> list[Embedding]:
        """Concurrent misses in one forward (runs in the batcher; SAM2: `set_image_batch`)."""
        with loaded.encode_lock, self.compute.context():
            embeddings = loaded.image.encode_batch(images, model_id)
        self.count(len(images))
        return embeddings

    def _encode(self, loaded: LoadedModel, model_id: str, image: Image.Image) -> Embedding:
        if self.batch_size <= 1:
            return self.encode_one(loaded, model_id, image)
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
                    max_batch=self.batch_size,
                    max_wait_s=self.batch_wait_s,
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
                embeddings = self.encode_batch(loaded, group[0].model_id, images)
            except Exception as exc:  # each waiter raises it; other groups are unaffected
                for job in group:
                    job.error = exc
                continue
            for job, embedding in zip(group, embeddings, strict=True):
                job.embedding = embedding
        return list(jobs)
