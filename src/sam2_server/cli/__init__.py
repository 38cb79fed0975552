"""`sam2-server serve`, `download`, and the clients `predict`, `automatic` and `track`
(predict.py, automatic.py, track.py).

Flags override the environment (`MODEL_ID`, `AUTH_TOKEN`, `PORT`, ... as in
Livepeer's runner), which overrides the defaults; `config.Settings` holds the
result. A bad setting is one line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from sam2_server import __version__
from sam2_server.cli import automatic, download, predict, serve, track
from sam2_server.cli.common import Subcommands


class _Command(Protocol):
    """What each command's module provides."""

    COMMAND: str

    def add_parser(self, commands: Subcommands) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


# In the order `sam2-server --help` lists them.
_COMMANDS: tuple[_Command, ...] = (serve, download, predict, automatic, track)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam2-server", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sam2-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `sam2-server` entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    command = next(command for command in _COMMANDS if args.command == command.COMMAND)
    return command.run(args)
