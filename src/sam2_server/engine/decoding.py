"""A prompt on an embedding → a `Prediction`: SAM2ImagePredictor.predict's semantics.

The cheap step (prompt encoder and mask decoder), run by the model's family
(family.py) on the cached embedding, under the model's decode lock only, so
that a click never waits for another image's encode. The candidates are
sorted best-first as Livepeer's runner sorts them, whatever the family.
"""

from __future__ import annotations

import time

import numpy as np

from sam2_server.domain import Prediction, Prompt, Timings, sort_best_first
from sam2_server.engine.compute import Compute
from sam2_server.engine.embedding import Embedding
from sam2_server.engine.encoding import LoadedModel

__all__ = ["decode"]


def decode(
    loaded: LoadedModel,
    embedding: Embedding,
    prompt: Prompt,
    compute: Compute,
    timings: Timings | None = None,
) -> Prediction:
    """The family's `predict` with the prompt's arguments, as float32, best first."""
    t0 = time.perf_counter()
    with loaded.decode_lock, compute.context():
        masks, scores, logits = loaded.image.predict(embedding, prompt)
    result = sort_best_first(_float32(masks), _float32(scores), _float32(logits))
    if timings is not None:
        timings.decode_s = time.perf_counter() - t0
    return result


def _float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)
