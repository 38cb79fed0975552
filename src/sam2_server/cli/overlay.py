"""The `overlay.png` that `predict` and `automatic` write: masks drawn over the image.

Each mask is tinted and outlined in its own colour so that a person can check
the answer at a glance; numpy and Pillow only (no scipy, no torch).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

# Object colours for `predict` (the first is the SAM2 demo's blue).
PALETTE = (
    (30, 144, 255),
    (255, 64, 64),
    (50, 205, 50),
    (255, 200, 0),
    (186, 85, 211),
    (0, 206, 209),
    (255, 140, 0),
    (255, 105, 180),
)
FILL_ALPHA = 0.45
_GOLDEN = (math.sqrt(5) - 1) / 2  # hue step: consecutive colours stay far apart


def overlay(
    image: Image.Image,
    masks: Sequence[np.ndarray],
    colours: Sequence[tuple[int, int, int]] = PALETTE,
) -> Image.Image:
    """Each mask tinted (semi-transparent) and outlined in its own colour, in order (a
    later mask is drawn over an earlier one); colours repeat when there are more masks."""
    pixels = np.asarray(image, dtype=np.float32).copy()
    height, width = pixels.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    for index, mask in enumerate(masks):
        if mask.shape != (height, width):  # never for the server's masks; be safe for display
            mask = (
                np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height)))
                > 127
            )
        colour = np.array(colours[index % len(colours)], dtype=np.float32)
        pixels[mask] = pixels[mask] * (1 - FILL_ALPHA) + colour * FILL_ALPHA
        pixels[_outline(mask, thickness)] = colour
    return Image.fromarray(pixels.round().astype(np.uint8))


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """The mask's pixels within `thickness` of its edge (4-neighbour erosion, no scipy)."""
    inner = mask.copy()
    for _ in range(thickness):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (
            padded[1:-1, 1:-1]
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    edge: np.ndarray = mask & ~inner
    return edge


def distinct_colours(count: int) -> list[tuple[int, int, int]]:
    """`count` bright colours, neighbours far apart in hue (golden-ratio steps), for
    `automatic`'s masks, which can be hundreds."""
    colours = []
    for index in range(count):
        red, green, blue = colorsys.hsv_to_rgb((index * _GOLDEN) % 1.0, 0.75, 0.95)
        colours.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colours
