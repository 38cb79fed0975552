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

# The video tests' model (and bench/playback_latency.py's): the reduced model at a 256x256
# input (16x16 feature maps), so that SAM2's memory attention, which grows with the square
# of the feature map, costs well under a second per frame on two CPU cores. The library
# adapts every part to the input size (RoPE, positional embeddings, mask upsampling).
VIDEO_TEST_OVERRIDES = (*REDUCED_OVERRIDES, "++model.image_size=256")


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


# -- EdgeTAM (transformers) --------------------------------------------------------------

# The video object-score head's last layer, in transformers' names (see OBJECT_SCORE_BIAS).
EDGETAM_OBJECT_SCORE_BIAS = "mask_decoder.pred_obj_score_head.proj_out.bias"


def edgetam_config():
    """`EdgeTamVideoConfig` built as transformers' conversion script builds the published
    repository's (models/edgetam_video/convert_edgetam_video_to_hf.py): timm's RepViT-M1
    through `TimmWrapperConfig` with `features_only` and `out_indices (0, 1, 2, 3)`, no
    temporal encoding of object pointers, no occlusion embedding.

    The backbone is named here, not left to the default: transformers 5.2x's
    `EdgeTamVisionConfig` default spells the key "archirecture", so a default config
    silently builds a ResNet-50 (the tests assert RepViT).
    """
    from transformers import (
        EdgeTamVideoConfig,
        EdgeTamVideoMaskDecoderConfig,
        EdgeTamVideoPromptEncoderConfig,
        EdgeTamVisionConfig,
        TimmWrapperConfig,
    )

    backbone = TimmWrapperConfig(
        architecture="repvit_m1",
        model_args={"in_chans": 3, "features_only": True, "out_indices": (0, 1, 2, 3)},
    )
    return EdgeTamVideoConfig(
        vision_config=EdgeTamVisionConfig(backbone_config=backbone),
        prompt_encoder_config=EdgeTamVideoPromptEncoderConfig(),
        mask_decoder_config=EdgeTamVideoMaskDecoderConfig(),
        enable_temporal_pos_encoding_for_object_pointers=False,
        enable_occlusion_spatial_embedding=False,
    )


def write_edgetam_repo(
    folder: Path, seed: int = 0, object_present_bias: float | None = 10.0
) -> Path:
    """A Hugging Face repository folder as the published EdgeTAM's is saved: config.json
    (model_type edgetam_video), model.safetensors with seeded random weights, and the
    processor's settings (`Sam2VideoProcessor.save_pretrained`).

    Random weights are made less trivial than the default init: the backbone's batch
    norms get random statistics and affine parameters (so folding them is tested on
    real arithmetic), and parameters initialised to exactly zero get small values.
    `object_present_bias`: as for SAM2 (`write_checkpoint`), biases the video object
    score head towards "present", which the image answers never read.
    """
    from transformers import (
        EdgeTamVideoModel,
        Sam2ImageProcessor,
        Sam2VideoProcessor,
        Sam2VideoVideoProcessor,
    )

    torch.manual_seed(seed)
    model = EdgeTamVideoModel(edgetam_config()).eval()
    generator = torch.Generator().manual_seed(seed)

    def rand(shape: torch.Size, scale: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * scale

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None
                assert module.running_var is not None
                module.running_mean.copy_(rand(module.running_mean.shape, 0.1))
                module.running_var.copy_(
                    torch.rand(module.running_var.shape, generator=generator) + 0.5
                )
                module.weight.copy_(1 + rand(module.weight.shape, 0.1))
                module.bias.copy_(rand(module.bias.shape, 0.1))
        for param in model.parameters():
            if param.abs().sum() == 0:
                param.copy_(rand(param.shape, 0.02))
        if object_present_bias is not None:
            model.state_dict()[EDGETAM_OBJECT_SCORE_BIAS].add_(object_present_bias)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor = Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(), video_processor=Sam2VideoVideoProcessor()
    )
    processor.save_pretrained(folder)
    return folder
