"""The HTTP server process: the app on uvicorn, with a bounded drain on shutdown.

`sam2-server serve` parses its flags into `Settings` and calls `serve`; this is
the one place that builds the app (`sam2_server.api`) around an `Engine` and
runs it, so the command line never imports the HTTP layer itself.
"""

from __future__ import annotations

import logging
import os
import threading
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import uvicorn

from sam2_server.config import configure_logging

if TYPE_CHECKING:
    from sam2_server.config import Settings

logger = logging.getLogger("sam2_server")


def serve(settings: Settings) -> NoReturn:
    """Serve until SIGTERM/SIGINT, then end the process at once with the exit status
    (0, or 1 after --exit-on-load-error). Raises `ConfigError` before serving when the
    engine refuses a setting (a device that is not there)."""
    from sam2_server.api import create_app  # no torch there

    configure_logging(settings)
    limit_malloc_arenas()
    from sam2_server.engine import Engine

    engine = Engine(settings)
    if settings.auth_token is None:
        logger.warning(
            "auth is off: AUTH_TOKEN is not set, so anyone who can reach port %d can use "
            "this server",
            settings.port,
        )
    config = uvicorn.Config(
        create_app(settings, engine),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # sam2_server.access logs one structured line per request
        # uvicorn annotates an int; it hands the value to asyncio.timeout, which takes a float.
        timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]
    )
    server = DrainingServer(config, drain_timeout_s=settings.drain_timeout_s)
    if settings.exit_on_load_error:
        engine.on_load_error = server.fail
    server.run()
    # Worker threads may still be computing for requests the drain gave up on;
    # they must not keep the process alive (asyncio would join them).
    logging.shutdown()
    os._exit(server.exit_code)


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
