"""An image's embedding, and the one way a predictor is given it.

`SAM2ImagePredictor` keeps one image as mutable hidden state and is not
thread-safe, so no predictor is shared between requests: the image state
lives in an immutable `Embedding`, and every call binds it to its own
short-lived predictor (a shallow copy sharing the model and transforms).
The prompt decoder, the automatic-mask generator and the encoder all use
the functions here, so the predictor's private fields are named once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor

__all__ = ["Embedding", "bind", "embedding_from", "set_embedding"]


@dataclass(frozen=True)
class Embedding:
    """Everything SAM2 needs to decode prompts on one image: the encoder's output.

    Read-only once built: several requests may decode from it at once, and the
    cache may drop it while they do. It names its model but holds no
    reference to it, so the cache never keeps an unloaded model alive.
    """

    model_id: str
    image_embed: torch.Tensor  # 1 x 256 x 64 x 64
    high_res_feats: tuple[torch.Tensor, ...]  # 1 x 32 x 256 x 256, 1 x 64 x 128 x 128
    orig_hw: tuple[int, int]
    # The upload the embedding was computed from: automatic masks with crops
    # encode parts of the image again, long after the request that sent it.
    image_bytes: bytes = b""

    @property
    def nbytes(self) -> int:
        tensors = (self.image_embed, *self.high_res_feats)
        return sum(t.numel() * t.element_size() for t in tensors) + len(self.image_bytes)


def set_embedding(predictor: SAM2ImagePredictor, embedding: Embedding) -> None:
    """Make `embedding` the predictor's current image, as if set_image had just run."""
    predictor._features = {
        "image_embed": embedding.image_embed,
        "high_res_feats": list(embedding.high_res_feats),
    }
    predictor._orig_hw = [embedding.orig_hw]
    predictor._is_image_set = True
    predictor._is_batch = False


def bind(template: SAM2ImagePredictor, embedding: Embedding) -> SAM2ImagePredictor:
    """A private predictor (sharing the template's model) whose image is `embedding`."""
    predictor = copy.copy(template)
    set_embedding(predictor, embedding)
    return predictor


def embedding_from(
    predictor: SAM2ImagePredictor, model_id: str, index: int, *, own: bool = False
) -> Embedding:
    """Image `index` of what set_image / set_image_batch left in the predictor.

    `own`: copy the tensors out of the batch, so that the cache's byte count
    is what stays alive (a view would pin the whole batch).
    """
    features = predictor._features
    orig_hw = predictor._orig_hw
    assert features is not None
    assert orig_hw is not None

    def pick(tensor: torch.Tensor) -> torch.Tensor:
        part = tensor[index : index + 1]
        return part.clone() if own else part

    return Embedding(
        model_id=model_id,
        image_embed=pick(features["image_embed"]),
        high_res_feats=tuple(pick(f) for f in features["high_res_feats"]),
        orig_hw=(int(orig_hw[index][0]), int(orig_hw[index][1])),
    )
