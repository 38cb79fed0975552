"""Micro-batching of image encodes: concurrent misses share one encoder forward.

On a GPU one forward over 4 images costs far less than 4 forwards; on a CPU it
costs about the same, so the engine only batches where it pays (CUDA by
default). A single worker thread owns the encoder: it takes the first waiting
image, then whatever else arrives within `max_wait_s`, up to `max_batch`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[In]], Sequence[Out]],
        *,
        max_batch: int,
        max_wait_s: float,
        name: str = "encode-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[tuple[In, Future[Out]]] = queue.Queue()
        self.batches = 0  # forwards run, for stats and tests
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: In) -> Future[Out]:
        future: Future[Out] = Future()
        self._queue.put((item, future))
        return future

    def __call__(self, item: In) -> Out:
        return self.submit(item).result()

    def _collect(self, first: tuple[In, Future[Out]]) -> list[tuple[In, Future[Out]]]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            batch.append(nxt)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            batch = self._collect(first)
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self._run_batch([item for item, _ in live])
            except BaseException as exc:  # every waiter learns why
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            self.batches += 1
            for (_, fut), result in zip(live, results, strict=True):
                fut.set_result(result)
