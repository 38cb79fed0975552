"""The server's ASGI app, driven in-process on a request that came over Ray.

A replica runs the very app `sam2-server serve` runs (same routes, guard,
errors, streaming), so the cluster serves the same API without a second
copy of the HTTP layer. The ingress sends the request as plain data; the
replica feeds it to the app and yields the answer back as it is produced:
first its status and headers, then body chunks (a propagation's NDJSON
lines leave as they are computed). Closing the iterator (the client left)
tells the app the client disconnected, which stops its work as it would
under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.types import ASGIApp, Message

logger = logging.getLogger(__name__)

_DISCONNECT_GRACE_S = 5.0  # for the app to see the disconnect and return before it is cancelled


@dataclass(frozen=True)
class ForwardedRequest:
    method: str
    path: str
    query_string: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    client: tuple[str, int] | None = None


@dataclass(frozen=True)
class Head:
    status: int
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())
    # The first body chunk rides with the head: most answers are one chunk, and
    # every item of a stream is a round trip through Ray.
    body: bytes = b""


# A replica's answer for a session it does not hold: the ingress asks again
# (cluster/ingress.py). 421 Misdirected Request, marked so no app answer is mistaken for it.
ELSEWHERE = Head(421, ((b"x-sam2-cluster", b"elsewhere"),))


async def run_http(app: ASGIApp, request: ForwardedRequest) -> AsyncIterator[Head | bytes]:
    """Yield the app's answer to `request`: a Head with the first chunk, then the others."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query_string,
        "root_path": "",
        "headers": list(request.headers),
        "client": request.client,
        "server": None,
    }
    gone = asyncio.Event()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    messages: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=8)

    async def send(message: Message) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await messages.put(None)

    task = asyncio.create_task(run())
    try:
        head: Head | None = None
        while True:
            message = await messages.get()
            if message is None:
                break
            if message["type"] == "http.response.start":
                head = Head(message["status"], tuple(message.get("headers", ())))
            elif message["type"] == "http.response.body":
                body = bytes(message.get("body", b""))
                if head is not None:
                    yield replace(head, body=body)
                    head = None
                elif body:
                    yield body
                if not message.get("more_body", False):
                    break
        if head is not None:  # started, then the app failed before any body
            yield head
        try:
            await task
        except Exception:
            # Starlette answered the client already (a 500) before re-raising: log it
            # here, as uvicorn would, rather than break a finished answer.
            logger.exception("%s %s failed", request.method, request.path)
    finally:
        gone.set()
        if not task.done():
            # The consumer left mid-answer: the app saw `http.disconnect`; give it
            # a moment to stop its work cleanly, then cancel what is left.
            while not messages.empty():
                messages.get_nowait()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(_drain(task, messages), _DISCONNECT_GRACE_S)
            task.cancel()


async def _drain(task: asyncio.Task[None], messages: asyncio.Queue[Message | None]) -> None:
    """Let the app finish: keep taking (and dropping) what it sends until it returns."""
    while not task.done():
        getter = asyncio.ensure_future(messages.get())
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()


class Lifespan:
    """The app's ASGI lifespan (startup: model loading starts), run by the replica."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async def receive() -> Message:
            return await self._events.get()

        async def send(message: Message) -> None:
            if message["type"].startswith("lifespan.startup"):
                self._started.set()
            elif message["type"].startswith("lifespan.shutdown"):
                self._stopped.set()

        self._task = asyncio.create_task(self._app({"type": "lifespan"}, receive, send))
        await self._events.put({"type": "lifespan.startup"})
        await self._started.wait()

    async def stop(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._events.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), 10.0)
