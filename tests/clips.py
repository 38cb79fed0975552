"""Video files for tests, written with PyAV: plain clips, and clips a phone would rotate.

A phone records portrait video as landscape frames plus a display matrix in
the mp4 track header (`tkhd`); FFmpeg 8 no longer turns the old `rotate`
metadata tag into one, so `rotate_mp4` writes the matrix into the header
itself, as a phone does.
"""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np

# tkhd matrices (16.16 fixed point a, b, u, c, d, v, x, y, w) per clockwise turn a player makes.
_MATRICES = {
    0: (1, 0, 0, 0, 1, 0),
    90: (0, 1, 0, -1, 0, 0),  # an iPhone held upright
    180: (-1, 0, 0, 0, -1, 0),
    270: (0, -1, 0, 1, 0, 0),
}


def write_mp4(frames: list[np.ndarray], path: Path, codec: str = "libx264", rate: int = 24) -> Path:
    """RGB frames (H x W x 3 uint8, even sizes) as a yuv420p video file."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def rotate_mp4(path: Path, clockwise: int) -> Path:
    """Mark an mp4 written by `write_mp4` as shown turned `clockwise` degrees (in place)."""
    data = bytearray(path.read_bytes())
    box = data.index(b"tkhd") - 4
    version = data[box + 8]
    # size, type, version+flags, times and track id, reserved, duration, reserved(8),
    # layer, alternate group, volume, reserved: then the matrix.
    matrix = box + 8 + 4 + (20 if version == 0 else 32) + 8 + 8
    a, b, u, c, d, v = _MATRICES[clockwise % 360]
    values = (a << 16, b << 16, u, c << 16, d << 16, v, 0, 0, 1 << 30)
    data[matrix : matrix + 36] = struct.pack(">9i", *values)
    path.write_bytes(bytes(data))
    return path


def cycled_frames(sources: list[Path], folder: Path, count: int) -> list[Path]:
    """`count` frame files in `folder` (00000.jpg, ...): the `sources` over and over, a
    clip of any length from a few real frames."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        path.write_bytes(sources[index % len(sources)].read_bytes())
        frames.append(path)
    return frames
