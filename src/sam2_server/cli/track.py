"""`sam2-server track`: follow objects through a clip with SAM2's video predictor.

VIDEO is a video file (any container FFmpeg reads) or a folder of frame
images, taken in frame order: names compared number by number, so SAM2's own
`00000.jpg, 00001.jpg, ...` folders work as they are. Prompts name a frame
(F, counted from 0) and the object they are for:

  --point F,X,Y[:LABEL]   a point on frame F, in pixels; LABEL 1 (default)
                          foreground, 0 background
  --box F,X0,Y0,X1,Y1     a box on frame F, in pixels
  --object ID             the prompts after it are for object ID (any integer
                          >= 0; before the first --object: object 1)

  sam2-server track clip.mp4 --point 0,300,200 --object 2 --box 0,500,100,800,400 -o out/

The points and box of one object on one frame are one prompt (SAM2's
`add_new_points_or_box`); an object may be prompted on several frames. Then
every object is tracked from the first prompted frame (or --start-frame) to
the end of the clip (with --reverse: to its first frame), at most
--max-frames frames past the start.

Like `predict`: without `--url` the server's engine runs in this process;
with `--url` a running sam2-server tracks through `sam2_server.client`
(a video session, closed at the end), and torch is never imported.

Output, in `--output DIR`: `frame-<F>-obj-<ID>.png` (F with 5 digits) for
every frame tracked and every object, grayscale, 255 inside; an object not
on a frame gives an all-black PNG. One line per frame on stdout as it is
computed (each object's share of the frame), then a summary. Failures: one
line on stderr, exit status 2 (130 when interrupted).
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from sam2_server.cli import target
from sam2_server.cli.common import (
    Subcommands,
    UsageError,
    add_command,
    counted,
    make_output,
    parse_label,
    parse_numbers,
    reason,
    run_command,
    service_errors,
    spinner,
    writing_to,
)

if TYPE_CHECKING:
    from sam2_server.client import VideoSession
    from sam2_server.config import Settings
    from sam2_server.domain import VideoInfo
    from sam2_server.engine import Engine

COMMAND = "track"
# Its line in `sam2-server --help`.
SUMMARY = "track objects through a video or a folder of frames: in this process, or --url"
DEFAULT_OBJECT = 1
MAX_OBJECT_ID = 2**31 - 1


@dataclass
class ObjectPrompt:
    """Everything the command line gave for one object on one frame: one SAM2 prompt."""

    object_id: int
    frame_index: int
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None


# -- arguments -----------------------------------------------------------------------------


def parse_frame_point(text: str) -> tuple[int, float, float, int]:
    """`F,X,Y` or `F,X,Y:LABEL` (label 1 foreground, 0 background)."""
    coords, _, label = text.partition(":")
    frame, x, y = parse_numbers(coords, 3, "F,X,Y[:LABEL]", text)
    return _frame(frame, text), x, y, parse_label(label, text)


def parse_frame_box(text: str) -> tuple[int, float, float, float, float]:
    """`F,X0,Y0,X1,Y1`."""
    frame, x0, y0, x1, y1 = parse_numbers(text, 5, "F,X0,Y0,X1,Y1", text)
    return _frame(frame, text), x0, y0, x1, y1


def parse_object_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_OBJECT_ID:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_OBJECT_ID}")
    return value


def _frame(value: float, given: str) -> int:
    if value < 0 or not value.is_integer():
        raise argparse.ArgumentTypeError(f"the frame F must be an integer >= 0, got {given!r}")
    return int(value)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


class _Prompted(argparse.Action):
    """Keeps every --point and --box in command-line order with the object then current."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        # A new list each time: argparse's defaults are shared between parses.
        namespace.prompts = [*namespace.prompts, (namespace.object, self.dest, values)]


def add_parser(commands: Subcommands) -> argparse.ArgumentParser:
    """Add `track` to the `sam2-server` subcommands."""
    parser = add_command(commands, COMMAND, SUMMARY, __doc__)
    parser.set_defaults(prompts=())
    parser.add_argument("video", help="a video file, or a folder of frame images")
    parser.add_argument(
        "--object",
        type=parse_object_id,
        default=DEFAULT_OBJECT,
        metavar="ID",
        help=f"the object the following prompts are for (default {DEFAULT_OBJECT})",
    )
    parser.add_argument(
        "--point",
        action=_Prompted,
        type=parse_frame_point,
        metavar="F,X,Y[:LABEL]",
        help="a point on frame F in pixels; LABEL 1 (default) foreground, 0 background",
    )
    parser.add_argument(
        "--box",
        action=_Prompted,
        type=parse_frame_box,
        metavar="F,X0,Y0,X1,Y1",
        help="a box on frame F in pixels",
    )
    parser.add_argument(
        "--start-frame",
        type=_count,
        metavar="F",
        help="where tracking starts (default: the first prompted frame)",
    )
    parser.add_argument(
        "--max-frames", type=_count, metavar="N", help="frames to track past the start"
    )
    parser.add_argument(
        "--reverse", action="store_true", help="track towards the first frame instead"
    )
    target.add_arguments(parser, url_help="a sam2-server to ask instead")
    return parser


def group_prompts(prompts: Sequence[tuple[int, str, tuple[Any, ...]]]) -> list[ObjectPrompt]:
    """One prompt per (object, frame), in the order first given."""
    grouped: dict[tuple[int, int], ObjectPrompt] = {}
    for object_id, kind, values in prompts:
        frame_index = values[0]
        prompt = grouped.setdefault((object_id, frame_index), ObjectPrompt(object_id, frame_index))
        if kind == "point":
            _, x, y, label = values
            prompt.points.append((x, y))
            prompt.labels.append(label)
        else:
            if prompt.box is not None:
                raise UsageError(
                    f"object {object_id} has two --box on frame {frame_index}; SAM2 takes "
                    "one box per object and frame (use --object for another object)"
                )
            prompt.box = tuple(values[1:])
    return list(grouped.values())


# -- the two ways to a session -------------------------------------------------------------


class Session(Protocol):
    """What tracking needs from a video session, here or on a server."""

    frames: int
    width: int
    height: int

    def prompt(self, prompt: ObjectPrompt) -> None: ...

    def propagate(
        self, start: int | None, max_frames: int | None, reverse: bool
    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]: ...


class _RemoteSession:
    def __init__(self, session: VideoSession) -> None:
        self._session = session
        self.frames, self.width, self.height = session.frames, session.width, session.height

    def prompt(self, prompt: ObjectPrompt) -> None:
        self._session.prompt(
            prompt.frame_index,
            prompt.object_id,
            points=prompt.points or None,
            labels=prompt.labels or None,
            box=prompt.box,
        )

    def propagate(
        self, start: int | None, max_frames: int | None, reverse: bool
    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        with self._session.propagate(start, max_frames, reverse) as frames:
            yield from frames


@dataclass(frozen=True)
class Source:
    """The clip: a video file, or frame images in frame order."""

    video: Path | None
    frames: list[Path]

    @classmethod
    def of(cls, path: Path) -> Source:
        """Checked before any model or network work."""
        from sam2_server.client import frame_files  # no torch there

        if path.is_dir():
            try:
                return cls(None, frame_files(path))
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read frames: {reason(exc)}") from None
        if not path.is_file():
            raise UsageError(f"cannot read {path}: no such file or folder")
        return cls(path, [])

    @property
    def description(self) -> str:
        return self.video.name if self.video is not None else counted(len(self.frames), "frame")


@contextlib.contextmanager
def remote_session(
    url: str, token: str | None, source: Source, model_id: str | None, timeout: float
) -> Iterator[Session]:
    """A session on the server through the client, closed at the end (no torch here)."""
    from sam2_server.client import Client

    with target.remote_errors(url), Client(url, token, timeout=timeout) as client:
        with spinner(f"uploading {source.description} to {url}"):
            session = client.open_video(
                video=source.video, frames=source.frames or None, model_id=model_id
            )
        with session:
            yield _RemoteSession(session)


class _LocalSession:
    def __init__(self, engine: Engine, info: VideoInfo) -> None:
        self._videos = engine.videos
        self._video_id = info.video_id
        self.frames, self.width, self.height = info.frames, info.width, info.height

    def prompt(self, prompt: ObjectPrompt) -> None:
        from sam2_server.domain import VideoPrompt

        self._videos.prompt(
            self._video_id,
            VideoPrompt(
                frame_index=prompt.frame_index,
                object_id=prompt.object_id,
                points=np.array(prompt.points, np.float32) if prompt.points else None,
                labels=np.array(prompt.labels, np.int32) if prompt.points else None,
                box=None if prompt.box is None else np.array(prompt.box, np.float32),
            ),
        )

    def propagate(
        self, start: int | None, max_frames: int | None, reverse: bool
    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        steps = self._videos.propagate(self._video_id, start, max_frames, reverse)
        try:
            for frame in steps:
                yield frame.frame_index, dict(zip(frame.object_ids, frame.masks, strict=True))
        finally:
            if isinstance(steps, Generator):  # release the session now, not when collected
                steps.close()


@contextlib.contextmanager
def local_session(settings: Settings, source: Source) -> Iterator[Session]:
    """A session on the server's engine in this process, as the server would open it."""
    engine = target.load_engine(settings)
    with (
        service_errors(),
        spinner(f"reading {source.description}"),
        contextlib.ExitStack() as files,
    ):
        try:
            video = None if source.video is None else files.enter_context(source.video.open("rb"))
            frames = [io.BytesIO(path.read_bytes()) for path in source.frames]
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {reason(exc)}") from None
        info = engine.videos.open(settings.default_model_id, video=video, frames=frames)
    with service_errors():
        try:
            yield _LocalSession(engine, info)
        finally:
            engine.videos.close(info.video_id)


# -- running -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """The `track` command; returns the exit status."""
    return run_command(COMMAND, _run, args, catch_interrupt=True)


def _run(args: argparse.Namespace) -> int:
    target.check(args)
    prompts = group_prompts(args.prompts)
    if not prompts:
        raise UsageError("give at least one --point or --box (F,... with F the frame)")
    source = Source.of(Path(args.video))
    output = make_output(args.output)
    if args.url:
        opened = remote_session(args.url, target.token(args), source, args.model_id, args.timeout)
    else:
        settings = target.local_settings(args.model_id, args.model_config, args.device)
        opened = local_session(settings, source)
    with opened as session:
        for prompt in prompts:
            session.prompt(prompt)
        start = args.start_frame
        if start is None:
            start = min(prompt.frame_index for prompt in prompts)
        total = expected_frames(session.frames, start, args.max_frames, args.reverse)
        done, objects = 0, 0
        for frame_index, masks in session.propagate(start, args.max_frames, args.reverse):
            done += 1
            objects = len(masks)
            write_frame(output, frame_index, masks)
            shares = ", ".join(
                f"obj {object_id} {100 * mask.mean():.1f}%" for object_id, mask in masks.items()
            )
            print(f"frame {frame_index} ({done}/{total}): {shares}", flush=True)
    print(
        f"tracked {counted(objects, 'object')} over {counted(done, 'frame')} -> {output} "
        f"({counted(done * objects, 'PNG')})"
    )
    return 0


def expected_frames(frames: int, start: int, max_frames: int | None, reverse: bool) -> int:
    """How many frames SAM2's propagate_in_video visits (the start included)."""
    available = start + 1 if reverse else frames - start
    return max(0, available if max_frames is None else min(available, max_frames + 1))


def frame_file(frame_index: int, object_id: int) -> str:
    return f"frame-{frame_index:05d}-obj-{object_id}.png"


def write_frame(output: Path, frame_index: int, masks: dict[int, np.ndarray]) -> None:
    with writing_to(output):
        for object_id, mask in masks.items():
            image = Image.fromarray(mask.astype(np.uint8) * 255)
            image.save(output / frame_file(frame_index, object_id))
