"""`serve --replicas`: refused when meaningless, and Ray stays out of a single server."""

from __future__ import annotations

import subprocess
import sys

from sam2_server import cli


def test_a_single_server_never_imports_ray() -> None:
    code = (
        "import sys\n"
        "import sam2_server.cli, sam2_server.api, sam2_server.engine, sam2_server.client\n"
        "from sam2_server.api import create_app\n"
        "from sam2_server.config import Settings\n"
        "from sam2_server.engine import Engine\n"
        "create_app(Settings(device='cpu'), Engine(Settings(device='cpu')), load=False)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_replicas_must_be_positive(capsys) -> None:
    assert cli.main(["serve", "--replicas", "0"]) == 2
    assert "--replicas must be 1 or more" in capsys.readouterr().err
    assert cli.main(["serve", "--ray-address", "auto"]) == 2  # joining needs --replicas too
