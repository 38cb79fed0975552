"""The protocol without I/O: what a client learns about its server, and each operation as a flow.

A flow is a generator that yields the HTTP calls (`_Call`) it needs and is sent
their responses; it returns the operation's answer or raises `Sam2Error`. Every
decision (ask before uploading, upload again after an eviction, fall back to a
Livepeer runner's route) is made here once, and each transport (`_async`, and
`_sync` generated from it) only sends the calls.
"""

from __future__ import annotations

import email.utils
import hashlib
import mimetypes
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import httpx
import numpy as np

from ._errors import Sam2Error, error_of
from ._inputs import Frames, VideoFile, _content_type, _Image, _read_video, frame_files
from ._wire import Result, _Answer, _Prompt

DEFAULT_TIMEOUT = 120.0  # a large model's first encode on a CPU takes tens of seconds
VIDEOS_PATH = "/v1/videos"
MODELS_PATH = "/v1/models"

_KNOWN_IDS = 1024  # (model, image id) pairs remembered as being on the server
_KNOWN_ANSWERS = 1024  # answers' candidates remembered by their logits' digest
NDJSON = "application/x-ndjson"

# A session whose propagation this client just left stays busy on the server until the
# frame in flight is computed (its 409 says `Retry-After`): the session's calls wait that
# out, polling from _BUSY_FIRST_POLL_S (a GPU frame takes milliseconds) and doubling up
# to min(Retry-After, BUSY_POLL_S) (a CPU frame takes seconds), for at most BUSY_WAIT_S
# after leaving. Past that, what holds the session is not the frame we left: a 409.
BUSY_WAIT_S = 10.0
BUSY_POLL_S = 1.0
_BUSY_FIRST_POLL_S = 0.05

_T = TypeVar("_T")


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
    wait_s: float = 0.0  # how long the driver pauses before sending (a busy session's retry)
    accept: str | None = None  # the answer's media type, when not JSON
    # A 2xx answer is handed to the flow unread, to be read as it streams (others are
    # read whole, for their error message).
    stream: bool = False

    @property
    def headers(self) -> dict[str, str] | None:
        headers = {"Content-Type": "application/json"} if self.content is not None else {}
        if self.accept is not None:
            headers["Accept"] = self.accept
        return headers or None

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """This call as `http`'s request (its base URL, headers and timeout), for `send`:
        the one place a call becomes a request, for a flow's calls and for a stream."""
        return http.build_request(
            self.method,
            self.path,
            params=self.params,
            content=self.content,
            files=self.files,
            data=self.data,
            headers=self.headers,
        )


_Flow: TypeAlias = Generator[_Call, httpx.Response, _T]
_Reference: TypeAlias = tuple[str, list[int]]  # an answer_id, and [b, k] in that answer


@dataclass
class _State:
    """What a client learns about its server, shared by its calls (thread-safe).

    native: None until the client knows; False once the server proved to be a
    plain Livepeer runner.
    images: the bytes of the last images sent, to upload again after an
    eviction and, on a Livepeer runner, to prompt an image by id at all.
    known: (model, image id) pairs the server had at last contact.
    answers: the server's answers' candidates, by (model, image id, digest of the
    candidate's logits): the `answer_id` and index that name them on the server, so
    that a `mask_input` equal to one of them is sent by reference.
    """

    keep_images: int
    native: bool | None = None
    images: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    known: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)
    answers: OrderedDict[tuple[str, str, bytes], _Reference] = field(default_factory=OrderedDict)
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

    def name_candidates(self, model_id: str | None, result: Result) -> None:
        """Remember what names each candidate of `result` on the server (its answer_id)."""
        if result.answer_id is None:
            return
        logits = result.logits if result.logits.ndim == 4 else result.logits[None]
        named = [
            (_answer_key(model_id, result.image_id, logits[b, k]), (result.answer_id, [b, k]))
            for b in range(logits.shape[0])
            for k in range(logits.shape[1])
        ]
        with self.lock:
            for key, reference in named:
                self.answers[key] = reference
                self.answers.move_to_end(key)
            while len(self.answers) > _KNOWN_ANSWERS:
                self.answers.popitem(last=False)

    def reference(self, prompt: _Prompt, image_id: str) -> _Reference | None:
        """The answer_id and index naming `prompt`'s mask_input on the server, if this
        client was given exactly those logits for this image and model."""
        if prompt.mask_input is None:
            return None
        key = _answer_key(prompt.model_id, image_id, prompt.mask_input[0])
        with self.lock:
            return self.answers.get(key)

    def forget_reference(self, prompt: _Prompt, image_id: str) -> None:
        """The server no longer keeps that answer: its logits travel packed from now on."""
        assert prompt.mask_input is not None
        key = _answer_key(prompt.model_id, image_id, prompt.mask_input[0])
        with self.lock:
            self.answers.pop(key, None)


def _answer_key(model_id: str | None, image_id: str, logits: np.ndarray) -> tuple[str, str, bytes]:
    """A 256 x 256 candidate's identity on one image and model: its exact float32 bytes,
    hashed (what a remembered answer and a later mask_input are matched by)."""
    data = np.ascontiguousarray(logits, dtype="<f4").tobytes()
    return (model_id or "", image_id, hashlib.blake2b(data, digest_size=16).digest())


def _decoded(state: _State, answer: _Answer) -> Result:
    """The answer as a `Result` (the CPU-heavy part), its candidates remembered by name."""
    result = answer.result()
    state.name_candidates(answer.model_id, result)
    return result


# -- images --------------------------------------------------------------------------------


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
    client to the Livepeer route for good.

    A mask_input that is exactly a candidate this client was given for this image and
    model goes by reference (its answer_id and index: a few bytes instead of 350 kB);
    when the server no longer keeps it (a 404), the logits are sent packed, once."""
    path = f"/v1/images/{image_id}/segment"
    reference = state.reference(prompt, image_id) if state.native else None
    if reference is not None:
        named = yield _Call("POST", path, content=prompt.native_body(reference))
        if named.status_code == 200:
            state.mark((prompt.model_id or "", image_id), True)
            return _Answer(False, named.json(), image_id, prompt.model_id)
        if named.status_code != 404 or _route_missing(named):
            raise error_of(named)
        # Evicted, or gone with its image: the packed logits (and the image, if need be).
        state.forget_reference(prompt, image_id)
    call = _Call("POST", path, content=prompt.native_body())
    image, response = yield from _image_flow(state, image, image_id, prompt.model_id, call)
    if response is None:
        return (yield from _livepeer_flow(image, image_id, prompt))
    return _Answer(False, response.json(), image_id, prompt.model_id)


def _automatic_flow(
    state: _State,
    image: _Image | None,
    image_id: str,
    model_id: str | None,
    body: bytes,
    progress: bool = False,
) -> _Flow[httpx.Response]:
    """Automatic masks on the native API (see `_image_flow`); a Livepeer runner has none.
    With `progress`, the 200 is NDJSON (progress lines, then the result), handed over
    unread; without, a JSON answer, read."""
    path = f"/v1/images/{image_id}/automatic-masks"
    call = _Call("POST", path, content=body, accept=NDJSON if progress else None, stream=progress)
    _, response = yield from _image_flow(state, image, image_id, model_id, call)
    if response is None:
        raise Sam2Error(
            404,
            "automatic masks need sam2-server's native API (/v1); this server has only "
            "POST /segment-anything-2 (a Livepeer runner)",
        )
    return response


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


# -- video sessions ------------------------------------------------------------------------


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


def _expect_flow(call: _Call, status: int = 200) -> _Flow[httpx.Response]:
    """One call whose only good answer is `status`; a missing videos route says so."""
    response = yield call
    if response.status_code != status:
        if _route_missing(response) and call.path in (VIDEOS_PATH, MODELS_PATH):
            raise _no_route(call, response)
        raise error_of(response)
    return response


def _video_flow(video: _VideoBase, call: _Call, status: int = 200) -> _Flow[httpx.Response]:
    """`call` on a session, whose only good answer is `status`; a 409 (busy) that comes
    just after this client left a propagation of the session is the frame in flight
    still being computed, so the call is sent again (`_busy_wait_s`) rather than raised."""
    response = yield call
    tries = 0
    while (wait_s := _busy_wait_s(video, response, tries)) is not None:
        tries += 1
        response = yield replace(call, wait_s=wait_s)
    if response.status_code != status:
        raise error_of(response)
    return response


def _busy_wait_s(video: _VideoBase, response: httpx.Response, tries: int) -> float | None:
    """How long to wait before sending a call again that was answered `response`, or
    None to take the answer as it is.

    Only a busy answer (409 with `Retry-After`, as sam2-server says it) within
    BUSY_WAIT_S of this session object leaving a propagation early is waited for: the
    server frees the session as the frame in flight ends, which the leaving client
    cannot see. Any other 409 (a propagation still being read, or another client's) is
    raised at once, as the server means it: no wait of unknown length."""
    if response.status_code != 409 or video._left_at is None:
        return None
    retry_after = _retry_after_s(response)
    if retry_after is None:
        return None
    remaining = video._left_at + BUSY_WAIT_S - time.monotonic()
    cap = min(retry_after, BUSY_POLL_S) if retry_after > 0 else BUSY_POLL_S
    wait_s = min(_BUSY_FIRST_POLL_S * 2.0**tries, cap, remaining)
    return wait_s if wait_s > 0 else None


def _retry_after_s(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds (delay-seconds or an HTTP date), or None."""
    value: str | None = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    seconds: float = when.timestamp() - time.time()
    return max(0.0, seconds)


def _close_video_flow(video_id: str) -> _Flow[None]:
    """DELETE the session; one the server already closed (its idle timeout) is no error."""
    response = yield _Call("DELETE", f"{VIDEOS_PATH}/{video_id}")
    if response.status_code not in (204, 404):
        raise error_of(response)


# -- what both transports' clients and sessions hold ---------------------------------------


class _Base:
    """A client's server, credentials and `_State`; the transport adds its httpx client."""

    def __init__(self, url: str, token: str | None, keep_images: int) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._state = _State(keep_images=max(0, keep_images))

    @property
    def native(self) -> bool | None:
        """True once the server has shown its /v1 API, False for a plain Livepeer
        runner (this client then uses POST /segment-anything-2), None until known."""
        return self._state.native


class _VideoBase:
    """A session's description (as `POST /v1/videos` answered) and its calls (their bodies
    are built by `_wire`, with the transport's session method's own arguments)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.video_id: str = info["video_id"]
        self.model_id: str = info["model_id"]
        self.frames: int = info["frames"]  # how many
        self.width: int = info["width"]
        self.height: int = info["height"]
        self.fps: float | None = info.get("fps")  # None for frame images
        self.closed = False
        # When (time.monotonic) a propagation of this session was closed before its end:
        # the server may still be computing that frame (see `_video_flow`).
        self._left_at: float | None = None

    def _left_propagation(self) -> None:
        """A propagation of this session was closed before its last line was read."""
        self._left_at = time.monotonic()

    @property
    def _path(self) -> str:
        return f"{VIDEOS_PATH}/{self.video_id}"

    def _prompt_call(self, body: bytes) -> _Call:
        return _Call("POST", f"{self._path}/prompts", content=body)

    def _propagate_call(self, body: bytes) -> _Call:
        return _Call("POST", f"{self._path}/propagate", content=body, stream=True)

    def _objects_call(self) -> _Call:
        return _Call("GET", self._path)

    def _remove_object_call(self, object_id: int) -> _Call:
        return _Call("DELETE", f"{self._path}/objects/{int(object_id)}")

    def _reset_call(self) -> _Call:
        return _Call("POST", f"{self._path}/reset")

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.video_id}: {self.frames} frames "
            f"{self.width}x{self.height}{' (closed)' if self.closed else ''}>"
        )
