"""Polygons of binary masks: exact round trip, the documented structure, and a stated
tolerance when simplified.

The tolerance with `epsilon` > 0 (Douglas-Peucker): every simplified ring keeps
some of the exact ring's points, every region and hole keeps its ring, and
every pixel where the rasterized polygons differ from the mask lies within
`epsilon + 1` pixels (Euclidean) of a border pixel of the mask (a mask pixel
with a 4-neighbour outside it). The `+ 1` is the pixel grid: rings run through
pixel centres and are drawn with their edges. The masks' own structure (8-connected
regions, 4-connected holes) is computed here independently with OpenCV's
connected components, not from the rings.
"""

from __future__ import annotations

import cv2
import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sam2_server.codecs.native import encode_mask, encode_masks, encode_polygons
from sam2_server.codecs.polygons import flat, mask_polygons, polygon_arrays, rasterize

MAX_SIDE = 24

noise = arrays(np.bool_, st.tuples(st.integers(1, MAX_SIDE), st.integers(1, MAX_SIDE)))


@st.composite
def drawn(draw) -> np.ndarray:
    """Rectangles filled and cut out, single pixels, one-pixel lines: holes, islands in
    holes, points, diagonals and regions touching the border all come out of these."""
    height = draw(st.integers(1, MAX_SIDE))
    width = draw(st.integers(1, MAX_SIDE))
    mask = np.zeros((height, width), np.uint8)
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["fill", "cut", "pixel", "line"]))
        x0, x1 = sorted(draw(st.lists(st.integers(0, width - 1), min_size=2, max_size=2)))
        y0, y1 = sorted(draw(st.lists(st.integers(0, height - 1), min_size=2, max_size=2)))
        value = draw(st.sampled_from([0, 1]))
        if kind == "fill":
            mask[y0 : y1 + 1, x0 : x1 + 1] = 1
        elif kind == "cut":
            mask[y0 : y1 + 1, x0 : x1 + 1] = 0
        elif kind == "pixel":
            mask[y0, x0] = value
        else:
            cv2.line(mask, (x0, y0), (x1, y1), value, 1, cv2.LINE_8)
    return mask.astype(bool)


masks = st.one_of(noise, drawn())


def island_in_hole() -> np.ndarray:
    mask = np.zeros((9, 9), bool)
    mask[0:9, 0:9] = True
    mask[2:7, 2:7] = False
    mask[4, 4] = True
    return mask


def checkerboard() -> np.ndarray:
    y, x = np.mgrid[:7, :8]
    return (x + y) % 2 == 0


EXAMPLES = [
    np.zeros((5, 6), bool),
    np.ones((5, 6), bool),
    np.ones((1, 1), bool),
    np.eye(6, dtype=bool),
    island_in_hole(),
    checkerboard(),
    ~checkerboard(),
]


def examples(*more):
    """The named masks as explicit examples, with `more` arguments after the mask."""

    def add(test):
        for mask in EXAMPLES:
            test = example(mask, *more)(test)
        return test

    return add


def border_pixels(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (the image's edge counts as outside)."""
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    inner = cv2.erode(mask.astype(np.uint8), cross, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return mask & (inner == 0)


def assert_within_tolerance(drawn: np.ndarray, mask: np.ndarray, epsilon: float) -> None:
    """Every pixel where `drawn` differs from `mask` (H x W, or stacks of them) lies within
    `epsilon + 1` pixels of a border pixel of `mask`: the stated tolerance."""
    for index in np.ndindex(mask.shape[:-2]):
        differ = drawn[index].astype(bool) != mask[index].astype(bool)
        if differ.any():
            border = border_pixels(mask[index].astype(bool))
            distance = cv2.distanceTransform(
                (~border).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
            )
            assert distance[differ].max() <= epsilon + 1


def signed_area(ring: list[list[int]]) -> float:
    """The shoelace sum in image coordinates (y down): negative is counterclockwise on screen."""
    points = np.asarray(ring, dtype=np.float64)
    x, y = points[:, 0], points[:, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) / 2)


def holes_of(mask: np.ndarray) -> int:
    """4-connected background components that do not reach the image's edge."""
    _, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    edge = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    background = set(np.unique(labels[~mask]))
    return len(background - edge)


def regions_of(mask: np.ndarray) -> int:
    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return count - 1


@settings(max_examples=300, deadline=None)
@given(masks)
@examples()
def test_exact_polygons_rasterize_back_to_the_mask(mask):
    height, width = mask.shape
    polygons = mask_polygons(mask)
    np.testing.assert_array_equal(rasterize(polygons, height, width), mask.astype(np.uint8))


@settings(max_examples=300, deadline=None)
@given(masks)
@examples()
def test_structure_is_as_documented(mask):
    """One polygon per 8-connected region, one ring per hole; points are border pixels of
    the mask, rings are not closed, exact rings are oriented as OpenCV traces them."""
    height, width = mask.shape
    polygons = mask_polygons(mask)
    assert len(polygons) == regions_of(mask)
    assert sum(len(rings) - 1 for rings in polygons) == holes_of(mask)
    border = border_pixels(mask)
    for rings in polygons:
        for index, ring in enumerate(rings):
            assert ring, "a ring has at least one point"
            assert all(type(c) is int for point in ring for c in point)
            points = np.asarray(ring)
            assert ((points >= 0) & (points < [width, height])).all()
            assert border[points[:, 1], points[:, 0]].all()
            if len(ring) > 2:
                assert ring[0] != ring[-1], "rings are not closed"
            area = signed_area(ring)
            if area:
                assert (area < 0) == (index == 0), "outer counterclockwise, holes clockwise"
    # JSON as the routes write it, and back.
    assert json(polygon_arrays(mask)) == polygons


@settings(max_examples=300, deadline=None)
@given(masks, st.sampled_from([0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 50.0]))
@examples(2.0)
@example(np.ones((4, 4), bool), 1000.0)
def test_simplified_rings_keep_exact_points_within_the_tolerance(mask, epsilon):
    height, width = mask.shape
    exact = mask_polygons(mask)
    simplified = mask_polygons(mask, epsilon=epsilon)
    assert [len(rings) for rings in simplified] == [len(rings) for rings in exact]
    for exact_rings, simple_rings in zip(exact, simplified, strict=True):
        for exact_ring, simple_ring in zip(exact_rings, simple_rings, strict=True):
            assert 1 <= len(simple_ring) <= len(exact_ring)
            if len(exact_ring) >= 3 and signed_area(exact_ring):
                assert len(simple_ring) >= 3, "a region with an area keeps one"
            kept = {tuple(point) for point in exact_ring}
            assert all(tuple(point) in kept for point in simple_ring)
    assert_within_tolerance(rasterize(simplified, height, width), mask, epsilon)


@settings(max_examples=100, deadline=None)
@given(masks, st.sampled_from([0.01, 0.05, 0.2]))
def test_epsilon_factor_keeps_exact_points(mask, factor):
    exact = mask_polygons(mask)
    simplified = mask_polygons(mask, epsilon_factor=factor)
    for exact_rings, simple_rings in zip(exact, simplified, strict=True):
        for exact_ring, simple_ring in zip(exact_rings, simple_rings, strict=True):
            kept = {tuple(point) for point in exact_ring}
            assert all(tuple(point) in kept for point in simple_ring)


def test_a_simplified_smooth_shape_is_smaller_and_close():
    """A disc of radius 80: a few dozen points instead of hundreds, IoU above 0.99."""
    mask = np.zeros((200, 200), np.uint8)
    cv2.circle(mask, (100, 100), 80, 1, -1)
    exact = mask_polygons(mask)
    simplified = mask_polygons(mask, epsilon=1.0)
    assert len(simplified[0][0]) < len(exact[0][0]) / 3
    drawn_back = rasterize(simplified, 200, 200).astype(bool)
    inside = mask.astype(bool)
    assert (drawn_back & inside).sum() / (drawn_back | inside).sum() > 0.99


def test_a_larger_epsilon_never_brings_back_the_exact_ring():
    """Past a ring's own size Douglas-Peucker leaves one point or two; the ring then keeps
    the three or four points of a smaller tolerance, not its hundreds of exact ones."""
    mask = np.zeros((600, 600), np.uint8)
    cv2.circle(mask, (300, 300), 250, 1, -1)
    mask[250:350, 250:350] = 0
    counts = [
        [len(ring) for ring in mask_polygons(mask, epsilon=epsilon)[0]]
        for epsilon in (1, 10, 100, 300, 1000)
    ]
    assert counts[0][0] > 40
    for fewer, more in zip(counts[1:], counts, strict=False):
        assert all(3 <= a <= b for a, b in zip(fewer, more, strict=True)), counts


def test_any_dtype_nonzero_is_inside():
    mask = island_in_hole()
    want = mask_polygons(mask)
    assert mask_polygons(mask.astype(np.uint8) * 255) == want
    assert mask_polygons(mask.astype(np.float32) * 0.5) == want
    assert mask_polygons(np.asfortranarray(mask)) == want


def test_island_in_a_hole_is_its_own_polygon():
    polygons = mask_polygons(island_in_hole())
    assert len(polygons) == 2
    frame, island = sorted(polygons, key=len, reverse=True)
    assert len(frame) == 2  # the outer ring and the hole's
    assert island == [[[4, 4]]]
    # The outer ring counterclockwise on screen (down the left edge first)...
    assert frame[0] == [[0, 0], [0, 8], [8, 8], [8, 0]]
    # ...the hole's clockwise, through the mask pixels 8-adjacent to the hole (its
    # 5x5 square at 2..6), so across the corners pixels (1, 1) etc. touch only diagonally.
    assert frame[1] == [[1, 2], [2, 1], [6, 1], [7, 2], [7, 6], [6, 7], [2, 7], [1, 6]]


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (1, 1, 1), ()])
def test_a_mask_that_is_not_2d_raises(shape):
    with pytest.raises(ValueError, match="2-D"):
        mask_polygons(np.zeros(shape, bool))


def test_empty_and_full_masks():
    assert mask_polygons(np.zeros((3, 4), bool)) == []
    assert mask_polygons(np.ones((3, 4), bool)) == [[[[0, 0], [0, 2], [3, 2], [3, 0]]]]


def test_flat_is_cocos_list():
    assert flat([[1, 2], [3, 4], [5, 6]]) == [1, 2, 3, 4, 5, 6]


def json(value) -> object:
    """As an answer carries it (rings are int32 arrays until written)."""
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


def test_the_mask_format_names_its_size_and_rasterizes_back():
    mask = island_in_hole()[:, :7]
    encoded = json(encode_polygons(mask))
    assert list(encoded) == ["size", "polygons"]
    assert encoded["size"] == [9, 7]  # [height, width], as COCO RLE
    assert encoded["polygons"] == mask_polygons(mask)
    np.testing.assert_array_equal(rasterize(encoded["polygons"], *encoded["size"]), mask)
    assert json(encode_mask(mask, "polygon", 2.0)) == json(encode_polygons(mask, 2.0))
    stacked = json(encode_masks(np.stack([mask, ~mask]), "polygon"))
    assert stacked == [json(encode_polygons(mask)), json(encode_polygons(~mask))]
    with pytest.raises(ValueError, match="mask_format"):
        encode_mask(mask, "gif")


@settings(max_examples=100, deadline=None)
@given(masks, st.sampled_from([0.0, 1.5]))
def test_ring_arrays_are_the_same_rings(mask, epsilon):
    arrays_ = polygon_arrays(mask, epsilon=epsilon)
    assert all(ring.dtype == np.int32 and ring.flags.c_contiguous for p in arrays_ for ring in p)
    assert json(arrays_) == mask_polygons(mask, epsilon=epsilon)
    height, width = mask.shape
    np.testing.assert_array_equal(
        rasterize(arrays_, height, width),
        rasterize(mask_polygons(mask, epsilon=epsilon), height, width),
    )
