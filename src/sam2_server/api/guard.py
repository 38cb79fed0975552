"""ASGI middleware that answers before the body is read: auth, size and time limits.

FastAPI reads and parses the whole multipart body before any dependency runs,
so a token check in a dependency would still let an unauthenticated client
upload 100 MB. This middleware sits in front: a wrong token is a 401 and an
oversize request a 413 before a byte of the body is consumed. A body that
stalls (headers sent, the rest never) would otherwise hold its connection
and task forever: it gets a 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def error_body(message: str) -> bytes:
    return orjson.dumps({"detail": {"msg": message}})


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        auth_token: str | None,
        protected_paths: tuple[str, ...],
        max_request_bytes: int,
        protected_prefixes: tuple[str, ...] = (),
        read_timeout_s: float = 30.0,
        total_timeout_s: float = 300.0,
    ) -> None:
        self.app = app
        self.auth_token = auth_token
        self.protected = {p.rstrip("/") for p in protected_paths}
        self.protected_prefixes = tuple(p.rstrip("/") for p in protected_prefixes)
        self.max_request_bytes = max_request_bytes
        self.read_timeout_s = read_timeout_s
        self.total_timeout_s = total_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/")
        protected = path in self.protected or any(
            path == prefix or path.startswith(prefix + "/") for prefix in self.protected_prefixes
        )
        if self.auth_token and protected and not self._authorized(scope):
            await _respond(
                send, 401, "Invalid bearer token.", extra=[(b"www-authenticate", b"Bearer")]
            )
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_request_bytes:
            await _respond(send, 413, self._too_large())
            return
        await self._call_limited(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() != b"bearer" or not credentials:
            return False
        assert self.auth_token is not None
        return hmac.compare_digest(credentials.strip(), self.auth_token.encode())

    def _too_large(self) -> str:
        return (
            f"Request body exceeds this server's limit of {self.max_request_bytes} bytes "
            "(MAX_REQUEST_BYTES)."
        )

    def _too_slow(self) -> str:
        return (
            f"The request body did not arrive in time: nothing for {self.read_timeout_s:g} s "
            f"(BODY_READ_TIMEOUT) or not whole after {self.total_timeout_s:g} s "
            "(BODY_TOTAL_TIMEOUT)."
        )

    async def _call_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count streamed bytes and time the body; past a limit answer 413 or 408 and
        tell the app the client left.

        Only the body is timed: once it is complete, the app may wait on
        `receive` for as long as it likes (that is how it learns of a disconnect).
        """
        received = 0
        rejected = False
        body_done = False
        deadline = time.monotonic() + self.total_timeout_s

        async def reject(status: int, message: str) -> Message:
            nonlocal rejected
            rejected = True
            await _respond(send, status, message, extra=[(b"connection", b"close")])
            return {"type": "http.disconnect"}

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if rejected:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            wait = min(self.read_timeout_s, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait, 0.001))
            except asyncio.TimeoutError:
                return await reject(408, self._too_slow())
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_request_bytes:
                    return await reject(413, self._too_large())
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:  # after our 413 the app's own answer has nowhere to go
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _respond(
    send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = error_body(message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
