"""ASGI middleware that answers before the body is read: auth and size limits.

FastAPI reads and parses the whole multipart body before any dependency runs,
so a token check in a dependency would still let an unauthenticated client
upload 100 MB. This middleware sits in front: a wrong token is a 401 and an
oversize request a 413 before a byte of the body is consumed.
"""

from __future__ import annotations

import hmac

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
    ) -> None:
        self.app = app
        self.auth_token = auth_token
        self.protected = {p.rstrip("/") for p in protected_paths}
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        protected = scope["path"].rstrip("/") in self.protected
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

    async def _call_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count streamed bytes; past the limit answer 413 and tell the app the client left."""
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    rejected = True
                    await _respond(send, 413, self._too_large())
                    return {"type": "http.disconnect"}
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
