"""The real Label Studio (label-studio 1.23.2 from PyPI, in `.venvs/labelstudio`) with sam2-server.

Label Studio runs as a user runs it (`label-studio start`, sqlite in a
temporary folder, a legacy API token made at start) and is driven through its
own API, as its UI drives it: a project with BrushLabels and smart
KeyPointLabels and RectangleLabels, an uploaded image, sam2-server connected
with `POST /api/ml` (interactive, HTTP Basic with the token as password),
and clicks through `POST /api/ml/{id}/interactive-annotating`, which
forwards them to `/labelstudio/predict` with the task and the regions.

The brush RLE that comes back is decoded with the SDK Label Studio ships
(label-studio-sdk, in the same venv) and equals the native API's best mask;
the SDK's own encoder gives the same bytes. After the first click a task
costs no download and no encode (the server's /stats and
/labelstudio/metrics, and Label Studio's own access log, count them).

Label Studio's first start migrates its database (1-3 minutes): it is
started once for this module.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sam2_server.codecs.brush import mask2rle
from tests.api.test_labelstudio import pixels, unique_copy
from tests.e2e.process import Server, free_port
from tests.integrations.conftest import TOOLS_TOKEN, tool_python
from tests.integrations.native import native_masks

DATA = Path(__file__).resolve().parents[1] / "data"
IMAGE = DATA / "groceries.jpg"  # 800 x 534
WIDTH, HEIGHT = 800, 534
LS_TOKEN = "5ca1ab1e" * 5  # the legacy API token Label Studio makes for its user at start
STARTUP_S = 600  # a first start migrates sqlite; on 2 busy cores this took 3.5 minutes

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image">
    <Label value="Fruit" background="#ff0000"/>
    <Label value="Bag" background="#0000ff"/>
  </BrushLabels>
  <KeyPointLabels name="point" toName="image" smart="true">
    <Label value="Fruit" smart="true"/>
    <Label value="Bag" smart="true"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true">
    <Label value="Fruit"/>
    <Label value="Bag"/>
  </RectangleLabels>
</View>"""

# Runs in Label Studio's venv: decode each brush RLE with the SDK, and encode the
# decoded mask again with the SDK's mask2rle (0/255, as its SAM2 example does).
DECODE = """
import base64, json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
out = []
for item in json.load(sys.stdin):
    mask = decode_rle(item["rle"]).reshape(item["height"], item["width"], 4)[:, :, 3]
    out.append({
        "mask": base64.b64encode(np.packbits(mask > 0)).decode(),
        "same_rle": mask2rle(np.where(mask > 0, 255, 0).astype(np.uint8)) == item["rle"],
    })
print(json.dumps(out))
"""


@dataclass
class LabelStudio:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {LS_TOKEN}"}

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=self.headers, timeout=120, **kwargs)

    def file_requests(self, path: str) -> int:
        """GETs of `path` in Label Studio's access log (each line is logged twice)."""
        lines = {
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if f'"GET {path}' in line and "django.server" in line
        }
        return len(lines)


def start_label_studio(folder: Path) -> LabelStudio:
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_USERNAME": "annotator@example.com",
        "LABEL_STUDIO_PASSWORD": "not-a-real-password-1",
        "LABEL_STUDIO_USER_TOKEN": LS_TOKEN,
        # New organisations have legacy tokens off; sam2-server fetches uploads with the
        # project owner's token that /setup sends, which is a legacy one.
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # A backend on loopback: refused by default, and so is the webhook Label Studio
        # creates for it (POST /api/ml answers 403 although the backend was saved).
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        # Offline: no error reports, no version check, no analytics.
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "LOG_LEVEL": "INFO",
    }
    log = folder / "label-studio.log"
    command = [
        str(tool_python("labelstudio").parent / "label-studio"),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(folder / "data"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return LabelStudio(f"http://127.0.0.1:{port}", process, log)


def wait_up(studio: LabelStudio) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if studio.process.poll() is not None:
            pytest.fail(f"label-studio exited:\n{studio.log.read_text()[-3000:]}")
        try:
            if httpx.get(studio.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"label-studio did not start in {STARTUP_S} s:\n{studio.log.read_text()[-3000:]}")


_early: list[tuple[LabelStudio, tempfile.TemporaryDirectory[str]]] = []


def boot_early() -> None:
    """Start Label Studio as soon as the session's tests are collected (see conftest.py):
    its migrations take one to three minutes, spent while the other tests run."""
    if not _early:
        folder = _data_folder()
        _early.append((start_label_studio(Path(folder.name)), folder))
        atexit.register(_stop_early)


def _stop_early() -> None:
    for studio, folder in _early:
        _stop(studio)
        folder.cleanup()


def _data_folder() -> tempfile.TemporaryDirectory[str]:
    # sqlite in memory-backed storage where there is some: its migrations fsync a lot.
    base = "/dev/shm" if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
    return tempfile.TemporaryDirectory(prefix="label-studio-", dir=base)


def _stop(studio: LabelStudio) -> None:
    if studio.process.poll() is None:
        os.killpg(studio.process.pid, signal.SIGTERM)
        try:
            studio.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(studio.process.pid, signal.SIGKILL)
            studio.process.wait(timeout=20)


@pytest.fixture(scope="module")
def label_studio() -> Iterator[LabelStudio]:
    boot_early()  # a no-op when the session already started it
    studio, _ = _early[0]
    started = time.monotonic()
    wait_up(studio)
    print(f"label-studio up {time.monotonic() - started:.0f} s after its tests began")
    yield studio
    _stop(studio)  # its CPU back for the tests after these; the folder goes at exit


@dataclass
class Project:
    id: int
    backend: int
    task: int
    upload: str  # the task's data.image, as Label Studio stored it


def import_image(studio: LabelStudio, project: int, image: Path) -> tuple[int, str]:
    """Upload `image` as a new task: its id and its `data.image` (`/data/upload/...`)."""
    known = {t["id"] for t in tasks_of(studio, project)}
    with image.open("rb") as file:
        imported = studio.api(
            "POST", f"/api/projects/{project}/import", files={"file": (image.name, file)}
        )
    assert imported.status_code == 201, imported.text
    (task,) = [t for t in tasks_of(studio, project) if t["id"] not in known]
    return int(task["id"]), str(task["data"]["image"])


def tasks_of(studio: LabelStudio, project: int) -> list[dict[str, Any]]:
    listed = studio.api("GET", "/api/tasks", params={"project": project, "page_size": 100})
    assert listed.status_code == 200, listed.text
    return list(listed.json()["tasks"])


@pytest.fixture(scope="module")
def project(label_studio: LabelStudio, tools_server: Server) -> Project:
    created = label_studio.api(
        "POST", "/api/projects", json={"title": "sam2-server clicks", "label_config": CONFIG}
    )
    assert created.status_code == 201, created.text
    project_id = int(created.json()["id"])
    task_id, upload = import_image(label_studio, project_id, IMAGE)
    assert upload.startswith("/data/upload/")
    connected = label_studio.api(
        "POST",
        "/api/ml",
        json={
            "url": tools_server.url + "/labelstudio",
            "project": project_id,
            "is_interactive": True,
            "title": "sam2-server",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "label-studio",
            "basic_auth_pass": TOOLS_TOKEN,
        },
    )
    assert connected.status_code == 201, connected.text
    backend = connected.json()
    assert backend["state"] == "CO", backend  # connected: /health and /setup answered
    assert backend["model_version"]
    return Project(project_id, int(backend["id"]), task_id, upload)


def click(
    studio: LabelStudio, project: Project, regions: list[dict[str, Any]], task: int = 0
) -> Any:
    """What Label Studio's data manager posts when a smart region is drawn."""
    answer = studio.api(
        "POST",
        f"/api/ml/{project.backend}/interactive-annotating",
        json={"task": task or project.task, "context": {"result": regions}},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def keypoint(x: float, y: float, positive: bool = True, label: str = "Fruit") -> dict[str, Any]:
    """A smart keypoint as the frontend serializes it (x, y in percent of the image)."""
    return {
        "id": f"p{x:g}-{y:g}",
        "type": "keypointlabels",
        "from_name": "point",
        "to_name": "image",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label], "labels": [label]},
        "is_positive": positive,
    }


def sdk_decode(regions: list[dict[str, Any]]) -> list[np.ndarray]:
    """Each region's mask as the SDK decodes it; and the SDK re-encodes it to the same RLE."""
    items = [
        {"rle": r["value"]["rle"], "height": r["original_height"], "width": r["original_width"]}
        for r in regions
    ]
    done = subprocess.run(
        [str(tool_python("labelstudio")), "-c", DECODE],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    masks = []
    for item, decoded in zip(items, json.loads(done.stdout), strict=True):
        assert decoded["same_rle"], "the SDK's mask2rle gives other bytes"
        bits = np.unpackbits(np.frombuffer(base64.b64decode(decoded["mask"]), dtype=np.uint8))
        masks.append(bits[: item["height"] * item["width"]].reshape(item["height"], item["width"]))
    return [m.astype(bool) for m in masks]


def brush_region(answer: Any) -> dict[str, Any]:
    assert "errors" not in answer, answer
    (region,) = answer["data"]["result"]
    assert region["type"] == "brushlabels"
    assert (region["from_name"], region["to_name"]) == ("mask", "image")
    assert (region["original_width"], region["original_height"]) == (WIDTH, HEIGHT)
    assert region["image_rotation"] == 0
    assert region["value"]["format"] == "rle"
    return dict(region)


def counters(server: Server) -> tuple[int, int]:
    """(images encoded, images downloaded) by the server so far."""
    headers = {"Authorization": f"Bearer {TOOLS_TOKEN}"}
    stats = httpx.get(server.url + "/stats", headers=headers, timeout=10).json()
    metrics = httpx.get(server.url + "/labelstudio/metrics", headers=headers, timeout=10).json()
    return int(stats["encoded_images"]), int(metrics["downloads"])


ENCODE = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import mask2rle
masks = np.load(sys.argv[1])
print(json.dumps([mask2rle(masks[name].astype(np.uint8) * 255) for name in sorted(masks.files)]))
"""


def test_the_brush_codec_writes_the_sdks_bytes(tmp_path: Path) -> None:
    """codecs/brush.py against label-studio-sdk's own mask2rle, on masks of every kind."""
    rng = np.random.default_rng(7)
    blob = np.zeros((534, 800), dtype=bool)
    blob[100:400, 200:650] = True
    blob[rng.integers(0, 534, 300), rng.integers(0, 800, 300)] ^= True
    long_runs = np.ones((300, 900), dtype=bool)  # runs past the 16-bit field
    long_runs[150, 450] = False
    masks = {
        "a_blob": blob,
        "b_noise": rng.random((97, 131)) < 0.5,
        "c_empty": np.zeros((40, 60), dtype=bool),
        "d_full": np.ones((1, 1), dtype=bool),
        "e_long": long_runs,
        "f_column": rng.random((1000, 1)) < 0.3,
    }
    np.savez(tmp_path / "masks.npz", **masks)
    done = subprocess.run(
        [str(tool_python("labelstudio")), "-c", ENCODE, str(tmp_path / "masks.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    for name, sdk in zip(sorted(masks), json.loads(done.stdout), strict=True):
        assert mask2rle(masks[name]) == sdk, name


def test_a_keypoint_through_label_studio_is_the_native_mask(
    label_studio: LabelStudio, project: Project, tools_server: Server
) -> None:
    region = brush_region(click(label_studio, project, [keypoint(37.5, 52.0)]))
    assert region["value"]["brushlabels"] == ["Fruit"]
    (mask,) = sdk_decode([region])
    masks, _ = native_masks(
        tools_server.url,
        TOOLS_TOKEN,
        IMAGE.read_bytes(),
        points=[[pixels(37.5, WIDTH), pixels(52.0, HEIGHT)]],
        labels=[1],
    )
    np.testing.assert_array_equal(mask, masks[0])
    assert label_studio.file_requests(project.upload) == 1


def test_the_next_click_costs_no_download_and_no_encode(
    label_studio: LabelStudio, project: Project, tools_server: Server
) -> None:
    click(label_studio, project, [keypoint(37.5, 52.0)])  # the task is cached from here on
    before = counters(tools_server)
    served = label_studio.file_requests(project.upload)
    regions = [keypoint(37.5, 52.0), keypoint(70.0, 30.0, positive=False, label="Bag")]
    region = brush_region(click(label_studio, project, regions))
    assert counters(tools_server) == before
    assert label_studio.file_requests(project.upload) == served
    assert region["value"]["brushlabels"] == ["Bag"]  # the label of the last region
    (mask,) = sdk_decode([region])
    masks, _ = native_masks(
        tools_server.url,
        TOOLS_TOKEN,
        IMAGE.read_bytes(),
        points=[
            [pixels(37.5, WIDTH), pixels(52.0, HEIGHT)],
            [pixels(70.0, WIDTH), pixels(30.0, HEIGHT)],
        ],
        labels=[1, 0],
    )
    np.testing.assert_array_equal(mask, masks[0])


def test_a_rectangle_through_label_studio_is_the_native_mask(
    label_studio: LabelStudio, project: Project, tools_server: Server
) -> None:
    rectangle = {
        "id": "r1",
        "type": "rectanglelabels",
        "from_name": "box",
        "to_name": "image",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "value": {
            "x": 12.5,
            "y": 20.0,
            "width": 40.0,
            "height": 45.5,
            "rotation": 0,
            "rectanglelabels": ["Bag"],
        },
    }
    region = brush_region(click(label_studio, project, [rectangle]))
    assert region["value"]["brushlabels"] == ["Bag"]
    (mask,) = sdk_decode([region])
    box = [pixels(12.5, WIDTH), pixels(20.0, HEIGHT), pixels(52.5, WIDTH), pixels(65.5, HEIGHT)]
    masks, _ = native_masks(tools_server.url, TOOLS_TOKEN, IMAGE.read_bytes(), box=box)
    np.testing.assert_array_equal(mask, masks[0])


def test_a_ten_click_session_downloads_and_encodes_once(
    label_studio: LabelStudio, project: Project, tools_server: Server, tmp_path: Path
) -> None:
    # Bytes no other test of the session sends (the server's cache is shared with the
    # other tools' tests): the one encode counted is this session's own.
    unique = tmp_path / "truck-ten-clicks.png"
    unique.write_bytes(unique_copy("truck.jpg", "the ten-click session of test_labelstudio.py"))
    task, upload = import_image(label_studio, project.id, unique)
    before = counters(tools_server)
    rng = np.random.default_rng(16)
    regions: list[dict[str, Any]] = []
    times = []
    for n in range(10):
        point = keypoint(*rng.uniform(10, 90, size=2).round(2), positive=n % 3 != 2)
        point.update(original_width=1800, original_height=1200)
        regions = [*regions[-4:], point]
        started = time.perf_counter()
        answer = click(label_studio, project, regions, task)
        times.append(time.perf_counter() - started)
        assert "errors" not in answer, answer
    encoded, downloaded = counters(tools_server)
    assert (encoded - before[0], downloaded - before[1]) == (1, 1)
    assert label_studio.file_requests(upload) == 1
    print(
        f"10 clicks through Label Studio: first {times[0] * 1000:.0f} ms, then median "
        f"{np.median(times[1:]) * 1000:.0f} ms; encodes 1, downloads 1"
    )


def test_errors_reach_label_studio_as_its_errors(
    label_studio: LabelStudio, project: Project
) -> None:
    """A hostile task URL: sam2-server refuses it (400) and Label Studio reports an error."""
    imported = label_studio.api(
        "POST",
        f"/api/projects/{project.id}/import",
        json=[{"image": "http://169.254.169.254/latest/meta-data/iam/"}],
    )
    assert imported.status_code == 201, imported.text
    (task,) = [
        t for t in tasks_of(label_studio, project.id) if "169.254" in str(t["data"]["image"])
    ]
    answer = click(label_studio, project, [keypoint(50, 50)], task["id"])
    assert set(answer) == {"errors"}
    assert "400 Client Error" in answer["errors"][0]
