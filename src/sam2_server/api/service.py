"""What the HTTP layer needs from the engine, as a Protocol.

The API depends on this shape, not on `sam2_server.engine`, so that importing
the HTTP layer never imports torch and tests can see the boundary hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from sam2_server.domain import ImageInfo, Prediction, Prompt, Timings


class Segmenter(Protocol):
    @property
    def status(self) -> str:
        """LOADING, OK or ERROR."""
        ...

    @property
    def served_model_ids(self) -> tuple[str, ...]: ...

    @property
    def default_model_id(self) -> str: ...

    error: str | None

    def load(self) -> None:
        """Load the served models (blocking); called once, off the event loop."""
        ...

    def unavailable(self) -> dict[str, str]:
        """Models that cannot be served now, with a one-line reason each."""
        ...

    def image_size(self, image: bytes | BinaryIO) -> tuple[int, int]:
        """(width, height) from the image header, without decoding pixels; 400 if unreadable.

        `image` may be a seekable file: the upload, before it is read into memory.
        """
        ...

    def segment(
        self,
        model_id: str,
        image_bytes: bytes,
        prompt: Prompt,
        timings: Timings | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Prediction:
        """Raises `Cancelled` when `cancelled()` says the client left before work started."""
        ...

    def add_image(
        self,
        model_id: str,
        image_bytes: bytes,
        timings: Timings | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> ImageInfo:
        """Encode an upload (or find it cached) so that prompts can name it by its SHA-256."""
        ...

    def find_image(self, model_id: str, image_id: str) -> ImageInfo | None:
        """The image when its embedding is cached for `model_id`, else None."""
        ...

    def segment_cached(
        self,
        model_id: str,
        image_id: str,
        prompt: Prompt,
        timings: Timings | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> tuple[ImageInfo, Prediction]:
        """Decode a prompt on a cached image; ServiceError 404 when it is not cached."""
        ...

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters (cache hits and misses, images encoded) for GET /stats."""
        ...
