"""`sam2-server automatic`: every mask SAM2's automatic generator finds on one image.

Like `predict`: without `--url` the server's own engine runs in this process
(the image is encoded once, then `SAM2AutomaticMaskGenerator` runs on the
cached embedding, exactly as the server does); with `--url` a running
sam2-server computes the masks through `sam2_server.client`, and torch is
never imported. The generator's parameters are flags named after the
library's (`--points-per-side` is `points_per_side`); those left out take
the library's defaults. Random or weak models need lower thresholds
(`--pred-iou-thresh 0 --stability-score-thresh 0`) to keep any mask.

Output, in `--output DIR`:
- `mask-000.png`, `mask-001.png`, ...: one per mask, in the generator's order,
  grayscale, 255 inside (more digits past 1000 masks).
- `overlay.png`: the image with every mask tinted and outlined in its own
  colour, largest first, so the smaller ones stay visible on top.
- `masks.json`: `{"image", "width", "height", "parameters", "masks": [...]}`,
  each mask the library's record without its segmentation (`area`, `bbox`
  XYWH, `predicted_iou`, `point_coords`, `stability_score`, `crop_box`) plus
  `file`, its PNG's name; `parameters` are every generator parameter used.
One summary line on stdout. Failures: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from sam2_server.domain import AutomaticParams
from sam2_server.errors import ServiceError
from sam2_server.predict import (
    UsageError,
    add_target_arguments,
    as_model_saw_it,
    check_target,
    engine_errors,
    load_engine,
    local_settings,
    make_output,
    overlay,
    reason,
    remote_errors,
    spinner,
    token_of,
)
from sam2_server.prompts import check_automatic

if TYPE_CHECKING:
    from sam2_server.client import AutomaticMask

COMMAND = "automatic"
_DEFAULTS = AutomaticParams()
_GOLDEN = (math.sqrt(5) - 1) / 2  # hue step: consecutive colours stay far apart


# -- arguments -----------------------------------------------------------------------------


def _number(kind: Callable[[str], Any]) -> Any:
    """An argparse type: a finite `kind`. Ranges are checked with the server's own rules
    (`prompts.check_automatic`) once all the parameters are known."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


@dataclass(frozen=True)
class _Option:
    name: str  # the library's parameter
    parse: Callable[[str], Any]
    help: str


OPTIONS = (
    _Option("points_per_side", _number(int), "grid points along each side (work ~ N^2)"),
    _Option("points_per_batch", _number(int), "points run through the model at once"),
    _Option("pred_iou_thresh", _number(float), "keep masks whose predicted IoU is above"),
    _Option("stability_score_thresh", _number(float), "keep masks at least this stable"),
    _Option("stability_score_offset", _number(float), "logit shift of the stability score"),
    _Option("mask_threshold", _number(float), "logit threshold of a mask"),
    _Option("box_nms_thresh", _number(float), "box IoU above which duplicates are dropped"),
    _Option("crop_n_layers", _number(int), "layers of image crops run again"),
    _Option("crop_nms_thresh", _number(float), "box IoU for duplicates between crops"),
    _Option("crop_overlap_ratio", _number(float), "how much crops overlap"),
    _Option(
        "crop_n_points_downscale_factor",
        _number(int),
        "crop layer n has points_per_side / factor**n points per side",
    ),
    _Option(
        "min_mask_region_area",
        _number(int),
        "fill holes and remove islands up to this area (sam2 skips it without its CUDA extension)",
    ),
)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add `automatic` to the `sam2-server` subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser(
        COMMAND,
        help="every mask of an image (SAM2AutomaticMaskGenerator): in this process, or --url",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", help="the image file")
    generator = parser.add_argument_group("generator parameters (default: the library's)")
    for option in OPTIONS:
        generator.add_argument(
            "--" + option.name.replace("_", "-"),
            dest=option.name,
            type=option.parse,
            metavar="N" if option.parse.__name__ == "int" else "X",
            help=f"{option.help} (default {getattr(_DEFAULTS, option.name):g})",
        )
    generator.add_argument(
        "--use-m2m",
        dest="use_m2m",
        action="store_true",
        default=None,
        help="refine each mask once with its own low-res logits",
    )
    generator.add_argument(
        "--single",
        dest="multimask_output",
        action="store_false",
        default=None,
        help="one mask per grid point instead of three candidates",
    )
    add_target_arguments(parser, COMMAND, url_help="a sam2-server to ask instead")
    return parser


def generator_options(args: argparse.Namespace) -> dict[str, Any]:
    """The generator parameters given on the command line (the others: library defaults)."""
    names = [option.name for option in OPTIONS] + ["use_m2m", "multimask_output"]
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        check_automatic(AutomaticParams(**options))
    except ServiceError as exc:
        raise UsageError(exc.message) from None
    return options


# -- running -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """The `automatic` command; returns the exit status."""
    try:
        return _run(args)
    except UsageError as exc:
        print(f"sam2-server {COMMAND}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    check_target(args)
    options = generator_options(args)
    try:
        image_bytes = Path(args.image).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read image {args.image}: {reason(exc)}") from None
    output = make_output(args.output)
    if args.url:
        masks = automatic_remote(
            args.url, token_of(args), image_bytes, options, args.model_id, args.timeout
        )
    else:
        masks = automatic_local(image_bytes, options, args.model_id, args.model_config, args.device)
    files = write_outputs(output, args.image, image_bytes, masks, options)
    shown = f"{files[0]} ... {files[-1]}, " if len(files) > 1 else "".join(f + ", " for f in files)
    hint = "" if files else "; lower --pred-iou-thresh or --stability-score-thresh to keep more"
    print(f"{len(files)} masks -> {output} ({shown}overlay.png, masks.json){hint}")
    return 0


def automatic_remote(
    url: str,
    token: str | None,
    image_bytes: bytes,
    options: dict[str, Any],
    model_id: str | None,
    timeout: float,
) -> list[AutomaticMask]:
    """Ask a server through the client (no torch here)."""
    from sam2_server.client import Client

    with (
        remote_errors(url),
        Client(url, token, timeout=timeout) as client,
        spinner(f"generating masks on {url}"),
    ):
        return client.automatic_masks(image_bytes, model_id=model_id, **options)


def automatic_local(
    image_bytes: bytes,
    options: dict[str, Any],
    model_id: str | None,
    model_config: str | None,
    device: str | None,
) -> list[AutomaticMask]:
    """The server's engine in this process: encode once, then the generator on the embedding."""
    from sam2_server.client import AutomaticMask
    from sam2_server.codecs.automatic import rle_to_mask

    settings = local_settings(model_id, model_config, device)
    engine = load_engine(settings)
    model = settings.default_model_id
    params = AutomaticParams(**options)
    for warning in engine.automatic_warnings(params):
        print(f"sam2-server automatic: warning: {warning}", file=sys.stderr)
    with engine_errors(), spinner("generating masks"):
        image = engine.add_image(model, image_bytes)
        _, records = engine.automatic_masks(model, image.image_id, params)
    return [
        AutomaticMask(
            segmentation=rle_to_mask(record.segmentation),
            area=record.area,
            bbox=record.bbox,
            predicted_iou=record.predicted_iou,
            point_coords=record.point_coords,
            stability_score=record.stability_score,
            crop_box=record.crop_box,
        )
        for record in records
    ]


# -- output --------------------------------------------------------------------------------


def write_outputs(
    output: Path,
    image_name: str,
    image_bytes: bytes,
    masks: list[AutomaticMask],
    options: dict[str, Any],
) -> list[str]:
    """Write the mask PNGs, the overlay and masks.json; the PNGs' names, in order."""
    image = as_model_saw_it(image_bytes)
    digits = max(3, len(str(len(masks) - 1)))
    files = [f"mask-{index:0{digits}d}.png" for index in range(len(masks))]
    records = []
    try:
        for name, mask in zip(files, masks, strict=True):
            Image.fromarray(mask.segmentation.astype(np.uint8) * 255).save(output / name)
            record = {k: v for k, v in mask.record().items() if k != "segmentation"}
            records.append({"file": name, **record})
        # Largest first: each smaller mask is drawn over the larger ones around it.
        order = sorted(range(len(masks)), key=lambda i: -masks[i].area)
        colours = distinct_colours(len(masks))
        drawn = overlay(image, [masks[i].segmentation for i in order], [colours[i] for i in order])
        drawn.save(output / "overlay.png")
        summary = {
            "image": str(image_name),
            "width": image.width,
            "height": image.height,
            "parameters": asdict(AutomaticParams(**options)),
            "masks": records,
        }
        (output / "masks.json").write_text(json.dumps(summary, indent=1) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write to {output}: {reason(exc)}") from None
    return files


def distinct_colours(count: int) -> list[tuple[int, int, int]]:
    """`count` bright colours, neighbours far apart in hue (golden-ratio steps)."""
    colours = []
    for index in range(count):
        red, green, blue = colorsys.hsv_to_rgb((index * _GOLDEN) % 1.0, 0.75, 0.95)
        colours.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colours
