"""`sam2-server predict`: segment one image from the command line, write PNGs.

Two ways to the same answer: without `--url` the model runs in this process
(the server's own `Engine`, so the masks are exactly the server's); with
`--url` a running server computes them through `sam2_server.client`, and
torch is never imported (the client works against a plain Livepeer runner
too).

Output, in `--output DIR`:
- `mask-0.png`, `mask-1.png`, ...: the candidates, best first, grayscale, 255
  inside. With several `--box`, one set per object:
  `mask-<object>-<candidate>.png` (`mask-0-0.png` is the first box's best).
- `overlay.png`: the image with each object's best mask tinted and outlined.
- `logits.npy`: the low-res logits (C x 256 x 256, or B x C x 256 x 256),
  whose first candidate `--mask-input DIR/logits.npy` feeds back in.
Each mask's file and score is printed, one line each, best first.

Every anticipated failure (a bad argument, an unreadable file, a model that
does not load, an error from the server) is one line on stderr and exit
status 2, never a traceback: arguments are checked before the model loads.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from sam2_server.config import Settings
    from sam2_server.engine import Engine

LOW_RES = 256
# Object colours for the overlay (the first is the SAM2 demo's blue).
PALETTE = (
    (30, 144, 255),
    (255, 64, 64),
    (50, 205, 50),
    (255, 200, 0),
    (186, 85, 211),
    (0, 206, 209),
    (255, 140, 0),
    (255, 105, 180),
)
FILL_ALPHA = 0.45


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


@dataclass(frozen=True)
class Request:
    """The prompt as the command line gave it, in pixels of the image."""

    points: list[tuple[float, float]]
    labels: list[int]
    boxes: list[tuple[float, float, float, float]]
    mask_input: np.ndarray | None  # 1 x 256 x 256 float32
    multimask_output: bool

    @property
    def box(self) -> list[float] | list[list[float]] | None:
        """One box as [x0, y0, x1, y1], several as B x 4 (one object each)."""
        if not self.boxes:
            return None
        if len(self.boxes) == 1:
            return list(self.boxes[0])
        return [list(b) for b in self.boxes]


@dataclass(frozen=True)
class Answer:
    masks: np.ndarray  # bool C x H x W, or B x C x H x W
    scores: np.ndarray  # C, or B x C
    logits: np.ndarray  # C x 256 x 256, or B x C x 256 x 256


# -- arguments -----------------------------------------------------------------------------


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add `predict` to the `sam2-server` subcommands (`commands` is add_subparsers' action)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "predict",
        help="segment one image: in this process, or on a server with --url",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", help="the image file")
    parser.add_argument(
        "--point",
        action="append",
        type=parse_point,
        default=[],
        metavar="X,Y[:LABEL]",
        help="a point in pixels; LABEL 1 (default) foreground, 0 background; repeatable",
    )
    parser.add_argument(
        "--box",
        action="append",
        type=parse_box,
        default=[],
        metavar="X0,Y0,X1,Y1",
        help="a box in pixels; several boxes segment several objects "
        "(files mask-<object>-<candidate>.png)",
    )
    parser.add_argument(
        "--mask-input",
        metavar="FILE",
        help="low-res logits from an earlier answer: .npy (256x256, 1x256x256, or "
        "Cx256x256 such as logits.npy, whose first is used) or JSON (a nested list, e.g. "
        "one of the Livepeer route's logits)",
    )
    parser.add_argument(
        "--single", action="store_true", help="one mask instead of three candidates"
    )
    add_target_arguments(parser, "predict")
    return parser


def add_target_arguments(
    parser: argparse.ArgumentParser,
    command: str,
    url_help: str = "a sam2-server (or Livepeer runner) to ask instead",
) -> None:
    """Where the model runs (in-process, or --url), and --output: every command that
    computes masks takes these, and reports a bad argument as one line."""
    parser.add_argument(
        "--model-id", help="model to use (env MODEL_ID; on a server, its default when omitted)"
    )
    parser.add_argument(
        "--model-config",
        help="SAM2 config for a local checkpoint, in-process only (env MODEL_CONFIG)",
    )
    parser.add_argument("--device", help="torch device, in-process only (env DEVICE)")
    parser.add_argument("--url", help=url_help)
    parser.add_argument("--token", help="bearer token for --url (default: env AUTH_TOKEN)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for --url (default 300)"
    )
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="where to write")

    def one_line_error(message: str) -> NoReturn:
        # argparse prints the usage block too; the contract of this command is one line.
        parser.exit(2, f"sam2-server {command}: {message} (see --help)\n")

    parser.error = one_line_error  # type: ignore[method-assign]


def parse_point(text: str) -> tuple[float, float, int]:
    """`X,Y` or `X,Y:LABEL` (label 1 foreground, 0 background)."""
    coords, _, label = text.partition(":")
    values = parse_numbers(coords, 2, "X,Y[:LABEL]", text)
    if label.strip() not in ("", "0", "1"):
        raise argparse.ArgumentTypeError(
            f"the label must be 1 (foreground) or 0 (background), got {text!r}"
        )
    return values[0], values[1], int(label.strip() or "1")


def parse_box(text: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = parse_numbers(text, 4, "X0,Y0,X1,Y1", text)
    return x0, y0, x1, y1


def parse_numbers(text: str, count: int, syntax: str, given: str) -> list[float]:
    """`count` finite numbers separated by commas, else an argparse error quoting `given`."""
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != count or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"expected {syntax} (finite numbers), got {given!r}")
    return values


def load_mask_input(path: str) -> np.ndarray:
    """An earlier answer's low-res logits as 1 x 256 x 256 float32, from .npy or JSON."""
    try:
        if path.lower().endswith(".npy"):
            data: Any = np.load(path, allow_pickle=False)
        else:
            with open(path, "rb") as file:
                data = _json_logits(json.load(file))
        array = np.asarray(data, dtype=np.float32)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"cannot read --mask-input {path}: {reason(exc)}") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (LOW_RES, LOW_RES) or array.shape[0] == 0:
        raise UsageError(
            f"--mask-input {path} must hold 256x256 low-res logits (256x256, 1x256x256, or "
            f"Cx256x256 whose first is used); got shape {'x'.join(map(str, array.shape))}"
        )
    if not np.isfinite(array).all():
        raise UsageError(f"--mask-input {path} holds NaN or infinite values")
    return np.ascontiguousarray(array[:1])


def _json_logits(data: Any) -> Any:
    """A nested list; or an answer: the Livepeer route's (`logits` a JSON string) or the
    native API's (`logits` a packed array), or a packed array alone."""
    if isinstance(data, dict) and "logits" in data:
        data = data["logits"]
        if isinstance(data, str):
            data = json.loads(data)
    if isinstance(data, dict):
        from sam2_server.client import unpack

        return unpack(data)
    return data


def reason(exc: BaseException) -> str:
    """An OSError's plain words ("No such file or directory"), else the message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# -- running -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """The `predict` command; returns the exit status."""
    try:
        return _run(args)
    except UsageError as exc:
        print(f"sam2-server predict: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    request, image_bytes = _check(args)
    if args.url:
        answer = predict_remote(
            args.url, token_of(args), image_bytes, request, args.model_id, args.timeout
        )
    else:
        answer = predict_local(image_bytes, request, args.model_id, args.model_config, args.device)
    for path, score in write_outputs(Path(args.output), image_bytes, answer):
        print(path, score)  # a float32 prints as its shortest exact text
    return 0


def _check(args: argparse.Namespace) -> tuple[Request, bytes]:
    """Everything the user can get wrong, before any model or network work."""
    check_target(args)
    if len(args.box) > 1 and args.point:
        raise UsageError(
            "--point cannot be combined with several --box (each box is its own object); "
            "give one box, or no points"
        )
    try:
        image_bytes = Path(args.image).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read image {args.image}: {reason(exc)}") from None
    mask_input = load_mask_input(args.mask_input) if args.mask_input else None
    make_output(args.output)
    request = Request(
        points=[(x, y) for x, y, _ in args.point],
        labels=[label for _, _, label in args.point],
        boxes=list(args.box),
        mask_input=mask_input,
        multimask_output=not args.single,
    )
    return request, image_bytes


def check_target(args: argparse.Namespace) -> None:
    """The flags of `add_target_arguments` that contradict each other."""
    if not args.url:
        if args.token is not None:
            raise UsageError("--token needs --url (it is the server's bearer token)")
    else:
        for flag, value in (("--model-config", args.model_config), ("--device", args.device)):
            if value is not None:
                raise UsageError(f"{flag} applies in-process only; the server at --url has its own")


def token_of(args: argparse.Namespace) -> str | None:
    """--token, else AUTH_TOKEN (unset or empty: none)."""
    token = args.token if args.token is not None else os.environ.get("AUTH_TOKEN")
    return token or None


def make_output(folder: str | os.PathLike[str]) -> Path:
    output = Path(folder)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --output {output}: {reason(exc)}") from None
    return output


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """The client's failures as one line each: the server's answer, a bad URL, no server."""
    import httpx

    from sam2_server.client import Sam2Error

    try:
        yield
    except Sam2Error as exc:
        raise UsageError(f"the server answered {exc}") from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise UsageError(f"bad --url {url}: {exc}") from None
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot talk to {url}: {reason(exc)}") from None


def predict_remote(
    url: str,
    token: str | None,
    image_bytes: bytes,
    request: Request,
    model_id: str | None,
    timeout: float,
) -> Answer:
    """Ask a server through the client (no torch here)."""
    from sam2_server.client import Client

    with remote_errors(url), Client(url, token, timeout=timeout) as client:
        result = client.segment(
            image_bytes,
            points=request.points or None,
            labels=request.labels or None,
            box=request.box,
            mask_input=request.mask_input,
            multimask_output=request.multimask_output,
            model_id=model_id,
        )
    return Answer(result.masks, result.scores, result.logits)


def predict_local(
    image_bytes: bytes,
    request: Request,
    model_id: str | None,
    model_config: str | None,
    device: str | None,
) -> Answer:
    """Run the server's engine in this process on one model, as the server would."""
    from sam2_server.errors import ServiceError
    from sam2_server.prompts import PromptLimits, build_prompt  # no torch there

    settings = local_settings(model_id, model_config, device)
    try:
        prompt = build_prompt(
            point_coords=json.dumps(request.points) if request.points else None,
            point_labels=json.dumps(request.labels) if request.points else None,
            box=json.dumps(request.box) if request.boxes else None,
            mask_input=(
                json.dumps(request.mask_input.tolist()) if request.mask_input is not None else None
            ),
            multimask_output=request.multimask_output,
            return_logits=False,
            normalize_coords=True,
            limits=PromptLimits(
                max_points=settings.max_points,
                max_objects=settings.max_objects,
                max_total_points=settings.max_total_points,
            ),
        )
    except ServiceError as exc:
        raise UsageError(exc.message) from None
    engine = load_engine(settings)
    with engine_errors():
        prediction = engine.segment(settings.default_model_id, image_bytes, prompt)
    return Answer(prediction.masks > 0, prediction.scores, prediction.logits)


def local_settings(model_id: str | None, model_config: str | None, device: str | None) -> Settings:
    """The server's settings from the environment, for one model in this process."""
    from sam2_server.config import Settings

    # AUTH_TOKEN is the server's business, not this process's (an empty one is refused).
    environment = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    try:
        settings = Settings.from_env(environment)
    except SystemExit as exc:  # config.py's one-line refusals of a bad environment
        raise UsageError(str(exc.code)) from None
    # One model, one image: no batching thread, nothing else loaded.
    return settings.with_(
        model_ids=(model_id or settings.default_model_id,),
        model_config=model_config,
        device=device,
        encode_batch_size=1,
    )


def load_engine(settings: Settings) -> Engine:
    """The server's engine with its default model loaded, a spinner meanwhile."""
    from sam2_server.errors import ConfigError

    # The engine logs for an operator (loads, failures); here one line on stderr says it.
    logging.getLogger("sam2_server").addHandler(logging.NullHandler())
    with spinner(f"loading {settings.default_model_id}"), warnings.catch_warnings():
        # sam2's own use of torch.jit.script: nothing the user can act on.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        from sam2_server.engine import Engine
        from sam2_server.engine.models import ModelLoadError

        try:
            engine = Engine(settings)
            engine.load()
        except (ConfigError, ModelLoadError) as exc:
            raise UsageError(str(exc)) from None
    return engine


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """The engine's answers to a bad request (the server's 4xx and 5xx) as one line."""
    from sam2_server.errors import ServiceError

    try:
        yield
    except ServiceError as exc:
        raise UsageError(exc.message) from None


@contextlib.contextmanager
def spinner(description: str) -> Iterator[None]:
    """An indeterminate progress line on stderr (a terminal only) while a single call runs."""
    from tqdm import tqdm

    bar = tqdm(
        desc=f"| {description}",
        bar_format="{desc} {elapsed}",
        file=sys.stderr,
        disable=None,
        leave=False,
    )
    stop = threading.Event()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            if stop.wait(0.1):
                return
            bar.set_description_str(f"{frame} {description}")

    thread = threading.Thread(target=spin, name="predict-spinner", daemon=True)
    if not bar.disable:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        bar.close()


# -- output --------------------------------------------------------------------------------


def write_outputs(
    output: Path, image_bytes: bytes, answer: Answer
) -> list[tuple[Path, np.float32]]:
    """Write the mask PNGs, the overlay and the logits; (file, score) per mask, best first."""
    masks, scores = answer.masks, answer.scores
    several = masks.ndim == 4
    per_object = masks if several else masks[None]
    object_scores = scores if several else scores[None]
    written: list[tuple[Path, np.float32]] = []
    try:
        for obj, (candidates, candidate_scores) in enumerate(
            zip(per_object, object_scores, strict=True)
        ):
            for index, (mask, score) in enumerate(zip(candidates, candidate_scores, strict=True)):
                name = f"mask-{obj}-{index}.png" if several else f"mask-{index}.png"
                path = output / name
                Image.fromarray(mask.astype(np.uint8) * 255).save(path)
                written.append((path, np.float32(score)))
        image = as_model_saw_it(image_bytes)
        overlay(image, [candidates[0] for candidates in per_object]).save(output / "overlay.png")
        np.save(output / "logits.npy", answer.logits)
    except OSError as exc:
        raise UsageError(f"cannot write to {output}: {reason(exc)}") from None
    return written


def as_model_saw_it(image_bytes: bytes) -> Image.Image:
    """The pixels the model was given: 16-bit and float images scaled as the server does."""
    from sam2_server.errors import ServiceError
    from sam2_server.images import decode_image

    try:
        return decode_image(image_bytes, max_pixels=sys.maxsize)
    except ServiceError as exc:
        raise UsageError(exc.message) from None


def overlay(
    image: Image.Image,
    masks: Sequence[np.ndarray],
    colours: Sequence[tuple[int, int, int]] = PALETTE,
) -> Image.Image:
    """Each mask tinted (semi-transparent) and outlined in its own colour, in order (a
    later mask is drawn over an earlier one); colours repeat when there are more masks."""
    pixels = np.asarray(image, dtype=np.float32).copy()
    height, width = pixels.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    for index, mask in enumerate(masks):
        if mask.shape != (height, width):  # never for the server's masks; be safe for display
            mask = (
                np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height)))
                > 127
            )
        colour = np.array(colours[index % len(colours)], dtype=np.float32)
        pixels[mask] = pixels[mask] * (1 - FILL_ALPHA) + colour * FILL_ALPHA
        pixels[_outline(mask, thickness)] = colour
    return Image.fromarray(pixels.round().astype(np.uint8))


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """The mask's pixels within `thickness` of its edge (4-neighbour erosion, no scipy)."""
    inner = mask.copy()
    for _ in range(thickness):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (
            padded[1:-1, 1:-1]
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return mask & ~inner
