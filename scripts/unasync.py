#!/usr/bin/env python3
"""Write the sync client (`client/_sync.py`) from the async one (`client/_async.py`).

Both clients drive the same sans-IO flows (`client/_core.py`); what is left,
the methods that send the calls and decode the answers, is one text in two
colours. As httpcore does with its unasync script, the async text is the
source and the sync one is derived by replacing tokens (`RULES`), so the two
cannot drift apart.

Each file has a preamble of its own, down to its first line starting with
`# -- unasync`: imports and the few helpers in which the clients really differ
(`_offload`, `_opening`, `_ClosedWhenCollected`), defined under the same names
in both. Only what follows that line is generated; the result is formatted
with ruff, so `ruff format --check` and this script agree.

    python scripts/unasync.py          # rewrite _sync.py
    python scripts/unasync.py --check  # exit 1, with a diff, when it is stale (make lint)
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "src" / "sam2_server" / "client"
SOURCE = CLIENT / "_async.py"
TARGET = CLIENT / "_sync.py"
MARKER = "# -- unasync"

# (pattern, replacement), applied in order to the text below the marker, docstrings
# included (so they must read right in both clients).
RULES: tuple[tuple[str, str], ...] = (
    # the language
    (r"\basync def\b", "def"),
    (r"\basync for\b", "for"),
    (r"\basync with\b", "with"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\b__anext__\b", "__next__"),
    (r"\banext\b", "next"),
    (r"\bStopAsyncIteration\b", "StopIteration"),
    (r"\bAsyncIterator\b", "Iterator"),
    # httpx (httpx.AsyncClient becomes httpx.Client by the client's own rule below)
    (r"\baclose\b", "close"),
    (r"\baread\b", "read"),
    (r"\baiter_lines\b", "iter_lines"),
    # this package
    (r"\bAsyncClient\b", "Client"),
    (r"\bAsyncVideoSession\b", "VideoSession"),
    (r"\bAsyncPropagation\b", "Propagation"),
    (r"\b_AsyncClosing\b", "_Closing"),
    # `open_video`'s answer: the sync client opens the session at once (see `_opening`).
    (r"\b_AsyncOpening\b", "VideoSession"),
)

# A name left in the generated code (not in its strings or comments) that looks async
# means a rule is missing.
_ASYNC_NAME = re.compile(
    r"^(async|await|a(close|read|iter\w*|next)|__a(enter|exit|next|iter)__)$|Async[A-Z]"
)


def unasync(text: str) -> str:
    """The async text as sync: every rule, in order."""
    for pattern, replacement in RULES:
        text = re.sub(pattern, replacement, text)
    return text


def split(path: Path) -> tuple[str, str]:
    """A file's preamble (up to and including its marker line) and what follows."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith(MARKER):
            return "".join(lines[: index + 1]), "".join(lines[index + 1 :])
    raise SystemExit(f"{path.relative_to(ROOT)}: no line starting with {MARKER!r}")


def async_names(code: str) -> list[str]:
    """Names in `code` that no rule turned sync, as `line: name`."""
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    return [
        f"{token.start[0]}: {token.string}"
        for token in tokens
        if token.type == tokenize.NAME and _ASYNC_NAME.search(token.string)
    ]


def ruff_format(text: str) -> str:
    """`text` as `ruff format` writes _sync.py, with the project's settings."""
    if importlib.util.find_spec("ruff") is not None:
        command = [sys.executable, "-m", "ruff"]
    elif shutil.which("ruff"):
        command = ["ruff"]
    else:
        raise SystemExit("unasync: ruff is needed to format _sync.py (pip install ruff)")
    done = subprocess.run(
        [*command, "format", "--stdin-filename", str(TARGET), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"unasync: ruff format failed:\n{done.stderr}")
    return done.stdout


def generate() -> str:
    """What _sync.py should hold: its own preamble, then _async.py's body made sync."""
    preamble, _ = split(TARGET)
    _, body = split(SOURCE)
    sync_body = unasync(body)
    leftovers = async_names(sync_body)
    if leftovers:
        lines = "\n  ".join(leftovers)
        raise SystemExit(f"unasync: no rule for these names (lines of the body):\n  {lines}")
    return ruff_format(preamble + sync_body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if _sync.py is stale"
    )
    args = parser.parse_args(argv)
    expected = generate()
    current = TARGET.read_text()
    name = str(TARGET.relative_to(ROOT))
    if args.check:
        if current == expected:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            f"{name} (as it is)",
            f"{name} (as generated)",
        )
        sys.stdout.writelines(diff)
        print(f"{name} is stale: run `python scripts/unasync.py`", file=sys.stderr)
        return 1
    if current != expected:
        TARGET.write_text(expected)
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
