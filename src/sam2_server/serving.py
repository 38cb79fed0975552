"""The HTTP server process: uvicorn with a bounded drain on shutdown."""

from __future__ import annotations

import logging
import os
import threading
from types import FrameType

import uvicorn

logger = logging.getLogger("sam2_server")


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a bounded drain and a second signal that means now.

    On the first SIGTERM/SIGINT uvicorn stops accepting and waits for requests
    in flight, for at most DRAIN_TIMEOUT (`timeout_graceful_shutdown`). Work
    running in threads cannot be cancelled, so a watchdog ends the process
    shortly after the deadline whatever is still running; a second signal
    ends it at once.
    """

    def __init__(self, config: uvicorn.Config, *, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.drain_timeout_s = drain_timeout_s
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            logger.warning("second signal: exiting now")
            logging.shutdown()
            os._exit(128 + sig)
        logger.info(
            "signal %d: draining requests in flight (up to %g s)", sig, self.drain_timeout_s
        )
        self._start_watchdog()
        super().handle_exit(sig, frame)

    def fail(self, model_id: str, message: str) -> None:
        """--exit-on-load-error: a model failed to load, so stop with status 1."""
        logger.error("exiting because model %s failed to load (--exit-on-load-error)", model_id)
        self.exit_code = 1
        self.should_exit = True
        self._start_watchdog()

    def _start_watchdog(self) -> None:
        def expire() -> None:
            logger.error("drain deadline passed with work still running: exiting")
            logging.shutdown()
            os._exit(self.exit_code or 1)

        timer = threading.Timer(self.drain_timeout_s + 2.0, expire)
        timer.daemon = True
        timer.start()


_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas, as MALLOC_ARENA_MAX does, unless the operator set it.

    Every worker thread that allocates gets its own arena by default (up to 8
    per core), and large answers leave each of them fragmented: under the load
    test the server's RSS settled near 2 GB for a 30 MB model; with two arenas
    it peaked at 1.5 GB at the same latency. Not glibc (musl, macOS): nothing
    to do.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass
