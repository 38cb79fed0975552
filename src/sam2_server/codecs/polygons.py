"""Binary masks as polygons: OpenCV's contours, holes kept, optionally simplified.

Annotation tools draw and store polygons, not rasters (X-AnyLabeling's
shapes, Roboflow's `json` masks, `mask_format: "polygon"` on the native API),
so every surface takes them from here.

A mask is a list of polygons, one per connected region (8-connected, as
OpenCV traces them). A polygon is a list of rings: the region's outer
boundary first, then the boundary of each hole in it. A ring is a list of
`[x, y]` points in pixels of the image, at the centres of the mask's own
border pixels (OpenCV's convention), so a ring's pixels belong to the mask
and a hole ring runs along the mask pixels around the hole. A region inside a
hole is a polygon of its own.

`polygon_arrays` gives the same rings as N x 2 int32 arrays, which orjson
writes without a Python object per point (the answers' path).

`rasterize` draws polygons back: without simplification it gives the mask
back exactly (tested); with `epsilon` (Douglas-Peucker, `cv2.approxPolyDP`)
each ring stays within `epsilon` pixels of the exact one.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Ring = list[list[int]]
Polygon = list[Ring]
RingArray = np.ndarray  # N x 2 int32: the ring's [x, y] points
PolygonArrays = list[RingArray]


def mask_polygons(
    mask: np.ndarray,
    *,
    epsilon: float = 0.0,
    epsilon_factor: float = 0.0,
    holes: bool = True,
) -> list[Polygon]:
    """The polygons of a 2-D binary mask (any dtype; nonzero is inside).

    `epsilon` simplifies each ring to within that many pixels;
    `epsilon_factor` to that fraction of the ring's own perimeter (how
    X-AnyLabeling's SAM models simplify). Without `holes`, only outer
    boundaries (`cv2.RETR_EXTERNAL`). A ring of three or more points keeps at
    least three (less simplified, never beyond the tolerance), so no region
    with an area vanishes.
    """
    found = polygon_arrays(mask, epsilon=epsilon, epsilon_factor=epsilon_factor, holes=holes)
    return [[ring.tolist() for ring in rings] for rings in found]


def polygon_arrays(
    mask: np.ndarray,
    *,
    epsilon: float = 0.0,
    epsilon_factor: float = 0.0,
    holes: bool = True,
) -> list[PolygonArrays]:
    """`mask_polygons` with each ring an N x 2 int32 array, for answers that orjson writes.

    orjson writes the arrays as `[[x, y], ...]` in C. A list per point is a
    Python object the garbage collector tracks: in the server (hundreds of
    thousands of live objects) a noisy 2-megapixel mask's 55k point lists set
    off full collections, and one answer took 4 s instead of 0.2 s.
    """
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D, got shape {mask.shape}")
    binary = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    mode = cv2.RETR_CCOMP if holes else cv2.RETR_EXTERNAL
    contours, hierarchy = cv2.findContours(binary, mode, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    links = hierarchy[0]  # per contour: next, previous, first child, parent
    polygons: list[PolygonArrays] = []
    for index, contour in enumerate(contours):
        if links[index, 3] != -1:
            continue  # a hole: listed under its outer boundary
        rings = [_ring(contour, epsilon, epsilon_factor)]
        child = links[index, 2]
        while child != -1:
            rings.append(_ring(contours[child], epsilon, epsilon_factor))
            child = links[child, 0]
        polygons.append(rings)
    return polygons


def rasterize(
    polygons: Sequence[Sequence[Ring | RingArray]], height: int, width: int
) -> np.ndarray:
    """The H x W uint8 (0/1) mask that `polygons` describe: the inverse of `mask_polygons`
    (rings as lists or as arrays).

    Each region is filled, its holes cleared, and the holes' rings (which are
    mask pixels) drawn back; larger regions first, so a region inside a hole
    is drawn after the hole is cleared.
    """
    canvas = np.zeros((height, width), dtype=np.uint8)
    ordered = sorted(polygons, key=lambda rings: -_area(rings[0]))
    for rings in ordered:
        outer = np.asarray(rings[0], dtype=np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(canvas, [outer], 1)
        cv2.polylines(canvas, [outer], True, 1)
        inner = [np.asarray(ring, dtype=np.int32).reshape(-1, 1, 2) for ring in rings[1:]]
        if inner:
            cv2.fillPoly(canvas, inner, 0)
            cv2.polylines(canvas, inner, True, 1)
    return canvas


def flat(ring: Ring) -> list[int]:
    """A ring as COCO's flat `[x0, y0, x1, y1, ...]` list."""
    return [coordinate for point in ring for coordinate in point]


def _ring(contour: np.ndarray, epsilon: float, epsilon_factor: float) -> RingArray:
    tolerance = max(epsilon, epsilon_factor * cv2.arcLength(contour, True))
    if tolerance > 0 and len(contour) >= 3:
        simplified = cv2.approxPolyDP(contour, tolerance, True)
        if len(simplified) < 3:
            simplified = _triangle(contour, simplified, tolerance)
        if len(simplified) >= 3:
            contour = simplified
    return contour.reshape(-1, 2)


def _triangle(contour: np.ndarray, collapsed: np.ndarray, tolerance: float) -> np.ndarray:
    """A ring that `tolerance` flattened to a chord or a point, simplified again just
    enough to keep three points: so a larger epsilon never brings back the exact ring
    (hundreds of points where a smaller one gave four), and the result stays within
    `tolerance`.

    Douglas-Peucker splits a closed ring at the same two far-apart points whatever
    the tolerance; under the largest distance of the ring from their chord it
    keeps the farthest point too. A straight ring (distance 0) is exact as the chord.
    """
    points = contour.reshape(-1, 2).astype(np.float64)
    start = collapsed.reshape(-1, 2)[0].astype(np.float64)
    if len(collapsed) >= 2:
        end = collapsed.reshape(-1, 2)[-1].astype(np.float64)
    else:  # past the ring's own size: its far end is the point farthest from the start
        end = points[int(np.argmax(np.hypot(*(points - start).T)))]
    direction = end - start
    length = float(np.hypot(*direction))
    if length == 0:
        return collapsed
    offsets = points - start
    spread = float(np.abs(offsets[:, 0] * direction[1] - offsets[:, 1] * direction[0]).max())
    smaller = min(tolerance, spread / length / 2)
    while smaller >= 0.25:
        simplified = cv2.approxPolyDP(contour, smaller, True)
        if len(simplified) >= 3:
            return simplified
        smaller /= 2
    return collapsed


def _area(ring: Ring | RingArray) -> float:
    points = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
    if len(points) < 3:
        return 0.0
    return float(abs(cv2.contourArea(points.astype(np.float32))))
