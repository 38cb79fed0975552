"""A prompt on an embedding → a `Prediction`: SAM2ImagePredictor.predict's semantics.

The cheap step (prompt encoder and mask decoder), run on a private predictor
bound to the cached embedding, under the model's decode lock only, so that a
click never waits for another image's encode. The candidates are sorted
best-first as Livepeer's runner sorts them.
"""

from __future__ import annotations

import time

import numpy as np

from sam2_server.domain import Prediction, Prompt, Timings, sort_best_first
from sam2_server.engine.compute import Compute
from sam2_server.engine.embedding import Embedding, bind
from sam2_server.engine.encoding import LoadedModel

__all__ = ["decode"]


def decode(
    loaded: LoadedModel,
    embedding: Embedding,
    prompt: Prompt,
    compute: Compute,
    timings: Timings | None = None,
) -> Prediction:
    """`SAM2ImagePredictor.predict` with the prompt's arguments, as float32, best first."""
    t0 = time.perf_counter()
    predictor = bind(loaded.predictor, embedding)
    with loaded.decode_lock, compute.context():
        masks, scores, logits = predictor.predict(
            point_coords=prompt.point_coords,
            point_labels=prompt.point_labels,
            box=prompt.box,
            mask_input=prompt.mask_input,
            multimask_output=prompt.multimask_output,
            return_logits=prompt.return_logits,
            normalize_coords=prompt.normalize_coords,
        )
    result = sort_best_first(_float32(masks), _float32(scores), _float32(logits))
    if timings is not None:
        timings.decode_s = time.perf_counter() - t0
    return result


def _float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)
