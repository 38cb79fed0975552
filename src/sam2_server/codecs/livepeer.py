"""The Livepeer answer: `{"masks": "<json>", "scores": "<json>", "logits": "<json>"}`.

Each value is a string holding a nested JSON list. The reference builds them
with `str(arr.tolist())`, which widens every float32 to double and prints up
to 17 digits (`0.6100000143051147`). Here each number is the shortest text that
parses back to the identical float32 (`0.61`): the same values to the bit,
about half the bytes, and written by orjson's native numpy serialiser, which is
tens of times faster than building Python lists.
"""

from __future__ import annotations

import numpy as np
import orjson

from sam2_server.domain import Prediction

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def encode_array(array: np.ndarray) -> bytes:
    """A float32 array as a JSON nested list, shortest round-trip text per number.

    Non-finite values have no JSON spelling; SAM2 does not produce them, and
    they would come out as `null`.
    """
    return orjson.dumps(np.ascontiguousarray(array, dtype=np.float32), option=_NUMPY)


def encode_livepeer(prediction: Prediction) -> bytes:
    """The whole response body.

    The nested lists contain only digits, signs, dots, `e`, commas and brackets,
    so they can be placed inside JSON strings without escaping.
    """
    return b"".join(
        (
            b'{"masks":"',
            encode_array(prediction.masks),
            b'","scores":"',
            encode_array(prediction.scores),
            b'","logits":"',
            encode_array(prediction.logits),
            b'"}',
        )
    )
