"""Video sessions: SAM2's video predictor, one private state per clip, bounded.

`SAM2VideoPredictor` keeps a clip's frames, prompts and per-frame memory in
an `inference_state` dict that its methods mutate; the model itself holds no
per-clip state. So the server keeps one predictor per model (shared, like the
image model) and one state per session, and never lets two calls touch the
same state at once: a session is either idle or owned by exactly one call
(`_Session.lock`); a second call meanwhile is "busy" rather than a wait behind
a propagation that may take minutes. The predictor and the frame store, and
how they depart from the library's, are video_predictor.py's.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import torch
from PIL import Image

from sam2_server.config import GIB, MIB, Settings, machine_memory_bytes
from sam2_server.domain import FrameMasks, VideoInfo, VideoPrompt
from sam2_server.engine.family import Frames, VideoPredictor
from sam2_server.errors import Cancelled, ErrorKind, ServiceError, bad_request
from sam2_server.frames import Clip, frame_images, video_file

logger = logging.getLogger(__name__)

_SWEEP_EVERY_S = 30.0


@dataclass
class _Session:
    video_id: str
    model_id: str
    predictor: VideoPredictor  # its family's (family.py): SAM2's predictor, or EdgeTAM's
    frames: Frames
    fps: float | None
    state: Mapping[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    nbytes: int = 0
    closed: bool = False

    def info(self) -> VideoInfo:
        objects = tuple(int(i) for i in self.state["obj_ids"]) if self.state else ()
        return VideoInfo(
            self.video_id,
            self.model_id,
            len(self.frames),
            self.frames.width,
            self.frames.height,
            self.fps,
            objects,
        )


class VideoSessions:
    """The open sessions, their bounds and their expiry.

    `predictor_for(model_id, cancelled)` gives the shared video predictor of a
    served model (loading it if needed); `compute` is the engine's compute
    context (inference mode, autocast where configured, OOM → 500);
    `model_lock(model_id)` serialises the model's work across sessions, so
    two clips interleave frame by frame instead of fighting for the cores.
    """

    def __init__(
        self,
        settings: Settings,
        predictor_for: Callable[[str, Callable[[], bool] | None], VideoPredictor],
        compute: Callable[[], AbstractContextManager[None]],
        model_lock: Callable[[str], threading.Lock],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._predictor_for = predictor_for
        self._compute = compute
        self._model_lock = model_lock
        self._clock = clock
        memory = settings.video_memory_bytes
        self.max_bytes = memory if memory is not None else _default_video_bytes()
        self._sessions: dict[str, _Session] = {}
        self._reserved = 0  # bytes of sessions being opened, not yet in _sessions
        self._opening = 0  # sessions being opened
        self._lock = threading.Lock()
        self.opened = 0
        self.expired = 0
        self.frames_propagated = 0
        self._sweeper = threading.Thread(target=self._sweep_forever, name="video-sweeper")
        self._sweeper.daemon = True
        self._sweeper.start()

    # -- sessions ----------------------------------------------------------------------------

    def open(
        self,
        model_id: str,
        *,
        video: BinaryIO | None = None,
        frames: Sequence[BinaryIO] = (),
        cancelled: Callable[[], bool] | None = None,
    ) -> VideoInfo:
        if (video is None) == (not frames):
            raise bad_request("Send either `video` (one video file) or `frames` (images).")
        settings = self.settings
        limits = {"max_frames": settings.video_max_frames, "max_pixels": settings.video_max_pixels}
        clip = video_file(video, **limits) if video is not None else frame_images(frames, **limits)
        self._sweep()
        predictor = self._predictor_for(model_id, cancelled)
        store = predictor.frame_store(clip.width, clip.height)
        per_frame = predictor.frame_bytes()
        # The frame count of a video file is known only once decoded: frames are
        # reserved as they arrive, so a clip too big for the budget stops early.
        reserved = 0
        self._take_slot()
        try:
            for image in _frames(clip, cancelled):
                self._reserve(per_frame, reserved)
                reserved += per_frame
                store.append(image)
            session = _Session(_new_id(), model_id, predictor, store, clip.fps)
            with self._model_lock(model_id), self._compute():
                session.state = predictor.init_state_from_frames(
                    store, offload_state_to_cpu=predictor.device.type == "cuda"
                )
            session.nbytes = _state_bytes(session)
            with self._lock:
                self._sessions[session.video_id] = session
                self.opened += 1
        finally:
            with self._lock:
                self._reserved -= reserved
                self._opening -= 1
        logger.info(
            "video %s opened: %d frames %dx%d on %s (%.0f MB)",
            session.video_id,
            len(store),
            clip.width,
            clip.height,
            model_id,
            session.nbytes / MIB,
        )
        return session.info()

    def get(self, video_id: str) -> VideoInfo:
        session = self._find(video_id)
        session.last_used = self._clock()
        return session.info()

    def prompt(self, video_id: str, prompt: VideoPrompt) -> FrameMasks:
        with self._owned(video_id) as session:
            state = session.state
            assert state is not None
            _check_frame(prompt.frame_index, len(session.frames), "frame_index")
            new_object = prompt.object_id not in state["obj_id_to_idx"]
            if new_object and len(state["obj_ids"]) >= self.settings.video_max_objects:
                raise bad_request(
                    f"object_id: this session already tracks {len(state['obj_ids'])} objects, "
                    f"the limit (VIDEO_MAX_OBJECTS); remove one first."
                )
            if prompt.box is not None and not prompt.clear_old_points:
                raise bad_request(
                    "box: a box must come before any point on a frame; send it with "
                    "clear_old_points=true (SAM2's rule)."
                )
            with self._model_lock(session.model_id), self._compute():
                frame_index, object_ids, logits = session.predictor.add_new_points_or_box(
                    state,
                    frame_idx=prompt.frame_index,
                    obj_id=prompt.object_id,
                    points=prompt.points,
                    labels=prompt.labels,
                    clear_old_points=prompt.clear_old_points,
                    normalize_coords=prompt.normalize_coords,
                    box=prompt.box,
                )
            session.nbytes = _state_bytes(session)
            return _frame_masks(frame_index, object_ids, logits)

    def propagate(
        self,
        video_id: str,
        start_frame_index: int | None,
        max_frames: int | None,
        reverse: bool,
    ) -> Iterator[FrameMasks]:
        session = self._acquire(video_id)
        try:
            state = session.state
            assert state is not None
            if not state["obj_ids"]:
                raise bad_request(
                    "Nothing to propagate: add points or a box for an object first "
                    "(POST /v1/videos/{video_id}/prompts)."
                )
            if start_frame_index is not None:
                _check_frame(start_frame_index, len(session.frames), "start_frame_index")
            if max_frames is not None and max_frames < 0:
                raise bad_request("max_frames: must be 0 or more (null: to the end).")
            self._check_growth(session, max_frames)
        except BaseException:
            session.lock.release()
            raise
        return _Propagation(self, session, start_frame_index, max_frames, reverse)

    def remove_object(self, video_id: str, object_id: int) -> VideoInfo:
        with self._owned(video_id) as session:
            state = session.state
            assert state is not None
            if object_id not in state["obj_id_to_idx"]:
                raise _unknown_object(video_id, object_id, state["obj_ids"])
            with self._model_lock(session.model_id), self._compute():
                session.predictor.remove_object(state, object_id, strict=True, need_output=False)
            session.nbytes = _state_bytes(session)
            return session.info()

    def reset(self, video_id: str) -> VideoInfo:
        with self._owned(video_id) as session:
            assert session.state is not None
            session.predictor.reset_state(session.state)
            session.nbytes = _state_bytes(session)
            return session.info()

    def close(self, video_id: str) -> None:
        """Free the session now; a propagation running on it stops at its next frame."""
        with self._lock:
            session = self._sessions.pop(video_id, None)
        if session is None:
            raise _unknown_video(video_id)
        self._free(session)
        logger.info("video %s closed", video_id)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            sessions = list(self._sessions.values())
        return {
            "sessions": len(sessions),
            "max_sessions": self.settings.video_max_sessions,
            "bytes": sum(s.nbytes for s in sessions),
            "max_bytes": self.max_bytes,
            "frames": sum(len(s.frames) for s in sessions),
            "opened": self.opened,
            "expired": self.expired,
            "frames_propagated": self.frames_propagated,
        }

    # -- ownership ---------------------------------------------------------------------------

    def holds(self, video_id: str) -> bool:
        """Whether this process has the session: a cluster replica routes by it."""
        with self._lock:
            return video_id in self._sessions

    def _find(self, video_id: str) -> _Session:
        with self._lock:
            session = self._sessions.get(video_id)
        if session is None:
            raise _unknown_video(video_id)
        return session

    def _acquire(self, video_id: str) -> _Session:
        """The session, owned by the caller until it releases `session.lock` (409 if busy)."""
        session = self._find(video_id)
        if not session.lock.acquire(blocking=False):
            raise ServiceError(
                ErrorKind.BUSY,
                f"video {video_id} is busy with another request (a propagation, or a "
                "prompt); wait for it to finish, or close the propagation's connection.",
                retry_after_s=1,
            )
        if session.closed:  # closed between the lookup and the lock
            session.lock.release()
            raise _unknown_video(video_id)
        session.last_used = self._clock()
        return session

    @contextlib.contextmanager
    def _owned(self, video_id: str) -> Iterator[_Session]:
        session = self._acquire(video_id)
        try:
            yield session
        except (RuntimeError, ValueError, AssertionError) as exc:
            # The library's own checks on prompts (sam2 raises these for bad input).
            message = str(exc)
            if not _is_prompt_error(message):
                raise
            raise bad_request(message) from None
        finally:
            session.last_used = self._clock()
            session.lock.release()

    # -- bounds ------------------------------------------------------------------------------

    def _used(self) -> int:
        """Bytes held by open sessions and reserved by those being opened (lock held)."""
        return sum(s.nbytes for s in self._sessions.values()) + self._reserved

    def _take_slot(self) -> None:
        with self._lock:
            if len(self._sessions) + self._opening >= self.settings.video_max_sessions:
                raise ServiceError(
                    ErrorKind.UNAVAILABLE,
                    f"{len(self._sessions)} video sessions are open, this server's limit "
                    "(VIDEO_MAX_SESSIONS); close one (DELETE /v1/videos/{video_id}) or retry "
                    "once one expires.",
                    retry_after_s=30,
                )
            self._opening += 1

    def _reserve(self, nbytes: int, already: int) -> None:
        """Take `nbytes` of the video budget for a session being opened (413/503 past it)."""
        if already + nbytes > self.max_bytes:
            raise ServiceError(
                ErrorKind.TOO_LARGE,
                f"video: this clip needs more than the {self.max_bytes} bytes all video "
                f"sessions may hold (VIDEO_MEMORY_BYTES; each frame takes {nbytes} bytes at "
                "the model's input size). Upload fewer frames.",
            )
        with self._lock:
            if self._used() + nbytes > self.max_bytes:
                raise _memory_full()
            self._reserved += nbytes

    def _check_growth(self, session: _Session, max_frames: int | None) -> None:
        """Refuse a propagation whose memory would not fit, before it starts."""
        state = session.state
        assert state is not None
        per_output = _output_bytes(state)
        frames = len(session.frames)
        span = frames if max_frames is None else min(frames, max_frames + 1)
        # Outputs already held (an earlier propagation) are replaced, not added to.
        held = sum(
            len(outputs["cond_frame_outputs"]) + len(outputs["non_cond_frame_outputs"])
            for outputs in state["output_dict_per_obj"].values()
        )
        growth = max(0, span * len(state["obj_ids"]) - held) * per_output
        if session.nbytes + growth > self.max_bytes:
            raise ServiceError(
                ErrorKind.TOO_LARGE,
                f"video: tracking {len(state['obj_ids'])} objects over {span} frames needs "
                f"about {growth} more bytes than the video memory (VIDEO_MEMORY_BYTES, "
                f"{self.max_bytes}) holds; track fewer frames (max_frames) or objects.",
            )
        with self._lock:
            if self._used() + growth > self.max_bytes:
                raise _memory_full()

    # -- expiry ------------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Close sessions idle past VIDEO_IDLE_TIMEOUT (never one in use)."""
        deadline = self._clock() - self.settings.video_idle_timeout_s
        expired = []
        with self._lock:
            for video_id, session in list(self._sessions.items()):
                if session.last_used < deadline and session.lock.acquire(blocking=False):
                    try:
                        del self._sessions[video_id]
                        expired.append(session)
                    finally:
                        session.lock.release()
            self.expired += len(expired)
        for session in expired:
            self._free(session)
            logger.info("video %s expired (idle past VIDEO_IDLE_TIMEOUT)", session.video_id)

    def _sweep_forever(self) -> None:
        interval = min(_SWEEP_EVERY_S, max(self.settings.video_idle_timeout_s / 4, 0.05))
        while True:
            time.sleep(interval)
            try:
                self._sweep()
            except Exception:  # the sweeper must outlive any one failure
                logger.exception("video session sweep failed")

    def _free(self, session: _Session) -> None:
        session.closed = True
        session.state = None
        # An empty store of the session's own family: the frames' memory is given back.
        session.frames = session.predictor.frame_store(session.frames.width, session.frames.height)
        session.nbytes = 0
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _Propagation(Iterator[FrameMasks]):
    """One propagation: owns its session until exhausted or closed.

    Each `next()` computes one frame (the library's generator, resumed), so a
    caller that stops asking (a client that left) stops the work. `close()`
    may come from another thread while a frame is being computed (the server
    closes the stream of a departed client while the worker thread still
    runs): the session is then released by that step, as it ends, never
    while the state is in use. A client that left early calls the session
    again at once (its client waits out this one frame), so "as it ends"
    must hold for every interleaving, not only at garbage collection: see
    `__next__`'s last check.
    """

    def __init__(
        self,
        sessions: VideoSessions,
        session: _Session,
        start: int | None,
        max_frames: int | None,
        reverse: bool,
    ) -> None:
        self._sessions = sessions
        self._session = session
        assert session.state is not None
        self._steps = session.predictor.propagate_in_video(
            session.state,
            start_frame_idx=start,
            max_frame_num_to_track=max_frames,
            reverse=reverse,
        )
        self._step_lock = threading.Lock()  # held while a frame is computed
        self._closing = False
        self._released = False

    def __next__(self) -> FrameMasks:
        try:
            return self._step()
        finally:
            # A `close()` that came while this step held the lock, after the step's own
            # look at `_closing`, found the lock taken and left the release to this step:
            # the step lock is free now, so the release happens here, not at collection.
            if self._closing:
                self._release_if_idle()

    def _step(self) -> FrameMasks:
        with self._step_lock:
            session = self._session
            if self._closing or self._released:
                self._finish()
                raise StopIteration
            if session.closed:
                self._finish()
                raise _unknown_video(session.video_id)
            try:
                with self._sessions._model_lock(session.model_id), self._sessions._compute():
                    frame_index, object_ids, logits = next(self._steps)
            except BaseException:  # the end (StopIteration) or a failure: either way, done
                self._finish()
                raise
            masks = _frame_masks(frame_index, object_ids, logits)
            session.last_used = self._sessions._clock()
            self._sessions.frames_propagated += 1
            if self._closing:
                self._finish()
            return masks

    def close(self) -> None:
        """Stop: release the session now, or, while a frame is being computed, as that
        step ends (never blocks: the server calls this on its event loop)."""
        self._closing = True
        self._release_if_idle()
        # Not idle: the step running now sees `_closing` as it ends (`__next__`'s check
        # comes after its lock is released, so one of the two always sees the other).

    def _release_if_idle(self) -> None:
        if self._step_lock.acquire(blocking=False):
            try:
                self._finish()
            finally:
                self._step_lock.release()

    def _finish(self) -> None:
        """Release the session, once (called with the step lock held)."""
        if self._released:
            return
        self._released = True
        with contextlib.suppress(Exception):
            self._steps.close()
        session = self._session
        if not session.closed:
            session.nbytes = _state_bytes(session)
        session.last_used = self._sessions._clock()
        session.lock.release()

    def __del__(self) -> None:
        self.close()


def _frames(clip: Clip, cancelled: Callable[[], bool] | None) -> Iterator[Image.Image]:
    for image in clip.frames:
        if cancelled is not None and cancelled():
            raise Cancelled()
        yield image


def _frame_masks(frame_index: int, object_ids: Sequence[int], logits: torch.Tensor) -> FrameMasks:
    """The library's video-resolution logits (objects x 1 x H x W) → binary masks (> 0)."""
    masks = (logits[:, 0] > 0.0).cpu().numpy()
    return FrameMasks(int(frame_index), tuple(int(i) for i in object_ids), masks)


def _check_frame(index: int, frames: int, name: str) -> None:
    if not 0 <= index < frames:
        raise bad_request(f"{name}: {index} is not a frame of this video (0 to {frames - 1}).")


def _is_prompt_error(message: str) -> bool:
    """The library's messages about the caller's input (not about its own bugs)."""
    return any(
        phrase in message
        for phrase in (
            "points and labels must be provided together",
            "at least one of points or box",
            "cannot add box without clearing old points",
            "No input points or masks are provided",
            # transformers' (the EdgeTAM family's video processor)
            "at least one of points, boxes, or masks",
        )
    )


def _memory_full() -> ServiceError:
    return ServiceError(
        ErrorKind.UNAVAILABLE,
        "video: the open sessions hold the server's video memory (VIDEO_MEMORY_BYTES); "
        "close a session or retry later.",
        retry_after_s=30,
    )


def _unknown_video(video_id: str) -> ServiceError:
    shown = video_id if len(video_id) <= 64 else video_id[:64] + "..."
    return ServiceError(
        ErrorKind.NOT_FOUND,
        f"No video session {shown}: it was closed, expired, or never existed; upload again.",
    )


def _unknown_object(video_id: str, object_id: int, known: Sequence[int]) -> ServiceError:
    return ServiceError(
        ErrorKind.NOT_FOUND, f"video {video_id} has no object {object_id} (objects: {list(known)})."
    )


def _new_id() -> str:
    return secrets.token_hex(16)


def _state_bytes(session: _Session) -> int:
    """Frames plus every tensor the state holds, each storage counted once."""
    total = session.frames.nbytes
    if session.state is None:
        return total
    seen: set[int] = set()

    def walk(value: Any) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            key = storage.data_ptr()
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    for key, value in session.state.items():
        if key != "images":
            walk(value)
    return total


def _output_bytes(state: Mapping[str, Any]) -> int:
    """What one object's output on one frame holds (the library's compact output)."""
    for per_obj in (
        *state["output_dict_per_obj"].values(),
        *state["temp_output_dict_per_obj"].values(),
    ):
        for outputs in per_obj.values():
            for out in outputs.values():
                return (
                    sum(
                        t.numel() * t.element_size()
                        for t in (out.get("maskmem_features"), out.get("pred_masks"))
                        if isinstance(t, torch.Tensor)
                    )
                    + 4096
                )
    return 2 * MIB  # no output yet: a generous guess (hiera-large: ~1.3 MB)


def _default_video_bytes() -> int:
    return min(8 * GIB, machine_memory_bytes() // 4)


__all__ = ["VideoSessions"]
