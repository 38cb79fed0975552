"""What the HTTP layer needs from the engine, as a Protocol.

The API depends on this shape, not on `sam2_server.engine`, so that importing
the HTTP layer never imports torch and tests can see the boundary hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO, Protocol

from sam2_server.domain import (
    AutomaticParams,
    FrameMasks,
    ImageInfo,
    MaskRecord,
    Prediction,
    Prompt,
    VideoInfo,
    VideoPrompt,
    Work,
)


class VideoService(Protocol):
    """Video sessions: SAM2's video state for one clip each, bounded and expiring.

    Every method raises ServiceError: 404 for an unknown session or object, 400
    for a bad prompt, 409 while the session is busy propagating, 413/503 past
    the session bounds.
    """

    def open(
        self,
        model_id: str,
        *,
        video: BinaryIO | None = None,
        frames: Sequence[BinaryIO] = (),
        cancelled: Callable[[], bool] | None = None,
    ) -> VideoInfo:
        """Decode a clip (a video file, or frame images in order) into a new session."""
        ...

    def get(self, video_id: str) -> VideoInfo: ...

    def prompt(self, video_id: str, prompt: VideoPrompt) -> FrameMasks:
        """Add points/box for one object on one frame: every object's mask on that frame."""
        ...

    def propagate(
        self,
        video_id: str,
        start_frame_index: int | None,
        max_frames: int | None,
        reverse: bool,
    ) -> Iterator[FrameMasks]:
        """Checks at once (400/404/409); then yields one frame per step, computed lazily.

        Closing the iterator early stops the work and frees the session for other calls.
        """
        ...

    def remove_object(self, video_id: str, object_id: int) -> VideoInfo: ...

    def reset(self, video_id: str) -> VideoInfo: ...

    def close(self, video_id: str) -> None: ...


class Segmenter(Protocol):
    @property
    def status(self) -> str:
        """LOADING, OK or ERROR."""
        ...

    @property
    def served_model_ids(self) -> tuple[str, ...]: ...

    @property
    def default_model_id(self) -> str: ...

    @property
    def error(self) -> str | None:
        """The failed loads in one line, for /health's 503s; None when all is well."""
        ...

    def load(self) -> None:
        """Load the served models (blocking); called once, off the event loop."""
        ...

    def unavailable(self) -> dict[str, str]:
        """Models that cannot be served now, with a one-line reason each."""
        ...

    def describe_models(self) -> list[dict[str, Any]]:
        """Each served model, in MODEL_ID's order, for GET /v1/models: `model_id`, `default`,
        `family` ("sam2", "edgetam"; null when its files cannot be read), `input_size`
        (pixels per side, or null), `state` (the registry's), `loaded`, `video`,
        `automatic_masks` (booleans) and `error` (a one-line reason, or null)."""
        ...

    def image_size(self, image: bytes | BinaryIO) -> tuple[int, int]:
        """(width, height) from the image header, without decoding pixels; 400 if unreadable.

        `image` may be a seekable file: the upload, before it is read into memory.
        """
        ...

    def segment(
        self, model_id: str, image_bytes: bytes, prompt: Prompt, work: Work | None = None
    ) -> Prediction:
        """Raises `Cancelled` when `work.cancelled()` says the client left before work started."""
        ...

    def add_image(self, model_id: str, image_bytes: bytes, work: Work | None = None) -> ImageInfo:
        """Encode an upload (or find it cached) so that prompts can name it by its SHA-256."""
        ...

    def find_image(self, model_id: str, image_id: str) -> ImageInfo | None:
        """The image when its embedding is cached for `model_id`, else None."""
        ...

    def segment_cached(
        self, model_id: str, image_id: str, prompt: Prompt, work: Work | None = None
    ) -> tuple[ImageInfo, Prediction]:
        """Decode a prompt on a cached image; ImageNotCached when it is not cached."""
        ...

    def automatic_warnings(self, params: AutomaticParams) -> list[str]:
        """What `params` ask for that the library will skip on this server, one line each."""
        ...

    def automatic_masks(
        self, model_id: str, image_id: str, params: AutomaticParams, work: Work | None = None
    ) -> tuple[ImageInfo, list[MaskRecord]]:
        """SAM2AutomaticMaskGenerator on a cached image, records in the library's order.

        ServiceError 404 when the image is not cached; `Cancelled` between
        batches once `cancelled()` says the client left.
        """
        ...

    @property
    def videos(self) -> VideoService: ...

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters (cache hits and misses, images encoded) for GET /stats."""
        ...

    def hardware(self) -> dict[int, dict[str, Any]]:
        """The GPU(s) computing, by CUDA index, for GET /hardware/info and /hardware/stats.

        Each entry: id, name, memory_total, memory_free (bytes), major, minor,
        utilization_compute, utilization_memory (percent). Empty without a GPU.
        """
        ...
