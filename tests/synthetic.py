"""Seeded random-weight SAM2 checkpoints, for tests, benchmarks and smoke tests.

Real weights cannot be fetched everywhere (CI, air-gapped hosts); a model built
from the sam2 package's own config with random weights exercises every code
path a real checkpoint does (file format, strict loading, shapes, timings),
just with meaningless masks. `REDUCED_OVERRIDES` thins the image encoder about
10x while keeping the 1024 input and the feature map sizes SAM2ImagePredictor
assumes.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"

REDUCED_OVERRIDES = (
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.memory_attention.num_layers=1",
)


def write_config(
    path: Path, config_name: str = TINY_CONFIG, overrides: tuple[str, ...] = ()
) -> Path:
    """The package's config with `overrides` applied, saved as a standalone YAML file."""
    import sam2  # noqa: F401  (initialises Hydra's search path on the package's configs)
    from hydra import compose
    from omegaconf import OmegaConf

    OmegaConf.save(compose(config_name=config_name, overrides=list(overrides)), path)
    return path


# The last layer of the mask decoder's object-score head.
OBJECT_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"


def write_checkpoint(
    path: Path,
    config_name: str = TINY_CONFIG,
    overrides: tuple[str, ...] = (),
    seed: int = 0,
    object_present_bias: float | None = 10.0,
) -> Path:
    """A `{"model": state_dict}` file, as Meta's checkpoints are, with seeded random weights.

    Default init leaves some embeddings at exactly zero; those get small random
    values too, so nothing downstream is trivially zero.

    With random weights SAM2's object-score head says "no object" about half
    the time, and the video predictor then replaces every mask by an empty
    one, so video answers would be trivially equal. `object_present_bias`
    biases that head towards "present" (the image predictor never reads it).
    """
    import sam2  # noqa: F401
    from hydra import compose
    from hydra.utils import instantiate

    cfg = compose(config_name=config_name, overrides=list(overrides))
    torch.manual_seed(seed)
    model = instantiate(cfg.model, _recursive_=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.abs().sum() == 0:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        if object_present_bias is not None:
            model.state_dict()[OBJECT_SCORE_BIAS].add_(object_present_bias)
    torch.save({"model": model.state_dict()}, path)
    return path
