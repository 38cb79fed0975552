"""Where a client command's masks are computed: in this process, or on a server.

Without `--url` the server's own `Engine` runs here on one model, with the
settings the server would take from the environment, so the masks are exactly
the server's. With `--url` a running server computes them through
`sam2_server.client`, and torch is never imported. Either way a failure
becomes a `UsageError`: the server's answer, a bad URL, no server, a model
that does not load.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import warnings
from typing import TYPE_CHECKING

from sam2_server.cli.common import UsageError, one_line, reason, spinner

if TYPE_CHECKING:
    from sam2_server.config import Settings
    from sam2_server.engine import Engine


# -- arguments -----------------------------------------------------------------------------


def add_arguments(
    parser: argparse.ArgumentParser,
    url_help: str = "a sam2-server (or Livepeer runner) to ask instead",
) -> None:
    """Where the model runs (in-process, or --url), and --output: every command that
    computes masks takes these."""
    parser.add_argument(
        "--model-id", help="model to use (env MODEL_ID; on a server, its default when omitted)"
    )
    parser.add_argument(
        "--model-config",
        help="SAM2 config for a local checkpoint, in-process only (env MODEL_CONFIG)",
    )
    parser.add_argument("--device", help="torch device, in-process only (env DEVICE)")
    parser.add_argument("--url", help=url_help)
    parser.add_argument("--token", help="bearer token for --url (default: env AUTH_TOKEN)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for --url (default 300)"
    )
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="where to write")


def check(args: argparse.Namespace) -> None:
    """The flags of `add_arguments` that contradict each other."""
    if not args.url:
        if args.token is not None:
            raise UsageError("--token needs --url (it is the server's bearer token)")
    else:
        for flag, value in (("--model-config", args.model_config), ("--device", args.device)):
            if value is not None:
                raise UsageError(f"{flag} applies in-process only; the server at --url has its own")


def token(args: argparse.Namespace) -> str | None:
    """--token, else AUTH_TOKEN (unset or empty: none)."""
    token = args.token if args.token is not None else os.environ.get("AUTH_TOKEN")
    return token or None


# -- on a server ---------------------------------------------------------------------------


def remote_errors(url: str) -> contextlib.AbstractContextManager[None]:
    """The client's failures as one line each: the server's answer, a bad URL, no server."""
    import httpx

    from sam2_server.client import Sam2Error

    return one_line(
        (Sam2Error, lambda exc: f"the server answered {exc}"),
        ((httpx.InvalidURL, httpx.UnsupportedProtocol), lambda exc: f"bad --url {url}: {exc}"),
        (httpx.HTTPError, lambda exc: f"cannot talk to {url}: {reason(exc)}"),
    )


# -- in this process -----------------------------------------------------------------------


def local_settings(model_id: str | None, model_config: str | None, device: str | None) -> Settings:
    """The server's settings from the environment, for one model in this process."""
    from sam2_server.config import Settings

    # AUTH_TOKEN is the server's business, not this process's (an empty one is refused).
    environment = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    try:
        settings = Settings.from_env(environment)
    except SystemExit as exc:  # config.py's one-line refusals of a bad environment
        raise UsageError(str(exc.code)) from None
    # One model, one image: no batching thread, nothing else loaded. No time budget
    # unless asked for: it keeps one request from holding a shared server, and this
    # process serves only the person who started it.
    budget = settings.automatic_time_budget_s if "AUTOMATIC_TIME_BUDGET" in environment else None
    return settings.with_(
        model_ids=(model_id or settings.default_model_id,),
        model_config=model_config,
        device=device,
        encode_batch_size=1,
        automatic_time_budget_s=budget,
    )


def load_engine(settings: Settings) -> Engine:
    """The server's engine with its default model loaded, a spinner meanwhile."""
    from sam2_server.errors import ConfigError

    # The engine logs for an operator (loads, failures); here one line on stderr says it.
    logging.getLogger("sam2_server").addHandler(logging.NullHandler())
    with spinner(f"loading {settings.default_model_id}"), warnings.catch_warnings():
        # sam2's own use of torch.jit.script: nothing the user can act on.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        from sam2_server.engine import Engine
        from sam2_server.engine.models import ModelLoadError

        try:
            engine = Engine(settings)
            engine.load()
        except (ConfigError, ModelLoadError) as exc:
            raise UsageError(str(exc)) from None
    return engine
