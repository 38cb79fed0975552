"""The one exception type of the service.

Any layer raises `ServiceError` with the status a client should see; the API
layer alone turns it into the contract's `{"detail": {"msg": ...}}` body. The
engine uses it without knowing HTTP: a status code is just a number here.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error whose message is safe and useful to show to the client."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, message)


def field_too_large(limit: int) -> ServiceError:
    return ServiceError(
        413, f"A form field exceeds this server's limit of {limit} bytes (MAX_FIELD_BYTES)."
    )


def image_not_cached(image_id: str, model_id: str) -> ServiceError:
    """The native API's 404: the image was never uploaded, or its embedding was evicted."""
    shown = image_id if len(image_id) <= 80 else image_id[:80] + "..."
    return ServiceError(
        404,
        f"image {shown} is not cached on this server for model {model_id} (never uploaded, "
        "or evicted); upload it again with POST /v1/images.",
    )


# The reference's messages, kept verbatim: clients and dashboards match on them.
PIPELINE_ERROR = "Segment-anything-2 pipeline error."
OOM_ERROR = "Out of memory error. Try reducing input image resolution."


class Cancelled(Exception):
    """The client went away before this work started; nobody is waiting for its answer."""


class ConfigError(Exception):
    """A setting the server cannot run with; the message is one line for the operator."""
