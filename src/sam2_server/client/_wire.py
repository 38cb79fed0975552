"""Request bodies and answer decoding: what goes on the wire, and what comes back as numpy.

Everything here is pure (no HTTP): the flows in `_core` build their calls from
these bodies, and the transports decode answers with these functions, the
async one in a worker thread since decoding masks is the CPU-heavy part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt
import orjson
from pycocotools import mask as coco_mask

from sam2_server.codecs.native import pack_array, unpack_array
from sam2_server.domain import AUTOMATIC_PARAM_NAMES, MASK_RECORD_FIELDS

from ._errors import Sam2Error

MASK_FORMAT = "rle"  # see the package docstring
LOW_RES = 256  # SAM2's low-res logits are 256 x 256

# The server's own codec: the client reads and writes exactly what it does.
pack = pack_array
unpack = unpack_array

# -- segment -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One segment answer, best candidate first (per object).

    masks: bool C x H x W at the image's size, or B x C x H x W with B boxes.
    scores: float32 C (or B x C), SAM2's predicted IoU.
    logits: float32 C x 256 x 256 (or B x C x 256 x 256) low-res logits; one of
        them (`logits[0]`) is the `mask_input` of a follow-up prompt.
    image_id: the SHA-256 of the image's bytes, to prompt it again by id.
    model_id: the model that answered (None when a Livepeer runner did not say).
    answer_id: the name under which the server keeps `logits` (None from a Livepeer
        runner, or a server that keeps none). The client sends a `mask_input` equal to
        one of them by that name instead of its 256 kB of floats (see `Client.segment`).
    """

    image_id: str
    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    model_id: str | None = None
    answer_id: str | None = None


@dataclass(frozen=True)
class _Prompt:
    """A segment request, checked only as far as the client must: the server checks the rest."""

    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None
    mask_input: np.ndarray | None
    multimask_output: bool
    normalize_coords: bool
    model_id: str | None

    @classmethod
    def of(
        cls,
        points: npt.ArrayLike | None,
        labels: npt.ArrayLike | None,
        box: npt.ArrayLike | None,
        mask_input: npt.ArrayLike | None,
        multimask_output: bool,
        normalize_coords: bool,
        model_id: str | None,
    ) -> _Prompt:
        coords = None if points is None else np.asarray(points, dtype=np.float64)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
        elif coords is not None:
            labels = np.ones(coords.shape[:-1], dtype=np.int64)  # foreground unless told
        return cls(
            points=coords,
            labels=labels,
            box=None if box is None else np.asarray(box, dtype=np.float64),
            mask_input=None if mask_input is None else _mask_input(mask_input),
            multimask_output=bool(multimask_output),
            normalize_coords=bool(normalize_coords),
            model_id=model_id or None,
        )

    def native_body(self, reference: tuple[str, list[int]] | None = None) -> bytes:
        """The native route's JSON: COCO RLE masks and packed float32 logits back; the
        mask_input as `reference` (an answer_id and [b, k]) when given, else packed."""
        body: dict[str, Any] = {
            "multimask_output": self.multimask_output,
            "normalize_coords": self.normalize_coords,
            "return_logits": True,
            "mask_format": MASK_FORMAT,
        }
        if self.model_id:
            body["model_id"] = self.model_id
        for name, value in (("points", self.points), ("labels", self.labels), ("box", self.box)):
            if value is not None:
                body[name] = value.tolist()
        if reference is not None:
            body["mask_input"] = {"answer_id": reference[0], "index": reference[1]}
        elif self.mask_input is not None:
            body["mask_input"] = pack(self.mask_input)
        return orjson.dumps(body)

    def livepeer_form(self) -> dict[str, str]:
        """The Livepeer route's form: JSON strings, and 0/1 masks (a third of the text)."""
        form = {
            "model_id": self.model_id or "",
            "multimask_output": _bool(self.multimask_output),
            "normalize_coords": _bool(self.normalize_coords),
            "return_logits": "false",
        }
        fields = (
            ("point_coords", self.points),
            ("point_labels", self.labels),
            ("box", self.box),
            ("mask_input", self.mask_input),
        )
        for name, value in fields:
            if value is not None:
                form[name] = orjson.dumps(value.tolist()).decode()
        return form


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _mask_input(value: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if array.shape == (LOW_RES, LOW_RES):
        array = array[None]
    if array.shape != (1, LOW_RES, LOW_RES):
        raise ValueError(
            f"mask_input must be 256 x 256 or 1 x 256 x 256 low-res logits (one of an earlier "
            f"Result's logits); got shape {array.shape}"
        )
    return array


@dataclass(frozen=True)
class _Answer:
    """A 200 body, before its (CPU-heavy) decoding into a Result."""

    livepeer: bool
    body: dict[str, Any]
    image_id: str
    model_id: str | None

    def result(self) -> Result:
        if self.livepeer:
            return Result(
                image_id=self.image_id,
                masks=_nested(self.body["masks"]) > 0,
                scores=_nested(self.body["scores"]),
                logits=_nested(self.body["logits"]),
                model_id=self.model_id,
            )
        return Result(
            image_id=self.body.get("image_id", self.image_id),
            masks=decode_masks(self.body["masks"]),
            scores=np.asarray(self.body["scores"], dtype=np.float32),
            logits=unpack(self.body["logits"]),
            model_id=self.body.get("model_id", self.model_id),
            answer_id=self.body.get("answer_id"),
        )


def _nested(text: str) -> np.ndarray:
    """One of the Livepeer route's strings; each number is exactly a float32."""
    return np.asarray(orjson.loads(text), dtype=np.float32)


def decode_masks(masks: list[Any]) -> np.ndarray:
    """COCO RLE masks (a list of C, or B lists of C) as bool C x H x W (or B x C x H x W)."""
    if masks and isinstance(masks[0], list):
        return np.stack([decode_masks(per_object) for per_object in masks])
    rles = [{"size": m["size"], "counts": m["counts"].encode("ascii")} for m in masks]
    decoded = coco_mask.decode(rles)  # H x W x C, Fortran order
    return np.ascontiguousarray(decoded.transpose(2, 0, 1)).astype(bool)


# -- automatic masks -----------------------------------------------------------------------

AUTOMATIC_OPTIONS: tuple[str, ...] = AUTOMATIC_PARAM_NAMES
"""`automatic_masks`' keyword parameters: `sam2_server.domain.AutomaticParams`' fields."""

AutomaticOptions: TypeAlias = dict[str, Any]
"""`SAM2AutomaticMaskGenerator`'s parameters by the library's names (`AUTOMATIC_OPTIONS`;
`sam2_server.domain.AutomaticParams` has their types, defaults and meaning). Any left out
take the library's defaults on the server, so the client never restates them."""


@dataclass(frozen=True)
class AutomaticMask:
    """One mask of the automatic generator, in the server's (the library's) order.

    The fields of `SAM2AutomaticMaskGenerator.generate()`'s records, same names and
    values, with `segmentation` decoded: bool H x W at the image's size.
    bbox and crop_box are XYWH; point_coords holds the one grid point that prompted it.
    """

    segmentation: np.ndarray
    area: int
    bbox: list[float]
    predicted_iou: float
    point_coords: list[list[float]]
    stability_score: float
    crop_box: list[float]

    @classmethod
    def of(cls, record: dict[str, Any], segmentation: np.ndarray) -> AutomaticMask:
        """An answer's record with its RLE decoded. `MASK_RECORD_FIELDS` names the fields
        (the engine's and the codec's list), so a field added there fails here at once."""
        values = {name: record[name] for name in MASK_RECORD_FIELDS}
        return cls(**{**values, "segmentation": segmentation})

    def record(self) -> dict[str, Any]:
        """As the library's own record (`output_mode="binary_mask"`), for code written
        against `generate()`."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _automatic_body(model_id: str | None, options: dict[str, Any]) -> bytes:
    """The automatic-masks request; an unknown parameter is the caller's TypeError, as a
    misspelled keyword would be, before anything is sent."""
    unknown = sorted(set(options) - set(AUTOMATIC_OPTIONS))
    if unknown:
        raise TypeError(
            f"automatic_masks() got unexpected parameters {', '.join(unknown)}; "
            f"SAM2AutomaticMaskGenerator's are {', '.join(AUTOMATIC_OPTIONS)}"
        )
    body: dict[str, Any] = {"mask_format": MASK_FORMAT, **options}
    if model_id:
        body["model_id"] = model_id
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _automatic_line(line: str) -> tuple[int, int] | dict[str, Any] | None:
    """One NDJSON line of automatic masks: (done, total) for a progress line, the answer
    for the result line, None for a blank line; an error line raises its `Sam2Error`."""
    if not line.strip():
        return None
    data = orjson.loads(line)
    _raise_error_line(data)
    if "progress" in data:
        return int(data["progress"]["done"]), int(data["progress"]["total"])
    result: dict[str, Any] = data["result"]
    return result


def decode_automatic(answer: dict[str, Any]) -> list[AutomaticMask]:
    """An automatic-masks answer's records, segmentations decoded from COCO RLE."""
    records = answer["masks"]
    if not records:
        return []
    masks = decode_masks([record["segmentation"] for record in records])
    return [AutomaticMask.of(record, mask) for mask, record in zip(masks, records, strict=True)]


# -- video sessions ------------------------------------------------------------------------


class VideoFrame(NamedTuple):
    """One frame's masks: `masks[object_id]` is bool H x W at the clip's size."""

    frame_index: int
    masks: dict[int, np.ndarray]


def _video_prompt_body(
    frame_index: int,
    object_id: int,
    points: npt.ArrayLike | None,
    labels: npt.ArrayLike | None,
    box: npt.ArrayLike | None,
    clear_old_points: bool,
    normalize_coords: bool,
) -> bytes:
    body: dict[str, Any] = {
        "frame_index": int(frame_index),
        "object_id": int(object_id),
        "clear_old_points": bool(clear_old_points),
        "normalize_coords": bool(normalize_coords),
        "mask_format": MASK_FORMAT,
    }
    if points is not None:
        coords = np.asarray(points, dtype=np.float64)
        body["points"] = coords.tolist()
        if labels is None:
            labels = np.ones(coords.shape[:-1], dtype=np.int64)  # foreground unless told
    if labels is not None:
        body["labels"] = np.asarray(labels, dtype=np.int64).tolist()
    if box is not None:
        body["box"] = np.asarray(box, dtype=np.float64).tolist()
    return orjson.dumps(body)


def _propagate_body(start_frame_index: int | None, max_frames: int | None, reverse: bool) -> bytes:
    return orjson.dumps(
        {
            "start_frame_index": None if start_frame_index is None else int(start_frame_index),
            "max_frames": None if max_frames is None else int(max_frames),
            "reverse": bool(reverse),
            "mask_format": MASK_FORMAT,
        }
    )


def _raise_error_line(line: dict[str, Any]) -> None:
    """A stream's error line (`{"error": {"status", "msg"}}`) as its `Sam2Error`."""
    error = line.get("error")
    if isinstance(error, dict):
        raise Sam2Error(int(error.get("status", 500)), str(error.get("msg", "error")))


def decode_frame(answer: dict[str, Any]) -> VideoFrame:
    """A prompt answer or one propagation line; an error line raises its `Sam2Error`."""
    _raise_error_line(answer)
    objects = answer["objects"]
    masks = decode_masks([o["mask"] for o in objects]) if objects else ()
    return VideoFrame(
        int(answer["frame_index"]),
        {int(o["object_id"]): mask for o, mask in zip(objects, masks, strict=True)},
    )


def _frame_line(line: str) -> VideoFrame:
    """One NDJSON line of a propagation, parsed and decoded in one go (one worker-thread hop)."""
    return decode_frame(orjson.loads(line))
