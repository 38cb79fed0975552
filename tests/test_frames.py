"""Video uploads → frames (`frames.py`): upright as players show them, and their errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_server.api.errors import status_of
from sam2_server.errors import ServiceError
from sam2_server.frames import video_file
from tests.clips import rotate_mp4, write_mp4

LIMITS = {"max_frames": 100, "max_pixels": 10**7}


def _marked(height: int = 32, width: int = 64) -> np.ndarray:
    """Black, with a white top-left quarter: where it lands shows the turn."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 2] = 255
    return pixels


def _corner(image: Image.Image) -> str:
    """Which quarter is white."""
    pixels = np.asarray(image.convert("L"), dtype=float)
    h, w = pixels.shape
    quarters = {
        "top-left": pixels[: h // 2, : w // 2],
        "top-right": pixels[: h // 2, w // 2 :],
        "bottom-left": pixels[h // 2 :, : w // 2],
        "bottom-right": pixels[h // 2 :, w // 2 :],
    }
    return max(quarters, key=lambda name: quarters[name].mean())


@pytest.mark.parametrize(
    ("clockwise", "size", "corner"),
    [
        (0, (64, 32), "top-left"),
        (90, (32, 64), "top-right"),  # a phone's portrait clip
        (180, (64, 32), "bottom-right"),
        (270, (32, 64), "bottom-left"),
    ],
)
def test_frames_are_turned_upright_by_the_display_matrix(
    tmp_path: Path, clockwise: int, size: tuple[int, int], corner: str
) -> None:
    clip = rotate_mp4(write_mp4([_marked()] * 3, tmp_path / "clip.mp4"), clockwise)
    decoded = video_file(io.BytesIO(clip.read_bytes()), **LIMITS)
    assert (decoded.width, decoded.height) == size
    frames = list(decoded.frames)
    assert len(frames) == 3
    assert all(frame.size == size and _corner(frame) == corner for frame in frames)


def test_a_cut_file_is_a_400_before_any_frame_is_asked_for(tmp_path: Path) -> None:
    """Size and rotation come from a decoded first frame, so a clip without one fails at once."""
    data = write_mp4([_marked()] * 2, tmp_path / "clip.mp4").read_bytes()
    for cut in (data[: len(data) // 2], data[: data.index(b"mdat") + 8]):
        with pytest.raises(ServiceError) as caught:
            video_file(io.BytesIO(cut), **LIMITS)
        assert status_of(caught.value) == 400
        assert caught.value.message.startswith("video:")


def test_too_many_frames_is_413(tmp_path: Path) -> None:
    clip = write_mp4([_marked()] * 4, tmp_path / "clip.mp4")
    decoded = video_file(io.BytesIO(clip.read_bytes()), max_frames=3, max_pixels=10**7)
    with pytest.raises(ServiceError) as caught:
        list(decoded.frames)
    assert status_of(caught.value) == 413
