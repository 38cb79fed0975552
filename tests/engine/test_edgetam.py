"""The EdgeTAM family against transformers' own classes, on the same random checkpoint.

The checkpoint is EdgeTAM's real architecture (RepViT-M1 through timm, built as
transformers' conversion script builds the published repository), saved as a
Hugging Face repository folder and placed in the test HF cache under the
published repo id: the engine loads it the way a user's model is loaded
(resolved offline by repo id, its weights' SHA-256 checked, then folded).

The oracle is the model card's usage, nothing folded or cached:
`EdgeTamModel.from_pretrained` + `Sam2Processor.from_pretrained` on the same
folder, `processor(images=..., input_points=..., ...)`, `model(**inputs)`,
`processor.post_process_masks(...)`; its candidates are sorted best first as
the reference (Livepeer's runner) sorts SAM2's. Masks must be equal, scores
and logits within 1e-5.

For automatic masks the oracle is sam2's own `SAM2AutomaticMaskGenerator`
with its predictor's three calls (`set_image`, `transform_coords`,
`_predict`) answered by transformers' public API as above: the records must
be the same masks (RLE equal), boxes, areas, points and crops, with IoU and
stability scores within 1e-5.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
import types
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_server.config import Settings
from sam2_server.domain import AutomaticParams, Prompt
from sam2_server.engine import Engine
from sam2_server.engine.decoding import decode
from sam2_server.engine.edgetam import CachedPositions, backbone_architecture, image_config
from sam2_server.engine.embedding import Embedding
from sam2_server.engine.models import (
    CheckpointError,
    ModelNotFoundError,
    fetch_checkpoint,
    resolve_spec,
)
from tests.conftest import EDGETAM_REPO, image_bytes, place_repository_in_hf_cache

IMAGE = "groceries.jpg"  # 800 x 534
DATA = image_bytes(IMAGE)
TOLERANCE = 1e-5


def picture(data: bytes = DATA) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


# -- the oracle --------------------------------------------------------------------------


def reference_answer(
    reference,
    features,
    image: Image.Image,
    *,
    point_coords=None,
    point_labels=None,
    box=None,
    mask_input=None,
    multimask_output: bool = True,
    return_logits: bool = True,
) -> dict[str, np.ndarray]:
    """The model card's usage of `EdgeTamModel` + `Sam2Processor`, sorted best first.

    `features` are the model's own `get_image_embeddings` of the processor's pixels
    (what its forward computes from `pixel_values`), computed once per image. Besides
    the answer, `mask_logits` are the upsampled logits the masks are thresholded from.
    """
    model, processor = reference
    points = labels = boxes = None
    if point_coords is not None:
        coords, tags = np.asarray(point_coords, float), np.asarray(point_labels)
        if coords.ndim == 2:
            coords, tags = coords[None], tags[None]
        points, labels = [coords.tolist()], [tags.tolist()]
    if box is not None:
        boxes = [np.asarray(box, float).reshape(-1, 4).tolist()]
    inputs = processor(
        images=image,
        input_points=points,
        input_labels=labels,
        input_boxes=boxes,
        return_tensors="pt",
    )
    inputs.pop("pixel_values")
    sizes = inputs.pop("original_sizes")
    if mask_input is not None:
        inputs["input_masks"] = torch.as_tensor(mask_input, dtype=torch.float32)[None]
    with torch.no_grad():
        outputs = model(image_embeddings=features, **inputs, multimask_output=multimask_output)
    logits = processor.post_process_masks(outputs.pred_masks, sizes, binarize=False)[0]
    binary = processor.post_process_masks(outputs.pred_masks, sizes)[0]
    answer = {
        "masks": (logits if return_logits else binary).squeeze(0).float().numpy(),
        "mask_logits": logits.squeeze(0).numpy(),
        "scores": outputs.iou_scores[0].squeeze(0).numpy(),
        "logits": outputs.pred_masks[0].squeeze(0).numpy(),
    }
    return _best_first(answer)


def _best_first(answer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    scores = answer["scores"]
    if scores.ndim == 1:
        order = np.argsort(scores)[::-1]
        return {k: v[order] for k, v in answer.items()}
    rows = np.arange(scores.shape[0])[:, None]
    order = np.argsort(scores, axis=1)[:, ::-1]
    return {k: v[rows, order] for k, v in answer.items()}


def assert_same(got, want: dict[str, np.ndarray], *, exact: bool, logits_masks: bool) -> None:
    """Shapes, order and values of an answer against the oracle's.

    `exact`: masks equal. Otherwise (the folded encoder, whose embedding moves by
    ~1e-9) a binary mask may differ only where the oracle's own logit is within
    1e-5 of the threshold, and at almost no pixel.
    """
    assert got.masks.shape == want["masks"].shape
    assert got.scores.shape == want["scores"].shape
    assert got.logits.shape == want["logits"].shape
    assert got.logits.shape[-2:] == (256, 256)
    if exact:
        np.testing.assert_array_equal(got.masks > 0, want["masks"] > 0)
        if not logits_masks:
            np.testing.assert_array_equal(got.masks, want["masks"])
    else:
        differ = (got.masks > 0) != (want["mask_logits"] > 0)
        assert not differ[np.abs(want["mask_logits"]) > TOLERANCE].any()
        assert differ.mean() < 1e-5
    if logits_masks:
        np.testing.assert_allclose(got.masks, want["masks"], rtol=0, atol=TOLERANCE)
    else:
        assert set(np.unique(got.masks)) <= {0.0, 1.0}
    np.testing.assert_allclose(got.scores, want["scores"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(got.logits, want["logits"], rtol=0, atol=TOLERANCE)
    # Sorted best first, per object.
    assert (np.diff(got.scores, axis=-1) <= 0).all()
    # Random weights still answer something: a mask is neither empty nor everything.
    binary = got.masks > 0
    assert binary.any()
    assert not binary.all()


@pytest.fixture(scope="module")
def unfolded(edgetam_repo, hf_edgetam):
    """The family's image side on transformers' model as the model card loads it (nothing
    folded, nothing in channels_last): the decode path alone, to be fed the oracle's own
    embedding, must then answer exactly as the oracle."""
    from transformers import EdgeTamModel, Sam2Processor

    from sam2_server.engine.edgetam import EdgeTamImage
    from sam2_server.engine.encoding import LoadedModel

    model = EdgeTamModel.from_pretrained(edgetam_repo).eval()
    image = EdgeTamImage(model, Sam2Processor.from_pretrained(edgetam_repo), torch.device("cpu"))
    return LoadedModel(resolve_spec(hf_edgetam), image, nbytes=0)


def oracle_embedding(features, model_id: str) -> Embedding:
    return Embedding(
        model_id=model_id,
        image_embed=features[2],
        high_res_feats=(features[0], features[1]),
        orig_hw=(534, 800),
        image_bytes=DATA,
    )


# -- loading -----------------------------------------------------------------------------


def test_the_family_comes_from_config_json_and_the_backbone_is_repvit(
    edgetam_engine, hf_edgetam, edgetam_repo
):
    spec = resolve_spec(hf_edgetam)
    assert (spec.family, spec.repo_id) == ("edgetam", EDGETAM_REPO)
    assert json.loads((edgetam_repo / "config.json").read_text())["model_type"] == "edgetam_video"
    loaded = edgetam_engine.models.image_model(hf_edgetam)
    model = loaded.image.model
    assert backbone_architecture(model.config) == "repvit_m1"
    kinds = {type(m).__name__ for m in model.vision_encoder.backbone.timm_model.modules()}
    assert {"RepViTBlock", "RepVitStage", "RepVitStem"} <= kinds, kinds
    assert not any("ResNet" in kind or "Bottleneck" in kind for kind in kinds)
    # Loaded through the user's path: the HF cache's snapshot, not the staging folder.
    assert "models--yonigozlan--EdgeTAM-hf" in str(fetch_checkpoint(spec))


def test_transformers_default_config_is_the_archirecture_trap(tmp_path):
    """A config built from transformers' defaults names no RepViT (the misspelt key):
    such a repository is refused at load, in one line."""
    from transformers import EdgeTamVideoConfig

    raw = EdgeTamVideoConfig().to_dict()
    assert backbone_architecture(EdgeTamVideoConfig()) != "repvit_m1"
    with pytest.raises(ModelNotFoundError, match="RepViT"):
        image_config(raw, "defaults")


def test_a_local_folder_loads_too(edgetam_repo):
    spec = resolve_spec(str(edgetam_repo))
    assert (spec.family, spec.repo_id) == ("edgetam", None)
    assert fetch_checkpoint(spec) == edgetam_repo / "model.safetensors"


def test_damaged_or_foreign_repositories_are_refused_in_one_line(edgetam_repo, tmp_path):
    # A blob in the HF cache that does not hash to its name.
    repo = "someone/EdgeTAM-damaged"
    snapshot = place_repository_in_hf_cache(repo, edgetam_repo, tmp_path)
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256") as info:
        fetch_checkpoint(resolve_spec(repo))
    assert f"sam2-server download {repo}" in str(info.value)

    # A truncated local safetensors file.
    folder = tmp_path / "truncated"
    shutil.copytree(edgetam_repo, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        fetch_checkpoint(resolve_spec(str(folder)))

    # Another model type, and a folder that is no repository.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "sam2_video"}))
    with pytest.raises(ModelNotFoundError, match="model_type 'sam2_video'"):
        resolve_spec(str(other))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        resolve_spec(str(empty))
    # Missing weights beside a config.
    (other / "config.json").write_text(json.dumps({"model_type": "edgetam"}))
    with pytest.raises(ModelNotFoundError, match=r"model\.safetensors"):
        fetch_checkpoint(resolve_spec(str(other)))


def test_a_repository_missing_weights_of_its_config_is_refused(edgetam_repo, tmp_path):
    """Weights that leave part of the model random are not served."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(edgetam_repo, folder)
    tensors = load_file(folder / "model.safetensors")
    dropped = next(name for name in tensors if name.startswith("mask_decoder."))
    del tensors[dropped]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    engine = Engine(Settings(model_ids=(str(folder),), device="cpu"))
    with pytest.raises(Exception, match="missing") as info:
        engine.load()
    assert dropped in str(info.value)


# -- the speed-ups are exact -------------------------------------------------------------


def test_folded_channels_last_encoder_equals_transformers_within_1e6(
    edgetam_engine, hf_edgetam, edgetam_reference, edgetam_reference_features
):
    model = edgetam_reference[0]
    loaded = edgetam_engine.models.image_model(hf_edgetam)
    network = loaded.image.model
    # Folded: no batch norm left in RepViT (the reference has them), channels_last.
    reference_norms = [
        m for m in model.vision_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert len(reference_norms) > 50
    assert not [m for m in network.vision_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    conv = next(
        m for m in network.vision_encoder.backbone.modules() if isinstance(m, torch.nn.Conv2d)
    )
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # The high-resolution levels' neck and decoder projections are one convolution each.
    assert isinstance(network.mask_decoder.conv_s0, torch.nn.Identity)
    assert isinstance(network.mask_decoder.conv_s1, torch.nn.Identity)
    widths = sorted(c.out_channels for c in network.vision_encoder.neck.convs)
    assert widths == [32, 64, 256, 256], widths
    assert not isinstance(model.mask_decoder.conv_s0, torch.nn.Identity)

    assert_embedding_within_1e6(edgetam_engine, hf_edgetam, edgetam_reference_features)


def assert_embedding_within_1e6(engine, model_id: str, want) -> None:
    """The served embedding of DATA against transformers' `get_image_embeddings` of it
    (`want`: the `edgetam_reference_features` fixture)."""
    embedding = engine.embed(model_id, DATA)
    got = (*embedding.high_res_feats, embedding.image_embed)
    for ours, theirs in zip(got, want, strict=True):
        assert ours.shape == theirs.shape
        assert ours.is_contiguous()
        assert float((ours - theirs).abs().max()) <= 1e-6
    assert embedding.orig_hw == (534, 800)


def test_position_encodings_are_computed_once(edgetam_engine, hf_edgetam):
    loaded = edgetam_engine.models.image_model(hf_edgetam)
    positions = loaded.image.model.vision_encoder.neck.position_encoding
    assert isinstance(positions, CachedPositions)
    calls = []
    inner = positions.inner
    original = inner.forward
    inner.forward = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        edgetam_engine.embed(hf_edgetam, image_bytes("truck.jpg"))
    finally:
        del inner.forward
    assert calls == []  # computed at load, counted in the model's bytes
    assert positions.nbytes > 0
    assert loaded.nbytes >= positions.nbytes + sum(
        p.numel() * 4 for p in loaded.image.model.parameters()
    )


def test_a_batch_encodes_each_image_as_alone(edgetam_engine, hf_edgetam):
    loaded = edgetam_engine.models.image_model(hf_edgetam)
    images = [picture(), picture(image_bytes("truck.jpg"))]
    batch = edgetam_engine.encoder.encode_batch(loaded, hf_edgetam, images)
    for image, many in zip(images, batch, strict=True):
        one = edgetam_engine.encoder.encode_one(loaded, hf_edgetam, image)
        assert many.orig_hw == one.orig_hw
        ours = (many.image_embed, *many.high_res_feats)
        for a, b in zip(ours, (one.image_embed, *one.high_res_feats), strict=True):
            assert a.untyped_storage().nbytes() == a.numel() * a.element_size()  # owns its bytes
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# -- clicks ------------------------------------------------------------------------------

POINTS = [[400, 250], [120, 90]]
LABELS = [1, 0]
BOX = [100, 100, 500, 400]
BOXES = [[50, 50, 300, 300], [350, 100, 700, 500]]
CASES = {
    "one_point": {"point_coords": [[300, 200]], "point_labels": [1]},
    "points": {"point_coords": POINTS, "point_labels": LABELS},
    "box": {"box": BOX},
    "points_and_box": {"point_coords": POINTS, "point_labels": LABELS, "box": BOX},
    "box_as_1x4": {"box": [BOX]},
    "several_boxes": {"box": BOXES},
    "several_boxes_with_points": {
        "box": BOXES,
        "point_coords": [[[200, 200]], [[500, 300]]],
        "point_labels": [[1], [1]],
    },
    "point_lists_without_boxes": {
        "point_coords": [[[200, 200], [250, 220]], [[500, 300], [90, 40]]],
        "point_labels": [[1, 1], [1, 0]],
    },
    "single_mask": {"point_coords": POINTS, "point_labels": LABELS, "multimask_output": False},
    "binary_masks": {"point_coords": POINTS, "point_labels": LABELS, "return_logits": False},
}


@pytest.mark.parametrize("name", list(CASES))
def test_clicks_equal_transformers(
    edgetam_engine, hf_edgetam, edgetam_reference, edgetam_reference_features, unfolded, name
):
    case = dict(CASES[name])
    flags = {k: case.pop(k) for k in ("multimask_output", "return_logits") if k in case}
    arrays = {k: np.asarray(v) for k, v in case.items()}
    prompt = Prompt(**arrays, **flags)
    want = reference_answer(
        edgetam_reference, edgetam_reference_features, picture(), **arrays, **flags
    )
    logits_masks = flags.get("return_logits", True)
    # The decode path on the oracle's own embedding: exactly the oracle's answer.
    embedding = oracle_embedding(edgetam_reference_features, hf_edgetam)
    exact = decode(unfolded, embedding, prompt, edgetam_engine.compute)
    assert_same(exact, want, exact=True, logits_masks=logits_masks)
    # The served model, end to end (folded encoder, cache): the same within tolerance.
    got = edgetam_engine.segment(hf_edgetam, DATA, prompt)
    assert_same(got, want, exact=False, logits_masks=logits_masks)
    objects = 2 if name.startswith(("several", "point_lists")) else 1
    candidates = 1 if name == "single_mask" else 3
    shape = (candidates, 534, 800) if objects == 1 else (objects, candidates, 534, 800)
    assert got.masks.shape == shape


def test_mask_input_round_trips(
    edgetam_engine, hf_edgetam, edgetam_reference, edgetam_reference_features, unfolded
):
    """An answer's best low-resolution logits go back as `mask_input`, as with SAM2."""
    first = edgetam_engine.segment(
        hf_edgetam, DATA, Prompt(point_coords=np.array(POINTS), point_labels=np.array(LABELS))
    )
    low_res = first.logits[0][None]  # 1 x 256 x 256
    again = {"point_coords": np.array([[400, 250]]), "point_labels": np.array([1])}
    prompt = Prompt(**again, mask_input=low_res, multimask_output=False)
    want = reference_answer(
        edgetam_reference,
        edgetam_reference_features,
        picture(),
        **again,
        mask_input=low_res,
        multimask_output=False,
    )
    embedding = oracle_embedding(edgetam_reference_features, hf_edgetam)
    exact = decode(unfolded, embedding, prompt, edgetam_engine.compute)
    assert_same(exact, want, exact=True, logits_masks=True)
    got = edgetam_engine.segment(hf_edgetam, DATA, prompt)
    assert_same(got, want, exact=False, logits_masks=True)
    # The mask changes the answer: it is read, not ignored.
    without = edgetam_engine.segment(hf_edgetam, DATA, Prompt(**again, multimask_output=False))
    assert np.abs(without.logits - got.logits).max() > 1e-3


def test_relative_coordinates_mean_the_same_points(edgetam_engine, hf_edgetam):
    """normalize_coords=False: coordinates in [0, 1] of the image, as SAM2 takes them."""
    labels = np.array([1])
    pixels = edgetam_engine.segment(
        hf_edgetam, DATA, Prompt(point_coords=np.array([[400.0, 267.0]]), point_labels=labels)
    )
    relative = edgetam_engine.segment(
        hf_edgetam,
        DATA,
        Prompt(point_coords=np.array([[0.5, 0.5]]), point_labels=labels, normalize_coords=False),
    )
    np.testing.assert_allclose(relative.scores, pixels.scores, atol=1e-6)
    np.testing.assert_allclose(relative.logits, pixels.logits, atol=1e-5)


def test_cache_is_keyed_per_model_and_clicks_reuse_it(edgetam_engine, hf_edgetam):
    from sam2_server.domain import Timings, Work

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)).save(
        buffer, "PNG"
    )
    data = buffer.getvalue()
    before = edgetam_engine.encoder.encoded_images
    prompt = Prompt(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    for _ in range(3):
        work = Work(Timings())
        answer = edgetam_engine.segment(hf_edgetam, data, prompt, work)
    assert answer.masks.shape == (3, 40, 60)
    assert edgetam_engine.encoder.encoded_images == before + 1
    assert work.timings.cache_hit is True
    image_id = hashlib.sha256(data).hexdigest()
    assert edgetam_engine.encoder.cached(hf_edgetam, image_id) is not None
    assert edgetam_engine.encoder.cached("facebook/sam2.1-hiera-tiny", image_id) is None


# -- automatic masks ---------------------------------------------------------------------


class ReferencePredictor:
    """`SAM2AutomaticMaskGenerator`'s predictor calls, answered by transformers' public
    API: the processor's pixels and coordinates, `EdgeTamModel`'s forward and
    `get_image_embeddings`, `Sam2Processor.post_process_masks`."""

    def __init__(self, reference) -> None:
        self.model, self.processor = reference
        self.device = torch.device("cpu")
        self.mask_threshold = 0.0
        self._transforms = self
        self._features = None
        self._orig_hw = None

    def set_image(self, image: np.ndarray) -> None:
        inputs = self.processor(images=Image.fromarray(image), return_tensors="pt")
        with torch.no_grad():
            self._features = self.model.get_image_embeddings(inputs["pixel_values"])
        self._orig_hw = [int(v) for v in inputs["original_sizes"][0]]

    def reset_predictor(self) -> None:
        self._features = self._orig_hw = None

    def transform_coords(self, coords, normalize=False, orig_hw=None):
        sizes = [list(orig_hw)] if normalize else [[1, 1]]
        points = [[[point] for point in coords.tolist()]]
        encoded = self.processor(original_sizes=sizes, input_points=points, return_tensors="pt")
        return encoded["input_points"][0, :, 0, :]

    def _predict(self, point_coords, point_labels, boxes=None, mask_input=None,
                 multimask_output=True, return_logits=False, img_idx=-1):  # fmt: skip
        assert boxes is None
        with torch.no_grad():
            if mask_input is None:
                out = self.model(
                    image_embeddings=self._features,
                    input_points=point_coords[None],
                    input_labels=point_labels[None],
                    multimask_output=multimask_output,
                )
                low_res, scores = out.pred_masks[0], out.iou_scores[0]
            else:  # one mask per point: each point its own image of the batch
                count = point_coords.shape[0]
                out = self.model(
                    image_embeddings=[f.repeat(count, 1, 1, 1) for f in self._features],
                    input_points=point_coords[:, None],
                    input_labels=point_labels[:, None],
                    input_masks=mask_input,
                    multimask_output=multimask_output,
                )
                low_res, scores = out.pred_masks[:, 0], out.iou_scores[:, 0]
        masks = self.processor.post_process_masks([low_res], [self._orig_hw], binarize=False)[0]
        if not return_logits:
            masks = masks > 0
        return masks, scores, low_res


def reference_records(reference, image: Image.Image, params: AutomaticParams) -> list[dict]:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    stand_in = types.SimpleNamespace(image_size=1024)
    generator = SAM2AutomaticMaskGenerator(
        stand_in, output_mode="uncompressed_rle", **asdict(params)
    )
    generator.predictor = ReferencePredictor(reference)
    return generator.generate(np.array(image))


AUTOMATIC = {
    "grid": AutomaticParams(
        points_per_side=3, points_per_batch=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    ),
    "crops_and_m2m": AutomaticParams(
        points_per_side=1,
        points_per_batch=1,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crop_n_layers=1,
        use_m2m=True,
    ),
}


def small_image() -> bytes:
    """The test image at 200 x 134: random weights answer speckled masks, whose long
    run-length encodings the library copies around; a small image keeps that quick."""
    buffer = io.BytesIO()
    picture().resize((200, 134)).save(buffer, "PNG")
    return buffer.getvalue()


SMALL = small_image()


@pytest.mark.parametrize("name", list(AUTOMATIC))
def test_automatic_masks_equal_the_generator_on_transformers(
    edgetam_engine, hf_edgetam, edgetam_reference, unfolded, name
):
    from sam2.utils.amg import rle_to_mask

    params = AUTOMATIC[name]
    image = picture(SMALL)
    want = reference_records(edgetam_reference, image, params)
    assert want
    if not params.crop_n_layers:
        # The family's generator on the oracle's embedding: exactly the oracle's records.
        assert_exact_records(edgetam_reference, unfolded, hf_edgetam, image, params, want)

    # The served model, end to end: the whole image's features come from the cache
    # (only crops are encoded), the records are the same masks within tolerance.
    info = edgetam_engine.add_image(hf_edgetam, SMALL)
    before = edgetam_engine.encoder.encoded_images
    _, records = edgetam_engine.automatic_masks(hf_edgetam, info.image_id, params)
    crops = 4 if params.crop_n_layers else 0
    assert edgetam_engine.encoder.encoded_images == before + crops
    assert len(records) == len(want)
    for ours, theirs in zip(records, want, strict=True):
        assert (ours.crop_box, ours.point_coords) == (theirs["crop_box"], theirs["point_coords"])
        assert abs(ours.predicted_iou - theirs["predicted_iou"]) <= TOLERANCE
        assert abs(ours.stability_score - theirs["stability_score"]) <= 1e-3
        differ = rle_to_mask(ours.segmentation) != rle_to_mask(theirs["segmentation"])
        assert differ.mean() < 1e-4


def assert_exact_records(reference, unfolded, model_id, image, params, want) -> None:
    from sam2_server.engine.automatic import AutomaticHooks

    model, processor = reference
    with torch.no_grad():
        features = model.get_image_embeddings(
            processor(images=image, return_tensors="pt")["pixel_values"]
        )
    embedding = Embedding(model_id, features[2], (features[0], features[1]), image.size[::-1])
    hooks = AutomaticHooks(threading.Lock(), threading.Lock())
    with torch.inference_mode():
        exact = unfolded.image.generate(embedding, params, hooks, None)
    assert [asdict(r) for r in exact] == [
        {**record, "predicted_iou": r.predicted_iou, "stability_score": r.stability_score}
        for r, record in zip(exact, want, strict=True)
    ]
    for ours, theirs in zip(exact, want, strict=True):
        assert abs(ours.predicted_iou - theirs["predicted_iou"]) <= TOLERANCE
        assert abs(ours.stability_score - theirs["stability_score"]) <= TOLERANCE


def test_an_image_only_repository_serves_images_and_refuses_video(edgetam_repo, tmp_path):
    """A repository saved from `EdgeTamModel` (model_type edgetam) has no video memory:
    its images are served, a video session is a 400 naming /v1/models."""
    from transformers import EdgeTamModel, Sam2Processor

    from sam2_server.errors import ErrorKind, ServiceError

    folder = tmp_path / "EdgeTAM-image"
    EdgeTamModel.from_pretrained(edgetam_repo).save_pretrained(folder)
    Sam2Processor.from_pretrained(edgetam_repo).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "edgetam"
    engine = Engine(Settings(model_ids=(str(folder),), device="cpu"))
    engine.load()
    (described,) = engine.describe_models()
    assert (described["family"], described["video"], described["loaded"]) == (
        "edgetam",
        False,
        True,
    )
    with pytest.raises(ServiceError) as info:
        engine.models.video_model(str(folder))
    assert info.value.kind is ErrorKind.BAD_INPUT
    assert "/v1/models" in str(info.value)


# -- ENCODER_BACKEND=openvino ------------------------------------------------------------


def test_openvino_encoder_equals_transformers_within_1e6(
    edgetam_openvino, hf_edgetam, edgetam_reference_features
):
    """The encode up to the embedding on OpenVINO (RepViT, neck, projections): within
    1e-6 of transformers' own embedding; converted once for the image and video models
    of the repository, which share it."""
    from sam2_server.engine.edgetam import OpenVinoVision

    engine, conversions = edgetam_openvino
    image = engine.models.image_model(hf_edgetam).image
    assert isinstance(image.vision, OpenVinoVision)
    assert image.vision.nbytes > 1_000_000
    assert image.cache_bytes >= image.vision.nbytes
    assert len(conversions) == 1  # the video model compiled the image model's conversion
    assert_embedding_within_1e6(engine, hf_edgetam, edgetam_reference_features)


@pytest.mark.parametrize("name", ["points", "several_boxes"])
def test_openvino_clicks_equal_transformers(
    edgetam_openvino, hf_edgetam, edgetam_reference, edgetam_reference_features, name
):
    engine, _ = edgetam_openvino
    case = dict(CASES[name])
    arrays = {k: np.asarray(v) for k, v in case.items()}
    want = reference_answer(edgetam_reference, edgetam_reference_features, picture(), **arrays)
    got = engine.segment(hf_edgetam, DATA, Prompt(**arrays))
    assert_same(got, want, exact=False, logits_masks=True)
