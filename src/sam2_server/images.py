"""Upload bytes → RGB image, with the failures a client caused reported as 400.

The reference opens uploads with `ImageFile.LOAD_TRUNCATED_IMAGES = True` and
answers 500 on anything it cannot read; here a non-image, a truncated or
corrupt file or a decompression bomb is the client's problem and says so.

Pillow's plugins fail in many ways on bad input (OSError, SyntaxError,
struct.error, EOFError, IndexError, ValueError, TypeError, and warnings when
they are turned into errors), and not only in `Image.open`: also in `load()`
and `convert()`. Every stage therefore turns any exception into a 400 whose
message starts with "image:", except MemoryError, which is the server's
problem and must reach the engine's out-of-memory handling.

This module must stay cheap to import and never import torch (it lives
outside `engine/` for that): the API layer probes uploads with `probe_image`
before any model work, and the CLI draws its overlay on the image exactly as
the model was given it, without torch in its `--url` mode.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from sam2_server.errors import ServiceError, bad_request

# Pillow's own bomb check is global, warns below twice its limit and raises
# without the image size. The pixel count is checked here instead, from the
# header, before any pixel data is decoded, against the server's setting.
Image.MAX_IMAGE_PIXELS = None

NOT_AN_IMAGE = (
    "image: the uploaded file is not an image format this server can read "
    "(png, jpeg, webp, gif, bmp, tiff ...)."
)

# Leading bytes of the common formats: when Pillow cannot identify a file that
# starts like one of them, the client sent a truncated or damaged image, not a
# non-image, and the message should say so.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    *((b"P" + bytes([digit]), "PNM") for digit in b"123456"),
)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_DETAIL_CHARS = 200


def probe_image(data: bytes | BinaryIO, *, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header alone, with the checks `decode_image` makes.

    No pixel data is decoded, so this is cheap even for a decompression bomb:
    the API layer calls it before any work to refuse bad uploads early and to
    estimate the size of the answer. Raises the same 400s as `decode_image`
    for an empty upload, a non-image, a truncated or corrupt header, an image
    with no pixels and one over `max_pixels`.

    `data` may be a seekable binary file (the server's spooled upload), so a
    request waiting for admission need not hold its whole image in memory;
    only the header is read from it.
    """
    stream = data if hasattr(data, "read") else io.BytesIO(data)  # type: ignore[arg-type]
    try:
        return _open_checked(stream, max_pixels=max_pixels).size
    finally:
        stream.seek(0)


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode to an RGB PIL image of exactly the size `probe_image` reports.

    Normal modes (1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr ...) convert as the
    reference does, with `.convert("RGB")` (alpha dropped); high bit depth and
    float grayscale, which that call would clip to white or black, are scaled
    to 8 bits instead (see `_gray_to_8bit`). A multi-frame file gives its
    first frame, as Pillow does.

    EXIF orientation is deliberately not applied: the reference does not, and
    clients' point coordinates refer to the stored pixel grid.
    """
    image = _open_checked(io.BytesIO(data), max_pixels=max_pixels)
    header_size = image.size
    _load(image)
    if image.size != header_size:
        # A few plugins (ICO, ICNS ...) resize on load when the header lied;
        # callers size their answers from the probe, so hold them to it.
        raise bad_request(
            f"image: the decoded size {_size(image.size)} differs from the "
            f"{_size(header_size)} in the header; the file is corrupt."
        )
    return _to_rgb(image)


def _open_checked(stream: BinaryIO, *, max_pixels: int) -> Image.Image:
    """Open the header and check it: the one place for the checks both entry points make."""
    stream.seek(0)
    head = stream.read(64)
    if not head:
        raise bad_request("image: the uploaded file is empty.")
    stream.seek(0)
    return _check_size(_open(stream, head), max_pixels)


def _check_size(image: Image.Image, max_pixels: int) -> Image.Image:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise bad_request(f"image: the image has no pixels ({_size(image.size)}).")
    if width * height > max_pixels:
        raise bad_request(
            f"image: {width}x{height} is larger than this server's limit of {max_pixels} "
            "pixels (possible decompression bomb); resize it or raise MAX_IMAGE_PIXELS."
        )
    return image


def _open(stream: BinaryIO, head: bytes) -> Image.Image:
    """`Image.open`: reads the header only; pixels are decoded later, by `load()`.

    `head` is the file's first bytes, to tell a damaged image from a non-image.
    """
    try:
        return Image.open(stream)
    except MemoryError:
        raise
    except UnidentifiedImageError:
        raise _unidentified(head) from None
    except Exception as exc:  # any plugin error on a bad header is the client's
        raise bad_request(
            "image: the image header could not be read, the file may be truncated "
            f"or corrupt ({_describe(exc)})."
        ) from None


def _unidentified(data: bytes) -> ServiceError:
    """Pillow gave up on every format: a damaged known format, or no image at all."""
    kind = _looks_like(data)
    if kind is None:
        return bad_request(NOT_AN_IMAGE)
    return bad_request(
        f"image: the file starts like a {kind} but its header is truncated or corrupt."
    )


def _looks_like(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    return None


def _load(image: Image.Image) -> None:
    """Decode the pixels of the first frame; a truncated or corrupt body is a 400."""
    try:
        image.load()
    except MemoryError:
        raise
    except Exception as exc:
        raise bad_request(
            f"image: the file could not be decoded, it may be truncated or corrupt "
            f"({_describe(exc)})."
        ) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    try:
        if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
            return Image.fromarray(_gray_to_8bit(np.asarray(image), mode)).convert("RGB")
        # Transparency in `info` only matters for alpha or palette targets; for
        # RGB it changes no pixel, but Pillow warns on palette transparency
        # given as bytes, and a warning turned into an error must not refuse
        # a valid image.
        image.info.pop("transparency", None)
        return image.convert("RGB")
    except MemoryError:
        raise
    except Exception as exc:
        raise bad_request(
            f"image: pixel format {mode} could not be converted to RGB ({_describe(exc)})."
        ) from None


def _gray_to_8bit(pixels: np.ndarray, mode: str) -> np.ndarray:
    """High bit depth or float grayscale → uint8, scaled rather than clipped.

    Pillow's `.convert("RGB")` clips such values to 0..255, so a 16-bit PNG
    comes out nearly all white and a float TIFF in [0, 1] all black. Instead:

    - 16-bit modes (I;16*) scale by 255/65535 with rounding, the inverse of
      the usual 8 → 16-bit widening v * 257: a 16-bit copy of an 8-bit image
      decodes to exactly the same pixels.
    - I (32-bit int) carries no bit depth, so it is guessed from the values:
      within 0..255 it is 8-bit data (kept), within 0..65535 16-bit (scaled
      as above; some Pillow versions open 16-bit PNGs as I), otherwise
      min-max normalised.
    - F (float32): values within [0, 1] are the usual normalised convention
      (times 255, rounded), values within [0, 255] are 8-bit data stored as
      float (rounded), anything else is min-max normalised. NaN and ±inf,
      which have no brightness, become 0 first.
    """
    if mode == "F":
        values = np.where(np.isfinite(pixels), pixels, 0.0).astype(np.float64)
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            return _round_to_8bit(values * 255.0)
        if low >= 0.0 and high <= 255.0:
            return _round_to_8bit(values)
        return _normalise(values, low, high)
    if mode in _SIXTEEN_BIT_MODES:
        return _scale_16bit(pixels)
    low, high = int(pixels.min()), int(pixels.max())
    if low >= 0 and high <= 255:
        return pixels.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return _scale_16bit(pixels)
    return _normalise(pixels.astype(np.float64), low, high)


def _scale_16bit(pixels: np.ndarray) -> np.ndarray:
    """round(x * 255 / 65535) in integers; maps v * 257 back to v exactly."""
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _normalise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Stretch [low, high] over 0..255; a constant image has no range and is black."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _round_to_8bit((values - low) * (255.0 / (high - low)))


def _round_to_8bit(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _describe(exc: BaseException) -> str:
    """The exception as a short line for the client: type and message, bounded."""
    text = str(exc).strip()
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return detail if len(detail) <= _DETAIL_CHARS else detail[: _DETAIL_CHARS - 3] + "..."
