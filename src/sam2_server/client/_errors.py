"""How the client reports a server's error answer: one exception, the server's own message."""

from __future__ import annotations

from typing import Any

import httpx


class Sam2Error(Exception):
    """The server answered with an error; `message` is its `detail.msg`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


def error_of(response: httpx.Response) -> Sam2Error:
    """The server's message: `detail.msg`, FastAPI's 422 list, or whatever came back."""
    message = response.reason_phrase or "error"
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
        text = response.text.strip()
        if text:
            message = text[:300]
    if isinstance(detail, dict) and isinstance(detail.get("msg"), str):
        message = detail["msg"]
    elif isinstance(detail, str):
        message = detail
    elif isinstance(detail, list) and detail:
        message = "; ".join(_validation_message(item) for item in detail)
    return Sam2Error(response.status_code, message)


def _validation_message(item: Any) -> str:
    """One entry of FastAPI's 422 list as `field.path: message` (the `body` prefix dropped)."""
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    return f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", ""))
