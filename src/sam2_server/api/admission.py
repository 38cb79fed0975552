"""Admission by a memory budget, with a bounded queue in front of it.

A request's working memory is dominated by its full-resolution answer
(objects x candidates x height x width floats, held several times over while
SAM2 upsamples, thresholds and sorts it), not by its upload: three 105 KB
PNGs of 6000x6000 pixels once took 7.9 GB together. Each request is
admitted with an estimate of that memory; while the requests running hold
the whole budget, newcomers wait in FIFO order, and past `max_queue` waiters
they get a 503 with Retry-After instead of queueing without bound.

Everything runs on the event loop: no locks, only futures.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from sam2_server.errors import ErrorKind, ServiceError

# Floats held at once per answer element: SAM2's upsampled logits, the copy
# `predict` makes for numpy, the best-first sorted copy, and slack for
# thresholding and the text being written (4 bytes each).
_BYTES_PER_ANSWER_ELEMENT = 16
# Decoding an uncached image: the RGB pixels, plus its copies on the way to the
# encoder (a 1024x1024 float tensor and the encoder's activations).
_BYTES_PER_PIXEL = 8
_FIXED_BYTES = 64 * 1024 * 1024


def estimate_work_bytes(objects: int, candidates: int, height: int, width: int) -> int:
    """Working memory of one request, from its shape alone (calibrated on CPU)."""
    pixels = height * width
    return (
        objects * candidates * pixels * _BYTES_PER_ANSWER_ELEMENT
        + pixels * _BYTES_PER_PIXEL
        + _FIXED_BYTES
    )


@dataclass
class Ticket:
    """One admitted request's share of the budget; release it exactly once."""

    admission: Admission
    cost: int
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._release(self.cost)


class Admission:
    """A byte budget shared by running requests, and a bounded FIFO of waiting ones."""

    def __init__(self, budget_bytes: int, max_queue: int, *, retry_after_s: int = 2) -> None:
        self.budget = budget_bytes
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.in_use = 0
        self.running = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def acquire(self, cost: int) -> Ticket:
        """Wait for `cost` bytes of budget; a 503 at once when the queue is full.

        A request larger than the whole budget runs alone rather than never.
        Cancelling the wait (the client left) gives its place up.
        """
        cost = max(1, min(cost, self.budget))
        if not self._waiting and self.in_use + cost <= self.budget:
            return self._grant(cost)
        if len(self._waiting) >= self.max_queue:
            raise ServiceError(
                ErrorKind.UNAVAILABLE,
                "The server is at capacity; retry shortly.",
                retry_after_s=self.retry_after_s,
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (cost, future)
        self._waiting.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._release(cost)  # granted, but the waiter is gone
            else:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                self._wake()
            raise
        return Ticket(self, cost)

    def _grant(self, cost: int) -> Ticket:
        self.in_use += cost
        self.running += 1
        return Ticket(self, cost)

    def _release(self, cost: int) -> None:
        self.in_use -= cost
        self.running -= 1
        self._wake()

    def _wake(self) -> None:
        """Admit waiters in arrival order while the first of them fits."""
        while self._waiting and self.in_use + self._waiting[0][0] <= self.budget:
            cost, future = self._waiting.popleft()
            if future.done():
                continue
            self.in_use += cost
            self.running += 1
            future.set_result(None)
