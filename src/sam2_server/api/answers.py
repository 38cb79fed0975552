"""Segment answers' low-res logits, kept so that a refining click can name them.

Every native segment answer carries an `answer_id`; a later request on the same
image and model may send `"mask_input": {"answer_id": ..., "index": k}` instead
of the packed 1x256x256 logits (a third of a megabyte in base64), and is then
computed from exactly those float32 values, as if they had been sent.

- The kept logits are bounded by bytes (`ANSWER_CACHE_BYTES`), least recently
  used (kept or named) first; `0` keeps none, and answers then carry
  `"answer_id": null`.
- They go with their image: a request that finds the image's embedding gone
  (a 404 saying to upload it again) drops every answer kept for it. An image
  that nobody asks for again leaves its answers to the byte bound.
- An id is 128 random bits (`secrets`), never derived from the image or the
  answer: naming an answer is possible only for whoever was given its id.
  An id that is unknown, evicted, or kept for another image or model is the
  same 404, which says to send the packed logits instead.

The store is the HTTP layer's (no torch): a dict of numpy arrays under a lock.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam2_server.errors import ErrorKind, ServiceError, bad_request

ANSWER_ID_BYTES = 16  # 128 random bits, 32 hex characters


@dataclass(frozen=True)
class _Kept:
    model_id: str
    image_id: str
    logits: np.ndarray  # C x 256 x 256 or B x C x 256 x 256, float32, read-only


class AnswerNotKept(ServiceError):
    """An `answer_id` this server does not hold (any more) for this image and model."""

    def __init__(self, answer_id: str) -> None:
        shown = answer_id if len(answer_id) <= 64 else answer_id[:64] + "..."
        super().__init__(
            ErrorKind.NOT_FOUND,
            f"answer {shown!r} is not kept on this server for this image and model (never "
            "given here, evicted, or dropped with its image): send that answer's logits "
            'packed ({"dtype", "shape", "data"}, 1x256x256) as mask_input instead.',
        )


class Answers:
    """The kept logits: at most `max_bytes` of them, least recently used out first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._bytes = 0
        self._evicted = 0
        self._lock = threading.Lock()

    def keep(self, model_id: str, image_id: str, logits: np.ndarray) -> str | None:
        """Keep an answer's logits; its new id, or None when they are not kept (disabled,
        or larger than the whole bound)."""
        if logits.nbytes > self.max_bytes or logits.ndim not in (3, 4):
            return None
        owned = np.array(logits, dtype=np.float32, order="C")  # never a view of the answer
        owned.flags.writeable = False
        answer_id = secrets.token_hex(ANSWER_ID_BYTES)
        with self._lock:
            self._kept[answer_id] = _Kept(model_id, image_id.lower(), owned)
            self._bytes += owned.nbytes
            while self._bytes > self.max_bytes:
                _, oldest = self._kept.popitem(last=False)
                self._bytes -= oldest.logits.nbytes
                self._evicted += 1
        return answer_id

    def mask_input(
        self, answer_id: str, index: int | list[int], model_id: str, image_id: str
    ) -> np.ndarray:
        """Candidate `index` of a kept answer on this image and model, as the 1x256x256
        float32 `mask_input` it would have been sent as; 404 if not kept, 400 for an
        index the answer does not have."""
        with self._lock:
            kept = self._kept.get(answer_id)
            if kept is None or (kept.model_id, kept.image_id) != (model_id, image_id.lower()):
                raise AnswerNotKept(answer_id)
            self._kept.move_to_end(answer_id)
        return np.array(kept.logits[_position(index, kept.logits.shape)][None], dtype=np.float32)

    def drop_image(self, model_id: str, image_id: str) -> int:
        """Forget every answer on an image whose embedding is gone; how many there were."""
        key = (model_id, image_id.lower())
        with self._lock:
            gone = [a for a, kept in self._kept.items() if (kept.model_id, kept.image_id) == key]
            for answer_id in gone:
                self._bytes -= self._kept.pop(answer_id).logits.nbytes
        return len(gone)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "answers": len(self._kept),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "evicted": self._evicted,
            }


def _position(index: int | list[int], shape: tuple[int, ...]) -> tuple[int, ...]:
    """`index` in an answer of `shape`: k (the candidate, best first) for one object,
    [b, k] with several; a 400 naming what the answer holds otherwise."""
    objects, candidates = (1, shape[0]) if len(shape) == 3 else shape[:2]
    holds = (
        f"{candidates} candidates (index 0 to {candidates - 1})"
        if objects == 1
        else f"{objects} objects of {candidates} candidates (index [b, k], b 0 to "
        f"{objects - 1}, k 0 to {candidates - 1})"
    )
    wanted = [index] if isinstance(index, int) else list(index)
    if len(wanted) == 1 and objects == 1:
        wanted = [0, *wanted]
    if len(wanted) != 2:
        raise bad_request(f"mask_input.index must be k, or [b, k]; that answer holds {holds}.")
    b, k = wanted
    if not (0 <= b < objects and 0 <= k < candidates):
        raise bad_request(f"mask_input.index {index} is not in that answer, which holds {holds}.")
    return (k,) if len(shape) == 3 else (b, k)
