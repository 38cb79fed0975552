"""Label Studio's brush RLE (`codecs/brush.py`) against a transcription of the SDK's encoder.

`sdk_encode_rle` below is `label_studio_sdk.converter.brush.encode_rle`
(2.1.2) as written there, string of bits and all, so these tests need no
SDK; tests/integrations/test_labelstudio.py also compares with the SDK itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sam2_server.codecs.brush import decode_mask, decode_rle, encode_rle, mask2rle


def sdk_encode_rle(arr: np.ndarray) -> list[int]:
    """The SDK's encode_rle(arr, wordsize=8, rle_sizes=[3, 4, 8, 16]), transcribed."""
    num = len(arr)
    base = f"{num:032b}" + f"{8 - 1:05b}" + "".join(f"{x - 1:04b}" for x in (3, 4, 8, 16))
    ia = np.asarray(arr)
    y = ia[1:] != ia[:-1]
    i = np.append(np.where(y), num - 1)
    z = np.diff(np.append(-1, i))
    out = ""
    for length, value in zip(z, ia[i], strict=True):
        if length == 1:
            out += "0" + "00" + "000" + f"{value:08b}"
        elif length <= 8:
            out += "1" + "00" + f"{length - 1:03b}" + f"{value:08b}"
        elif length <= 16:
            out += "1" + "01" + f"{length - 1:04b}" + f"{value:08b}"
        elif length <= 256:
            out += "1" + "10" + f"{length - 1:08b}" + f"{value:08b}"
        else:
            rest = length
            while rest > 2**16:
                out += "1" + "11" + f"{2**16 - 1:016b}" + f"{value:08b}"
                rest -= 2**16
            out += "1" + "11" + f"{rest - 1:016b}" + f"{value:08b}"
    bits = base + out
    bits += "0" * (8 - len(bits) % 8)
    return [int(bits[k : k + 8], 2) for k in range(0, len(bits), 8)]


def sdk_mask2rle(mask: np.ndarray) -> list[int]:
    return sdk_encode_rle(np.repeat(mask.astype(np.uint8).ravel() * 255, 4))


masks = hnp.arrays(
    bool, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40), elements=st.booleans()
)


@given(masks)
@settings(max_examples=200, deadline=None)
def test_mask2rle_is_the_sdks(mask: np.ndarray) -> None:
    assert mask2rle(mask) == sdk_mask2rle(mask)


@given(masks)
@settings(max_examples=200, deadline=None)
def test_a_mask_decodes_back(mask: np.ndarray) -> None:
    rle = mask2rle(mask)
    assert np.array_equal(decode_mask(rle, *mask.shape), mask)
    values = decode_rle(rle)
    assert set(np.unique(values)) <= {0, 255}


runs = st.lists(
    st.tuples(st.integers(0, 255), st.sampled_from([1, 2, 7, 8, 9, 16, 17, 200, 256, 257, 300])),
    min_size=1,
    max_size=30,
)


@given(runs)
@settings(max_examples=200, deadline=None)
def test_encode_rle_is_the_sdks_at_every_field_size(spec: list[tuple[int, int]]) -> None:
    values = np.concatenate([np.full(n, v, dtype=np.uint8) for v, n in spec])
    assert encode_rle(values) == sdk_encode_rle(values)
    assert np.array_equal(decode_rle(encode_rle(values)), values)


@pytest.mark.parametrize("length", [65535, 65536, 65537, 131072, 131073, 200_000])
def test_runs_past_the_16_bit_field_are_chunked_as_the_sdk_does(length: int) -> None:
    values = np.concatenate([np.zeros(3, np.uint8), np.full(length, 255, np.uint8), [7]])
    values = values.astype(np.uint8)
    assert encode_rle(values) == sdk_encode_rle(values)
    assert np.array_equal(decode_rle(encode_rle(values)), values)


def test_a_large_mask_is_encoded_as_the_sdk_does() -> None:
    """A real-sized mask with long runs and ragged edges (the SDK's padding and chunking)."""
    rng = np.random.default_rng(3)
    mask = np.zeros((1200, 1800), dtype=bool)
    mask[200:900, 300:1500] = True
    mask[rng.integers(0, 1200, 500), rng.integers(0, 1800, 500)] ^= True
    assert mask2rle(mask) == sdk_mask2rle(mask)
    assert np.array_equal(decode_mask(mask2rle(mask), 1200, 1800), mask)


def test_padding_is_a_whole_byte_when_the_bits_end_on_one() -> None:
    """53 header bits + 27 for one 16-bit run = 80: the SDK still adds a zero byte."""
    values = np.zeros(300, dtype=np.uint8)
    rle = encode_rle(values)
    assert len(rle) == 11
    assert rle[-1] == 0
    assert rle == sdk_encode_rle(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [(np.array([256]), "8-bit"), (np.array([-1]), "8-bit"), (np.array([], np.uint8), "empty")],
)
def test_values_outside_a_byte_are_refused(values: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_rle(values)


def test_a_mask_must_be_two_dimensional() -> None:
    with pytest.raises(ValueError, match="2-D"):
        mask2rle(np.zeros((2, 2, 2), dtype=bool))


@pytest.mark.parametrize("keep", [0, 4, 10, 0.5, 0.9])
def test_a_truncated_rle_is_refused(keep: float) -> None:
    rle = mask2rle(np.eye(20, dtype=bool))
    with pytest.raises(ValueError, match="cut short"):
        decode_rle(rle[: int(keep * len(rle)) if keep < 1 else int(keep)])


def test_a_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="not 5x4x4"):
        decode_mask(mask2rle(np.ones((4, 4), dtype=bool)), 5, 4)
