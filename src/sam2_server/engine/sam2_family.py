"""The SAM2 family: Meta's `sam2` package, exactly as the library answers.

`SAM2ImagePredictor` keeps one image as mutable state, so the loaded model
holds a template predictor that is never given an image: every call works
on its own shallow copy (embedding.py's `bind` / `embedding_from`), which
shares the network and the transforms. Encoding, prompt decoding and the
automatic-mask generator are the library's own code paths.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sam2_server.domain import AutomaticParams, MaskRecord, Prompt
from sam2_server.engine.automatic import AutomaticHooks, generate_masks
from sam2_server.engine.embedding import Embedding, bind, embedding_from
from sam2_server.engine.family import SAM2

if TYPE_CHECKING:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

__all__ = ["Sam2Image"]


class Sam2Image:
    """A SAM2 model's image side (the `ImageModel` of family.py)."""

    family = SAM2

    def __init__(self, predictor: SAM2ImagePredictor) -> None:
        self.predictor = predictor  # a template: copied per call, never given an image

    @property
    def image_size(self) -> int:
        size: int = self.predictor.model.image_size
        return size

    def encode_one(self, image: Image.Image, model_id: str) -> Embedding:
        """`SAM2ImagePredictor.set_image` on a private predictor."""
        predictor = copy.copy(self.predictor)
        predictor.set_image(image)
        return embedding_from(predictor, model_id, 0)

    def encode_batch(self, images: Sequence[Image.Image], model_id: str) -> list[Embedding]:
        """`SAM2ImagePredictor.set_image_batch` over several images."""
        predictor = copy.copy(self.predictor)
        arrays = [np.array(image) for image in images]  # writable copies for torch
        predictor.set_image_batch(arrays)
        return [embedding_from(predictor, model_id, i, own=True) for i in range(len(images))]

    def predict(
        self, embedding: Embedding, prompt: Prompt
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`SAM2ImagePredictor.predict` with the prompt's arguments."""
        masks, scores, logits = bind(self.predictor, embedding).predict(
            point_coords=prompt.point_coords,
            point_labels=prompt.point_labels,
            box=prompt.box,
            mask_input=prompt.mask_input,
            multimask_output=prompt.multimask_output,
            return_logits=prompt.return_logits,
            normalize_coords=prompt.normalize_coords,
        )
        return masks, scores, logits

    def generate(
        self,
        embedding: Embedding,
        params: AutomaticParams,
        hooks: AutomaticHooks,
        image: np.ndarray | None,
    ) -> list[MaskRecord]:
        """`SAM2AutomaticMaskGenerator` on the cached embedding (see automatic.py)."""
        return generate_masks(self.predictor.model, embedding, params, hooks, image)
