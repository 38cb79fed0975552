"""A raw ASGI request, for tests that must leave mid-answer as a browser's Stop does
(TestClient reads every answer to its end)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def post_scope(path: str, body: bytes, *, accept: str | None = None) -> dict[str, Any]:
    """The ASGI scope of a JSON POST of `body` to `path` from loopback."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if accept is not None:
        headers.append((b"accept", accept.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": b"",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


def leave_mid_answer(
    app: Any,
    path: str,
    body: bytes,
    *,
    leave_after: Callable[[bytes], bool],
    settled: Callable[[], bool],
    accept: str | None = None,
) -> list[bytes]:
    """POST `body` to `path` on `app` and disconnect as soon as a body chunk for which
    `leave_after` holds has been sent; then wait (up to a minute) until `settled()`, since
    the work ends at its next step after the client leaves, not at once.

    Returns the chunks `leave_after` held for, in the order sent (the first one is the
    one the client left after).
    """
    scope = post_scope(path, body, accept=accept)
    left = asyncio.Event()
    requested = False
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and leave_after(message.get("body", b"")):
            chunks.append(message["body"])
            left.set()

    async def run() -> None:
        await asyncio.wait_for(app(scope, receive, send), timeout=120)
        for _ in range(1200):
            if settled():
                return
            await asyncio.sleep(0.05)

    asyncio.run(run())
    return chunks
