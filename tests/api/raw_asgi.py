"""A raw ASGI request, for tests that must leave mid-answer as a browser's Stop does
(TestClient reads every answer to its end)."""

from __future__ import annotations

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
