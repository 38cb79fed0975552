"""Which served models are in memory: lazy loading, failures per model, LRU by weight bytes.

A server may be told to serve several models (MODEL_ID is an allow-list) but
should not pay for all of them at once, nor go down because one of them is
broken. So each model has its own state:

- "not loaded": present (or not checked yet); loaded on first use;
- "loading": one thread loads it, every other request for it waits for that
  one load (single-flight, as the embedding cache does for encodes);
- "loaded": in memory; each use refreshes its recency;
- "error": its last load failed; requests get a 503 naming it, and the next
  request after `LOAD_RETRY_S` tries again, so an operator can fix a file
  without restarting the server.

Loaded models are bounded by the bytes of their weights: past the bound the
least recently used ones are dropped. Dropping only forgets the registry's
reference: a request that already holds a model keeps using it to the end.

Nothing here knows torch: what a model is, how it loads and how much it
weighs are the engine's callables.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sam2_server.errors import ErrorKind, ServiceError

T = TypeVar("T")

logger = logging.getLogger(__name__)

# After a failed load, requests get the recorded failure for this long before
# one of them tries again: long enough not to hammer a broken disk or the hub
# with every request, short enough that a fixed file is picked up soon.
# Read at each check, so tests may patch it.
LOAD_RETRY_S = 30.0


class ModelState(str, enum.Enum):
    NOT_LOADED = "not loaded"
    LOADING = "loading"
    LOADED = "loaded"
    ERROR = "error"


@dataclass
class _Entry(Generic[T]):
    state: ModelState = ModelState.NOT_LOADED
    value: T | None = None
    nbytes: int = 0  # held now (0 unless loaded)
    known_bytes: int | None = None  # from its last load: room is made before the next one
    pending: Future[T] | None = None  # while loading
    error: str | None = None  # while in ERROR
    error_type: type[BaseException] | None = None  # the class only: a traceback pins memory
    failed_at: float = 0.0


def one_line(exc: BaseException, *, with_type: bool = False) -> str:
    """A failure as one line for logs, /health and 503s; the type name when asked or empty."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line}" if with_type else line


class ModelRegistry(Generic[T]):
    """The served models' states; thread-safe; `get` loads on demand.

    Callbacks run outside the registry's lock, in the thread that caused them:
    `on_loaded(model_id)`, `on_error(model_id, message, exception)` for every
    failed load or presence check, `on_evict(model_id, nbytes)` after a model
    is dropped to stay within `max_bytes`.
    """

    def __init__(
        self,
        model_ids: Iterable[str],
        load: Callable[[str], T],
        *,
        size_of: Callable[[T], int],
        max_bytes: int,
        describe: Callable[[BaseException], str] = one_line,
        on_loaded: Callable[[str], None] | None = None,
        on_error: Callable[[str, str, BaseException], None] | None = None,
        on_evict: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: dict[str, _Entry[T]] = {model_id: _Entry() for model_id in model_ids}
        self._load = load
        self._size_of = size_of
        self.max_bytes = max_bytes
        self._describe = describe
        self._on_loaded = on_loaded
        self._on_error = on_error
        self._on_evict = on_evict
        self._clock = clock
        self._lru: OrderedDict[str, None] = OrderedDict()  # loaded models, least recent first
        self._bytes = 0
        self._lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    # -- the request path -----------------------------------------------------------------

    def get(self, model_id: str, before_load: Callable[[], None] | None = None) -> T:
        """The loaded model, loading it first if needed; ServiceError 503 if it cannot be.

        `before_load` runs only in the request that is about to start a load
        (not in those that wait for one, nor on a loaded model), so it may
        raise to abandon the request before any work starts.
        """
        checked = before_load is None
        while True:
            with self._lock:
                entry = self._entry(model_id)
                if entry.state is ModelState.LOADED:
                    self._lru.move_to_end(model_id)
                    assert entry.value is not None
                    return entry.value
                pending = entry.pending
                if pending is None:
                    if entry.state is ModelState.ERROR and not self._may_retry(entry):
                        raise unavailable(model_id, entry.error or "failed to load")
                    if checked:
                        pending = entry.pending = Future()
                        entry.state = ModelState.LOADING
                        known = entry.known_bytes
                        evicted = self._make_room(known or 0, keep=model_id)
                        break
            if pending is not None:
                return pending.result()  # another request's load: its value or its 503
            # Outside the lock, then look again: meanwhile another request may
            # have started the load, which this one then waits for instead.
            assert before_load is not None
            before_load()
            checked = True
        self._evicted(evicted)
        return self._run_load(model_id, entry, pending)

    def _run_load(self, model_id: str, entry: _Entry[T], pending: Future[T]) -> T:
        message: str | None
        try:
            value = self._load(model_id)
            nbytes = self._size_of(value)
        except Exception as exc:
            message = self._failed(model_id, entry, exc)
        except BaseException:  # interrupted: no verdict on the model, let a later request try
            with self._lock:
                entry.state = ModelState.NOT_LOADED
                entry.pending = None
            pending.set_exception(unavailable(model_id, "its load was interrupted"))
            raise
        else:
            message = None
        if message is not None:
            # Raised outside the `except`: the failure's traceback (which pins
            # whatever the load had built) must not ride along as __context__.
            error = unavailable(model_id, message)
            pending.set_exception(error)
            raise error
        with self._lock:
            entry.state = ModelState.LOADED
            entry.value = value
            entry.nbytes = entry.known_bytes = nbytes
            entry.error = entry.error_type = None
            entry.pending = None
            self.loads += 1
            self._lru[model_id] = None
            self._bytes += nbytes
            evicted = self._make_room(0, keep=model_id)
        pending.set_result(value)
        self._evicted(evicted)
        _notify(self._on_loaded, model_id)
        return value

    def _failed(self, model_id: str, entry: _Entry[T], exc: Exception) -> str:
        """Record a failed load or presence check, tell `on_error`; the one-line reason."""
        message = self._describe(exc)
        with self._lock:
            entry.state = ModelState.ERROR
            entry.value = None
            entry.error = message
            entry.error_type = type(exc)
            entry.failed_at = self._clock()
            entry.pending = None
        _notify(self._on_error, model_id, message, exc)
        return message

    def _make_room(self, incoming: int, *, keep: str) -> list[tuple[str, int]]:
        """Drop least recently used models until `incoming` more bytes fit (lock held).

        `keep` (the model this request loads) is never dropped: a model larger
        than the whole budget is still served, alone.
        """
        evicted = []
        for model_id in list(self._lru):
            if self._bytes + incoming <= self.max_bytes:
                break
            if model_id == keep:
                continue
            entry = self._entries[model_id]
            del self._lru[model_id]
            self._bytes -= entry.nbytes
            evicted.append((model_id, entry.nbytes))
            entry.state = ModelState.NOT_LOADED
            entry.value = None
            entry.nbytes = 0
            self.evictions += 1
        return evicted

    def _evicted(self, evicted: list[tuple[str, int]]) -> None:
        for model_id, nbytes in evicted:
            _notify(self._on_evict, model_id, nbytes)

    def _may_retry(self, entry: _Entry[T]) -> bool:
        return self._clock() - entry.failed_at >= LOAD_RETRY_S

    def _entry(self, model_id: str) -> _Entry[T]:
        entry = self._entries.get(model_id)
        if entry is None:
            served = ", ".join(self._entries)
            raise unavailable(model_id, f"not one of the served models ({served})")
        return entry

    # -- startup ---------------------------------------------------------------------------

    def check(self, model_id: str, probe: Callable[[str], object]) -> bool:
        """Run a cheap presence check; a failure is recorded as a failed load. True if present.

        Used at startup so that /health names every broken model at once,
        not only those a request happened to ask for.
        """
        with self._lock:
            entry = self._entry(model_id)
            if entry.state is not ModelState.NOT_LOADED:
                return entry.state is not ModelState.ERROR
        try:
            probe(model_id)
        except Exception as exc:
            self._failed(model_id, entry, exc)
            return False
        return True

    # -- what is where ---------------------------------------------------------------------

    def state(self, model_id: str) -> ModelState:
        with self._lock:
            return self._entry(model_id).state

    def error_type(self, model_id: str) -> type[BaseException] | None:
        with self._lock:
            return self._entry(model_id).error_type

    def unavailable(self) -> dict[str, str]:
        """Models whose last load failed, with the one-line reason."""
        with self._lock:
            return {
                model_id: entry.error or "failed to load"
                for model_id, entry in self._entries.items()
                if entry.state is ModelState.ERROR
            }

    def all_failed(self) -> bool:
        with self._lock:
            return all(e.state is ModelState.ERROR for e in self._entries.values())

    def loaded(self) -> dict[str, T]:
        with self._lock:
            return {
                model_id: entry.value
                for model_id, entry in self._entries.items()
                if entry.value is not None
            }

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per model: state, bytes held, and the failure while in error (for /stats)."""
        with self._lock:
            models: dict[str, dict[str, Any]] = {}
            for model_id, entry in self._entries.items():
                info: dict[str, Any] = {"state": entry.state.value, "bytes": entry.nbytes}
                if entry.error is not None:
                    info["error"] = entry.error
                models[model_id] = info
            return models

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes


def _notify(callback: Callable[..., None] | None, *args: Any) -> None:
    """Run a callback; its failure is logged, never allowed to wedge a model's state."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        logger.exception("model registry callback %r failed", callback)


def unavailable(model_id: str, reason: str) -> ServiceError:
    return ServiceError(ErrorKind.UNAVAILABLE, f"{model_id} is unavailable: {reason}")
