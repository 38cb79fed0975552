"""`sam2-server serve`, `download`, and the clients `predict`, `automatic` and `track`
(predict.py, automatic_cli.py, track.py).

Flags override the environment (`MODEL_ID`, `AUTH_TOKEN`, `PORT`, ... as in
Livepeer's runner), which overrides the defaults; `config.Settings` holds the
result. A bad setting is one line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sam2_server import __version__, automatic_cli, predict, track
from sam2_server.config import Settings, configure_logging, split_model_ids
from sam2_server.errors import ConfigError

logger = logging.getLogger("sam2_server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam2-server", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sam2-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve POST /segment-anything-2")
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

    download = commands.add_parser(
        "download", help="fetch a model's weights into the Hugging Face cache"
    )
    download.add_argument("model_id", help="e.g. facebook/sam2.1-hiera-large")
    predict.add_parser(commands)
    automatic_cli.add_parser(commands)
    track.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "download":
        return _download(args.model_id)
    if args.command == "predict":
        return predict.run(args)
    if args.command == "automatic":
        return automatic_cli.run(args)
    if args.command == "track":
        return track.run(args)
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
            return 2
        raise
    if args.replicas is not None or args.ray_address is not None:
        return _serve_cluster(settings, args)
    return serve(settings)


def _serve_cluster(settings: Settings, args: argparse.Namespace) -> int:
    if args.replicas is None or args.replicas < 1:
        print("sam2-server: --replicas must be 1 or more (with --ray-address too)", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        from sam2_server.cluster.launch import ClusterOptions, serve_cluster
    except ImportError as exc:
        print(f"sam2-server: --replicas needs Ray Serve ({exc}); see the README", file=sys.stderr)
        return 2
    options = ClusterOptions(
        replicas=args.replicas,
        ray_address=args.ray_address,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus,
    )
    return serve_cluster(settings, options)


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status (the process then ends at once)."""
    import uvicorn

    from sam2_server.api import create_app
    from sam2_server.serving import DrainingServer, limit_malloc_arenas

    configure_logging(settings)
    limit_malloc_arenas()
    try:
        from sam2_server.engine import Engine

        engine = Engine(settings)
    except ConfigError as exc:
        print(f"sam2-server: {exc}", file=sys.stderr)
        return 2
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
        timeout_graceful_shutdown=settings.drain_timeout_s,
    )
    server = DrainingServer(config, drain_timeout_s=settings.drain_timeout_s)
    if settings.exit_on_load_error:
        engine.on_load_error = server.fail
    server.run()
    # Worker threads may still be computing for requests the drain gave up on;
    # they must not keep the process alive (asyncio would join them).
    logging.shutdown()
    os._exit(server.exit_code)


def _download(model_id: str) -> int:
    from sam2_server.engine.models import ModelLoadError, download

    try:
        path = download(model_id)
    except ModelLoadError as exc:
        print(f"sam2-server: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
