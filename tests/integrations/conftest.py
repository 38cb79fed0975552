"""The annotation tools' tests share one real server process on loopback.

It serves the reduced random-weight model with a token, as an operator
would run it for Label Studio, CVAT, X-AnyLabeling or Roboflow's SDK; each
tool's own client (from PyPI, in its own venv under `.venvs/`, made by
`make install`) talks to it over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LocalModel
from tests.e2e.process import Server, start_server

TOOLS_TOKEN = "tools-token-3b1f"
VENVS = Path(__file__).resolve().parents[2] / ".venvs"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Boot Label Studio in the background as soon as its tests are collected."""
    if any("integrations/test_labelstudio.py" in item.nodeid for item in session.items):
        from tests.integrations.test_labelstudio import boot_early

        boot_early()


@pytest.fixture(scope="session")
def tools_server(reduced_model: LocalModel) -> Iterator[Server]:
    """`sam2-server serve` with AUTH_TOKEN=TOOLS_TOKEN and the reduced model."""
    server = start_server(
        {
            "MODEL_ID": str(reduced_model.checkpoint),
            "MODEL_CONFIG": str(reduced_model.config),
            "AUTH_TOKEN": TOOLS_TOKEN,
        }
    )
    try:
        yield server
    finally:
        server.stop()


def tool_python(name: str) -> Path:
    """The interpreter of a tool's own venv (`.venvs/<name>`); made by `make install`."""
    python = VENVS / name / "bin" / "python"
    if not python.exists():  # a failure, not a skip: CI must run every tool's test
        pytest.fail(f"{python} is missing: run `make install`", pytrace=False)
    return python
