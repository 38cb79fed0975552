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
import itertools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

import numpy as np
from PIL import Image

from sam2_server.cli import target
from sam2_server.cli.common import (
    Subcommands,
    add_command,
    as_model_saw_it,
    counted,
    make_output,
    progress_bar,
    read_image,
    run_command,
    service_errors,
    writing_to,
)
from sam2_server.cli.overlay import distinct_colours, overlay
from sam2_server.domain import AUTOMATIC_PARAM_NAMES, AutomaticParams, Work
from sam2_server.prompts import automatic_batches, check_automatic

if TYPE_CHECKING:
    from sam2_server.client import AutomaticMask

COMMAND = "automatic"
# Its line in `sam2-server --help`.
SUMMARY = "every mask of an image (SAM2AutomaticMaskGenerator): in this process, or --url"
_DEFAULTS = AutomaticParams()
# A parameter that is on by default gets a flag that turns it off, named for what the
# user then gets (the others are `--<parameter>`): its flag and help.
_OFF_FLAGS = {
    "multimask_output": ("--single", "one mask per grid point instead of three candidates")
}

_Number = TypeVar("_Number", int, float)


# -- arguments -----------------------------------------------------------------------------


def _number(kind: Callable[[str], _Number]) -> Callable[[str], _Number]:
    """An argparse type: a finite `kind`. Ranges are checked with the server's own rules
    (`prompts.check_automatic`) once all the parameters are known."""

    def parse(text: str) -> _Number:
        try:
            value: _Number | None = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _flag_help(text: str) -> str:
    """A parameter's help in the domain (a sentence) as argparse help: lower case first,
    no final full stop, since the default may follow."""
    text = text.rstrip(".")
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def add_parser(commands: Subcommands) -> argparse.ArgumentParser:
    """Add `automatic` to the `sam2-server` subcommands."""
    parser = add_command(commands, COMMAND, SUMMARY, __doc__)
    parser.add_argument("image", help="the image file")
    generator = parser.add_argument_group("generator parameters (default: the library's)")
    # One flag per field of domain.AutomaticParams, with its help: the API's schema and
    # the client's names come from the same fields.
    kinds = get_type_hints(AutomaticParams)
    for param in fields(AutomaticParams):
        name, kind, default = param.name, kinds[param.name], getattr(_DEFAULTS, param.name)
        if kind is bool and default:
            flag, help_text = _OFF_FLAGS[name]
            generator.add_argument(
                flag, dest=name, action="store_false", default=None, help=help_text
            )
            continue
        flag, help_text = "--" + name.replace("_", "-"), _flag_help(param.metadata["help"])
        if kind is bool:
            generator.add_argument(
                flag, dest=name, action="store_true", default=None, help=help_text
            )
        else:
            generator.add_argument(
                flag,
                dest=name,
                type=_number(kind),
                metavar="N" if kind is int else "X",
                help=f"{help_text} (default {default:g})",
            )
    target.add_arguments(parser, url_help="a sam2-server to ask instead")
    return parser


def generator_options(args: argparse.Namespace) -> dict[str, Any]:
    """The generator parameters given on the command line (the others: library defaults)."""
    options = {
        name: getattr(args, name)
        for name in AUTOMATIC_PARAM_NAMES
        if getattr(args, name) is not None
    }
    with service_errors():
        check_automatic(AutomaticParams(**options))
    return options


# -- running -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """The `automatic` command; returns the exit status."""
    return run_command(COMMAND, _run, args)


def _run(args: argparse.Namespace) -> int:
    target.check(args)
    options = generator_options(args)
    image_bytes = read_image(args.image)
    output = make_output(args.output)
    if args.url:
        masks = automatic_remote(
            args.url, target.token(args), image_bytes, options, args.model_id, args.timeout
        )
    else:
        masks = automatic_local(image_bytes, options, args.model_id, args.model_config, args.device)
    files = write_outputs(output, args.image, image_bytes, masks, options)
    shown = f"{files[0]} ... {files[-1]}, " if len(files) > 1 else "".join(f + ", " for f in files)
    hint = "" if files else "; lower --pred-iou-thresh or --stability-score-thresh to keep more"
    print(f"{counted(len(files), 'mask')} -> {output} ({shown}overlay.png, masks.json){hint}")
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
        target.remote_errors(url),
        Client(url, token, timeout=timeout) as client,
        progress_bar(f"generating masks on {url}", "batch") as progress,
    ):
        # On a terminal, the answer streams as NDJSON: a line per batch of grid points.
        return client.automatic_masks(image_bytes, model_id=model_id, progress=progress, **options)


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
    from sam2_server.domain import MASK_RECORD_FIELDS

    settings = target.local_settings(model_id, model_config, device)
    engine = target.load_engine(settings)
    model = settings.default_model_id
    params = AutomaticParams(**options)
    for warning in engine.automatic_warnings(params):
        print(f"sam2-server {COMMAND}: warning: {warning}", file=sys.stderr)
    with service_errors(), progress_bar("generating masks", "batch") as progress:
        image = engine.add_image(model, image_bytes)
        total, done = automatic_batches(params), itertools.count(1)
        batch_done = None if progress is None else lambda _points: progress(next(done), total)
        work = Work(progress=batch_done)
        _, records = engine.automatic_masks(model, image.image_id, params, work)
    masks = []
    for record in records:  # the library's record, field for field, the segmentation decoded
        values = {name: getattr(record, name) for name in MASK_RECORD_FIELDS}
        values["segmentation"] = rle_to_mask(record.segmentation)
        masks.append(AutomaticMask(**values))
    return masks


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
    with writing_to(output):
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
    return files
