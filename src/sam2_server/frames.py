"""Video uploads → frames: a video file through PyAV, or frame images in order.

SAM2's own loader takes only a folder of JPEG files (and, optionally, decord,
which has no wheels for current Pythons); PyAV is the maintained FFmpeg
binding, reads any container FFmpeg reads from a file object, and hands out
frames one at a time, so a clip is never held at its original resolution:
the caller shrinks each frame to the model's input size as it arrives.

Frame images go through the same decoder as the image routes (`images.py`),
whose `.convert("RGB")` is also what SAM2's JPEG loader does, so a folder of
JPEG files and the same files uploaded as `frames` give identical pixels.

No torch here: limits and error messages are checked before any model work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image

from sam2_server.errors import ErrorKind, ServiceError, bad_request
from sam2_server.images import decode_image, probe_image

if TYPE_CHECKING:
    import av


@dataclass
class Clip:
    """A decoded clip's description and its frames, produced lazily, in order."""

    width: int
    height: int
    fps: float | None  # None for frame images
    frames: Iterator[Image.Image]  # RGB, width x height each


def too_many_frames(limit: int) -> ServiceError:
    return ServiceError(
        ErrorKind.TOO_LARGE,
        f"video: more than {limit} frames; this server's limit per session is {limit} "
        "(VIDEO_MAX_FRAMES). Upload a shorter clip, or fewer frames.",
    )


def frame_images(files: Sequence[BinaryIO], *, max_frames: int, max_pixels: int) -> Clip:
    """Frame images, in the order given; every one the size of the first (else 400)."""
    if not files:
        raise bad_request("frames: no frame was uploaded; send `video` or `frames`.")
    if len(files) > max_frames:
        raise too_many_frames(max_frames)
    sizes = []
    for index, file in enumerate(files):
        try:
            sizes.append(probe_image(file, max_pixels=max_pixels))
        except ServiceError as exc:
            raise bad_request(f"frames[{index}]: {exc.message}") from None
    width, height = sizes[0]
    for index, size in enumerate(sizes):
        if size != (width, height):
            raise bad_request(
                f"frames[{index}] is {size[0]}x{size[1]} but frames[0] is {width}x{height}; "
                "every frame of a clip must have the same size."
            )

    def decoded() -> Iterator[Image.Image]:
        for index, file in enumerate(files):
            file.seek(0)
            try:
                yield decode_image(file.read(), max_pixels=max_pixels)
            except ServiceError as exc:
                raise bad_request(f"frames[{index}]: {exc.message}") from None

    return Clip(width, height, None, decoded())


def video_file(file: BinaryIO, *, max_frames: int, max_pixels: int) -> Clip:
    """The first video stream of a container, decoded frame by frame (400 if unreadable).

    The frame rate comes from the stream's header. Frames are turned upright
    by their display matrix (a phone's portrait clip is stored landscape with
    a 90° rotation), as FFmpeg's command line and every player show them, so
    the masks line up with the picture people see; the clip's size is the
    first frame's, upright. A frame of another size (a mid-stream resolution
    change) is a 400, since SAM2's state assumes one size per clip.
    """
    import av  # imported here: only video uploads need FFmpeg loaded

    file.seek(0, 2)
    if file.tell() == 0:
        raise bad_request("video: the uploaded file is empty.")
    file.seek(0)
    try:
        container = av.open(file, mode="r")
    except av.FFmpegError as exc:
        raise bad_request(
            f"video: the file could not be opened as a video ({_reason(exc)}); "
            "send a complete video file, or the frames as images."
        ) from None
    except Exception as exc:  # e.g. an empty file
        raise bad_request(f"video: the file could not be read ({type(exc).__name__}).") from None
    if not container.streams.video:
        container.close()
        raise bad_request("video: the file has no video stream.")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        container.close()
        raise bad_request("video: the video stream does not say its frame size.")
    if width * height > max_pixels:
        container.close()
        raise _too_large(width, height, max_pixels)
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate and math.isfinite(float(rate)) and float(rate) > 0 else None

    def upright() -> Iterator[Image.Image]:
        count = 0
        try:
            for frame in container.decode(stream):
                count += 1
                if count > max_frames:
                    raise too_many_frames(max_frames)
                if frame.width * frame.height > max_pixels:  # a stream that grew mid-way
                    raise _too_large(frame.width, frame.height, max_pixels)
                yield _upright(frame)
        except av.FFmpegError as exc:
            raise bad_request(
                f"video: decoding failed at frame {count} ({_reason(exc)})."
            ) from None
        finally:
            container.close()

    frames = upright()
    first = next(frames, None)
    if first is None:
        raise bad_request("video: the video stream has no frames.")
    size = first.size

    def decoded() -> Iterator[Image.Image]:
        yield first
        for index, image in enumerate(frames, start=1):
            if image.size != size:
                frames.close()
                raise bad_request(
                    f"video: frame {index} is {image.width}x{image.height}, frame 0 is "
                    f"{size[0]}x{size[1]}; clips that change size are not supported."
                )
            yield image

    return Clip(size[0], size[1], fps, decoded())


# A display matrix's rotation (degrees counterclockwise, as PyAV reports it)
# → the PIL transpose that shows the frame upright.
_UPRIGHT = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


def _upright(frame: av.VideoFrame) -> Image.Image:
    """The frame as RGB, turned by its display matrix (quarter turns; others ignored)."""
    image = frame.to_image()
    turn = _UPRIGHT.get(round(frame.rotation / 90) * 90 % 360)
    return image if turn is None else image.transpose(turn)


def _too_large(width: int, height: int, max_pixels: int) -> ServiceError:
    return bad_request(
        f"video: {width}x{height} frames are larger than this server's limit of "
        f"{max_pixels} pixels per frame (VIDEO_MAX_PIXELS)."
    )


def _reason(exc: Exception) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), not its errno."""
    return str(getattr(exc, "strerror", None) or exc).strip().rstrip(".")
