"""The automatic-masks codec: exactly the library's COCO RLE, PNG or polygons of the same
mask, exact floats."""

from __future__ import annotations

import base64
import io

import numpy as np
import orjson
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from pycocotools import mask as coco_mask
from sam2.utils.amg import coco_encode_rle, mask_to_rle_pytorch
from sam2.utils.amg import rle_to_mask as library_rle_to_mask

from sam2_server.codecs.automatic import (
    automatic_answer,
    coco_rle,
    estimate_answer_bytes,
    rle_to_mask,
)
from sam2_server.codecs.polygons import rasterize
from sam2_server.domain import MaskRecord

masks = arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12)))


def uncompressed(mask: np.ndarray) -> dict:
    """The library's own uncompressed RLE of a mask (what the engine keeps)."""
    return mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0]


@settings(max_examples=200, deadline=None)
@given(masks)
def test_rle_is_the_librarys_coco_rle(mask):
    rle = uncompressed(mask)
    assert coco_rle(rle) == coco_encode_rle(rle)
    decoded = coco_mask.decode({**coco_rle(rle), "counts": coco_rle(rle)["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


@settings(max_examples=200, deadline=None)
@given(masks)
def test_rle_to_mask_is_the_librarys(mask):
    rle = uncompressed(mask)
    np.testing.assert_array_equal(rle_to_mask(rle), library_rle_to_mask(rle))
    np.testing.assert_array_equal(rle_to_mask(rle), mask)


def record(mask: np.ndarray) -> MaskRecord:
    return MaskRecord(
        segmentation=uncompressed(mask),
        area=int(mask.sum()),
        bbox=[1, 2, 3, 4],
        predicted_iou=float(np.float32(0.61)),
        point_coords=[[float(np.float32(12.5)), 7.0]],
        stability_score=float(np.float32(1 / 3)),
        crop_box=[0, 0, mask.shape[1], mask.shape[0]],
    )


def test_answer_carries_the_records_exactly():
    rng = np.random.default_rng(0)
    mask = rng.random((5, 7)) > 0.5
    records = [record(mask), record(~mask)]
    for mask_format in ("rle", "png", "polygon"):
        answer = orjson.loads(
            automatic_answer(
                records, image_id="ab", model_id="m", width=7, height=5, mask_format=mask_format
            )
        )
        assert {k: answer[k] for k in ("image_id", "model_id", "width", "height")} == {
            "image_id": "ab",
            "model_id": "m",
            "width": 7,
            "height": 5,
        }
        for got, want, pixels in zip(answer["masks"], records, (mask, ~mask), strict=True):
            assert list(got) == [
                "segmentation",
                "area",
                "bbox",
                "predicted_iou",
                "point_coords",
                "stability_score",
                "crop_box",
            ]
            assert got["predicted_iou"] == want.predicted_iou  # the same double
            assert got["stability_score"] == want.stability_score
            assert got["bbox"] == [1, 2, 3, 4]
            assert all(type(n) is int for n in got["bbox"])
            if mask_format == "rle":
                assert got["segmentation"] == coco_encode_rle(want.segmentation)
            elif mask_format == "polygon":
                polygons = got["segmentation"]
                assert polygons["size"] == [5, 7]
                drawn = rasterize(polygons["polygons"], *polygons["size"])
                np.testing.assert_array_equal(drawn, pixels)
            else:
                png = Image.open(io.BytesIO(base64.b64decode(got["segmentation"])))
                np.testing.assert_array_equal(np.array(png) == 255, pixels)


def answer_bytes(records: list[MaskRecord], mask_format: str) -> int:
    return len(
        automatic_answer(records, image_id="a" * 64, model_id="m", width=0, height=0,
                         mask_format=mask_format)
    )  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(masks, st.sampled_from(["rle", "png", "polygon"]))
def test_size_estimate_bounds_small_masks(mask, mask_format):
    records = [record(mask)]
    assert answer_bytes(records, mask_format) <= estimate_answer_bytes(records, mask_format)


def test_size_estimate_bounds_large_noisy_and_smooth_masks():
    rng = np.random.default_rng(1)
    noisy = rng.random((300, 400)) > 0.5
    smooth = np.zeros((1200, 1800), bool)
    smooth[100:900, 300:1500] = True
    stripes = np.zeros((300, 400), bool)
    stripes[::2] = True
    for mask in (noisy, smooth, stripes, ~smooth):
        for mask_format in ("rle", "png", "polygon"):
            records = [record(mask)] * 3
            assert answer_bytes(records, mask_format) <= estimate_answer_bytes(records, mask_format)


def test_polygon_size_estimate_bounds_the_worst_masks_at_large_coordinates():
    """Checkerboards and two-pixel holes (about 3 vertices per run, the most found),
    placed where points have nine digits, the most a 40-megapixel image has."""
    y, x = np.mgrid[:40, :40]
    tiles = [
        (x + y) % 2 == 0,
        ~((x % 3 == 1) & (y % 3 != 0)),
        np.tile([[0, 1, 1], [0, 1, 1], [1, 1, 0], [1, 1, 0]], (10, 14))[:40, :40] == 1,
    ]
    for tile in tiles:
        mask = np.zeros((1040, 10040), bool)
        mask[1000:, 10000:] = tile
        records = [record(mask)]
        estimate = estimate_answer_bytes(records, "polygon")
        assert answer_bytes(records, "polygon") <= estimate
