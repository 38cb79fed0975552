"""Start a real `sam2-server serve` process on loopback and wait for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
