"""Content-addressed embedding cache with single-flight computation.

Interactive clients click many times on the same image; the image encoder is
~95% of a request. Keyed by (model id, SHA-256 of the uploaded bytes), a hit
skips image decoding and encoding entirely. The cache is an LRU bounded in
bytes; hits refresh recency. Concurrent misses on the same key wait for one
computation instead of encoding the same image twice.

Eviction only drops the cache's reference: a request that already holds an
embedding keeps it alive until it is done with it, so evictions never break a
request in flight.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=Sized)


@dataclass(frozen=True)
class CacheStats:
    hits: int  # answered from the cache
    misses: int  # computed
    coalesced: int  # waited for another request's computation of the same key
    evictions: int
    entries: int
    bytes: int
    max_bytes: int


class EmbeddingCache(Generic[V]):
    """Thread-safe LRU by bytes, with single-flight `get_or_compute`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._inflight: dict[Hashable, Future[V]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._coalesced = self._evictions = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value for `key`, computing it once however many callers ask at once.

        If the computation fails, every caller waiting on it gets the same
        exception and nothing is cached, so a later request tries again.
        """
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return value
            pending = self._inflight.get(key)
            if pending is None:
                pending = self._inflight[key] = Future()
                self._misses += 1
                owner = True
            else:
                self._coalesced += 1
                owner = False
        if not owner:
            return pending.result()

        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                del self._inflight[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._inflight[key]
            self._insert(key, value)
        pending.set_result(value)
        return value

    def peek(self, key: Hashable) -> V | None:
        """The cached value, without computing it; a find refreshes its recency.

        Not counted as a hit or a miss: asking whether an image is there (the
        native API's GET) is not a request for its embedding.
        """
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def _insert(self, key: Hashable, value: V) -> None:
        size = value.nbytes
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        self._entries[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self._evictions += 1

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                coalesced=self._coalesced,
                evictions=self._evictions,
                entries=len(self._entries),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
            )
