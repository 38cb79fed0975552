"""The steps every inference route shares: model check, readiness, admission,
work in a worker thread that a departed client can abandon, and timings.

The Livepeer route and the native API differ in how they read a request and
write an answer; between those, a request takes the same path, so limits,
admission and failures behave the same on every surface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import numpy as np
from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import Receive

from sam2_server.api.admission import Admission, Ticket
from sam2_server.api.observe import RequestRecord, record_of
from sam2_server.api.service import Segmenter
from sam2_server.config import Settings
from sam2_server.domain import Prediction, Timings
from sam2_server.errors import PIPELINE_ERROR, Cancelled, ErrorKind, ServiceError, bad_request
from sam2_server.prompts import AutomaticLimits, PromptLimits

logger = logging.getLogger(__name__)

T = TypeVar("T")


def request_record(request: Request) -> RequestRecord:
    """The request's log/metrics record (a detached one when no observer runs)."""
    return record_of(request.scope) or RequestRecord("-", request.method, request.url.path)


def check_model(segmenter: Segmenter, model_id: str | None) -> str:
    """The request's model when served (else a 400 naming the served ones), or the default."""
    served = segmenter.served_model_ids
    if model_id and model_id not in served:
        # The reference's message; the echo is cut so a huge value is not sent back.
        shown = model_id if len(model_id) <= 200 else model_id[:200] + "..."
        raise bad_request(f"pipeline configured with {', '.join(served)} but called with {shown}.")
    return model_id or segmenter.default_model_id


def start_request(
    request: Request, segmenter: Segmenter, model_id: str | None
) -> tuple[RequestRecord, str]:
    """An inference request's first check, the model (400), and the record that the
    access log and metrics keep of it, naming the model it resolved to."""
    record = request_record(request)
    model = check_model(segmenter, model_id)
    record.details["model"] = model
    return record, model


def prompt_limits(settings: Settings) -> PromptLimits:
    """The work limits of every prompt, from the server's settings."""
    return PromptLimits(
        max_points=settings.max_points,
        max_objects=settings.max_objects,
        max_total_points=settings.max_total_points,
    )


def automatic_limits(settings: Settings) -> AutomaticLimits:
    """The bounds of every automatic-mask generation, from the server's settings."""
    return AutomaticLimits(
        max_points_per_side=settings.max_points_per_side,
        max_points_per_batch=settings.max_points_per_batch,
        max_total_points=settings.max_automatic_points,
        max_crop_layers=settings.max_crop_layers,
    )


def require_ready(segmenter: Segmenter) -> None:
    """503 while the start-up load runs. After it, even with every model failed
    (ERROR), requests go on to the engine: its 503 names the model and why, and
    it retries a failed load after a while, so a fixed file needs no restart."""
    if segmenter.status == "LOADING":
        raise ServiceError(
            ErrorKind.UNAVAILABLE, "The model is still loading; retry shortly.", retry_after_s=5
        )


async def run_admitted(
    request: Request,
    admission: Admission,
    cost: int,
    timings: Timings,
    work: Callable[[Callable[[], bool]], T],
) -> tuple[T, Ticket]:
    """Wait for `cost` bytes of budget, then run `work(cancelled)` in a worker thread.

    The caller releases the returned ticket once the answer's memory is gone
    (after sending it). A client that leaves while waiting gives its place up;
    one that leaves before a step starts has that step abandoned (`cancelled`).
    """
    record = request_record(request)
    async with _watch_disconnect(request.receive) as gone:
        ticket = await _admit(admission, cost, gone)
        try:
            result = await run_in_threadpool(_guarded, work, gone.is_set)
        except BaseException:
            ticket.release()
            raise
        finally:
            _record_timings(record, timings)
    return result, ticket


class Progressing(Generic[T]):
    """Admitted work running in a worker thread that reports its steps as they end, for
    an answer streamed as it goes (`responses.progress_stream`).

    A client that leaves stops it as it stops `run_admitted`'s work (`cancelled()`,
    asked before each step), and so does `release()`, called once the stream is over
    however it ended; the admission is given back when the work has stopped, since
    its memory is in use until then.
    """

    def __init__(
        self,
        task: asyncio.Future[T],
        steps: asyncio.Queue[int],
        gone: threading.Event,
        ticket: Ticket,
        watcher: asyncio.Task[None],
    ) -> None:
        self._task = task
        self._steps = steps
        self._gone = gone
        self._ticket = ticket
        self._watcher = watcher

    async def next_step(self) -> int | None:
        """How many steps are done, once one more has ended; None once the work has
        ended (its `result()` is then ready), after every step it reported."""
        if self._steps.empty() and not self._task.done():
            waiter = asyncio.ensure_future(self._steps.get())
            either: set[asyncio.Future[Any]] = {waiter, self._task}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not waiter.done():
                    waiter.cancel()  # a step not taken yet stays in the queue
            if waiter.done():
                return waiter.result()
        # The worker's steps reach the loop before its end does: none is left behind.
        return None if self._steps.empty() else self._steps.get_nowait()

    def result(self) -> T:
        """The work's answer, or its error (`ServiceError`, `Cancelled`), once it ended."""
        return self._task.result()

    def release(self) -> None:
        """The stream is over: nobody waits for the work any more. Idempotent."""
        self._gone.set()
        self._watcher.cancel()
        self._task.add_done_callback(self._finished)  # at once if it is done already

    def _finished(self, task: asyncio.Future[T]) -> None:
        if not task.cancelled():
            task.exception()  # read: an error nobody streamed is no "never retrieved" warning
        self._ticket.release()


async def start_progressing(
    request: Request,
    admission: Admission,
    cost: int,
    timings: Timings,
    work: Callable[[Callable[[], bool], Callable[[], None]], T],
) -> Progressing[T]:
    """Wait for `cost` bytes of budget, then start `work(cancelled, step)` in a worker
    thread, which calls `step()` as each of its steps ends (see `Progressing`)."""
    record = request_record(request)
    gone = threading.Event()
    watcher = asyncio.create_task(_watch(request.receive, gone))
    try:
        ticket = await _admit(admission, cost, gone)
    except BaseException:
        watcher.cancel()
        raise
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[int] = asyncio.Queue()
    done = 0

    def step() -> None:  # in the worker thread, one step after another
        nonlocal done
        done += 1
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
            loop.call_soon_threadsafe(steps.put_nowait, done)

    task = asyncio.ensure_future(
        run_in_threadpool(_guarded, lambda cancelled: work(cancelled, step), gone.is_set)
    )
    task.add_done_callback(lambda _: _record_timings(record, timings))
    return Progressing(task, steps, gone, ticket, watcher)


def _guarded(work: Callable[[Callable[[], bool]], T], cancelled: Callable[[], bool]) -> T:
    """As in the reference, a failure the engine did not classify is logged with
    its details and answered with the generic message only."""
    try:
        return work(cancelled)
    except (ServiceError, Cancelled):
        raise
    except Exception as exc:
        logger.exception("inference failed")
        raise ServiceError(ErrorKind.INTERNAL, PIPELINE_ERROR) from exc


def check_finite(prediction: Prediction) -> Prediction:
    """JSON has no spelling for NaN or infinity: every number would arrive as null."""
    if not (np.isfinite(prediction.scores).all() and np.isfinite(prediction.logits).all()):
        raise bad_request(
            "The prompt drove the model outside float32's range (non-finite output); "
            "check the magnitudes of the points, box and mask_input."
        )
    return prediction


@contextlib.asynccontextmanager
async def _watch_disconnect(receive: Receive) -> AsyncIterator[threading.Event]:
    """An event set when the client goes away while its request waits or runs.

    The body is fully read by now, so the next ASGI message can only be the
    disconnect; work that has not started yet is then abandoned.
    """
    gone = threading.Event()
    task = asyncio.create_task(_watch(receive, gone))
    try:
        yield gone
    finally:
        task.cancel()


async def _watch(receive: Receive, gone: threading.Event) -> None:
    """Set `gone` when the client disconnects (the body is read: nothing else can come)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _admit(admission: Admission, cost: int, gone: threading.Event) -> Ticket:
    """Wait for budget, giving the place up if the client leaves meanwhile."""
    waiting = asyncio.ensure_future(admission.acquire(cost))
    while not waiting.done():
        await asyncio.wait({waiting}, timeout=0.25)
        if gone.is_set() and not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            raise Cancelled()
    return waiting.result()


def _record_timings(record: RequestRecord, timings: Timings) -> None:
    # None: no embedding was looked up (e.g. refused for an unavailable model), so the
    # log line says nothing of the cache rather than a hit that never happened.
    if timings.cache_hit is not None:
        record.details["cache_hit"] = timings.cache_hit
    if timings.cache_hit is False:
        record.stages["image_decode"] = timings.decode_image_s
        record.stages["encode"] = timings.encode_s
    if timings.decode_s:
        record.stages["prompt_decode"] = timings.decode_s
