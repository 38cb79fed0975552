"""How an answer leaves: written off the event loop, or streamed holding its admission.

Every surface answers through these, so an answer's memory stays counted by
admission until its last byte is sent, however the response ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

import orjson
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from sam2_server.api.admission import Ticket
from sam2_server.api.observe import RequestRecord

logger = logging.getLogger(__name__)


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
    """

    def __init__(
        self,
        content: Iterator[bytes] | AsyncIterator[bytes],
        ticket: Releasable,
        media_type: str,
        stall_timeout_s: float,
    ) -> None:
        super().__init__(content, media_type=media_type)
        self.ticket = ticket
        self.stall_timeout_s = stall_timeout_s

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
