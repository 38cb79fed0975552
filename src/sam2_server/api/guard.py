"""ASGI middleware that answers before the body is read: auth, size and time limits.

FastAPI reads and parses the whole multipart body before any dependency runs,
so a token check in a dependency would still let an unauthenticated client
upload 100 MB. This middleware sits in front: a wrong token is a 401 and an
oversize request a 413 before a byte of the body is consumed. A body that
stalls (headers sent, the rest never) would otherwise hold its connection
and task forever: it gets a 408 and the connection is closed.

Every surface checks the same token, each in the way its clients send it
(`Surface.ways`): the bearer header everywhere; HTTP Basic's password for
Label Studio, the `Token` header for X-AnyLabeling, `api_key` (query or
JSON body) for Roboflow's SDK. The one body read before the check is a JSON
body that carries `api_key`, and only up to the size limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def error_body(message: str) -> bytes:
    return orjson.dumps({"detail": {"msg": message}})


# The ways a client may present the token, beyond `Authorization: Bearer <token>`.
BASIC = "basic"  # HTTP Basic, the token as the password (any user name)
TOKEN_HEADER = "token"  # `Token: <token>`, or `Authorization: Token <token>`
API_KEY = "api_key"  # `?api_key=<token>`, or `"api_key"` in a JSON body


@dataclass(frozen=True)
class Surface:
    """Paths that share one way of authenticating and one shape of error body."""

    name: str
    paths: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    ways: frozenset[str] = frozenset()
    # Answered without the token (OPEN_SURFACES); a token sent is still checked.
    open: bool = False
    body: Callable[[int, str], bytes] = field(default=lambda status, message: error_body(message))
    challenge: bytes = b"Bearer"
    # Paths under the prefixes that stay open, as the tool's own server leaves them.
    public: tuple[str, ...] = ()

    def covers(self, path: str) -> bool:
        if path in self.public:
            return False
        return path in self.paths or any(
            path == prefix or path.startswith(prefix + "/") for prefix in self.prefixes
        )


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        auth_token: str | None,
        max_request_bytes: int,
        surfaces: tuple[Surface, ...] = (),
        read_timeout_s: float = 30.0,
        total_timeout_s: float = 300.0,
    ) -> None:
        self.app = app
        self.auth_token = auth_token
        self.surfaces = tuple(
            Surface(
                name=s.name,
                paths=tuple(p.rstrip("/") for p in s.paths),
                prefixes=tuple(p.rstrip("/") for p in s.prefixes),
                ways=s.ways,
                open=s.open,
                body=s.body,
                challenge=s.challenge,
                public=tuple(p.rstrip("/") for p in s.public),
            )
            for s in surfaces
        )
        self.max_request_bytes = max_request_bytes
        self.read_timeout_s = read_timeout_s
        self.total_timeout_s = total_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/")
        surface = next((s for s in self.surfaces if s.covers(path)), None)
        body = surface.body if surface else (lambda status, message: error_body(message))
        verdict: bool | None = True
        if self.auth_token and surface is not None:
            verdict = self._authorized(scope, surface)
            if verdict is False:
                await self._unauthorized(send, surface)
                return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_request_bytes:
            await _respond(send, 413, self._too_large(), body=body)
            return
        if verdict is None and surface is not None:  # the token may be in the JSON body
            await self._check_body_key(scope, receive, send, surface)
            return
        await self._call_limited(scope, receive, send, body)

    def _authorized(self, scope: Scope, surface: Surface) -> bool | None:
        """True or False from the headers and query; None: look for `api_key` in the body."""
        presented = _presented(scope, surface.ways)
        if presented:
            return any(self._matches(value) for value in presented)
        if surface.open:
            return True
        if API_KEY in surface.ways and _is_json(scope):
            return None
        return False

    def _matches(self, value: bytes) -> bool:
        assert self.auth_token is not None
        return hmac.compare_digest(value.strip(), self.auth_token.encode())

    async def _unauthorized(self, send: Send, surface: Surface) -> None:
        message = "Invalid or missing token." if surface.ways else "Invalid bearer token."
        await _respond(
            send, 401, message, extra=[(b"www-authenticate", surface.challenge)], body=surface.body
        )

    async def _check_body_key(
        self, scope: Scope, receive: Receive, send: Send, surface: Surface
    ) -> None:
        """Read the JSON body (within the limits), check its `api_key`, then replay it."""
        chunks: list[bytes] = []
        rejected = False

        async def collect(message: Message) -> None:
            nonlocal rejected
            if message.get("type") == "http.response.start":
                rejected = True
            await send(message)

        async def read(scope: Scope, receive: Receive, send: Send) -> None:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return

        await self._call_limited(scope, receive, collect, surface.body, app=read)
        if rejected:  # 408 or 413 already sent
            return
        raw = b"".join(chunks)
        try:
            key = orjson.loads(raw).get("api_key") if raw else None
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        if not isinstance(key, str) or not self._matches(key.encode()):
            await self._unauthorized(send, surface)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

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

    async def _call_limited(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: Callable[[int, str], bytes],
        app: ASGIApp | None = None,
    ) -> None:
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
            await _respond(send, status, message, extra=[(b"connection", b"close")], body=body)
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

        await (app or self.app)(scope, limited_receive, guarded_send)


def _presented(scope: Scope, ways: frozenset[str]) -> list[bytes]:
    """Every credential the request carries in a way its surface accepts."""
    found: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            scheme = scheme.lower()
            if scheme == b"bearer" or (scheme == b"token" and TOKEN_HEADER in ways):
                found.append(credentials)
            elif scheme == b"basic" and BASIC in ways:
                found.append(_basic_password(credentials))
        elif name == b"token" and TOKEN_HEADER in ways:
            found.append(value)
    if API_KEY in ways:
        query = scope.get("query_string", b"").decode("latin-1")
        found.extend(v.encode() for k, v in parse_qsl(query) if k == "api_key")
    return found


def _basic_password(credentials: bytes) -> bytes:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""
    return decoded.partition(b":")[2]


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type: bytes = value.split(b";")[0].strip().lower()
            return media_type == b"application/json"
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _respond(
    send: Send,
    status: int,
    message: str,
    extra: list[tuple[bytes, bytes]] | None = None,
    body: Callable[[int, str], bytes] = lambda status, message: error_body(message),
) -> None:
    content = body(status, message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
