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
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sam2_server.cli import target
from sam2_server.cli.common import (
    Subcommands,
    UsageError,
    add_command,
    as_model_saw_it,
    make_output,
    parse_label,
    parse_numbers,
    read_image,
    reason,
    run_command,
    service_errors,
    writing_to,
)
from sam2_server.cli.overlay import overlay

COMMAND = "predict"
# Its line in `sam2-server --help`.
SUMMARY = "segment one image: in this process, or on a server with --url"
LOW_RES = 256


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


def add_parser(commands: Subcommands) -> argparse.ArgumentParser:
    """Add `predict` to the `sam2-server` subcommands."""
    parser = add_command(commands, COMMAND, SUMMARY, __doc__)
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
    target.add_arguments(parser)
    return parser


def parse_point(text: str) -> tuple[float, float, int]:
    """`X,Y` or `X,Y:LABEL` (label 1 foreground, 0 background)."""
    coords, _, label = text.partition(":")
    x, y = parse_numbers(coords, 2, "X,Y[:LABEL]", text)
    return x, y, parse_label(label, text)


def parse_box(text: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = parse_numbers(text, 4, "X0,Y0,X1,Y1", text)
    return x0, y0, x1, y1


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


# -- running -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """The `predict` command; returns the exit status."""
    return run_command(COMMAND, _run, args)


def _run(args: argparse.Namespace) -> int:
    request, image_bytes = _check(args)
    if args.url:
        answer = predict_remote(
            args.url, target.token(args), image_bytes, request, args.model_id, args.timeout
        )
    else:
        answer = predict_local(image_bytes, request, args.model_id, args.model_config, args.device)
    for path, score in write_outputs(Path(args.output), image_bytes, answer):
        print(path, score)  # a float32 prints as its shortest exact text
    return 0


def _check(args: argparse.Namespace) -> tuple[Request, bytes]:
    """Everything the user can get wrong, before any model or network work."""
    target.check(args)
    if len(args.box) > 1 and args.point:
        raise UsageError(
            "--point cannot be combined with several --box (each box is its own object); "
            "give one box, or no points"
        )
    image_bytes = read_image(args.image)
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

    with target.remote_errors(url), Client(url, token, timeout=timeout) as client:
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
    from sam2_server.prompts import PromptLimits, build_prompt  # no torch there

    settings = target.local_settings(model_id, model_config, device)
    with service_errors():
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
    engine = target.load_engine(settings)
    with service_errors():
        prediction = engine.segment(settings.default_model_id, image_bytes, prompt)
    return Answer(prediction.masks > 0, prediction.scores, prediction.logits)


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
    with writing_to(output):
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
    return written
