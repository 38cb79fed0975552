"""What the client commands (`predict`, `automatic`, `track`) share: their contract
with the user, and reading and writing their files.

The contract: every anticipated failure (a bad argument, an unreadable file, a
model that does not load, an error from the server) is one line on stderr,
`sam2-server COMMAND: ...`, and exit status 2, never a traceback. Arguments are
checked before any model or network work, so a typo costs nothing. Nothing here
imports torch: `--help` and `--url` must never load it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

if TYPE_CHECKING:
    from PIL import Image

# What `ArgumentParser.add_subparsers` returns: each command adds its parser to it.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

USAGE_STATUS = 2  # a problem the user can fix
INTERRUPTED_STATUS = 130  # Ctrl-C, as a shell reports SIGINT


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


# -- the command ---------------------------------------------------------------------------


def add_command(
    commands: Subcommands, command: str, summary: str, description: str | None
) -> argparse.ArgumentParser:
    """A client command's parser: `summary` in `sam2-server --help`, `description`
    (the command module's docstring) verbatim in its own --help, and a bad argument
    reported as one line."""
    parser = commands.add_parser(
        command,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def one_line_error(message: str) -> NoReturn:
        # argparse prints the usage block too; the contract of these commands is one line.
        parser.exit(USAGE_STATUS, f"sam2-server {command}: {message} (see --help)\n")

    parser.error = one_line_error  # type: ignore[method-assign]
    return parser


def run_command(
    command: str,
    body: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    *,
    catch_interrupt: bool = False,
) -> int:
    """Run `body(args)`; a UsageError becomes its one line and status 2. With
    `catch_interrupt`, Ctrl-C is one line and status 130 instead of a traceback."""
    try:
        return body(args)
    except UsageError as exc:
        print(f"sam2-server {command}: {exc}", file=sys.stderr)
        return USAGE_STATUS
    except KeyboardInterrupt:
        if not catch_interrupt:
            raise
        print(f"sam2-server {command}: interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS


Describe = Callable[[Exception], str]


@contextlib.contextmanager
def one_line(
    *cases: tuple[type[Exception] | tuple[type[Exception], ...], Describe],
) -> Iterator[None]:
    """Failures of the kinds in `cases` as a `UsageError` of one line, described by the
    first case that matches; anything else goes on as it is (a bug keeps its traceback)."""
    try:
        yield
    except Exception as exc:
        for kinds, describe in cases:
            if isinstance(exc, kinds):
                raise UsageError(describe(exc)) from None
        raise


def service_errors() -> contextlib.AbstractContextManager[None]:
    """The server's own refusals (a `ServiceError`, its 4xx and 5xx: a bad prompt or
    parameter, an image it cannot decode, what the engine refuses) as one line."""
    from sam2_server.errors import ServiceError

    return one_line((ServiceError, str))


def counted(count: int, noun: str) -> str:
    """`1 object`, `2 objects`: the count with its noun in English number."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# -- argument syntax -----------------------------------------------------------------------


def parse_numbers(text: str, count: int, syntax: str, given: str) -> list[float]:
    """`count` finite numbers separated by commas, else an argparse error quoting `given`."""
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != count or not all(map(math.isfinite, values)):
        raise argparse.ArgumentTypeError(f"expected {syntax} (finite numbers), got {given!r}")
    return values


def parse_label(text: str, given: str) -> int:
    """A point's `:LABEL`: 1 (foreground, also when left out) or 0 (background)."""
    if text.strip() not in ("", "0", "1"):
        raise argparse.ArgumentTypeError(
            f"the label must be 1 (foreground) or 0 (background), got {given!r}"
        )
    return int(text.strip() or "1")


# -- files ---------------------------------------------------------------------------------


def reason(exc: BaseException) -> str:
    """An OSError's plain words ("No such file or directory"), else the message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def read_image(path: str) -> bytes:
    """The image file's bytes, as they will be sent or decoded."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read image {path}: {reason(exc)}") from None


def make_output(folder: str | os.PathLike[str]) -> Path:
    """The --output folder, created if need be."""
    output = Path(folder)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --output {output}: {reason(exc)}") from None
    return output


def writing_to(output: Path) -> contextlib.AbstractContextManager[None]:
    """A failure to write the command's files into `output` as one line."""
    return one_line((OSError, lambda exc: f"cannot write to {output}: {reason(exc)}"))


def as_model_saw_it(image_bytes: bytes) -> Image.Image:
    """The pixels the model was given: 16-bit and float images scaled as the server does."""
    from sam2_server.images import decode_image

    with service_errors():
        return decode_image(image_bytes, max_pixels=sys.maxsize)


# -- progress ------------------------------------------------------------------------------


@contextlib.contextmanager
def spinner(description: str) -> Iterator[None]:
    """An indeterminate progress line on stderr (a terminal only) while a single call runs."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    bar = tqdm(
        desc=f"| {description}",
        bar_format="{desc} {elapsed}",
        file=sys.stderr,
        disable=None,
        leave=False,
    )
    frames = itertools.cycle("|/-\\")
    with _every(0.1, lambda: bar.set_description_str(f"{next(frames)} {description}"), bar):
        yield


@contextlib.contextmanager
def progress_bar(description: str, unit: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr for work counted in steps (`unit`s): yields
    `update(done, total)`, or None when stderr is no terminal (then nothing is shown,
    and the caller need not ask for progress at all). Until the first count, and
    between counts, the elapsed time keeps running; tqdm estimates what remains
    from the rate so far."""
    from tqdm import tqdm

    bar = tqdm(
        desc=description,
        unit=f" {unit}",
        file=sys.stderr,
        disable=None,
        leave=False,
        dynamic_ncols=True,
    )
    lock = threading.Lock()

    def update(done: int, total: int) -> None:
        with lock:
            bar.total = total
            bar.n = done
            bar.refresh()

    def tick() -> None:
        with lock:
            bar.refresh()  # the elapsed time, while a step takes long

    with _every(0.5, tick, bar):
        yield None if bar.disable else update


@contextlib.contextmanager
def _every(seconds: float, action: Callable[[], object], bar: Any) -> Iterator[None]:
    """`action()` every `seconds` in a thread while the block runs (unless the tqdm `bar`
    is disabled: no terminal), then the bar closed."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(seconds):
            action()

    thread = threading.Thread(target=run, name="cli-progress", daemon=True)
    if not bar.disable:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        bar.close()
