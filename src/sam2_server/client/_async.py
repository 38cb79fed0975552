"""`AsyncClient`, `AsyncVideoSession`, `AsyncPropagation`: the sans-IO core on `httpx.AsyncClient`.

This file is the source of `_sync.py`: below the `# -- unasync` line,
scripts/unasync.py turns it into the sync client by replacing tokens
(`async def` -> `def`, `await ` -> ``, `AsyncClient` -> `Client`, `aclose` ->
`close` ...; its RULES list them all), so both clients keep one text. What
really differs is above that line, in each file's own preamble, under the same
names: `_offload` (CPU-heavy work: a worker thread here, so the event loop
stays free; inline there), `_sleep` (a busy session's retry: `anyio.sleep`
here, `time.sleep` there), `_opening` (`open_video`'s answer: `_AsyncOpening`
here, awaitable or an async context manager; the session itself there) and
`_ClosedWhenCollected` (only a sync propagation can close its connection from
`__del__`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import httpx
import numpy as np
import numpy.typing as npt

from ._core import (
    DEFAULT_TIMEOUT,
    MODELS_PATH,
    _automatic_flow,
    _Base,
    _Call,
    _close_video_flow,
    _decoded,
    _expect_flow,
    _Flow,
    _segment_flow,
    _upload_flow,
    _video_call,
    _video_flow,
    _VideoBase,
)
from ._errors import Sam2Error
from ._inputs import Frames, ImageLike, VideoFile, _Image, _resolve
from ._wire import (
    AutomaticMask,
    Result,
    VideoFrame,
    _automatic_body,
    _automatic_line,
    _frame_line,
    _Prompt,
    _propagate_body,
    _video_prompt_body,
    decode_automatic,
    decode_frame,
)

if TYPE_CHECKING:
    from typing_extensions import Self

_T = TypeVar("_T")


async def _offload(func: Callable[..., _T], /, *args: Any) -> _T:
    """Run CPU-heavy work (encoding an image, decoding masks) in a worker thread, so that a
    large answer does not stall the event loop."""
    return await anyio.to_thread.run_sync(func, *args)


async def _sleep(seconds: float) -> None:
    """Pause before a call is sent again (a session still busy with the frame in flight of
    a propagation just left), letting the event loop run meanwhile."""
    await anyio.sleep(seconds)


def _opening(open_session: Callable[[], Awaitable[AsyncVideoSession]]) -> _AsyncOpening:
    """`open_video`'s answer: nothing is sent until it is awaited or entered."""
    return _AsyncOpening(open_session)


class _AsyncOpening:
    """`AsyncClient.open_video`'s answer: awaitable, or an async context manager that
    closes the session at its end."""

    def __init__(self, opening: Callable[[], Awaitable[AsyncVideoSession]]) -> None:
        self._opening = opening
        self._session: AsyncVideoSession | None = None

    def __await__(self) -> Generator[Any, None, AsyncVideoSession]:
        return self._opening().__await__()

    async def __aenter__(self) -> AsyncVideoSession:
        self._session = await self._opening()
        return self._session

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.aclose()


class _ClosedWhenCollected:
    """Nothing to do when collected: closing an async response takes an `await`, which
    `__del__` cannot do; hence `AsyncVideoSession.propagate`'s advice to use `async with`."""


# -- unasync: _sync.py is generated from here on --------------------------------------------


class _AsyncClosing(ABC):
    """Context-manager support (`async with`) for the client, a session and a stream:
    leaving the block calls `aclose()`."""

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncClient(_Base, _AsyncClosing):
    """A client of one server, with one connection pool: use it as a context manager
    (`async with`), or call `aclose()` at the end. Concurrent calls share what it learns
    about the server (which images it has); the async client runs image encoding and
    answer decoding in a worker thread, so that a large answer does not stall the loop.

    `timeout` is in seconds (or an `httpx.Timeout`); `keep_images` is how many
    recently sent images' bytes the client keeps, to upload again after an
    eviction without being given the image. Other keywords go to `httpx.AsyncClient`
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
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, **httpx_options
        )

    async def upload(self, image: ImageLike, model_id: str | None = None) -> str:
        """Send an image to be encoded (and cached) now; returns its id, the SHA-256 of
        the bytes sent. Against a Livepeer runner nothing is sent: the client keeps the
        bytes and sends them with each prompt."""
        prepared = await _offload(_Image.of, image)
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
        """Segment an image (uploaded only if the server lacks it) or an uploaded image's id.

        points: N x 2 pixels (x, y), or B x N x 2 with B boxes; labels: N (or B x N),
        1 foreground, 0 background, all 1 when omitted; box: [x0, y0, x1, y1] or B x 4;
        mask_input: 256 x 256 or 1 x 256 x 256 logits, e.g. an earlier `Result.logits[0]`;
        when they are exactly one of the candidates this client got for this image and
        model, they go by reference (the answer's `answer_id` and the index: a few bytes,
        the same result), and packed only if the server no longer keeps them (a 404).
        Raises `Sam2Error` with the server's message for any error answer.
        """
        prompt = _Prompt.of(
            points, labels, box, mask_input, multimask_output, normalize_coords, model_id
        )
        image, image_id = await _offload(_resolve, image_or_id)
        answer = await self._run(_segment_flow(self._state, image, image_id, prompt))
        return await _offload(_decoded, self._state, answer)

    async def automatic_masks(
        self,
        image_or_id: ImageLike,
        model_id: str | None = None,
        progress: Callable[[int, int], object] | None = None,
        **options: Any,
    ) -> list[AutomaticMask]:
        """Every mask SAM2's automatic generator finds on an image (uploaded only if the
        server lacks it) or an uploaded image's id, in the library's order.

        `options` are `SAM2AutomaticMaskGenerator`'s parameters by the library's names
        (`AUTOMATIC_OPTIONS`; `sam2_server.domain.AutomaticParams` has their types and
        defaults); those left out take the library's defaults, and any other name is a
        `TypeError`. Each mask's `segmentation` is bool H x W. Raises `Sam2Error` with the
        server's message (a 400 names a parameter out of its range), also against a
        Livepeer runner, which has no automatic masks.

        `progress(done, total)` is called as the server ends each of the `total` batches
        of grid points (the answer then streams as NDJSON); an exception it raises (say,
        KeyboardInterrupt) closes the connection, which stops the server's work.
        """
        body = _automatic_body(model_id, dict(options))
        image, image_id = await _offload(_resolve, image_or_id)
        flow = _automatic_flow(
            self._state, image, image_id, model_id, body, progress=progress is not None
        )
        response = await self._run(flow)
        answer: dict[str, Any] = (
            response.json() if progress is None else await self._progress_answer(response, progress)
        )
        return await _offload(decode_automatic, answer)

    async def _progress_answer(
        self, response: httpx.Response, progress: Callable[[int, int], object]
    ) -> dict[str, Any]:
        """Read an NDJSON answer: `progress` for each progress line, then its result."""
        try:
            async for line in response.aiter_lines():
                item = await _offload(_automatic_line, line)
                if isinstance(item, tuple):
                    progress(*item)
                elif item is not None:
                    return item
        finally:
            await response.aclose()
        raise Sam2Error(response.status_code, "the answer ended before its result line")

    async def models(self) -> list[dict[str, Any]]:
        """The models the server serves (`GET /v1/models`), in its order: each with
        `model_id` (what `model_id=` takes), `family` ("sam2", "edgetam"), `input_size`,
        `default`, `loaded`, `video` and `automatic_masks`. A Livepeer runner has no list:
        a `Sam2Error` says so."""
        response = await self._run(_expect_flow(_Call("GET", MODELS_PATH)))
        return list(response.json()["models"])

    def open_video(
        self,
        video: VideoFile | None = None,
        *,
        frames: Frames | None = None,
        model_id: str | None = None,
    ) -> _AsyncOpening:
        """Open a video session on a video file or on frame images (a folder or a list).

        `async with client.open_video(...) as session:` closes it at the end; after
        `session = await client.open_video(...)`, call `session.aclose()`: the server holds
        the clip and SAM2's memory until then (or its idle timeout).
        """
        return _opening(partial(self._open_video, video, frames, model_id))

    async def _open_video(
        self, video: VideoFile | None, frames: Frames | None, model_id: str | None
    ) -> AsyncVideoSession:
        call = await _offload(_video_call, video, frames, model_id)
        response = await self._run(_expect_flow(call, 201))
        return AsyncVideoSession(self, response.json())

    async def _run(self, flow: _Flow[_T]) -> _T:
        """Drive a flow: send each call it yields (after the pause it asks for) and hand it
        the response, until it returns.

        A call marked `stream` has a successful response handed over unread (a
        propagation, or progress, is read line by line) and any other read whole, for
        the flow to read its error; such a response that the flow answers with another
        call is closed.
        """
        response: httpx.Response | None = None
        streamed = False
        while True:
            try:
                call = next(flow) if response is None else flow.send(response)
            except StopIteration as done:
                result: _T = done.value
                return result
            if response is not None and streamed:
                await response.aclose()
            if call.wait_s > 0:
                await _sleep(call.wait_s)
            streamed = call.stream
            response = await self._http.send(call.request(self._http), stream=streamed)
            if streamed and not response.is_success:
                await response.aread()

    async def aclose(self) -> None:
        await self._http.aclose()


class AsyncVideoSession(_VideoBase, _AsyncClosing):
    """One clip on the server with SAM2's memory of it (`AsyncClient.open_video`).

    Prompt objects on any frame, then `propagate()` to track them through the
    clip. Objects can be added, refined or removed at any time, also after a
    propagation. A session serves one request at a time: a second meanwhile
    (say, a prompt during a propagation being read) is a `Sam2Error` 409. Right
    after leaving a propagation early, though, the server is still computing the
    frame in flight; the session's calls then wait for it (polling, for at most
    10 s after leaving), so a call right after a `break` just works.
    """

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
        """Points (N x 2 pixels; labels 1 foreground, 0 background, all 1 when omitted)
        and/or a box (x0, y0, x1, y1) for one object (any id >= 0 you choose) on one
        frame. Answers every object's mask on that frame: {object_id: bool H x W}.
        `clear_old_points=False` adds to this object's earlier points on the frame."""
        body = _video_prompt_body(
            frame_index, object_id, points, labels, box, clear_old_points, normalize_coords
        )
        response = await self._client._run(_video_flow(self, self._prompt_call(body)))
        frame = await _offload(decode_frame, response.json())
        return frame.masks

    def propagate(
        self,
        start_frame_index: int | None = None,
        max_frames: int | None = None,
        reverse: bool = False,
    ) -> AsyncPropagation:
        """Track every object through the clip: `async for frame in session.propagate()`
        gives `VideoFrame`s (frame_index, {object_id: mask}), each read as the server
        computes it.

        start_frame_index None: the first prompted frame; max_frames None: to the end
        (or the start, with `reverse`). The request goes out on the first frame asked
        for. To stop early, leave the block of `async with session.propagate() as frames:`
        or call `aclose()`: that closes the connection, which stops the server's work at the
        frame in progress (the sync client's propagation also closes when dropped after a
        `break`; an async one only when collected). The session's next call waits for that
        frame to end (see the class).
        """
        body = _propagate_body(start_frame_index, max_frames, reverse)
        return AsyncPropagation(self, self._propagate_call(body))

    async def objects(self) -> list[int]:
        """The ids of the objects tracked, in the order they were added."""
        response = await self._client._run(_video_flow(self, self._objects_call()))
        return [int(i) for i in response.json()["objects"]]

    async def remove_object(self, object_id: int) -> None:
        """Stop tracking an object and forget its prompts (404 if unknown)."""
        await self._client._run(_video_flow(self, self._remove_object_call(object_id)))

    async def reset(self) -> None:
        """Forget every prompt and result; the frames stay."""
        await self._client._run(_video_flow(self, self._reset_call()))

    async def aclose(self) -> None:
        """Free the session on the server (once; a session that expired is no error)."""
        if not self.closed:
            await self._client._run(_close_video_flow(self.video_id))
            self.closed = True


class AsyncPropagation(AsyncIterator[VideoFrame], _AsyncClosing, _ClosedWhenCollected):
    """A propagation's frames, read one NDJSON line at a time as the server sends them.

    Not a list: frames arrive as they are computed, and closing this (`aclose()`, or the
    end of its `async with` block) closes the connection, which the server takes as the
    signal to stop. A failure after the first frame arrives as the stream's last line
    and is raised here as its `Sam2Error`. Closed before its last line, it tells its
    session, whose next calls then wait for the server to finish the frame in flight.
    """

    def __init__(self, session: AsyncVideoSession, call: _Call) -> None:
        self._session = session
        self._call = call
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._done = False
        self._read_to_end = False

    async def __anext__(self) -> VideoFrame:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._lines is None:
                self._lines = await self._start()
            async for line in self._lines:
                if line.strip():
                    return await _offload(_frame_line, line)
        except BaseException:
            await self.aclose()
            raise
        self._read_to_end = True
        await self.aclose()
        raise StopAsyncIteration

    async def _start(self) -> AsyncIterator[str]:
        # A busy session just after a propagation was left is waited for, as for any call.
        flow = _video_flow(self._session, self._call)
        response = await self._session._client._run(flow)
        self._response = response
        return response.aiter_lines()

    async def aclose(self) -> None:
        if not self._done and self._response is not None and not self._read_to_end:
            self._session._left_propagation()  # the server is still on a frame, maybe
        self._done = True
        if self._response is not None:
            await self._response.aclose()
