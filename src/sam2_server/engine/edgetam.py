"""The EdgeTAM family: Meta's EdgeTAM through Hugging Face `transformers` and `timm`.

EdgeTAM (arXiv 2501.07256) keeps SAM2's prompt encoder, mask decoder and
memory design and swaps the Hiera encoder for timm's RepViT-M1, a convnet
about 7x cheaper. `transformers` ships it as `EdgeTamModel` (images) and
`EdgeTamVideoModel` (video), with `Sam2Processor`'s pre- and post-processing;
this module answers exactly as those classes do:

- **Encode**: the repository's `Sam2ImageProcessor` (resize, rescale,
  normalise), then `EdgeTamModel.get_image_embeddings`. The three feature
  maps have SAM2's shapes (1x256x64x64 and the 1x32x256x256, 1x64x128x128
  high-resolution features), so they are the same `Embedding` the cache,
  single-flight and batching already hold.
- **Decode**: `Sam2Processor`'s coordinate normalisation, `EdgeTamModel`'s
  forward on the cached embedding, `Sam2Processor.post_process_masks`
  (bilinear to the image's size, thresholded at 0 unless logits are asked
  for). The answer is shaped as `SAM2ImagePredictor.predict`'s (decoding.py
  sorts it best first, as for SAM2): low-resolution logits at 256x256, which
  come back as `mask_input`.
- **Automatic masks**: SAM2's generator (automatic.py) driven by this
  decoder: the generator's predictor calls are answered by the same three
  steps (see `_CropPredictor`).

Made fast on a CPU where it is exact: RepViT's batch norms are folded into
its convolutions (timm's `reparameterize_model`) and its convolutions run in
`channels_last` (the embedding moves by ~1e-9, tests hold it to 1e-6); the
sine position encodings of the vision neck, which depend only on shapes, are
computed once per shape instead of on every encode, and so is the prompt
side's image-wide positional embedding. The neck's widening 1x1 convolution
of the two high-resolution levels and the mask decoder's narrowing one that
follows it are composed into a single convolution (`fold_high_resolution_projections`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam2_server.domain import AutomaticParams, MaskRecord, Prompt
from sam2_server.engine.automatic import AutomaticHooks, generate_masks
from sam2_server.engine.embedding import Embedding
from sam2_server.engine.family import EDGETAM
from sam2_server.engine.models import (
    HF_CONFIG,
    HF_PROCESSOR_FILES,
    CheckpointError,
    ModelNotFoundError,
    ModelSpec,
    read_hf_config,
)
from sam2_server.engine.registry import one_line

logger = logging.getLogger(__name__)

__all__ = ["EdgeTamImage", "backbone_architecture", "load_image_model"]

# The published EdgeTAM's backbone; a config that names another (such as the ResNet-50
# a misspelt default builds: transformers 5.2x's `EdgeTamVisionConfig` writes its
# default backbone's key as "archirecture") is not EdgeTAM and is refused.
BACKBONE_PREFIX = "repvit"


def load_image_model(
    spec: ModelSpec,
    weights: Path,
    device: torch.device,
    backend: str = "torch",
    precision: str = "fp32",
) -> EdgeTamImage:
    """An EdgeTAM repository's image model, checked, folded and ready on `device`.

    `weights` is the verified model.safetensors (models.fetch_checkpoint); its
    folder holds config.json and, usually, the processor's settings. With
    `backend` "openvino" (ENCODER_BACKEND; the CPU only) the encode up to the
    embedding runs as an OpenVINO network (`compile_vision`), in `precision`.
    """
    from transformers import EdgeTamModel
    from transformers.utils import logging as hf_logging

    folder = weights.parent
    config = image_config(read_hf_config(folder / HF_CONFIG, spec.model_id), spec.model_id)
    quiet: Any = hf_logging.disable_progress_bar
    quiet()  # one progress bar per load in a server's log: noise
    model, info = from_pretrained(EdgeTamModel, config, spec, weights, "EdgeTAM")
    _check_loaded(spec, weights, info)
    processor = _processor(folder, spec.model_id)
    size = int(config.prompt_encoder_config.image_size)
    processor_size = processor.image_processor.size
    if (processor_size.height, processor_size.width) != (size, size):
        raise ModelNotFoundError(
            f"model {spec.model_id!r}: its processor resizes images to "
            f"{processor_size.height}x{processor_size.width}, its model takes {size}x{size}."
        )
    speed_up(model)
    model = model.to(device).eval()
    vision = compile_vision(model, spec, weights, precision) if backend == "openvino" else None
    image = EdgeTamImage(model, processor, device, channels_last=True, vision=vision)
    image.prefill()
    return image


class _VisionNetwork(torch.nn.Module):
    """EdgeTAM's encode up to the embedding as one network, for OpenVINO: RepViT, the
    neck and the mask decoder's high-resolution projections (folded by `speed_up`).
    Out: the three feature maps, N x C x H x W, highest resolution first, which is what
    `get_image_features` computes before it flattens them. The position encodings are
    not in it: they depend on sizes only (`CachedPositions`)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.model.vision_encoder(pixels, return_dict=True).fpn_hidden_states
        decoder = self.model.mask_decoder
        return decoder.conv_s0(maps[0]), decoder.conv_s1(maps[1]), maps[2]


class OpenVinoVision:
    """`_VisionNetwork` compiled by OpenVINO (ENCODER_BACKEND=openvino).

    Measured on 2 cores (AMD EPYC, AVX-512, fp32): an encode through the engine takes
    0.30 s against 0.375 s for the folded channels_last PyTorch encoder, the feature
    maps within 3e-7 of it (docs/models.md). A batch runs image by image (the network
    has batch 1), one infer request per call.
    """

    def __init__(self, compiled: Any, nbytes: int) -> None:
        self.compiled = compiled
        self.nbytes = nbytes  # its weights, in OpenVINO's memory

    def feature_maps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        from sam2_server.engine.openvino_backend import infer

        per_image = [infer(self.compiled, pixels[i : i + 1]) for i in range(pixels.shape[0])]
        return [torch.cat(parts) for parts in zip(*per_image, strict=True)]


def compile_vision(model: Any, spec: ModelSpec, weights: Path, precision: str) -> OpenVinoVision:
    """`model`'s (folded) vision network, converted once into the OpenVINO cache (keyed
    by the weights' and config.json's SHA-256, OpenVINO's version and the input size,
    as SAM2's encoder is) and compiled. The image and video models of one repository
    hold the same weights, so they share the converted network."""
    from sam2_server.engine import openvino_backend

    size = int(model.config.prompt_encoder_config.image_size)
    started = time.perf_counter()
    config = str(weights.parent / HF_CONFIG)
    key = openvino_backend.cache_key(spec.model_id, weights, config, size)
    hash_s = time.perf_counter() - started
    with torch.no_grad():
        compiled, report = openvino_backend.compile_cached(
            key, _VisionNetwork(model), precision, hash_s=hash_s
        )
    logger.info(
        "%s's vision network on OpenVINO (%s): %s, compiled in %.1f s",
        spec.model_id,
        report.entry,
        "cached" if report.convert_s is None else f"converted in {report.convert_s:.1f} s",
        report.compile_s,
    )
    return OpenVinoVision(compiled, openvino_backend.network_bytes(report.entry))


def image_config(raw: dict[str, Any], model_id: str) -> Any:
    """`EdgeTamConfig` from a repository's config.json (`edgetam`, or the `edgetam_video`
    superset the published repository holds), as `EdgeTamModel.from_pretrained` reads it;
    refused unless its backbone is RepViT."""
    from transformers import EdgeTamConfig

    try:
        config: Any = EdgeTamConfig.from_dict(raw)
    except Exception as exc:  # transformers' strict configs raise several kinds
        raise ModelNotFoundError(
            f"model {model_id!r}: config.json is not an EdgeTAM config ({_first_line(exc)})."
        ) from None
    architecture = backbone_architecture(config)
    if not architecture.startswith(BACKBONE_PREFIX):
        raise ModelNotFoundError(
            f"model {model_id!r}: config.json builds a {architecture!r} backbone, not EdgeTAM's "
            f"RepViT (vision_config.backbone_config.architecture must be 'repvit_m1'; a "
            f"config built from transformers' defaults misspells that key)."
        )
    return config


def backbone_architecture(config: Any) -> str:
    """The timm architecture an EdgeTAM config's vision backbone is built as."""
    vision = getattr(config, "vision_config", config)
    backbone = getattr(vision, "backbone_config", None)
    return str(getattr(backbone, "architecture", ""))


def speed_up(model: Any) -> None:
    """The exact CPU speed-ups, in place: RepViT's batch norms folded into its
    convolutions, its convolutions in channels_last, shape-only encodings cached,
    and the high-resolution levels' two 1x1 projections folded into one."""
    from timm.utils.model import reparameterize_model

    vision = model.vision_encoder
    backbone = vision.backbone.timm_model
    reparameterize_model(backbone, inplace=True)
    backbone.to(memory_format=torch.channels_last)
    neck = vision.neck
    if not isinstance(neck.position_encoding, CachedPositions):
        neck.position_encoding = CachedPositions(neck.position_encoding)
    fold_high_resolution_projections(model)


def fold_high_resolution_projections(model: Any) -> None:
    """The vision neck's 1x1 lateral convolution of each high-resolution level and the
    mask decoder's 1x1 projection of it (`conv_s0`, `conv_s1`) made one convolution.

    transformers runs them back to back on every encode (`get_image_features`): 48
    channels widened to 256 at 256x256, then narrowed to 32, and the 256-channel map
    serves nothing else (these levels take no top-down sum; the position encoding
    reads only the size). Two affine maps compose into one: the weights are multiplied
    in float64, so the features move by ~1e-8, and the encode saves the widest tensor
    it makes (64 MiB written and read again): about 15% of an encode, measured on
    2 cores. Applied once per model; a neck of another shape is left as it is.
    """
    neck = model.vision_encoder.neck
    decoder = model.mask_decoder
    last = len(neck.convs) - 1
    for level, name in ((0, "conv_s0"), (1, "conv_s1")):
        lateral = neck.convs[last - level]  # level i's lateral is convs[last - i] there
        projection = getattr(decoder, name)
        if level in neck.fpn_top_down_levels or not (
            _pointwise(lateral) and _pointwise(projection)
        ):
            continue
        with torch.no_grad():
            outer = projection.weight[:, :, 0, 0].double()
            weight = outer @ lateral.weight[:, :, 0, 0].double()
            bias = outer @ lateral.bias.double() + projection.bias.double()
        folded = torch.nn.Conv2d(lateral.in_channels, projection.out_channels, 1)
        folded.weight = torch.nn.Parameter(weight[:, :, None, None].to(lateral.weight.dtype))
        folded.bias = torch.nn.Parameter(bias.to(lateral.weight.dtype))
        folded.to(lateral.weight.device).requires_grad_(False)
        neck.convs[last - level] = folded
        setattr(decoder, name, torch.nn.Identity())


def _pointwise(conv: Any) -> bool:
    """A plain 1x1 convolution with a bias (what the fold multiplies)."""
    return (
        isinstance(conv, torch.nn.Conv2d)
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.groups == 1
        and conv.bias is not None
    )


class CachedPositions(torch.nn.Module):
    """A sine position encoding computed once per (height, width, device, dtype).

    The vision neck asks for one per feature level on every encode, and the
    answer depends on the shape alone (no mask is ever passed on this path);
    the batch dimension is an `expand` of the first image's, so a cached
    entry costs one image's worth (about 89 MB at 1024x1024 in float32).
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self._lock = threading.Lock()

    def forward(
        self,
        shape: torch.Size,
        device: torch.device | str,
        dtype: torch.dtype,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if mask is not None:
            out: torch.Tensor = self.inner(shape, device, dtype, mask)
            return out
        batch, *rest = shape
        # The encoding has its own channel count: only the size is read (a folded
        # level's features have fewer channels than its encoding).
        key = (tuple(rest[-2:]), str(device), dtype)
        cached = self._cache.get(key)
        if cached is None:
            # An ordinary tensor (not an inference tensor) so that any caller may read it.
            with self._lock, torch.inference_mode(False), torch.no_grad():
                cached = self._cache.get(key)
                if cached is None:
                    cached = self.inner(torch.Size((1, *rest)), device, dtype)
                    self._cache[key] = cached
        return cached.expand(batch, *cached.shape[1:])

    def prefill(self, shapes: Sequence[tuple[int, ...]], device: torch.device) -> None:
        """Compute the float32 entries for `shapes` now, so the model's memory counts them."""
        for shape in shapes:
            self.forward(torch.Size(shape), device, torch.float32)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._cache.values())


class EdgeTamImage:
    """An EdgeTAM model's image side (the `ImageModel` of family.py)."""

    family = EDGETAM

    def __init__(
        self,
        model: Any,
        processor: Any,
        device: torch.device,
        *,
        channels_last: bool = False,
        vision: OpenVinoVision | None = None,
    ) -> None:
        self.model: Any = model  # transformers' EdgeTamModel
        self.processor: Any = processor  # transformers' Sam2Processor
        self.device = device
        self.vision = vision  # the encode on OpenVINO, or None: transformers' PyTorch
        self.channels_last = channels_last  # the backbone's layout (`speed_up`): its input's
        self.image_size = int(model.config.prompt_encoder_config.image_size)
        # The prompt side's image-wide positional embedding depends on no input:
        # `forward` asks for it on every decode; it is computed once, on first use.
        self._dense_pe: torch.Tensor | None = None
        original = model.get_image_wide_positional_embeddings

        def cached_dense_pe() -> torch.Tensor:
            if self._dense_pe is None:
                with torch.inference_mode(False), torch.no_grad():
                    self._dense_pe = original()
            return self._dense_pe

        model.get_image_wide_positional_embeddings = cached_dense_pe

    def prefill(self) -> None:
        """Compute the shape-only encodings of a float32 encode now (not on the first
        request), so that the memory budget counts them (`cache_bytes`)."""
        vision = self.model.vision_encoder
        positions = vision.neck.position_encoding
        if isinstance(positions, CachedPositions) and self.vision is not None:
            positions.clear()  # the compiled network encodes; converting it filled these
        elif isinstance(positions, CachedPositions):
            channels = int(vision.config.fpn_hidden_size)
            size = self.image_size
            reductions = vision.backbone.timm_model.feature_info.reduction()  # 4, 8, 16, 32
            shapes = [(1, channels, size // r, size // r) for r in reductions]
            positions.prefill(shapes, self.device)
        self.model.get_image_wide_positional_embeddings()

    @property
    def cache_bytes(self) -> int:
        """Bytes held beside the model's weights: the cached shape-only encodings, and
        the compiled vision network's weights (ENCODER_BACKEND=openvino)."""
        positions = self.model.vision_encoder.neck.position_encoding
        total = positions.nbytes if isinstance(positions, CachedPositions) else 0
        if self.vision is not None:
            total += self.vision.nbytes
        if self._dense_pe is not None:
            total += self._dense_pe.numel() * self._dense_pe.element_size()
        return total

    # -- encode ----------------------------------------------------------------------------

    def encode_one(self, image: Image.Image, model_id: str) -> Embedding:
        return self._encode([image], model_id, own=False)[0]

    def encode_batch(self, images: Sequence[Image.Image], model_id: str) -> list[Embedding]:
        return self._encode(images, model_id, own=True)

    def _encode(
        self, images: Sequence[Image.Image | np.ndarray], model_id: str, *, own: bool
    ) -> list[Embedding]:
        """`Sam2Processor`'s pixels, then `EdgeTamModel.get_image_embeddings`."""
        inputs = self.processor.image_processor(images=list(images), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        if self.vision is None:
            s0, s1, embed = self.model.get_image_embeddings(pixels)
        else:
            # `get_image_embeddings` from the compiled network's maps: the lowest level
            # gets the no-memory embedding added, as transformers adds it.
            s0, s1, lowest = self.vision.feature_maps(pixels)
            embed = lowest + self.model.no_memory_embedding.view(1, -1, 1, 1)
        sizes = [(int(h), int(w)) for h, w in inputs["original_sizes"]]

        def pick(tensor: torch.Tensor, index: int) -> torch.Tensor:
            part = tensor[index : index + 1]
            # Standard layout, and (in a batch) owning only its image's bytes.
            return part.clone(memory_format=torch.contiguous_format) if own else part.contiguous()

        return [
            Embedding(
                model_id=model_id,
                image_embed=pick(embed, i),
                high_res_feats=(pick(s0, i), pick(s1, i)),
                orig_hw=size,
            )
            for i, size in enumerate(sizes)
        ]

    # -- decode ----------------------------------------------------------------------------

    def predict(
        self, embedding: Embedding, prompt: Prompt
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A prompt as `Sam2Processor` prepares it, `EdgeTamModel`'s forward on the cached
        embedding, `Sam2Processor.post_process_masks`; shaped as `SAM2ImagePredictor.predict`.
        """
        height, width = embedding.orig_hw
        inputs = self._prompt_inputs(prompt, (height, width))
        outputs = self.model(
            image_embeddings=[*embedding.high_res_feats, embedding.image_embed],
            multimask_output=prompt.multimask_output,
            **inputs,
        )
        low_res = outputs.pred_masks[0].float()  # objects x C x 256 x 256
        masks = self.processor.post_process_masks(
            [low_res], [[height, width]], binarize=not prompt.return_logits
        )[0]
        scores = outputs.iou_scores[0].float()
        # As `SAM2ImagePredictor.predict`: one object's answer without its object axis.
        return (
            _numpy(masks.squeeze(0)),
            _numpy(scores.squeeze(0)),
            _numpy(low_res.squeeze(0)),
        )

    def _prompt_inputs(self, prompt: Prompt, orig_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Points, labels, boxes and mask in `EdgeTamModel`'s layout: [image, object, point,
        xy], through `Sam2Processor`'s own coordinate normalisation."""
        points = prompt.point_coords
        labels = prompt.point_labels
        boxes = prompt.box
        if points is not None and points.ndim == 2:
            points, labels = points[None], None if labels is None else labels[None]
        if boxes is not None and boxes.ndim == 1:
            boxes = boxes[None]
        # Coordinates relative to the image ([0, 1]) when not normalised: a 1x1 "image".
        size = [list(orig_hw)] if prompt.normalize_coords else [[1, 1]]
        inputs: dict[str, torch.Tensor] = {}
        if points is not None or boxes is not None:
            encoded = self.processor(
                original_sizes=size,
                input_points=None if points is None else np.asarray(points, np.float64)[None],
                input_labels=None if labels is None else np.asarray(labels, np.int64)[None],
                input_boxes=None if boxes is None else np.asarray(boxes, np.float64)[None],
                return_tensors="pt",
            )
            for name in ("input_points", "input_labels", "input_boxes"):
                if name in encoded:
                    inputs[name] = encoded[name].to(self.device)
        if prompt.mask_input is not None:
            mask = torch.as_tensor(prompt.mask_input, dtype=torch.float32, device=self.device)
            inputs["input_masks"] = mask.reshape(1, 1, *mask.shape[-2:])
        return inputs

    # -- automatic masks -------------------------------------------------------------------

    def generate(
        self,
        embedding: Embedding,
        params: AutomaticParams,
        hooks: AutomaticHooks,
        image: np.ndarray | None,
    ) -> list[MaskRecord]:
        """SAM2's generator (automatic.py) with this model's predictor (`_CropPredictor`)."""

        def adopt(library: Any, cached: Embedding, hooks: AutomaticHooks) -> _CropPredictor:
            return _CropPredictor(self, library, cached, hooks)

        # The library builds its own predictor (its transforms: the hole and sprinkle
        # filter of min_mask_region_area) from any model with an `image_size`.
        return generate_masks(self, embedding, params, hooks, image, adopt=adopt)

    def normalize_points(self, points: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """N x 2 pixel coordinates → the model's input frame, as `Sam2Processor` does it."""
        encoded = self.processor(
            original_sizes=[list(orig_hw)],
            input_points=points.detach().cpu()[None, :, None, :].numpy().astype(np.float64),
            return_tensors="pt",
        )
        normalized: torch.Tensor = encoded["input_points"][0, :, 0, :]
        return normalized.to(points.device)

    def decode_points(
        self,
        embedding: Embedding,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """N single-point prompts (N x 1 x 2 in the input frame) on one embedding:
        (low-resolution logits N x C x 256 x 256, scores N x C).

        Without masks the N prompts are the model's point batch, as transformers'
        mask generation batches them; with one mask input each (the generator's
        mask-to-mask refinement) the embedding is repeated as an image batch of N.
        """
        feats = [*embedding.high_res_feats, embedding.image_embed]
        if mask_input is None:
            outputs = self.model(
                image_embeddings=feats,
                input_points=points[None],
                input_labels=labels[None],
                multimask_output=multimask_output,
            )
            return outputs.pred_masks[0], outputs.iou_scores[0]
        count = points.shape[0]
        outputs = self.model(
            image_embeddings=[f.expand(count, *f.shape[1:]) for f in feats],
            input_points=points[:, None],
            input_labels=labels[:, None],
            input_masks=mask_input,
            multimask_output=multimask_output,
        )
        return outputs.pred_masks[:, 0], outputs.iou_scores[:, 0]


class _PointTransforms:
    """What the generator asks of its predictor's transforms: coordinates into the
    model's frame (`Sam2Processor`'s way), masks back to the image (the library's
    transforms: bilinear, plus its hole and sprinkle filter where it has one)."""

    def __init__(self, image: EdgeTamImage, library: Any) -> None:
        self._image = image
        self._library = library

    def transform_coords(
        self, coords: torch.Tensor, normalize: bool = False, orig_hw: Any = None
    ) -> torch.Tensor:
        hw = (int(orig_hw[0]), int(orig_hw[1])) if normalize else (1, 1)
        return self._image.normalize_points(coords, hw)

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: Any) -> torch.Tensor:
        processed: torch.Tensor = self._library.postprocess_masks(masks, orig_hw)
        return processed


class _CropPredictor:
    """The generator's predictor, answered by EdgeTAM: the whole image from the cached
    embedding, smaller crops encoded (under the model's encode lock), batches decoded
    under the model's automatic lock (clicks, under the decode lock, do not wait)."""

    def __init__(
        self, image: EdgeTamImage, library: Any, embedding: Embedding, hooks: AutomaticHooks
    ) -> None:
        self._image = image
        self._embedding = embedding
        self._hooks = hooks
        self._transforms = _PointTransforms(image, library._transforms)
        self.mask_threshold = float(library.mask_threshold)
        self._current: Embedding | None = None

    @property
    def device(self) -> torch.device:
        return self._image.device

    def set_image(self, image: np.ndarray) -> None:
        if tuple(image.shape[:2]) == self._embedding.orig_hw:
            self._current = self._embedding  # a crop as large as the image is the image
            return
        crop = Image.fromarray(np.ascontiguousarray(image))

        def encode() -> None:
            self._current = self._image.encode_one(crop, self._embedding.model_id)

        self._hooks.encode_crop(encode)

    def reset_predictor(self) -> None:
        self._current = None

    def _predict(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        img_idx: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        current = self._current
        if current is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if point_coords is None or point_labels is None or boxes is not None:
            raise ValueError("the automatic-mask generator prompts with points only")
        with self._hooks.batch_lock:
            low_res, scores = self._image.decode_points(
                current, point_coords, point_labels, mask_input, multimask_output
            )
        low_res = low_res.float()
        masks = self._transforms.postprocess_masks(low_res, current.orig_hw)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, scores.float(), low_res


def _check_loaded(spec: ModelSpec, weights: Path, info: dict[str, Any]) -> None:
    """Refuse weights that leave part of the model at its random initialisation."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(item) for item in info.get("mismatched_keys") or ())
    if missing or mismatched:
        example = (missing or mismatched)[0]
        raise ModelNotFoundError(
            f"model {spec.model_id!r}: {weights} does not match its config.json "
            f"({len(missing)} missing, {len(mismatched)} mismatched weights, e.g. {example})."
        )


def _processor(folder: Path, model_id: str) -> Any:
    """The repository's `Sam2Processor` settings, or transformers' defaults without any."""
    from transformers import Sam2ImageProcessor, Sam2Processor

    if not any((folder / name).is_file() for name in HF_PROCESSOR_FILES):
        logger.info("%s has no processor settings: using Sam2Processor's defaults", model_id)
        return Sam2Processor(image_processor=Sam2ImageProcessor())
    try:
        processor: Any = Sam2Processor.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ModelNotFoundError(
            f"model {model_id!r}: its processor settings cannot be read ({_first_line(exc)})."
        ) from None
    return processor


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    array: np.ndarray = tensor.detach().cpu().numpy()
    return array


def from_pretrained(
    model_class: Any, config: Any, spec: ModelSpec, weights: Path, kind: str
) -> tuple[Any, dict[str, Any]]:
    """`model_class` from the repository folder of `weights`: fp32 safetensors, offline,
    with its loading report; a one-line CheckpointError naming `kind` when it cannot load."""
    try:
        loaded: Any = model_class.from_pretrained(
            weights.parent,
            config=config,
            dtype=torch.float32,
            use_safetensors=True,
            local_files_only=True,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"model {spec.model_id!r}: {weights} cannot be loaded as {kind} "
            f"({type(exc).__name__}: {_first_line(exc)})."
        ) from None
    model, info = loaded
    return model, info


def _first_line(exc: BaseException) -> str:
    """transformers' messages go on for lines: the first, at most 200 characters."""
    return one_line(exc)[:200]
