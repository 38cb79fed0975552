"""The embedding cache: equality, LRU by bytes, single-flight, memory bound, batching."""

from __future__ import annotations

import gc
import io
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam2_server.domain import Prompt
from sam2_server.engine import Engine
from sam2_server.engine.cache import EmbeddingCache
from sam2_server.engine.cpu import CpuFeatures
from tests.conftest import image_bytes

PROMPTS = [
    Prompt(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1])),
    Prompt(box=np.array([50.0, 60.0, 400.0, 300.0]), multimask_output=False),
    Prompt(
        point_coords=np.array([[10.0, 20.0], [500, 400]]),
        point_labels=np.array([1, 0]),
        return_logits=False,
    ),
]


def png(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


@dataclass
class Blob:
    """A cache value of a known size, backed by a real tensor so memory is real."""

    tensor: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()


def blob(megabytes: float) -> Blob:
    return Blob(torch.ones(int(megabytes * 1024 * 1024 / 4)))


# -- the cache on its own --------------------------------------------------------------------


def test_lru_by_bytes_and_hits_refresh_recency():
    cache: EmbeddingCache[Blob] = EmbeddingCache(max_bytes=3 * 1024 * 1024)
    for key in "abc":
        cache.get_or_compute(key, lambda: blob(1))
    cache.get_or_compute("a", lambda: pytest.fail("a is cached"))  # refresh a
    cache.get_or_compute("d", lambda: blob(1))  # evicts b, the least recent
    computed = []
    cache.get_or_compute("b", lambda: computed.append("b") or blob(1))
    assert computed == ["b"]
    stats = cache.stats()
    assert stats.bytes <= stats.max_bytes
    assert stats.entries == 3
    assert (stats.hits, stats.misses) == (1, 5)
    assert stats.evictions == 2


def test_value_larger_than_the_bound_is_returned_not_cached():
    cache: EmbeddingCache[Blob] = EmbeddingCache(max_bytes=1024)
    value = cache.get_or_compute("big", lambda: blob(1))
    assert value.nbytes > 1024
    assert cache.stats().entries == 0


def test_single_flight_computes_once_for_concurrent_callers():
    cache: EmbeddingCache[Blob] = EmbeddingCache(max_bytes=10 * 1024 * 1024)
    calls = []
    start = threading.Barrier(8)

    def compute() -> Blob:
        calls.append(1)
        time.sleep(0.3)
        return blob(0.1)

    results: list[Blob] = []

    def worker() -> None:
        start.wait()
        results.append(cache.get_or_compute("k", compute))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert all(r is results[0] for r in results)
    stats = cache.stats()
    assert stats.misses == 1
    assert stats.coalesced + stats.hits == 7


def test_failure_reaches_every_waiter_and_is_not_cached():
    cache: EmbeddingCache[Blob] = EmbeddingCache(max_bytes=10 * 1024 * 1024)
    release = threading.Event()

    def failing() -> Blob:
        release.wait(5)
        raise ValueError("bad image")

    errors: list[BaseException] = []

    def worker() -> None:
        try:
            cache.get_or_compute("k", failing)
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in threads:
        thread.join()
    assert len(errors) == 3
    assert cache.get_or_compute("k", lambda: blob(0.1)).nbytes > 0  # retried, not poisoned


def test_memory_stays_within_the_bound_over_200_distinct_images():
    """200 embedding-sized values in a row: the cache holds at most its bound, and the
    process's memory grows by no more than that bound plus a fixed margin."""
    embedding_mb = 16.0  # what one SAM2 embedding weighs in fp32
    cache: EmbeddingCache[Blob] = EmbeddingCache(max_bytes=int(10 * embedding_mb * 1024 * 1024))
    process = psutil.Process()
    for i in range(5):
        cache.get_or_compute(("warm", i), lambda: blob(embedding_mb))
    gc.collect()
    before = process.memory_info().rss
    for i in range(200):
        cache.get_or_compute(i, lambda: blob(embedding_mb))
        assert cache.stats().bytes <= cache.max_bytes
    gc.collect()
    growth = process.memory_info().rss - before
    margin = 200 * 1024 * 1024
    assert growth < cache.max_bytes + margin, f"RSS grew by {growth / 2**20:.0f} MiB"
    assert cache.stats().entries == 10


# -- the cache inside the engine -------------------------------------------------------------


@pytest.fixture(scope="module")
def uncached_engine(reduced_settings):
    engine = Engine(reduced_settings.with_(cache_bytes=0))
    engine.load()
    return engine


def test_answers_with_and_without_cache_are_identical(reduced_engine, uncached_engine):
    data = image_bytes("groceries.jpg")
    model = reduced_engine.default_model_id
    for prompt in PROMPTS:
        for _ in range(2):  # the second round is served from the cache
            cached = reduced_engine.segment(model, data, prompt)
            fresh = uncached_engine.segment(model, data, prompt)
            for a, b in zip(
                (cached.masks, cached.scores, cached.logits),
                (fresh.masks, fresh.scores, fresh.logits),
                strict=True,
            ):
                np.testing.assert_array_equal(a, b)
    assert uncached_engine.encoder.cache.stats().entries == 0


def test_a_hit_skips_decoding_and_encoding(reduced_engine, monkeypatch):
    model = reduced_engine.default_model_id
    data = png(1001)
    first = reduced_engine.embed(model, data)
    encoded = reduced_engine.encoder.encoded_images

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cache hit decoded or encoded the image")

    monkeypatch.setattr("sam2_server.engine.encoding.decode_image", must_not_run)
    monkeypatch.setattr(SAM2ImagePredictor, "set_image", must_not_run)
    assert reduced_engine.embed(model, data) is first
    assert reduced_engine.encoder.encoded_images == encoded


def test_concurrent_requests_on_one_new_image_encode_once(reduced_engine):
    model = reduced_engine.default_model_id
    data = png(1002)
    encoded = reduced_engine.encoder.encoded_images
    start = threading.Barrier(2)
    results = []

    def worker(prompt: Prompt) -> None:
        start.wait()
        results.append(reduced_engine.segment(model, data, prompt))

    threads = [threading.Thread(target=worker, args=(p,)) for p in PROMPTS[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    assert reduced_engine.encoder.encoded_images == encoded + 1


def test_eviction_does_not_break_a_request_in_flight(reduced_settings):
    engine = Engine(reduced_settings.with_(cache_bytes=20 * 1024 * 1024))  # one embedding
    engine.load()
    model = engine.default_model_id
    held = engine.embed(model, png(1))
    expected = engine.decode(held, PROMPTS[0])
    engine.embed(model, png(2))  # evicts the first
    assert engine.encoder.cache.stats().evictions == 1
    again = engine.decode(held, PROMPTS[0])
    np.testing.assert_array_equal(again.masks, expected.masks)


def test_decoding_a_cached_image_does_not_wait_for_an_encode(reduced_engine, monkeypatch):
    model = reduced_engine.default_model_id
    cached = reduced_engine.embed(model, png(1003))
    original = SAM2ImagePredictor.set_image
    encoding = threading.Event()

    def slow_set_image(self, image):
        encoding.set()
        time.sleep(3)
        return original(self, image)

    monkeypatch.setattr(SAM2ImagePredictor, "set_image", slow_set_image)
    slow = threading.Thread(target=reduced_engine.embed, args=(model, png(1004)))
    slow.start()
    assert encoding.wait(5)
    started = time.monotonic()
    reduced_engine.decode(cached, PROMPTS[0])
    waited = time.monotonic() - started
    slow.join()
    assert waited < 2.0, f"decode waited {waited:.1f} s behind an encode"


def test_batched_encodes_match_single_encodes(reduced_settings, reduced_engine):
    """Concurrent misses share one encoder forward (as on GPU); answers stay the same
    within float32 noise (batched GEMMs may sum in another order)."""
    engine = Engine(reduced_settings.with_(encode_batch_size=4, encode_batch_wait_ms=500))
    engine.load()
    model = engine.default_model_id
    images = [png(2000 + i, size=(96 + 8 * i, 64)) for i in range(4)]
    start = threading.Barrier(4)
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        start.wait()
        results[i] = engine.segment(model, images[i], PROMPTS[0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = engine.stats()
    assert stats["encoded_images"] == 4
    assert stats["encode_batches"] < 4
    for i, image in enumerate(images):
        single = reduced_engine.segment(model, image, PROMPTS[0])
        batched = results[i]
        assert batched.masks.shape == single.masks.shape  # type: ignore[attr-defined]
        np.testing.assert_allclose(batched.scores, single.scores, atol=1e-4)  # type: ignore[attr-defined]
        np.testing.assert_allclose(batched.logits, single.logits, atol=1e-3)  # type: ignore[attr-defined]


def test_bf16_autocast_stays_close_to_fp32(reduced_settings, reduced_engine, monkeypatch):
    """The GPU's default precision path, run on the CPU: same shapes, answers close.

    PRECISION=bf16 on a CPU needs native bf16 (engine/cpu.py); the test pretends to
    have it, so that it runs (emulated) on any CI machine.
    """
    native = CpuFeatures.from_flags({"avx2", "avx512f", "avx512_bf16"}, "test CPU")
    monkeypatch.setattr("sam2_server.engine.compute.cpu_features", lambda: native)
    engine = Engine(reduced_settings.with_(precision="bf16", cache_bytes=0))
    engine.load()
    assert engine.stats()["precision"] == "bf16"
    data = image_bytes("groceries.jpg")
    for prompt in PROMPTS:
        low = engine.segment(engine.default_model_id, data, prompt)
        full = reduced_engine.segment(reduced_engine.default_model_id, data, prompt)
        assert low.masks.dtype == np.float32
        assert low.masks.shape == full.masks.shape
        np.testing.assert_allclose(np.sort(low.scores), np.sort(full.scores), atol=0.02)
        agreement = ((low.masks[0] > 0) == (full.masks[0] > 0)).mean()
        assert agreement > 0.95
