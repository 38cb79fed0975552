"""`sam2-server serve`: the command line of the HTTP server.

Flags override the environment, which overrides the defaults (`config.Settings`
holds the result); a bad setting is one line on stderr and exit status 2,
before anything loads. The server process itself (the app, uvicorn, the drain
on shutdown) is `sam2_server.serving`'s; `--replicas` hands over to the Ray
Serve launcher instead.
"""

from __future__ import annotations

import argparse
import sys

from sam2_server.cli.common import USAGE_STATUS, Subcommands
from sam2_server.config import Settings, configure_logging, split_model_ids
from sam2_server.errors import ConfigError

COMMAND = "serve"


def add_parser(commands: Subcommands) -> argparse.ArgumentParser:
    """Add `serve` to the `sam2-server` subcommands."""
    serve = commands.add_parser(COMMAND, help="serve POST /segment-anything-2")
    serve.add_argument("--host", help="interface to bind (env HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (env PORT, default 8000)")
    serve.add_argument(
        "--model-id",
        help="model(s) to serve, comma-separated; the first is the default "
        "(env MODEL_ID, default facebook/sam2-hiera-large)",
    )
    serve.add_argument(
        "--model-config",
        help="SAM2 config for a local checkpoint: a name in the sam2 package or a YAML "
        "file (env MODEL_CONFIG)",
    )
    serve.add_argument("--device", help="torch device, e.g. cuda:1 or cpu (env DEVICE)")
    serve.add_argument("--log-level", help="debug, info, warning, error (env LOG_LEVEL)")
    serve.add_argument(
        "--exit-on-load-error",
        action="store_true",
        default=None,
        help="exit (status 1) when a model fails to load, for orchestrators that restart "
        "(env EXIT_ON_LOAD_ERROR)",
    )

    serve.add_argument(
        "--replicas",
        type=int,
        help="serve from N engine replicas on Ray Serve, routing each image to the replica "
        "that holds its embedding (needs Ray; see the README)",
    )
    serve.add_argument(
        "--ray-address",
        help="with --replicas: join this Ray cluster (e.g. ray://head:10001 or auto) "
        "instead of starting a local one",
    )
    serve.add_argument(
        "--replica-cpus",
        type=float,
        default=1.0,
        help="with --replicas: Ray CPUs reserved per engine replica (default 1)",
    )
    serve.add_argument(
        "--replica-gpus",
        type=float,
        default=0.0,
        help="with --replicas: GPUs per engine replica (default 0; 1 on a GPU cluster)",
    )
    return serve


def run(args: argparse.Namespace) -> int:
    """The `serve` command: runs until SIGTERM/SIGINT; returns the exit status of a
    refusal (a single server ends the process itself once drained)."""
    try:
        settings = (
            Settings.from_env()
            .with_(
                host=args.host,
                port=args.port,
                model_ids=split_model_ids(args.model_id),
                model_config=args.model_config,
                device=args.device,
                log_level=args.log_level.lower() if args.log_level else None,
                exit_on_load_error=args.exit_on_load_error,
            )
            .validate()
        )
    except SystemExit as exc:  # config.py's one-line refusals
        if isinstance(exc.code, str):
            print(f"sam2-server: {exc.code}", file=sys.stderr)
            return USAGE_STATUS
        raise
    if args.replicas is not None or args.ray_address is not None:
        return _serve_cluster(settings, args)
    from sam2_server import serving  # uvicorn, and the app behind it: only to serve

    try:
        return serving.serve(settings)
    except ConfigError as exc:  # the engine's refusal of a setting (a device that is not there)
        print(f"sam2-server: {exc}", file=sys.stderr)
        return USAGE_STATUS


def _serve_cluster(settings: Settings, args: argparse.Namespace) -> int:
    if args.replicas is None or args.replicas < 1:
        print("sam2-server: --replicas must be 1 or more (with --ray-address too)", file=sys.stderr)
        return USAGE_STATUS
    configure_logging(settings)
    try:
        from sam2_server.cluster.launch import ClusterOptions, serve_cluster
    except ImportError as exc:
        print(f"sam2-server: --replicas needs Ray Serve ({exc}); see the README", file=sys.stderr)
        return USAGE_STATUS
    options = ClusterOptions(
        replicas=args.replicas,
        ray_address=args.ray_address,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus,
    )
    return serve_cluster(settings, options)
