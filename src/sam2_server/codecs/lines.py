"""NDJSON (`application/x-ndjson`): the lines of the streamed answers, one JSON value each.

A propagation writes one line per frame (`video.py`); automatic masks with
`Accept: application/x-ndjson` write progress lines, then the answer as a
result line. Either ends with an error line when the work fails after the
first line was sent (the status is gone with the headers by then).
"""

from __future__ import annotations

from typing import Any

import orjson


def json_line(value: Any, option: int = 0) -> bytes:
    """`value` as one line (orjson never writes a newline inside a value)."""
    return orjson.dumps(value, option=option) + b"\n"


def progress_line(done: int, total: int) -> bytes:
    """`{"progress": {"done": n, "total": N}}`: n of the work's N steps are done."""
    return json_line({"progress": {"done": done, "total": total}})


def result_line(answer: bytes) -> bytes:
    """`{"result": <answer>}` around an answer already written as one JSON object."""
    return b'{"result":' + answer + b"}\n"


def error_line(status: int, message: str) -> bytes:
    """`{"error": {"status", "msg"}}`: the status and message the answer would have had."""
    return json_line({"error": {"status": status, "msg": message}})
