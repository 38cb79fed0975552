"""`sam2-server serve` and `sam2-server download`.

Flags override the environment (`MODEL_ID`, `AUTH_TOKEN`, `PORT`, ... as in
Livepeer's runner), which overrides the defaults; `config.Settings` holds the
result.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sam2_server import __version__
from sam2_server.config import Settings, split_model_ids


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

    download = commands.add_parser(
        "download", help="fetch a model's weights into the Hugging Face cache"
    )
    download.add_argument("model_id", help="e.g. facebook/sam2.1-hiera-large")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "download":
        return _download(args.model_id)
    settings = Settings.from_env().with_(
        host=args.host,
        port=args.port,
        model_ids=split_model_ids(args.model_id),
        model_config=args.model_config,
        device=args.device,
        log_level=args.log_level,
    )
    return serve(settings)


def serve(settings: Settings) -> int:
    import uvicorn

    from sam2_server.api import create_app
    from sam2_server.engine import Engine

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings, Engine(settings))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def _download(model_id: str) -> int:
    from sam2_server.engine.models import ModelNotFoundError, download

    try:
        path = download(model_id)
    except ModelNotFoundError as exc:
        print(f"sam2-server: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
