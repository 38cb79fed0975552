"""The response strings: every number parses back to the identical float32."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sam2_server.codecs import encode_array, encode_livepeer
from sam2_server.domain import Prediction

finite_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
special = st.sampled_from(
    [0.0, -0.0, 32.0, -32.0, 1e-45, -1e-45, 1.1754944e-38, 3.4028235e38, -3.4028235e38, 0.61]
)


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)


@settings(max_examples=300, deadline=None)
@given(arrays(np.float32, st.tuples(*[st.integers(1, 5)] * 3), elements=finite_float32 | special))
def test_round_trip_is_bit_exact(array):
    parsed = np.array(json.loads(encode_array(array)), dtype=np.float32)
    assert parsed.shape == array.shape
    np.testing.assert_array_equal(bits(parsed), bits(array))


def test_shortest_text_and_reference_compatibility():
    array = np.array([0.61, 1.0, 0.0, -32.0], dtype=np.float32)
    text = encode_array(array).decode()
    assert text == "[0.61,1.0,0.0,-32.0]"
    # The reference's text for the same values parses to the same float32 too.
    reference = str(array.tolist())
    assert np.array_equal(
        np.array(json.loads(reference), dtype=np.float32), np.array(json.loads(text), np.float32)
    )


def test_response_body_shape():
    masks = np.zeros((2, 3, 4, 5), np.float32)
    body = json.loads(
        encode_livepeer(Prediction(masks, np.ones((2, 3), np.float32), masks[..., :2]))
    )
    assert set(body) == {"masks", "scores", "logits"}
    assert all(isinstance(v, str) for v in body.values())
    assert np.array(json.loads(body["masks"])).shape == (2, 3, 4, 5)
    assert json.loads(body["scores"]) == [[1.0] * 3] * 2


def test_non_contiguous_and_float64_input():
    base = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7
    view = base[:, ::-1, ::2]
    parsed = np.array(json.loads(encode_array(view)), dtype=np.float32)
    np.testing.assert_array_equal(parsed, view.astype(np.float32))


@pytest.mark.parametrize(
    "shape", [(3, 600, 700), (2, 3, 300, 1000), (2, 3, 1200, 1800), (3, 1, 300_000), (4, 70_000)]
)
def test_large_arrays_written_in_slices_are_the_same_text(shape):
    """Arrays past the slice size are written piecewise; the text must not change."""
    rng = np.random.default_rng(sum(shape))
    array = (rng.standard_normal(shape) * 20).astype(np.float32)
    text = encode_array(array)
    assert text == orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)
    np.testing.assert_array_equal(bits(np.array(json.loads(text), np.float32)), bits(array))
