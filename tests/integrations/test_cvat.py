"""CVAT against a real sam2-server process: its lambda manager's calls, replayed, and
the shipped agent function run through cvat-sdk / cvat-cli 2.80.0 from PyPI.

Both run in CVAT's own environment (`.venvs/cvat`: cvat-sdk[masks], cvat-cli, and
the `requests` CVAT's server pins), as one subprocess:

1. The requests CVAT's lambda manager makes, as `LambdaGateway._http` makes them
   (cvat/apps/lambda_manager/views.py, CVAT 2.73.0): a `requests` session with
   CVAT's User-Agent (cvat/utils/http.py `make_requests_session`), the
   `x-nuclio-*` headers, `json=` bodies, `raise_for_status()` then `.json()`:
   `list()` -> GET /api/functions, `get()` -> GET /api/functions/{id},
   `_invoke_via_dashboard()` -> POST /api/function_invocations with the
   interactor payload of `LambdaFunction.invoke` (the frame's bytes as base64,
   `pos_points`, `neg_points`, `obj_bbox`). The bearer token is added, as a
   proxy in front of an OPEN_SURFACES-less server would add it.
2. The agent function (integrations/cvat/sam2_server_function.py), loaded by
   cvat-cli's own `FunctionLoader` with `-p` parameters parsed by cvat-cli and
   the token from `SAM2_SERVER_TOKEN`, called as the agent's worker calls it
   (cvat_cli/_internal/agent_driver_interaction.py: `_worker_job_interact`,
   then `_worker_job_interact_from_cache` for the next click); its shapes
   decode with `cvat_sdk.masks.decode_mask`.

Every mask, as CVAT's UI would draw it, equals the native API's best mask for
the same image and prompt.
"""

from __future__ import annotations

import base64
import io
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tests.api.test_cvat import ui_mask_before_2_60, ui_mask_since_2_60
from tests.conftest import image_bytes
from tests.integrations.conftest import TOOLS_TOKEN, tool_python
from tests.integrations.native import native_masks

FUNCTION_FILE = Path(__file__).resolve().parents[2] / "integrations/cvat/sam2_server_function.py"

FRAME = "cars.jpg"  # what CVAT sends: the frame's own (JPEG) bytes
POINTS = {"pos_points": [[1130.0, 820.5]], "neg_points": [[400.0, 300.0]]}
BOX = [[700.0, 500.0], [1600.0, 1150.0]]
AGENT_FRAME = "truck.jpg"  # given to the agent as a decoded image, uploaded as PNG
AGENT_POS, AGENT_NEG = [[900.0, 640.0], [1000.0, 700.0]], [[100.0, 100.0]]
AGENT_BOX = ((500.0, 350.0), (1400.0, 1000.0))
LATENCY_POINTS = {"pos_points": AGENT_POS, "neg_points": AGENT_NEG}
ROUNDS = 5

SCRIPT = r"""
import base64, json, sys, time
config = json.loads(sys.argv[1])
url, token = config["url"], config["token"]

# -- 2 first: the function must load without `requests` (not a cvat-sdk dependency)
import attrs
import numpy as np
import PIL.Image
from cvat_cli._internal.agent_driver import set_worker_current_function
from cvat_cli._internal.agent_driver_interaction import (
    AgentInteractionFunctionDriver, _InteractionPromptsImpl, _worker_job_interact,
    _worker_job_interact_from_cache,
)
from cvat_cli._internal.common import FunctionLoader
from cvat_cli._internal.parsers import parse_function_parameter
from cvat_sdk.masks import decode_mask
from pathlib import Path

parameters = dict(parse_function_parameter(p) for p in (f"url=str:{url}", "timeout=float:60"))
function = FunctionLoader(None, Path(config["function_file"]), parameters).load()
assert "requests" not in sys.modules, "the agent function pulled in requests"
assert function._headers == {"Authorization": "Bearer " + token}  # from SAM2_SERVER_TOKEN
uploads = []
real_upload = function._upload
def counting_upload(data, image_id):
    uploads.append(image_id)
    return real_upload(data, image_id)
function._upload = counting_upload

agent = {"fields": AgentInteractionFunctionDriver.get_remote_function_fields(function.spec)}
AgentInteractionFunctionDriver.init_worker(None)
set_worker_current_function(function)
image = PIL.Image.open(config["agent_image"])
width, height = image.size
key = (1, 0, ())  # the agent's cache key: (task, frame, roi)

def run(shapes):
    masks = [decode_mask(s.points, image_width=width, image_height=height) for s in shapes]
    return {
        "types": [s.type for s in shapes],
        "masks": [base64.b64encode(np.packbits(m).tobytes()).decode() for m in masks],
    }

prompts = _InteractionPromptsImpl(
    pos_points=tuple(map(tuple, config["agent_pos"])), neg_points=(), bounding_box=None)
agent["first"] = run(_worker_job_interact(key, image, prompts))
agent["uploads_after_first"] = len(uploads)
prompts = _InteractionPromptsImpl(
    pos_points=tuple(map(tuple, config["agent_pos"])),
    neg_points=tuple(map(tuple, config["agent_neg"])),
    bounding_box=tuple(map(tuple, config["agent_box"])),
)
agent["second"] = run(_worker_job_interact_from_cache(key, prompts))
agent["uploads_after_second"] = len(uploads)
# the frame preprocessed again (the agent's cache expired): the server still holds it
agent["third"] = run(_worker_job_interact((1, 0, ("again",)), image, prompts))
agent["uploads_after_third"] = len(uploads)
# the server evicted the frame: a 404 on segment, one upload, the same mask
real_request = function._request
evicted = []
def request_once_evicted(method, path, **kwargs):
    if path.endswith("/segment") and not evicted:
        evicted.append(path)
        return 404, {"detail": {"msg": "image ... is not cached on this server (evicted)"}}
    return real_request(method, path, **kwargs)
function._request = request_once_evicted
agent["evicted"] = run(_worker_job_interact_from_cache(key, prompts))
agent["uploads_after_evicted"] = len(uploads)
function._request = real_request
empty = _InteractionPromptsImpl(pos_points=(), neg_points=(), bounding_box=None)
agent["no_prompt"] = run(_worker_job_interact_from_cache(key, empty))

# -- 1: CVAT's lambda manager, as LambdaGateway._http calls the dashboard
import requests, requests.utils

def gateway(method, path, *, data=None, headers=None, version="2.73.0"):
    extra = {
        "x-nuclio-project-name": "cvat",
        "x-nuclio-function-namespace": "nuclio",
        "x-nuclio-invoke-via": "domain-name",
        "X-Nuclio-Invoke-Timeout": "120s",
        "Authorization": "Bearer " + token,
        **(headers or {}),
    }
    with requests.Session() as session:
        session.headers["User-Agent"] = f"CVAT/{version} {requests.utils.default_user_agent()}"
        reply = session.request(method, url + path, headers=extra, timeout=120, json=data)
        reply.raise_for_status()
        return reply.json()

listed = gateway("get", "/api/functions")
(name,) = listed
one = gateway("get", "/api/functions/" + name)
frame = base64.b64encode(open(config["frame"], "rb").read()).decode("utf-8")
invoke = lambda payload, **kw: gateway(
    "post", "/api/function_invocations", data=payload,
    headers={"x-nuclio-function-name": name, "x-nuclio-path": "/"}, **kw)
points = {"image": frame, **config["points"], "obj_bbox": None}
boxed = {"image": frame, "pos_points": [], "neg_points": [], "obj_bbox": config["box"]}
gateway_answers = {
    "points": invoke(points),
    "box": invoke(boxed),
    "points_before_2_60": invoke(points, version="2.59.1"),
    "box_before_2_60": invoke(boxed, version="2.59.1"),
}
try:
    gateway("post", "/api/function_invocations", data=points,
            headers={"x-nuclio-function-name": "nope", "x-nuclio-path": "/"})
    unknown = None
except requests.HTTPError as error:  # what CVAT's return_response passes on
    unknown = [error.response.status_code, str(error)]

print(json.dumps({"listed": listed, "one": one, "name": name, "answers": gateway_answers,
                  "unknown": unknown, "agent": agent}))
"""


def unpack(packed: str, height: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))
    return bits[: height * width].reshape(height, width).astype(bool)


def best(url: str, data: bytes, **prompt: Any) -> np.ndarray:
    masks, _ = native_masks(url, TOOLS_TOKEN, data, multimask_output=True, **prompt)
    assert masks[0].any(), "the prompt must select something for the comparison to mean anything"
    return masks[0]


def test_cvat_lambda_manager_and_agent_function(tools_server, tmp_path):
    frame = tmp_path / FRAME
    frame.write_bytes(image_bytes(FRAME))
    agent_png = tmp_path / "agent.png"  # lossless: the agent decodes exactly these pixels
    Image.open(io.BytesIO(image_bytes(AGENT_FRAME))).save(agent_png)
    config = {
        "url": tools_server.url,
        "token": TOOLS_TOKEN,
        "function_file": str(FUNCTION_FILE),
        "frame": str(frame),
        "points": POINTS,
        "box": BOX,
        "agent_image": str(agent_png),
        "agent_pos": AGENT_POS,
        "agent_neg": AGENT_NEG,
        "agent_box": AGENT_BOX,
    }
    run = subprocess.run(
        [str(tool_python("cvat")), "-c", SCRIPT, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SAM2_SERVER_TOKEN": TOOLS_TOKEN},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)

    # the lambda manager: one interactor, parsed as CVAT parses it
    name = out["name"]
    assert out["one"] == out["listed"][name]
    annotations = out["one"]["metadata"]["annotations"]
    assert annotations["type"] == "interactor"
    assert int(annotations["version"]) >= 2
    assert out["unknown"][0] == 404
    assert "404 Client Error" in out["unknown"][1]

    data = frame.read_bytes()
    width, height = Image.open(frame).size
    answers = out["answers"]
    want_points = best(
        tools_server.url,
        data,
        points=POINTS["pos_points"] + POINTS["neg_points"],
        labels=[1, 0],
    )
    want_box = best(tools_server.url, data, box=[*BOX[0], *BOX[1]])
    for answer, reader, want in [
        (answers["points"], ui_mask_since_2_60, want_points),
        (answers["box"], ui_mask_since_2_60, want_box),
        (answers["points_before_2_60"], ui_mask_before_2_60, want_points),
        (answers["box_before_2_60"], ui_mask_before_2_60, want_box),
    ]:
        np.testing.assert_array_equal(reader(answer, width, height), want)
    assert set(answers["points"]) == {"shapes"}
    assert set(answers["points_before_2_60"]) == {"mask", "bounds"}

    # the agent function: spec as CVAT gets it, one upload, masks = the native API's
    agent = out["agent"]
    assert agent["fields"] == {
        "min_pos_points": 0,
        "min_neg_points": 0,
        "startswith_box_optional": True,
    }
    png = agent_png.read_bytes()
    aw, ah = Image.open(agent_png).size
    first = best(tools_server.url, png, points=AGENT_POS, labels=[1, 1])
    box = [*AGENT_BOX[0], *AGENT_BOX[1]]
    second = best(tools_server.url, png, points=AGENT_POS + AGENT_NEG, labels=[1, 1, 0], box=box)
    for key, want in [("first", first), ("second", second), ("third", second)]:
        assert agent[key]["types"] == ["mask"], key
        np.testing.assert_array_equal(unpack(agent[key]["masks"][0], ah, aw), want)
    np.testing.assert_array_equal(unpack(agent["evicted"]["masks"][0], ah, aw), second)
    assert agent["uploads_after_first"] == 1  # preprocess_image uploaded the frame
    assert agent["uploads_after_second"] == 1  # the next click reused it
    assert agent["uploads_after_third"] == 1  # the server held it: asked, not uploaded
    assert agent["uploads_after_evicted"] == 2  # a 404: uploaded again, once
    assert agent["no_prompt"] == {"types": [], "masks": []}


def test_click_latency_cvat_invocation_vs_native(tools_server):
    """One run, same server, same prompt: CVAT's invocation (the whole frame as base64
    on every click, its embedding cached) against the native segment on a cached image."""
    headers = {"Authorization": f"Bearer {TOOLS_TOKEN}"}
    data = image_bytes(AGENT_FRAME)
    with httpx.Client(base_url=tools_server.url, headers=headers, timeout=120) as client:
        (name,) = client.get("/api/functions").json()
        uploaded = client.post("/v1/images", files={"image": (AGENT_FRAME, data)})
        image_id = uploaded.json()["image_id"]
        payload = {"image": base64.b64encode(data).decode(), **LATENCY_POINTS, "obj_bbox": None}
        invocation = {
            "x-nuclio-function-name": name,
            "x-nuclio-path": "/",
            "User-Agent": "CVAT/2.73.0 python-requests/2.33.1",
        }
        native = {
            "points": AGENT_POS + AGENT_NEG,
            "labels": [1] * len(AGENT_POS) + [0] * len(AGENT_NEG),
            "return_logits": False,
        }

        def cvat_click() -> None:
            response = client.post("/api/function_invocations", json=payload, headers=invocation)
            assert response.status_code == 200
            assert response.json()["shapes"]

        def native_click() -> None:
            response = client.post(f"/v1/images/{image_id}/segment", json=native)
            assert response.status_code == 200

        clicks = {"cvat": cvat_click, "native": native_click}
        samples: dict[str, list[float]] = {label: [] for label in clicks}
        for click in clicks.values():
            click()  # warm
        for _ in range(ROUNDS):  # interleaved, so that load on the machine weighs on both alike
            for label, click in clicks.items():
                started = time.perf_counter()
                click()
                samples[label].append(time.perf_counter() - started)
        timings = {label: statistics.median(values) * 1000 for label, values in samples.items()}
        encoded = client.get("/stats").json()["encoded_images"]
        cvat_click()
        assert client.get("/stats").json()["encoded_images"] == encoded  # a cache hit
    frame_kb = len(payload["image"]) / 1024
    print(
        f"\nclick latency on a cached {AGENT_FRAME} ({frame_kb:.0f} KiB as base64), "
        f"median of {ROUNDS}: "
        f"CVAT invocation {timings['cvat']:.1f} ms, native segment {timings['native']:.1f} ms"
    )
