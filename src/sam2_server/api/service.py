"""What the HTTP layer needs from the engine, as a Protocol.

The API depends on this shape, not on `sam2_server.engine`, so that importing
the HTTP layer never imports torch and tests can see the boundary hold.
"""

from __future__ import annotations

from typing import Any, Protocol

from sam2_server.domain import Prediction, Prompt


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

    def segment(self, model_id: str, image_bytes: bytes, prompt: Prompt) -> Prediction: ...

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters (cache hits and misses, images encoded) for GET /stats."""
        ...
