"""What a caller hands the client (images, image ids, videos, frame folders) as the bytes sent.

The bytes are what matters: an image's id is the SHA-256 of exactly the bytes
uploaded (`sam2_server.domain.image_id_of`, the one definition the server and
its cluster use too), so a PIL image or an array is written the same way every
time, and the client can ask for an image by id before uploading it.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeAlias

import numpy as np
from PIL import Image

from sam2_server.domain import IMAGE_ID_PATTERN, image_id_of

ImageLike: TypeAlias = (
    bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image | np.ndarray
)
"""An image: its encoded bytes, a file path, a PIL image or an H x W x 3 uint8 array."""

VideoFile: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO
"""A video (any container FFmpeg reads): its bytes, a file path, or a binary file object."""

Frames: TypeAlias = str | os.PathLike[str] | Sequence[ImageLike]
"""Frame images: a folder (its images in frame order, see `frame_files`), or images in order."""

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# -- images --------------------------------------------------------------------------------


def encode_image(image: ImageLike) -> bytes:
    """The bytes the client sends for `image` (and whose SHA-256 is its id).

    Bytes are sent as they are and files as read; a PIL image or an array is
    written as PNG (lossless, so the server sees exactly these pixels).
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    if isinstance(image, np.ndarray):
        image = _array_image(image)
    if isinstance(image, Image.Image):
        if image.mode not in {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}:
            image = image.convert("RGB")  # modes PNG cannot hold (CMYK, YCbCr, F ...)
        buffer = io.BytesIO()
        # Level 1: several times faster than the default for a few % more bytes;
        # an image is sent once and then prompted by id.
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    raise TypeError(
        "image must be bytes, a path, a PIL image or an H x W x 3 uint8 array, "
        f"got {type(image).__name__}"
    )


def _array_image(array: np.ndarray) -> Image.Image:
    """An array as a PIL image, refusing what PNG would not hold as the same pixels."""
    if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    ):
        raise ValueError(
            "an image array must be uint8, H x W x 3 (RGB), H x W x 4 or H x W; "
            f"got {array.dtype} with shape {array.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(array))


@dataclass(frozen=True)
class _Image:
    """An image's bytes with their id, computed once: both travel through every flow."""

    data: bytes
    id: str

    @classmethod
    def of(cls, image: ImageLike) -> _Image:
        data = encode_image(image)
        return cls(data, image_id_of(data))

    @property
    def part(self) -> tuple[str, bytes, str]:
        """The multipart `image` file part."""
        return ("image", self.data, _content_type(self.data))


def _content_type(data: bytes) -> str:
    """Named for the server's logs and proxies; the server reads the bytes, not this."""
    for magic, kind in (
        (b"\x89PNG", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF8", "image/gif"),
        (b"BM", "image/bmp"),
    ):
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _is_image_id(value: object) -> bool:
    """A 64-hex string that is not also a file here: a path wins."""
    return (
        isinstance(value, str)
        and bool(IMAGE_ID_PATTERN.fullmatch(value))
        and not os.path.exists(value)
    )


def _resolve(image_or_id: ImageLike) -> tuple[_Image | None, str]:
    """An uploaded image's id as itself (lower case, as the server spells it), anything else
    as the image to send: None for the image when only its id was given."""
    if _is_image_id(image_or_id):
        image_id = str(image_or_id).lower()
        return None, image_id
    image = _Image.of(image_or_id)
    return image, image.id


# -- videos and frame folders ---------------------------------------------------------------


def frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """A folder's frame images in frame order.

    SAM2's own loader takes `<number>.jpg` files sorted by their number; here
    names are compared number by number (`2.png` before `10.png`, `frame_9`
    before `frame_10`), which is that order for SAM2's folders and the
    expected one for other names and image types. Other files are left out.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of frame images")
    paths = [
        path
        for path in root.iterdir()
        if path.suffix.lower() in FRAME_SUFFIXES
        and not path.name.startswith(".")
        and path.is_file()
    ]
    if not paths:
        raise ValueError(f"{root} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
    return sorted(paths, key=lambda path: (_natural_key(path.name), path.name))


def _natural_key(name: str) -> list[tuple[int, str]]:
    return [
        (int(part), "") if part.isdigit() else (-1, part.lower())
        for part in re.split(r"(\d+)", name)
    ]


def _read_video(video: VideoFile) -> tuple[str, bytes]:
    """A video's file name (for its multipart part) and its bytes."""
    if isinstance(video, bytes | bytearray | memoryview):
        return "video", bytes(video)
    if isinstance(video, str | os.PathLike):
        path = Path(video)
        return path.name, path.read_bytes()
    content = video.read() if hasattr(video, "read") else None
    if not isinstance(content, bytes):
        raise TypeError(
            "video must be bytes, a path or a file opened in binary mode, "
            f"got {type(video).__name__}"
        )
    name = getattr(video, "name", None)
    return (Path(name).name if isinstance(name, str) else "video"), content
