"""`sam2-server download`: fetch a model's weights ahead of time, so that a server
(or a container image being built) starts without reaching the Hugging Face Hub.

Prints the checkpoint's path; a failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import sys

from sam2_server.cli.common import Subcommands

COMMAND = "download"


def add_parser(commands: Subcommands) -> argparse.ArgumentParser:
    """Add `download` to the `sam2-server` subcommands."""
    parser = commands.add_parser(
        COMMAND, help="fetch a model's weights into the Hugging Face cache"
    )
    parser.add_argument("model_id", help="e.g. facebook/sam2.1-hiera-large")
    return parser


def run(args: argparse.Namespace) -> int:
    """The `download` command; returns the exit status."""
    from sam2_server.engine.models import ModelLoadError, download

    try:
        path = download(args.model_id)
    except ModelLoadError as exc:
        print(f"sam2-server: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
