"""The service's errors, by kind: what went wrong, never how HTTP says it.

Any layer raises `ServiceError` with an `ErrorKind` and a message that is safe
and useful to show to the client; the engine and the decoders use it without
knowing HTTP. `api/errors.py` alone maps each kind to a status code and
headers (the contract's `{"detail": {"msg": ...}}` body), as roboflow's
inference maps its domain errors at the edge.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class ErrorKind(enum.Enum):
    """What a failure means for the client; the HTTP edge picks the status."""

    BAD_INPUT = "bad input"  # the request cannot be served as sent
    NOT_FOUND = "not found"  # it names something this server does not hold (any more)
    BUSY = "busy"  # what it names is in use by another request; try again soon
    TOO_LARGE = "too large"  # past a bound of this server's; send less
    UNAVAILABLE = "unavailable"  # the server cannot serve it now (loading, full, failed)
    INTERNAL = "internal"  # the server failed; the message is the reference's own


class ServiceError(Exception):
    """An error whose message is safe and useful to show to the client.

    `retry_after_s`: when trying again later can succeed, how long to wait.
    """

    def __init__(self, kind: ErrorKind, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s


class ImageNotCached(ServiceError):
    """The native API's "not found": the image was never uploaded, or its embedding
    was evicted. The HTTP edge adds how to upload it again."""

    def __init__(self, image_id: str, model_id: str) -> None:
        shown = image_id if len(image_id) <= 80 else image_id[:80] + "..."
        super().__init__(
            ErrorKind.NOT_FOUND,
            f"image {shown} is not cached on this server for model {model_id} (never uploaded, "
            "or evicted)",
        )


def bad_request(message: str) -> ServiceError:
    return ServiceError(ErrorKind.BAD_INPUT, message)


def field_too_large(limit: int) -> ServiceError:
    return ServiceError(
        ErrorKind.TOO_LARGE,
        f"A form field exceeds this server's limit of {limit} bytes (MAX_FIELD_BYTES).",
    )


# The reference's messages, kept verbatim: clients and dashboards match on them.
PIPELINE_ERROR = "Segment-anything-2 pipeline error."
OOM_ERROR = "Out of memory error. Try reducing input image resolution."


class Cancelled(Exception):
    """The client went away before this work started; nobody is waiting for its answer."""


def check_cancelled(cancelled: Callable[[], bool] | None) -> None:
    """Raise `Cancelled` when the request's client has gone (asked before work starts)."""
    if cancelled is not None and cancelled():
        raise Cancelled()


class ConfigError(Exception):
    """A setting the server cannot run with; the message is one line for the operator."""
