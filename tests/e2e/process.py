"""Start a real `sam2-server serve` process on loopback and wait for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.conftest import LocalModel


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    port: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def metric(url: str, name: str, token: str | None = None) -> float:
    """One sample of the server's /metrics at `url` (0 before any), `name` with its labels
    as Prometheus writes them (`sam2_inflight_requests`, `sam2_requests_total{...}`)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line[len(name) + 1 :])
    return 0.0


def requests_counted(url: str, route: str, status: int, token: str | None = None) -> float:
    """The server's sam2_requests_total for `route` and `status` (0 before any)."""
    return metric(url, f'sam2_requests_total{{route="{route}",status="{status}"}}', token)


def wait_until(condition: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    """Poll `condition` every `step` seconds for up to `timeout`: whether it came true
    (a server's work ends, and is counted, a moment after the client's call returns)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    env: dict[str, str],
    *args: str,
    wait_for: str | None = "OK",
    timeout: float = 180,
    stderr: int | None = None,
) -> Server:
    """`python -m sam2_server.cli serve` with `env` over the test environment.

    With `wait_for`, returns once /health says that status; the process is
    killed if it never does.
    """
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sam2_server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            *args,
        ],
        env={**os.environ, "LOG_LEVEL": "warning", **env},
        stderr=stderr,
    )
    server = Server(f"http://127.0.0.1:{port}", process, port)
    if wait_for is None:
        return server
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert process.poll() is None, "server exited during start-up"
            try:
                status = httpx.get(server.url + "/health", timeout=2).json()["status"]
                if status == wait_for:
                    return server
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server did not reach {wait_for}"
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise


@contextmanager
def serving_local(model: LocalModel, **env: str) -> Iterator[Server]:
    """A server for a local checkpoint + config (the reduced test model), stopped after."""
    server = start_server(
        {"MODEL_ID": str(model.checkpoint), "MODEL_CONFIG": str(model.config), **env}
    )
    try:
        yield server
    finally:
        server.stop()
