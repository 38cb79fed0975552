"""Python client for sam2-server: upload an image once, then prompt it many times.

```python
from sam2_server.client import Client

with Client("http://localhost:8000", token) as sam:
    result = sam.segment("cat.png", points=[[120, 100]])
    result.masks[0]  # bool H x W, the best candidate
    again = sam.segment(result.image_id, points=[[120, 100]], mask_input=result.logits[0])
```

The server caches image embeddings by the SHA-256 of the uploaded bytes, so
the client computes that id itself: `segment(image)` asks `GET
/v1/images/{id}` and uploads only when the server does not have it, and an
image this client already knows to be on the server is prompted in one
request. An image the server evicted meanwhile (a 404 from the segment route)
is uploaded again and the prompt retried once.

Masks travel as COCO RLE, not PNG: SAM2's masks are a few solid regions, and
RLE costs a couple of numbers per region boundary per column, where a PNG pays
for deflate's per-row overhead and then base64's third. On a 1800x1200 disc
the RLE is 1.3 kB against 7.3 kB of PNG (pycocotools' C decoder is also
faster than PNG decoding); PNG only wins on speckled masks, which SAM2 rarely
gives. Low-res logits travel as packed float32 (exact).

`automatic_masks(image)` takes the same upload-once path to the
automatic-masks route. `open_video(...)` opens a video session
(`VideoSession`): prompts, a propagation read line by line from the NDJSON
stream as the server computes frames (closing it closes the connection,
which stops the server's work), and `close()`.

Against a plain Livepeer runner (no `/v1` routes: `POST /v1/images` itself
answers 404 or 405), the client falls back to `POST /segment-anything-2`
with the same `Result`, and remembers that per client (automatic masks and
video sessions have no such fallback: a `Sam2Error` says so). The sans-IO design
keeps one implementation of that logic for both clients: each operation is a
generator that yields the HTTP calls it needs and receives their responses;
`Client` drives it with `httpx.Client`, `AsyncClient` with
`httpx.AsyncClient` (and runs the CPU-heavy decoding in a worker thread so the
event loop stays free). A propagation is the one exception: a stream, read
by `Propagation` / `AsyncPropagation` with each client's own streaming call.

This module never imports torch.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, TypeAlias, TypedDict, TypeVar

import anyio.to_thread
import httpx
import numpy as np
import numpy.typing as npt
import orjson
from PIL import Image
from pycocotools import mask as coco_mask

from sam2_server.codecs.native import pack_array, unpack_array

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "AsyncClient",
    "AsyncPropagation",
    "AsyncVideoSession",
    "AutomaticMask",
    "AutomaticOptions",
    "Client",
    "ImageLike",
    "Propagation",
    "Result",
    "Sam2Error",
    "VideoFrame",
    "VideoSession",
    "encode_image",
    "frame_files",
    "image_id_of",
]

ImageLike: TypeAlias = (
    bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image | np.ndarray
)
"""An image: its encoded bytes, a file path, a PIL image or an H x W x 3 uint8 array."""

DEFAULT_TIMEOUT = 120.0  # a large model's first encode on a CPU takes tens of seconds
MASK_FORMAT = "rle"  # see the module docstring
LOW_RES = 256  # SAM2's low-res logits are 256 x 256

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_KNOWN_IDS = 1024  # (model, image id) pairs remembered as being on the server

_T = TypeVar("_T")


class Sam2Error(Exception):
    """The server answered with an error; `message` is its `detail.msg`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


@dataclass(frozen=True)
class Result:
    """One segment answer, best candidate first (per object).

    masks: bool C x H x W at the image's size, or B x C x H x W with B boxes.
    scores: float32 C (or B x C), SAM2's predicted IoU.
    logits: float32 C x 256 x 256 (or B x C x 256 x 256) low-res logits; one of
        them (`logits[0]`) is the `mask_input` of a follow-up prompt.
    image_id: the SHA-256 of the image's bytes, to prompt it again by id.
    model_id: the model that answered (None when a Livepeer runner did not say).
    """

    image_id: str
    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    model_id: str | None = None


# -- images --------------------------------------------------------------------------------


def encode_image(image: ImageLike) -> bytes:
    """The bytes the client sends for `image` (and whose SHA-256 is its id).

    Bytes are sent as they are and files as read; a PIL image or an array is
    written as PNG (lossless, so the server sees exactly these pixels).
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    if isinstance(image, np.ndarray):
        image = _array_image(image)
    if isinstance(image, Image.Image):
        if image.mode not in {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}:
            image = image.convert("RGB")  # modes PNG cannot hold (CMYK, YCbCr, F ...)
        buffer = io.BytesIO()
        # Level 1: several times faster than the default for a few % more bytes;
        # an image is sent once and then prompted by id.
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    raise TypeError(
        "image must be bytes, a path, a PIL image or an H x W x 3 uint8 array, "
        f"got {type(image).__name__}"
    )


def image_id_of(data: bytes) -> str:
    """The server's id for an image: the SHA-256 (hex) of exactly the bytes uploaded."""
    return hashlib.sha256(data).hexdigest()


def _array_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    ):
        raise ValueError(
            "an image array must be uint8, H x W x 3 (RGB), H x W x 4 or H x W; "
            f"got {array.dtype} with shape {array.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(array))


@dataclass(frozen=True)
class _Image:
    data: bytes
    id: str

    @classmethod
    def of(cls, image: ImageLike) -> _Image:
        data = encode_image(image)
        return cls(data, image_id_of(data))

    @property
    def part(self) -> tuple[str, bytes, str]:
        """The multipart `image` file part."""
        return ("image", self.data, _content_type(self.data))


def _content_type(data: bytes) -> str:
    """Named for the server's logs and proxies; the server reads the bytes, not this."""
    for magic, kind in (
        (b"\x89PNG", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF8", "image/gif"),
        (b"BM", "image/bmp"),
    ):
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _is_image_id(value: object) -> bool:
    """A 64-hex string that is not also a file here: a path wins."""
    return isinstance(value, str) and bool(_HEX64.fullmatch(value)) and not os.path.exists(value)


# -- prompts -------------------------------------------------------------------------------


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

    def native_body(self) -> bytes:
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
        if self.mask_input is not None:
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


# -- automatic masks -----------------------------------------------------------------------


class AutomaticOptions(TypedDict, total=False):
    """`SAM2AutomaticMaskGenerator`'s parameters, by the library's names. Any left out
    take the library's defaults on the server (points_per_side 32, pred_iou_thresh 0.8,
    stability_score_thresh 0.95, ...), so the client never restates them."""

    points_per_side: int
    points_per_batch: int
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    mask_threshold: float
    box_nms_thresh: float
    crop_n_layers: int
    crop_nms_thresh: float
    crop_overlap_ratio: float
    crop_n_points_downscale_factor: int
    min_mask_region_area: int
    use_m2m: bool
    multimask_output: bool


AUTOMATIC_OPTIONS = tuple(AutomaticOptions.__annotations__)


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

    def record(self) -> dict[str, Any]:
        """As the library's own record (`output_mode="binary_mask"`), for code written
        against `generate()`."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _automatic_body(model_id: str | None, options: dict[str, Any]) -> bytes:
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


def decode_automatic(answer: dict[str, Any]) -> list[AutomaticMask]:
    """An automatic-masks answer's records, segmentations decoded from COCO RLE."""
    records = answer["masks"]
    if not records:
        return []
    masks = decode_masks([record["segmentation"] for record in records])
    return [
        AutomaticMask(
            segmentation=mask,
            area=record["area"],
            bbox=record["bbox"],
            predicted_iou=record["predicted_iou"],
            point_coords=record["point_coords"],
            stability_score=record["stability_score"],
            crop_box=record["crop_box"],
        )
        for mask, record in zip(masks, records, strict=True)
    ]


# -- wire formats --------------------------------------------------------------------------


# The server's own codec: the client reads and writes exactly what it does.
pack = pack_array
unpack = unpack_array


def decode_masks(masks: list[Any]) -> np.ndarray:
    """COCO RLE masks (a list of C, or B lists of C) as bool C x H x W (or B x C x H x W)."""
    if masks and isinstance(masks[0], list):
        return np.stack([decode_masks(per_object) for per_object in masks])
    rles = [{"size": m["size"], "counts": m["counts"].encode("ascii")} for m in masks]
    decoded = coco_mask.decode(rles)  # H x W x C, Fortran order
    return np.ascontiguousarray(decoded.transpose(2, 0, 1)).astype(bool)


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
        )


def _nested(text: str) -> np.ndarray:
    """One of the Livepeer route's strings; each number is exactly a float32."""
    return np.asarray(orjson.loads(text), dtype=np.float32)


def error_of(response: httpx.Response) -> Sam2Error:
    """The server's message: `detail.msg`, FastAPI's 422 list, or whatever came back."""
    message = response.reason_phrase or "error"
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
        text = response.text.strip()
        if text:
            message = text[:300]
    if isinstance(detail, dict) and isinstance(detail.get("msg"), str):
        message = detail["msg"]
    elif isinstance(detail, str):
        message = detail
    elif isinstance(detail, list) and detail:
        message = "; ".join(_validation_message(item) for item in detail)
    return Sam2Error(response.status_code, message)


def _validation_message(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    return f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", ""))


# -- the protocol, without I/O -------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One HTTP request a flow needs; the driver sends it with its own httpx client."""

    method: str
    path: str
    params: dict[str, str] | None = None
    content: bytes | None = None
    files: dict[str, tuple[str, bytes, str]] | list[tuple[str, tuple[str, bytes, str]]] | None = (
        None
    )
    data: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Content-Type": "application/json"} if self.content is not None else None


_Flow: TypeAlias = Generator[_Call, httpx.Response, _T]


@dataclass
class _State:
    """What a client learns about its server, shared by its calls (thread-safe).

    native: None until the client knows; False once the server proved to be a
    plain Livepeer runner.
    images: the bytes of the last images sent, to upload again after an
    eviction and, on a Livepeer runner, to prompt an image by id at all.
    known: (model, image id) pairs the server had at last contact.
    """

    keep_images: int
    native: bool | None = None
    images: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    known: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, image: _Image) -> None:
        with self.lock:
            self.images[image.id] = image.data
            self.images.move_to_end(image.id)
            while len(self.images) > self.keep_images:
                self.images.popitem(last=False)

    def recall(self, image_id: str) -> _Image | None:
        with self.lock:
            data = self.images.get(image_id)
        return None if data is None else _Image(data, image_id)

    def mark(self, key: tuple[str, str], present: bool) -> None:
        with self.lock:
            if present:
                self.known[key] = None
                self.known.move_to_end(key)
                while len(self.known) > _KNOWN_IDS:
                    self.known.popitem(last=False)
            else:
                self.known.pop(key, None)

    def is_known(self, key: tuple[str, str]) -> bool:
        with self.lock:
            return key in self.known


def _upload_flow(state: _State, image: _Image, model_id: str | None) -> _Flow[str | None]:
    """POST /v1/images; the server's image id, or None when the server has no native API."""
    state.remember(image)
    if state.native is False:
        return None
    response = yield _Call(
        "POST",
        "/v1/images",
        files={"image": image.part},
        data={"model_id": model_id} if model_id else None,
    )
    if response.status_code in (404, 405):  # the route itself is missing: a Livepeer runner
        state.native = False
        return None
    if response.status_code != 200:
        raise error_of(response)
    state.native = True
    body = response.json()
    image_id = str(body.get("image_id") or image.id)
    state.mark((model_id or "", image_id), True)
    return image_id


def _image_flow(
    state: _State, image: _Image | None, image_id: str, model_id: str | None, call: _Call
) -> _Flow[tuple[_Image | None, httpx.Response | None]]:
    """`call` on an uploaded image: ask whether the server has the image (unless known),
    upload it on a miss, send `call`; on a 404 (evicted meanwhile) upload again and retry
    once. Answers the image (given, or recalled by id) and the 200 response, or None for
    the response when the server proved to have no native API (a Livepeer runner)."""
    key = (model_id or "", image_id)
    if image is None:
        image = state.recall(image_id)
    else:
        state.remember(image)
    if state.native is False:
        return image, None
    if image is not None and not state.is_known(key):
        response = yield _Call(
            "GET", f"/v1/images/{image_id}", params={"model_id": model_id} if model_id else None
        )
        if response.status_code == 404:
            uploaded = yield from _upload_flow(state, image, model_id)
            if uploaded is None:
                return image, None
        elif response.status_code != 200:
            raise error_of(response)
    response = yield call
    if response.status_code == 404 and image is not None and not _route_missing(response):
        # Evicted since (or never uploaded): upload again, retry once.
        state.mark(key, False)
        uploaded = yield from _upload_flow(state, image, model_id)
        if uploaded is None:
            return image, None
        response = yield call
    if response.status_code != 200:
        if _route_missing(response):
            raise _no_route(call, response)
        if response.status_code == 404:
            state.mark(key, False)
        raise error_of(response)
    state.native = True
    state.mark(key, True)
    return image, response


def _segment_flow(
    state: _State, image: _Image | None, image_id: str, prompt: _Prompt
) -> _Flow[_Answer]:
    """Segment on the native API (see `_image_flow`); a missing upload route switches this
    client to the Livepeer route for good."""
    call = _Call("POST", f"/v1/images/{image_id}/segment", content=prompt.native_body())
    image, response = yield from _image_flow(state, image, image_id, prompt.model_id, call)
    if response is None:
        return (yield from _livepeer_flow(image, image_id, prompt))
    return _Answer(False, response.json(), image_id, prompt.model_id)


def _automatic_flow(
    state: _State, image: _Image | None, image_id: str, model_id: str | None, body: bytes
) -> _Flow[dict[str, Any]]:
    """Automatic masks on the native API (see `_image_flow`); a Livepeer runner has none."""
    call = _Call("POST", f"/v1/images/{image_id}/automatic-masks", content=body)
    _, response = yield from _image_flow(state, image, image_id, model_id, call)
    if response is None:
        raise Sam2Error(
            404,
            "automatic masks need sam2-server's native API (/v1); this server has only "
            "POST /segment-anything-2 (a Livepeer runner)",
        )
    answer: dict[str, Any] = response.json()
    return answer


def _route_missing(response: httpx.Response) -> bool:
    """The route itself is absent (the framework's plain 404 or a 405), rather than one of
    sam2-server's own answers, which always carry `{"detail": {"msg": ...}}`."""
    if response.status_code == 405:
        return True
    if response.status_code != 404:
        return False
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return True
    return not isinstance(detail, dict)


def _no_route(call: _Call, response: httpx.Response) -> Sam2Error:
    route = re.sub(r"/[0-9a-fA-F]{32,64}(?=/|$)", "/{id}", call.path)
    return Sam2Error(
        response.status_code,
        f"this server has no {call.method} {route} (an older sam2-server, or a Livepeer runner)",
    )


def _livepeer_flow(image: _Image | None, image_id: str, prompt: _Prompt) -> _Flow[_Answer]:
    if image is None:
        raise Sam2Error(
            404,
            f"image {image_id} is not known to this client and the server has no /v1 API "
            "to look it up (a Livepeer runner): pass the image itself",
        )
    response = yield _Call(
        "POST", "/segment-anything-2", files={"image": image.part}, data=prompt.livepeer_form()
    )
    if response.status_code != 200:
        raise error_of(response)
    return _Answer(True, response.json(), image_id, prompt.model_id)


def _resolve(image_or_id: ImageLike) -> tuple[_Image | None, str]:
    if _is_image_id(image_or_id):
        image_id = str(image_or_id).lower()
        return None, image_id
    image = _Image.of(image_or_id)
    return image, image.id


# -- video sessions: requests and answers -------------------------------------------------

VIDEOS_PATH = "/v1/videos"
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

VideoFile: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO
"""A video (any container FFmpeg reads): its bytes, a file path, or a binary file object."""

Frames: TypeAlias = str | os.PathLike[str] | Sequence[ImageLike]
"""Frame images: a folder (its images in frame order, see `frame_files`), or images in order."""


class VideoFrame(NamedTuple):
    """One frame's masks: `masks[object_id]` is bool H x W at the clip's size."""

    frame_index: int
    masks: dict[int, np.ndarray]


def frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """A folder's frame images in frame order.

    SAM2's own loader takes `<number>.jpg` files sorted by their number; here
    names are compared number by number (`2.png` before `10.png`, `frame_9`
    before `frame_10`), which is that order for SAM2's folders and the
    expected one for other names and image types. Other files are left out.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of frame images")
    paths = [
        path
        for path in root.iterdir()
        if path.suffix.lower() in FRAME_SUFFIXES
        and not path.name.startswith(".")
        and path.is_file()
    ]
    if not paths:
        raise ValueError(f"{root} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
    return sorted(paths, key=lambda path: (_natural_key(path.name), path.name))


def _natural_key(name: str) -> list[tuple[int, str]]:
    return [
        (int(part), "") if part.isdigit() else (-1, part.lower())
        for part in re.split(r"(\d+)", name)
    ]


def _video_call(video: VideoFile | None, frames: Frames | None, model_id: str | None) -> _Call:
    """POST /v1/videos with the clip read into memory (the server bounds it by
    MAX_REQUEST_BYTES anyway), so the same call serves both clients."""
    if (video is None) == (frames is None):
        raise ValueError("give either video (a video file) or frames (images in order)")
    data = {"model_id": model_id} if model_id else None
    if video is not None:
        name, content = _read_video(video)
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return _Call("POST", VIDEOS_PATH, files=[("video", (name, content, kind))], data=data)
    assert frames is not None
    if isinstance(frames, str | os.PathLike):
        frames = frame_files(frames)
    parts = []
    for index, frame in enumerate(frames):
        image = _Image.of(frame)
        name = Path(frame).name if isinstance(frame, str | os.PathLike) else f"{index:05d}"
        parts.append(("frames", (name, image.data, _content_type(image.data))))
    if not parts:
        raise ValueError("frames: no frame given")
    return _Call("POST", VIDEOS_PATH, files=parts, data=data)


def _read_video(video: VideoFile) -> tuple[str, bytes]:
    if isinstance(video, bytes | bytearray | memoryview):
        return "video", bytes(video)
    if isinstance(video, str | os.PathLike):
        path = Path(video)
        return path.name, path.read_bytes()
    content = video.read() if hasattr(video, "read") else None
    if not isinstance(content, bytes):
        raise TypeError(
            "video must be bytes, a path or a file opened in binary mode, "
            f"got {type(video).__name__}"
        )
    name = getattr(video, "name", None)
    return (Path(name).name if isinstance(name, str) else "video"), content


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


def decode_frame(answer: dict[str, Any]) -> VideoFrame:
    """A prompt answer or one propagation line; an error line raises its `Sam2Error`."""
    error = answer.get("error")
    if isinstance(error, dict):
        raise Sam2Error(int(error.get("status", 500)), str(error.get("msg", "error")))
    objects = answer["objects"]
    masks = decode_masks([o["mask"] for o in objects]) if objects else ()
    return VideoFrame(
        int(answer["frame_index"]),
        {int(o["object_id"]): mask for o, mask in zip(objects, masks, strict=True)},
    )


def _frame_line(line: str) -> VideoFrame:
    return decode_frame(orjson.loads(line))


def _expect_flow(call: _Call, status: int = 200) -> _Flow[httpx.Response]:
    response = yield call
    if response.status_code != status:
        if _route_missing(response) and call.path == VIDEOS_PATH:
            raise _no_route(call, response)
        raise error_of(response)
    return response


def _close_video_flow(video_id: str) -> _Flow[None]:
    """DELETE the session; one the server already closed (its idle timeout) is no error."""
    response = yield _Call("DELETE", f"{VIDEOS_PATH}/{video_id}")
    if response.status_code not in (204, 404):
        raise error_of(response)


# -- the two clients -----------------------------------------------------------------------


class _Base:
    def __init__(self, url: str, token: str | None, keep_images: int) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._state = _State(keep_images=max(0, keep_images))

    @property
    def native(self) -> bool | None:
        """True once the server has shown its /v1 API, False for a plain Livepeer
        runner (this client then uses POST /segment-anything-2), None until known."""
        return self._state.native


class Client(_Base):
    """Synchronous client; thread-safe, one connection pool. Use as a context manager.

    `timeout` is in seconds (or an `httpx.Timeout`); `keep_images` is how many
    recently sent images' bytes the client keeps, to upload again after an
    eviction without being given the image. Other keywords go to `httpx.Client`
    (`verify`, `proxy`, `event_hooks`, `transport` ...).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        keep_images: int = 8,
        **httpx_options: Any,
    ) -> None:
        super().__init__(url, token, keep_images)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=timeout, **httpx_options
        )

    def upload(self, image: ImageLike, model_id: str | None = None) -> str:
        """Send an image to be encoded (and cached) now; returns its id, the SHA-256 of
        the bytes sent. Against a Livepeer runner nothing is sent: the client keeps the
        bytes and sends them with each prompt."""
        prepared = _Image.of(image)
        return self._run(_upload_flow(self._state, prepared, model_id)) or prepared.id

    def segment(
        self,
        image_or_id: ImageLike,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask_output: bool = True,
        model_id: str | None = None,
        normalize_coords: bool = True,
    ) -> Result:
        """Segment an image (uploaded only if the server lacks it) or an uploaded image's id.

        points: N x 2 pixels (x, y), or B x N x 2 with B boxes; labels: N (or B x N),
        1 foreground, 0 background, all 1 when omitted; box: [x0, y0, x1, y1] or B x 4;
        mask_input: 256 x 256 or 1 x 256 x 256 logits, e.g. an earlier `Result.logits[0]`.
        Raises `Sam2Error` with the server's message for any error answer.
        """
        prompt = _Prompt.of(
            points, labels, box, mask_input, multimask_output, normalize_coords, model_id
        )
        image, image_id = _resolve(image_or_id)
        return self._run(_segment_flow(self._state, image, image_id, prompt)).result()

    def automatic_masks(
        self,
        image_or_id: ImageLike,
        model_id: str | None = None,
        **options: Unpack[AutomaticOptions],
    ) -> list[AutomaticMask]:
        """Every mask SAM2's automatic generator finds on an image (uploaded only if the
        server lacks it) or an uploaded image's id, in the library's order.

        `options` are `SAM2AutomaticMaskGenerator`'s parameters (see `AutomaticOptions`);
        those left out take the library's defaults. Each mask's `segmentation` is bool
        H x W. Raises `Sam2Error` with the server's message (a 400 names a parameter out of
        its range), also against a Livepeer runner, which has no automatic masks.
        """
        body = _automatic_body(model_id, dict(options))
        image, image_id = _resolve(image_or_id)
        answer = self._run(_automatic_flow(self._state, image, image_id, model_id, body))
        return decode_automatic(answer)

    def open_video(
        self,
        video: VideoFile | None = None,
        *,
        frames: Frames | None = None,
        model_id: str | None = None,
    ) -> VideoSession:
        """Open a video session on a video file or on frame images (a folder or a list).

        Use it as a context manager, or call `close()`: the server holds the clip and
        SAM2's memory until then (or its idle timeout).
        """
        call = _video_call(video, frames, model_id)
        return VideoSession(self, self._run(_expect_flow(call, 201)).json())

    def _run(self, flow: _Flow[_T]) -> _T:
        response: httpx.Response | None = None
        while True:
            try:
                call = flow.send(response)  # type: ignore[arg-type]
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            response = self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=call.content,
                files=call.files,
                data=call.data,
                headers=call.headers,
            )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_Base):
    """`Client`'s API for asyncio (or trio): the same arguments, awaited.

    Image encoding and answer decoding run in a worker thread, so a large
    answer does not stall the event loop.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        keep_images: int = 8,
        **httpx_options: Any,
    ) -> None:
        super().__init__(url, token, keep_images)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, **httpx_options
        )

    async def upload(self, image: ImageLike, model_id: str | None = None) -> str:
        """See `Client.upload`."""
        prepared = await anyio.to_thread.run_sync(_Image.of, image)
        return await self._run(_upload_flow(self._state, prepared, model_id)) or prepared.id

    async def segment(
        self,
        image_or_id: ImageLike,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask_output: bool = True,
        model_id: str | None = None,
        normalize_coords: bool = True,
    ) -> Result:
        """See `Client.segment`."""
        prompt = _Prompt.of(
            points, labels, box, mask_input, multimask_output, normalize_coords, model_id
        )
        image, image_id = await anyio.to_thread.run_sync(_resolve, image_or_id)
        answer = await self._run(_segment_flow(self._state, image, image_id, prompt))
        return await anyio.to_thread.run_sync(answer.result)

    async def automatic_masks(
        self,
        image_or_id: ImageLike,
        model_id: str | None = None,
        **options: Unpack[AutomaticOptions],
    ) -> list[AutomaticMask]:
        """See `Client.automatic_masks`."""
        body = _automatic_body(model_id, dict(options))
        image, image_id = await anyio.to_thread.run_sync(_resolve, image_or_id)
        answer = await self._run(_automatic_flow(self._state, image, image_id, model_id, body))
        return await anyio.to_thread.run_sync(decode_automatic, answer)

    def open_video(
        self,
        video: VideoFile | None = None,
        *,
        frames: Frames | None = None,
        model_id: str | None = None,
    ) -> _AsyncOpening:
        """See `Client.open_video`: `session = await client.open_video(...)`, or
        `async with client.open_video(...) as session:` to close it at the end."""

        async def opening() -> AsyncVideoSession:
            call = await anyio.to_thread.run_sync(_video_call, video, frames, model_id)
            response = await self._run(_expect_flow(call, 201))
            return AsyncVideoSession(self, response.json())

        return _AsyncOpening(opening)

    async def _run(self, flow: _Flow[_T]) -> _T:
        response: httpx.Response | None = None
        while True:
            try:
                call = flow.send(response)  # type: ignore[arg-type]
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            response = await self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=call.content,
                files=call.files,
                data=call.data,
                headers=call.headers,
            )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- video sessions ------------------------------------------------------------------------


class _VideoBase:
    """A session's description (as `POST /v1/videos` answered) and its calls."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.video_id: str = info["video_id"]
        self.model_id: str = info["model_id"]
        self.frames: int = info["frames"]  # how many
        self.width: int = info["width"]
        self.height: int = info["height"]
        self.fps: float | None = info.get("fps")  # None for frame images
        self.closed = False

    @property
    def _path(self) -> str:
        return f"{VIDEOS_PATH}/{self.video_id}"

    def _prompt_call(
        self,
        frame_index: int,
        object_id: int,
        points: npt.ArrayLike | None,
        labels: npt.ArrayLike | None,
        box: npt.ArrayLike | None,
        clear_old_points: bool,
        normalize_coords: bool,
    ) -> _Call:
        body = _video_prompt_body(
            frame_index, object_id, points, labels, box, clear_old_points, normalize_coords
        )
        return _Call("POST", f"{self._path}/prompts", content=body)

    def _propagate_call(
        self, start_frame_index: int | None, max_frames: int | None, reverse: bool
    ) -> _Call:
        body = _propagate_body(start_frame_index, max_frames, reverse)
        return _Call("POST", f"{self._path}/propagate", content=body)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.video_id}: {self.frames} frames "
            f"{self.width}x{self.height}{' (closed)' if self.closed else ''}>"
        )


class VideoSession(_VideoBase):
    """One clip on the server with SAM2's memory of it (`Client.open_video`).

    Prompt objects on any frame, then `propagate()` to track them through the
    clip. Objects can be added, refined or removed at any time, also after a
    propagation. A session serves one request at a time: a second meanwhile
    (say, a prompt during a propagation) is a `Sam2Error` 409.
    """

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        super().__init__(info)
        self._client = client

    def prompt(
        self,
        frame_index: int,
        object_id: int,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
    ) -> dict[int, np.ndarray]:
        """Points (N x 2 pixels; labels 1 foreground, 0 background, all 1 when omitted)
        and/or a box (x0, y0, x1, y1) for one object (any id >= 0 you choose) on one
        frame. Answers every object's mask on that frame: {object_id: bool H x W}.
        `clear_old_points=False` adds to this object's earlier points on the frame."""
        call = self._prompt_call(
            frame_index, object_id, points, labels, box, clear_old_points, normalize_coords
        )
        return decode_frame(self._client._run(_expect_flow(call)).json()).masks

    def propagate(
        self,
        start_frame_index: int | None = None,
        max_frames: int | None = None,
        reverse: bool = False,
    ) -> Propagation:
        """Track every object through the clip: an iterator of `VideoFrame`s
        (frame_index, {object_id: mask}), each read as the server computes it.

        start_frame_index None: the first prompted frame; max_frames None: to the end
        (or the start, with `reverse`). The request goes out on the first `next()`;
        leaving early (`break`, `close()`, the end of a `with` block) closes the
        connection, which stops the server's work at the frame in progress.
        """
        return Propagation(
            self._client._http, self._propagate_call(start_frame_index, max_frames, reverse)
        )

    def objects(self) -> list[int]:
        """The ids of the objects tracked, in the order they were added."""
        response = self._client._run(_expect_flow(_Call("GET", self._path)))
        return [int(i) for i in response.json()["objects"]]

    def remove_object(self, object_id: int) -> None:
        """Stop tracking an object and forget its prompts (404 if unknown)."""
        call = _Call("DELETE", f"{self._path}/objects/{int(object_id)}")
        self._client._run(_expect_flow(call))

    def reset(self) -> None:
        """Forget every prompt and result; the frames stay."""
        self._client._run(_expect_flow(_Call("POST", f"{self._path}/reset")))

    def close(self) -> None:
        """Free the session on the server (once; a session that expired is no error)."""
        if not self.closed:
            self._client._run(_close_video_flow(self.video_id))
            self.closed = True

    def __enter__(self) -> VideoSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncVideoSession(_VideoBase):
    """`VideoSession` for `AsyncClient`: the same methods, awaited; `aclose()` for close."""

    def __init__(self, client: AsyncClient, info: dict[str, Any]) -> None:
        super().__init__(info)
        self._client = client

    async def prompt(
        self,
        frame_index: int,
        object_id: int,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
    ) -> dict[int, np.ndarray]:
        """See `VideoSession.prompt`."""
        call = self._prompt_call(
            frame_index, object_id, points, labels, box, clear_old_points, normalize_coords
        )
        response = await self._client._run(_expect_flow(call))
        frame = await anyio.to_thread.run_sync(decode_frame, response.json())
        return frame.masks

    def propagate(
        self,
        start_frame_index: int | None = None,
        max_frames: int | None = None,
        reverse: bool = False,
    ) -> AsyncPropagation:
        """See `VideoSession.propagate`: `async for frame in session.propagate()`. To stop
        early, use `async with session.propagate() as frames:` (or `aclose()` it): an
        abandoned async iterator is only closed when collected."""
        call = self._propagate_call(start_frame_index, max_frames, reverse)
        return AsyncPropagation(self._client._http, call)

    async def objects(self) -> list[int]:
        """See `VideoSession.objects`."""
        response = await self._client._run(_expect_flow(_Call("GET", self._path)))
        return [int(i) for i in response.json()["objects"]]

    async def remove_object(self, object_id: int) -> None:
        """See `VideoSession.remove_object`."""
        call = _Call("DELETE", f"{self._path}/objects/{int(object_id)}")
        await self._client._run(_expect_flow(call))

    async def reset(self) -> None:
        """See `VideoSession.reset`."""
        await self._client._run(_expect_flow(_Call("POST", f"{self._path}/reset")))

    async def aclose(self) -> None:
        """See `VideoSession.close`."""
        if not self.closed:
            await self._client._run(_close_video_flow(self.video_id))
            self.closed = True

    async def __aenter__(self) -> AsyncVideoSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class _AsyncOpening:
    """`AsyncClient.open_video`'s answer: awaitable, or an async context manager that
    closes the session at its end."""

    def __init__(self, opening: Callable[[], Coroutine[Any, Any, AsyncVideoSession]]) -> None:
        self._opening = opening
        self._session: AsyncVideoSession | None = None

    def __await__(self) -> Generator[Any, None, AsyncVideoSession]:
        return self._opening().__await__()

    async def __aenter__(self) -> AsyncVideoSession:
        self._session = await self._opening()
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.aclose()


def _request(http: httpx.Client | httpx.AsyncClient, call: _Call) -> httpx.Request:
    return http.build_request(
        call.method,
        call.path,
        params=call.params,
        content=call.content,
        files=call.files,
        data=call.data,
        headers=call.headers,
    )


class Propagation(Iterator[VideoFrame]):
    """A propagation's frames, read one NDJSON line at a time as the server sends them.

    Not a list: frames arrive as they are computed, and closing this (or leaving a
    `with` block, or dropping it after a `break`) closes the connection, which the
    server takes as the signal to stop. A failure after the first frame arrives as
    the stream's last line and is raised here as its `Sam2Error`.
    """

    def __init__(self, http: httpx.Client, call: _Call) -> None:
        self._http = http
        self._call = call
        self._response: httpx.Response | None = None
        self._lines: Iterator[str] | None = None
        self._done = False

    def __next__(self) -> VideoFrame:
        if self._done:
            raise StopIteration
        try:
            if self._lines is None:
                self._lines = self._start()
            for line in self._lines:
                if line.strip():
                    return _frame_line(line)
        except BaseException:
            self.close()
            raise
        self.close()
        raise StopIteration

    def _start(self) -> Iterator[str]:
        response = self._http.send(_request(self._http, self._call), stream=True)
        self._response = response
        if response.status_code != 200:
            response.read()
            raise error_of(response)
        return response.iter_lines()

    def close(self) -> None:
        self._done = True
        if self._response is not None:
            self._response.close()

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Propagation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncPropagation(AsyncIterator[VideoFrame]):
    """`Propagation` for `AsyncClient`; each frame's masks are decoded in a worker thread."""

    def __init__(self, http: httpx.AsyncClient, call: _Call) -> None:
        self._http = http
        self._call = call
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._done = False

    async def __anext__(self) -> VideoFrame:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._lines is None:
                self._lines = await self._start()
            async for line in self._lines:
                if line.strip():
                    return await anyio.to_thread.run_sync(_frame_line, line)
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()
        raise StopAsyncIteration

    async def _start(self) -> AsyncIterator[str]:
        response = await self._http.send(_request(self._http, self._call), stream=True)
        self._response = response
        if response.status_code != 200:
            await response.aread()
            raise error_of(response)
        return response.aiter_lines()

    async def aclose(self) -> None:
        self._done = True
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> AsyncPropagation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
