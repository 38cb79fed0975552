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

Against a plain Livepeer runner (no `/v1` routes: `POST /v1/images` itself
answers 404 or 405), the client falls back to `POST /segment-anything-2`
with the same `Result`, and remembers that per client. The sans-IO design
keeps one implementation of that logic for both clients: each operation is a
generator that yields the HTTP calls it needs and receives their responses;
`Client` drives it with `httpx.Client`, `AsyncClient` with
`httpx.AsyncClient` (and runs the CPU-heavy decoding in a worker thread so the
event loop stays free).

This module never imports torch.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

import anyio.to_thread
import httpx
import numpy as np
import numpy.typing as npt
import orjson
from PIL import Image
from pycocotools import mask as coco_mask

from sam2_server.codecs.native import pack_array, unpack_array

__all__ = [
    "AsyncClient",
    "Client",
    "ImageLike",
    "Result",
    "Sam2Error",
    "encode_image",
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
    files: dict[str, tuple[str, bytes, str]] | None = None
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


def _segment_flow(
    state: _State, image: _Image | None, image_id: str, prompt: _Prompt
) -> _Flow[_Answer]:
    """Ask whether the server has the image (unless known), upload it on a miss, segment;
    on a 404 (evicted meanwhile) upload again and retry once. A missing upload route
    switches this client to the Livepeer route for good."""
    model_id = prompt.model_id
    key = (model_id or "", image_id)
    if image is None:
        image = state.recall(image_id)
    else:
        state.remember(image)
    if state.native is False:
        return (yield from _livepeer_flow(image, image_id, prompt))
    if image is not None and not state.is_known(key):
        response = yield _Call(
            "GET", f"/v1/images/{image_id}", params={"model_id": model_id} if model_id else None
        )
        if response.status_code == 404:
            uploaded = yield from _upload_flow(state, image, model_id)
            if uploaded is None:
                return (yield from _livepeer_flow(image, image_id, prompt))
        elif response.status_code != 200:
            raise error_of(response)
    call = _Call("POST", f"/v1/images/{image_id}/segment", content=prompt.native_body())
    response = yield call
    if response.status_code == 404 and image is not None:
        # Evicted since (or never uploaded): upload again, retry once.
        state.mark(key, False)
        uploaded = yield from _upload_flow(state, image, model_id)
        if uploaded is None:
            return (yield from _livepeer_flow(image, image_id, prompt))
        response = yield call
    if response.status_code != 200:
        if response.status_code == 404:
            state.mark(key, False)
        raise error_of(response)
    state.native = True
    state.mark(key, True)
    return _Answer(False, response.json(), image_id, model_id)


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
