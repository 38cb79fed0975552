"""The Livepeer answer: `{"masks": "<json>", "scores": "<json>", "logits": "<json>"}`.

Each value is a string holding a nested JSON list. The reference builds them
with `str(arr.tolist())`, which widens every float32 to double and prints up
to 17 digits (`0.6100000143051147`). Here each number is the shortest text that
parses back to the identical float32 (`0.61`): the same values to the bit,
about half the bytes, and written by orjson's native numpy serialiser, which is
tens of times faster than building Python lists.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson

from sam2_server.domain import Prediction

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


# orjson holds the GIL for a whole call; writing a large array in slices of
# about this many numbers lets the event loop thread (health checks, new
# uploads) run between slices instead of waiting for one long call.
_SLICE = 1 << 18


def encode_array(array: np.ndarray) -> bytes:
    """A float32 array as a JSON nested list, shortest round-trip text per number.

    Non-finite values have no JSON spelling; SAM2 does not produce them, and
    they would come out as `null`.
    """
    return b"".join(_write(np.ascontiguousarray(array, dtype=np.float32)))


def _write(array: np.ndarray) -> Iterator[bytes | memoryview]:
    """The array's text in pieces of at most about `_SLICE` numbers each."""
    if array.size <= _SLICE or array.ndim < 2:
        yield orjson.dumps(array, option=_NUMPY)
        return
    yield b"["
    if array[0].size > _SLICE:
        for i, part in enumerate(array):
            if i:
                yield b","
            yield from _write(part)
    else:
        rows = _SLICE // array[0].size
        for i in range(0, len(array), rows):
            if i:
                yield b","
            # A slice is written as a list of rows; without its outer brackets
            # (a view, not a copy) it joins into the enclosing list.
            yield memoryview(orjson.dumps(array[i : i + rows], option=_NUMPY))[1:-1]
    yield b"]"


def iter_livepeer(prediction: Prediction, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """The response body in chunks of about `chunk_bytes`, for streaming.

    A large answer (a 6000x6000 image with logits is over a gigabyte of text)
    never exists whole in memory: at most one chunk plus one slice of text.
    The nested lists contain only digits, signs, dots, `e`, commas and
    brackets, so they can be placed inside JSON strings without escaping.
    """
    fields = (
        (b"masks", prediction.masks),
        (b"scores", prediction.scores),
        (b"logits", prediction.logits),
    )
    pending: list[bytes | memoryview] = []
    size = 0
    for name, array in fields:
        pending += [b'{"' if name == b"masks" else b'","', name, b'":"']
        for piece in _write(np.ascontiguousarray(array, dtype=np.float32)):
            pending.append(piece)
            size += len(piece)
            if size >= chunk_bytes:
                yield b"".join(pending)
                pending, size = [], 0
    pending.append(b'"}')
    yield b"".join(pending)


def encode_livepeer(prediction: Prediction) -> bytes:
    """The whole response body, joined once (for answers small enough to hold)."""
    return b"".join(iter_livepeer(prediction, chunk_bytes=1 << 62))


def estimate_livepeer_bytes(
    objects: int, candidates: int, height: int, width: int, *, binary_masks: bool
) -> int:
    """The answer's size before any work, from its shape alone.

    Logits print as about 11.5 bytes per number in practice (measured on real
    answers); 12 is used. Binary masks print `0.0,` or `1.0,`: 4 bytes.
    """
    masks = objects * candidates * height * width
    logits = objects * candidates * 256 * 256
    return masks * (4 if binary_masks else 12) + logits * 12 + candidates * objects * 12
