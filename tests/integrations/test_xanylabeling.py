"""X-AnyLabeling's own remote-server client against a real sam2-server process.

`anylabeling.services.auto_labeling.remote_server.RemoteServer` from
x-anylabeling-cvhub 4.2.1 (PyPI), in its own venv (`.venvs/xanylabeling`),
with Qt offscreen, configured as a user configures it: the "Remote Server
Settings" dialog writes `remote_server_settings: {server_url, api_key}` to
the user's config (`~/.xanylabelingrc`), which `RemoteServer` reads. Then it
is driven as X-AnyLabeling's auto-labeling widget drives it:
`get_available_models()` (GET /v1/models, the model combobox), `set_model_id`,
`set_mask_fineness` (the slider), `set_auto_labeling_marks` (the canvas's
marks, as `Canvas.update_auto_labeling_marks` writes them) and
`predict_shapes(image, image_path)`, which posts the image file's bytes as a
data URL with every click. The `Shape`s it builds are rasterized and compared
with the native API's best mask for the same image and prompt, holes filled
(an X-AnyLabeling polygon is one ring) and less the regions with no area as a
polygon (a single pixel, a straight one-pixel line).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from sam2_server.codecs.polygons import rasterize
from tests.api.test_xanylabeling import outlined
from tests.conftest import DATA
from tests.e2e.process import Server
from tests.integrations.conftest import TOOLS_TOKEN, tool_python
from tests.integrations.native import native_masks

POINT = [420, 290]
NEGATIVE = [150, 100]
# As the canvas sends a rectangle drawn from its bottom-right corner: points[0], points[2].
RECTANGLE = [700, 480, 250, 180]
BOX = [250, 180, 700, 480]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """groceries.jpg as a PNG file with one pixel changed: bytes no other test has sent."""
    pixels = np.array(Image.open(DATA / "groceries.jpg").convert("RGB"))
    pixels[0, 0] = (7, 7, 7)
    path = tmp_path / "groceries.png"
    Image.fromarray(pixels).save(path)
    return path


SCRIPT = r"""
import json, os, sys, time
config = json.loads(sys.argv[1])

from PyQt6.QtGui import QImage
from PyQt6.QtWidgets import QApplication

import anylabeling.config
from anylabeling.services.auto_labeling.remote_server import RemoteServer

app = QApplication([])
anylabeling.config.current_config_file = config["rc"]  # as app.py sets ~/.xanylabelingrc
messages = []
# The model config X-AnyLabeling ships for it (configs/auto_labeling/remote_server.yaml).
model = RemoteServer(
    {"type": "remote_server", "name": "remote_server-r20251104", "provider": "CVHub",
     "display_name": "Remote-Server", "timeout": 180},
    messages.append,
)
models = model.get_available_models()
if not models:  # refused: the client logs the error and lists nothing
    print(json.dumps({"models": models, "url": model.server_url, "answers": {},
                      "messages": messages}))
    sys.exit(0)
model.set_model_id(next(iter(models)))

def click(marks, fineness):
    model.set_mask_fineness(fineness)
    model.set_auto_labeling_marks(marks)
    started = time.perf_counter()
    result = model.predict_shapes(QImage(config["image"]), config["image"])
    elapsed = time.perf_counter() - started
    shapes = [
        {"label": s.label, "shape_type": s.shape_type, "score": s.score,
         "points": [[p.x(), p.y()] for p in s.points]}
        for s in result.shapes
    ]
    return {"shapes": shapes, "replace": result.replace,
            "description": result.description, "seconds": elapsed}

answers = {name: click(marks, fineness) for name, marks, fineness in config["clicks"]}
model.set_model_id("no-such-model")
answers["unknown_model"] = click(config["clicks"][0][1], 0.001)
print(json.dumps({"models": models, "url": model.server_url, "answers": answers,
                  "messages": messages}))
"""


def drive(
    server: Server, tmp_path: Path, image: Path, clicks: list[Any], token: str = TOOLS_TOKEN
) -> Any:
    """Run X-AnyLabeling's RemoteServer against `server` with `clicks` (name, marks, fineness)."""
    rc = tmp_path / ".xanylabelingrc"
    rc.write_text(
        json.dumps(
            {
                "remote_server_settings": {
                    "server_url": f"{server.url}/xanylabeling",
                    "api_key": token,
                }
            }
        )
    )
    config = {"rc": str(rc), "image": str(image), "clicks": clicks}
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    env.pop("XANYLABELING_SERVER_URL", None)
    done = subprocess.run(
        [str(tool_python("xanylabeling")), "-c", SCRIPT, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def drawn(shapes: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """The client's own `Shape` points (it already dropped the closing point), drawn."""
    polygons = [[[[round(x), round(y)] for x, y in shape["points"]]] for shape in shapes]
    return rasterize(polygons, height, width).astype(bool)


def test_x_anylabeling_client_gets_the_native_mask(
    tools_server: Server, tmp_path: Path, image: Path
) -> None:
    point = [{"type": "point", "data": POINT, "label": 1}]
    refined = [*point, {"type": "point", "data": NEGATIVE, "label": 0}]
    rectangle = [{"type": "rectangle", "data": RECTANGLE, "label": 1}]
    clicks = [
        ("point", point, 0.0),
        ("refined", refined, 0.0),
        ("rectangle", rectangle, 0.0),
        ("slider_default", point, 0.001),
        *[(f"again{i}", refined, 0.0) for i in range(3)],
    ]
    encoded_before = _stats(tools_server)["encoded_images"]
    run = drive(tools_server, tmp_path, image, clicks)

    models = run["models"]
    assert run["url"] == f"{tools_server.url}/xanylabeling"
    assert list(models) == ["sam2.1_hiera_reduced.pt"]
    widgets = {w["name"] for w in next(iter(models.values()))["widgets"]}
    assert {
        "button_add_point",
        "button_add_rect",
        "button_clear",
        "button_finish_object",
    } <= widgets
    answers = run["answers"]

    data = image.read_bytes()
    expected = {
        "point": native_masks(tools_server.url, TOOLS_TOKEN, data, points=[POINT], labels=[1],
                              multimask_output=False),
        "refined": native_masks(tools_server.url, TOOLS_TOKEN, data, points=[POINT, NEGATIVE],
                                labels=[1, 0], multimask_output=False),
        "rectangle": native_masks(tools_server.url, TOOLS_TOKEN, data, box=BOX,
                                  multimask_output=False),
    }  # fmt: skip
    encoded_after = _stats(tools_server)["encoded_images"]
    for name, (masks, scores) in expected.items():
        answer = answers[name]
        assert answer["replace"] is False, name
        assert answer["shapes"], name
        for shape in answer["shapes"]:
            assert shape["label"] == "AUTOLABEL_OBJECT"
            assert shape["shape_type"] == "polygon"
            assert shape["score"] == min(max(float(scores[0]), 0.0), 1.0)
        height, width = masks[0].shape
        np.testing.assert_array_equal(
            drawn(answer["shapes"], height, width), outlined(masks[0]), err_msg=name
        )
    assert answers["slider_default"]["shapes"]
    # One encode for the client's seven clicks and the native API's three prompts.
    assert encoded_after - encoded_before == 1

    # An error reaches the annotator: the client shows the HTTP status on its status bar.
    assert answers["unknown_model"]["shapes"] == []
    assert any("404" in message for message in run["messages"]), run["messages"]

    clicks_s = [answers[f"again{i}"]["seconds"] for i in range(3)]
    native_s = _native_click_seconds(tools_server, data, 3)
    print(
        f"\nX-AnyLabeling click (whole image as a data URL, cached) median "
        f"{statistics.median(clicks_s) * 1000:.0f} ms; native segment on the cached image "
        f"{statistics.median(native_s) * 1000:.0f} ms"
    )


def test_a_wrong_token_lists_no_models(tools_server: Server, tmp_path: Path, image: Path) -> None:
    run = drive(tools_server, tmp_path, image, [], token="wrong")
    assert run["models"] == {}


def _stats(server: Server) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOOLS_TOKEN}"}
    answer = httpx.get(f"{server.url}/stats", headers=headers, timeout=30)
    answer.raise_for_status()
    stats: dict[str, Any] = answer.json()
    return stats


def _native_click_seconds(server: Server, image: bytes, clicks: int) -> list[float]:
    headers = {"Authorization": f"Bearer {TOOLS_TOKEN}"}
    uploaded = httpx.post(
        f"{server.url}/v1/images", files={"image": ("i.jpg", image)}, headers=headers, timeout=120
    )
    uploaded.raise_for_status()
    body = {"points": [POINT, NEGATIVE], "labels": [1, 0], "multimask_output": False}
    seconds = []
    with httpx.Client(headers=headers, timeout=120) as client:
        for _ in range(clicks):
            started = time.perf_counter()
            client.post(
                f"{server.url}/v1/images/{uploaded.json()['image_id']}/segment", json=body
            ).raise_for_status()
            seconds.append(time.perf_counter() - started)
    return seconds
