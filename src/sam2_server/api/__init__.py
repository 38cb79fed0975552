"""HTTP: routes, form parsing and validation, auth, errors. Never imports torch."""

from sam2_server.api.app import create_app

__all__ = ["create_app"]
