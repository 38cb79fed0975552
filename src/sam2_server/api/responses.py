"""How an answer leaves: written off the event loop, or streamed holding its admission.

Every surface answers through these, so an answer's memory stays counted by
admission until its last byte is sent, however the response ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any, Protocol, TypeVar

import orjson
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive, Scope, Send

from sam2_server.api.admission import Ticket
from sam2_server.api.errors import service_error_line
from sam2_server.api.observe import RequestRecord
from sam2_server.api.pipeline import Progressing
from sam2_server.codecs.lines import error_line, progress_line, result_line
from sam2_server.errors import PIPELINE_ERROR, Cancelled, ServiceError

logger = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
T = TypeVar("T")


def json_response(content: dict[str, Any], status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


async def serialise(record: RequestRecord, ticket: Ticket, encode: Callable[[], bytes]) -> Response:
    """Write a whole (small) answer off the event loop, then give the budget back."""
    try:
        started = time.perf_counter()
        body = await run_in_threadpool(encode)
        record.stages["serialise"] = time.perf_counter() - started
    finally:
        ticket.release()
    return Response(body, media_type="application/json")


class Releasable(Protocol):
    def release(self) -> None:
        """Idempotent: called once the response is over, however it ended."""
        ...


class TicketedStream(StreamingResponse):
    """A streamed answer that holds its admission ticket until the last byte
    is sent, or the client goes away: the prediction's memory lives that long.

    A client that stops reading would hold that memory forever (the socket's
    buffers fill and every send waits), so a send that makes no progress for
    `stall_timeout_s` ends the response and closes the connection.

    With `record`, an answer whose last byte was never sent (the client left, or
    stopped reading) is logged and counted as 499, as one that never started is.
    """

    def __init__(
        self,
        content: Iterator[bytes] | AsyncIterator[bytes],
        ticket: Releasable,
        media_type: str,
        stall_timeout_s: float,
        record: RequestRecord | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type)
        self.ticket = ticket
        self.stall_timeout_s = stall_timeout_s
        self.record = record
        self.complete = False
        self.body_iterator = self._tracked(self.body_iterator)

    async def _tracked(self, chunks: AsyncIterable[Any]) -> AsyncIterator[Any]:
        async for chunk in chunks:
            yield chunk
        self.complete = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), timeout=self.stall_timeout_s)
            except asyncio.TimeoutError:
                raise OSError("client stopped reading the answer") from None

        try:
            await super().__call__(scope, receive, timed_send)
        except (OSError, ClientDisconnect) as exc:
            # The client left or stopped reading: nothing to answer, and the
            # unfinished response makes the server close the connection.
            logger.info("answer not delivered: %s", exc or "client disconnected")
        finally:
            self.ticket.release()
            if self.record is not None and not self.complete:
                self.record.status = 499  # what the client got was not the answer


def accepts_ndjson(request: Request) -> bool:
    """Whether the request's `Accept` names `application/x-ndjson` (with no q=0)."""
    for item in request.headers.get("accept", "").split(","):
        media_type, *params = (part.strip().lower() for part in item.split(";"))
        if media_type == NDJSON and not any(p.replace(" ", "") in ("q=0", "q=0.0") for p in params):
            return True
    return False


async def progress_stream(
    record: RequestRecord,
    work: Progressing[T],
    total: int,
    answer: Callable[[T], bytes],
    stall_timeout_s: float,
) -> Response:
    """NDJSON of work in progress: `{"progress": {"done", "total"}}` as each of its
    `total` steps ends, then `{"result": answer(result)}`.

    The first line is awaited before the response starts, so a failure until then
    is an ordinary error answer with its status; after it, the stream ends with an
    error line instead. The work holds its admission until it has stopped, and
    stops once the stream ends, however it ends (see `Progressing`).
    """
    try:
        first = await work.next_step()
        if first is None:
            work.result()  # ended before any step: its error, if it failed
    except BaseException:
        work.release()
        raise

    async def lines() -> AsyncIterator[bytes]:
        step = first
        try:
            while step is not None:
                yield progress_line(step, total)
                step = await work.next_step()
            yield result_line(await run_in_threadpool(answer, work.result()))
        except Cancelled:
            raise ClientDisconnect() from None  # the client left: the answer stays unfinished
        except ServiceError as exc:
            yield service_error_line(exc)
        except Exception:
            logger.exception("%s %s failed", record.method, record.route)
            yield error_line(500, PIPELINE_ERROR)

    return TicketedStream(lines(), work, NDJSON, stall_timeout_s, record)
