"""The native API's video sessions: upload a clip, prompt objects, propagate.

The operations are `SAM2VideoPredictor`'s (and Meta's demo's): open a
session, add points or a box for an object on any frame, propagate through
the clip forwards or backwards, remove an object, reset, close. Names follow
`../shared/contract/native-api.md`. A propagation streams one NDJSON line per
frame as the frame is computed; a client that disconnects stops it at the
next frame. Sessions, their bounds and their expiry belong to the engine
(`engine/video.py`); this module reads requests and writes answers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Path, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from sam2_server.api.admission import Admission, Ticket
from sam2_server.api.deps import SegmenterDep, bearer_scheme
from sam2_server.api.errors import service_error_line
from sam2_server.api.native_fields import (
    MaskOutputFields,
    in_native_names,
    json_array,
)
from sam2_server.api.paths import VIDEOS_PATH
from sam2_server.api.pipeline import (
    request_record,
    require_ready,
    run_admitted,
    start_request,
)
from sam2_server.api.responses import NDJSON, TicketedStream, json_response
from sam2_server.api.schemas import NATIVE_RESPONSES
from sam2_server.codecs.video import frame_answer, frame_line, video_fields
from sam2_server.config import MIB, Settings
from sam2_server.domain import FrameMasks, Timings, VideoInfo, VideoPrompt
from sam2_server.errors import ServiceError, bad_request
from sam2_server.prompts import PromptLimits, prompt_from_arrays

MAX_OBJECT_ID = 2**31 - 1
_VIDEO_RESPONSES: dict[int | str, dict[str, Any]] = {
    **NATIVE_RESPONSES,
    409: NATIVE_RESPONSES[400],
    413: NATIVE_RESPONSES[400],
}
# No length bound: any id that is not a session's is the contract's 404 (its message
# shows at most 64 characters of it).
VideoId = Annotated[str, Path(description="The id `POST /v1/videos` answered.")]


class VideoResponse(BaseModel):
    """A video session."""

    video_id: str
    model_id: str
    frames: int
    width: int
    height: int
    fps: float | None = Field(None, description="Null for a session built from frame images.")
    objects: list[int] = Field(default_factory=list, description="Object ids, in the order added.")


class ObjectMask(BaseModel):
    object_id: int
    mask: Any = Field(
        ...,
        description="In mask_format: COCO RLE {size, counts}, a base64 PNG string, or "
        "{size, polygons} (see PolygonMask).",
    )


class FrameResponse(BaseModel):
    """Every object's binary mask on one frame, at the clip's original size."""

    frame_index: int
    objects: list[ObjectMask]


class VideoPromptRequest(MaskOutputFields):
    """Points and/or a box for one object on one frame, in pixels of the clip (XYXY box)."""

    frame_index: int = Field(..., ge=0)
    object_id: int = Field(..., ge=0, le=MAX_OBJECT_ID)
    points: list[Any] | None = Field(None, description="Nx2 points.")
    labels: list[Any] | None = Field(None, description="N labels: 1 foreground, 0 background.")
    box: list[Any] | None = Field(None, description="[x0, y0, x1, y1].")
    clear_old_points: bool = Field(
        True, description="False: add to this object's earlier points on this frame."
    )
    normalize_coords: bool = True


class PropagateRequest(MaskOutputFields):
    start_frame_index: int | None = Field(
        None, ge=0, description="Null: the first frame with a prompt."
    )
    max_frames: int | None = Field(
        None, ge=0, description="Frames to track after the start one; null: to the end."
    )
    reverse: bool = False


def build_video_router(settings: Settings, admission: Admission) -> APIRouter:
    router = APIRouter(prefix=VIDEOS_PATH, tags=["videos"], dependencies=[Depends(bearer_scheme)])
    limits = PromptLimits(max_points=settings.max_points, max_objects=1)

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        response_model=VideoResponse,
        responses=_VIDEO_RESPONSES,
        operation_id="uploadVideo",
        summary="Open a video session: a video file, or frame images in order",
        # One frame over the limit still reaches the clip's own check (413 naming
        # VIDEO_MAX_FRAMES); the parser stops a flood of parts there, with the same 413.
        form_limits={"max_files": settings.video_max_frames + 1},
    )
    async def upload_video(
        request: Request,
        segmenter: SegmenterDep,
        video: Annotated[
            UploadFile | None, File(description="A video file (mp4, webm, mov, ...).")
        ] = None,
        frames: Annotated[
            list[UploadFile] | None, File(description="Frame images, in order.")
        ] = None,
        model_id: Annotated[str, Form(description="Empty: the server's default model.")] = "",
    ) -> Response:
        record, model = start_request(request, segmenter, model_id)
        frame_files = [f for f in frames or [] if f.filename or f.size]
        if (video is None) == (not frame_files):
            raise bad_request("Send either `video` (one video file) or `frames` (images).")
        require_ready(segmenter)
        timings = Timings()

        def work(cancelled: Callable[[], bool]) -> VideoInfo:
            return segmenter.videos.open(
                model,
                video=video.file if video is not None else None,
                frames=[f.file for f in frame_files],
                cancelled=cancelled,
            )

        # Decoding holds one frame at a time; the frames themselves are the
        # video budget's business (VIDEO_MEMORY_BYTES), checked as they arrive.
        cost = 64 * MIB + 8 * settings.video_max_pixels
        info, ticket = await run_admitted(request, admission, cost, timings, work)
        ticket.release()
        record.details.update(width=info.width, height=info.height, frames=info.frames)
        return json_response(video_fields(info, objects=False), status.HTTP_201_CREATED)

    @router.get(
        "/{video_id}",
        response_model=VideoResponse,
        responses=_VIDEO_RESPONSES,
        operation_id="getVideo",
        summary="A video session's description and objects",
    )
    async def get_video(segmenter: SegmenterDep, video_id: VideoId) -> Response:
        return json_response(video_fields(segmenter.videos.get(video_id)))

    @router.post(
        "/{video_id}/prompts",
        response_model=FrameResponse,
        responses=_VIDEO_RESPONSES,
        operation_id="promptVideo",
        summary="Add points or a box for one object on one frame",
    )
    async def prompt_video(
        request: Request, segmenter: SegmenterDep, video_id: VideoId, body: VideoPromptRequest
    ) -> Response:
        info = segmenter.videos.get(video_id)  # an unknown session is a 404 before any 400
        prompt = _video_prompt(body, limits)
        epsilon = body.checked_epsilon()
        objects = len(info.objects) + 1
        cost = 64 * MIB + objects * info.width * info.height * 6

        def work(_cancelled: Callable[[], bool]) -> bytes:
            frame = segmenter.videos.prompt(video_id, prompt)
            return frame_answer(frame, body.mask_format, epsilon)

        answer, ticket = await run_admitted(request, admission, cost, Timings(), work)
        ticket.release()
        return Response(answer, media_type="application/json")

    @router.post(
        "/{video_id}/propagate",
        responses={
            200: {
                "description": "One JSON object per line and frame, streamed as computed: "
                '{"frame_index", "objects": [{"object_id", "mask"}]}.',
                # A reference into the document's components (the prompts route puts
                # FrameResponse and ObjectMask there), not a schema with its own $defs.
                "content": {NDJSON: {"schema": {"$ref": "#/components/schemas/FrameResponse"}}},
            },
            **_VIDEO_RESPONSES,
        },
        response_class=StreamingResponse,
        operation_id="propagateVideo",
        summary="Track every object through the clip, one NDJSON line per frame",
    )
    async def propagate_video(
        request: Request, segmenter: SegmenterDep, video_id: VideoId, body: PropagateRequest
    ) -> Response:
        record = request_record(request)
        epsilon = body.checked_epsilon()
        info = segmenter.videos.get(video_id)
        cost = 64 * MIB + max(len(info.objects), 1) * info.width * info.height * 6
        ticket = await admission.acquire(cost)
        try:
            steps = await run_in_threadpool(
                segmenter.videos.propagate,
                video_id,
                body.start_frame_index,
                body.max_frames,
                body.reverse,
            )
        except BaseException:
            ticket.release()
            raise

        async def lines() -> AsyncIterator[bytes]:
            started = time.perf_counter()
            count = 0
            try:
                while True:
                    frame = await run_in_threadpool(_next_frame, steps)
                    if frame is None:
                        break
                    count += 1
                    yield await run_in_threadpool(frame_line, frame, body.mask_format, epsilon)
            except ServiceError as exc:
                # Headers are gone: the stream ends with an error line instead.
                yield service_error_line(exc)
            finally:
                record.details["frames"] = count
                record.stages["propagate"] = time.perf_counter() - started

        # The work stops and the session and budget are freed when the stream
        # ends, whichever way: read to the end, a client that left (even before
        # the first frame), or one that stopped reading (BODY_READ_TIMEOUT).
        return TicketedStream(
            lines(),
            _Finish(steps, ticket),
            media_type=NDJSON,
            stall_timeout_s=settings.body_read_timeout_s,
            record=record,  # a client that left is logged 499: the clip's answer never came
        )

    @router.delete(
        "/{video_id}/objects/{object_id}",
        response_model=VideoResponse,
        responses=_VIDEO_RESPONSES,
        operation_id="removeVideoObject",
        summary="Stop tracking an object and forget its prompts",
    )
    async def remove_object(
        segmenter: SegmenterDep,
        video_id: VideoId,
        object_id: Annotated[int, Path(description="An id the session tracks (else 404).")],
    ) -> Response:
        info = await run_in_threadpool(segmenter.videos.remove_object, video_id, object_id)
        return json_response(video_fields(info))

    @router.post(
        "/{video_id}/reset",
        response_model=VideoResponse,
        responses=_VIDEO_RESPONSES,
        operation_id="resetVideo",
        summary="Clear every prompt and result; keep the frames",
    )
    async def reset_video(segmenter: SegmenterDep, video_id: VideoId) -> Response:
        info = await run_in_threadpool(segmenter.videos.reset, video_id)
        return json_response(video_fields(info))

    @router.delete(
        "/{video_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=_VIDEO_RESPONSES,
        operation_id="closeVideo",
        summary="Close the session and free its memory",
    )
    async def close_video(segmenter: SegmenterDep, video_id: VideoId) -> Response:
        await run_in_threadpool(segmenter.videos.close, video_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router


class _Finish:
    """Ends a propagation: its session is released, then its admission ticket."""

    def __init__(self, steps: Iterator[FrameMasks], ticket: Ticket) -> None:
        self.steps = steps
        self.ticket = ticket

    def release(self) -> None:
        try:
            close = getattr(self.steps, "close", None)
            if close is not None:
                close()
        finally:
            self.ticket.release()


def _next_frame(steps: Iterator[FrameMasks]) -> FrameMasks | None:
    """next(), with the end as None: a StopIteration cannot cross into a coroutine."""
    with contextlib.suppress(StopIteration):
        return next(steps)
    return None


def _video_prompt(body: VideoPromptRequest, limits: PromptLimits) -> VideoPrompt:
    """The body through the image routes' checks (one object), messages in native names."""
    points = json_array(body.points, "points")
    box = json_array(body.box, "box")
    if points is None and box is None:
        raise bad_request("Give points (with labels) or a box for the object.")
    if points is not None and points.ndim == 3:
        raise bad_request("points: one object per prompt, so a list of [x, y] points (Nx2).")
    if box is not None and box.ndim == 2:
        raise bad_request("box: one object per prompt, so one [x0, y0, x1, y1] box.")
    try:
        prompt = prompt_from_arrays(
            coords=points,
            labels=json_array(body.labels, "labels"),
            boxes=box,
            mask=None,
            multimask_output=False,
            return_logits=False,
            normalize_coords=body.normalize_coords,
            limits=limits,
        )
    except ServiceError as exc:
        raise in_native_names(exc) from None
    return VideoPrompt(
        frame_index=body.frame_index,
        object_id=body.object_id,
        points=None if prompt.point_coords is None else prompt.point_coords.astype(np.float32),
        labels=None if prompt.point_labels is None else prompt.point_labels.astype(np.int32),
        box=None if prompt.box is None else prompt.box.astype(np.float32),
        clear_old_points=body.clear_old_points,
        normalize_coords=body.normalize_coords,
    )
