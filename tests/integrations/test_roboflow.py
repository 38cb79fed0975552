"""Roboflow's own `inference-sdk` (from PyPI, in `.venvs/roboflow`) against sam2-server.

`InferenceHTTPClient(api_url, api_key).sam2_segment_image(...)` sends what it
sends to Roboflow's inference server (the image as base64, `api_key` in the
body, `sam2_version_id="hiera_tiny"`); the masks it gets back, decoded as a
Roboflow user decodes them (the RLE with pycocotools, the polygons filled),
equal the native API's best mask for the same image and prompt. The SDK has
no SAM2 embed call, so `embed_image` and the segment by `image_id` go through
`requests`, as Roboflow's docs show them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from sam2_server.codecs.polygons import rasterize
from tests.e2e.process import Server
from tests.integrations.conftest import TOOLS_TOKEN, tool_python
from tests.integrations.native import native_masks

IMAGE = Path(__file__).resolve().parents[1] / "data" / "groceries.jpg"
POINT = {"x": 300, "y": 200, "positive": True}
BOX = [60.0, 80.0, 420.0, 330.0]  # x0, y0, x1, y1
CENTRE_BOX = {
    "x": (BOX[0] + BOX[2]) / 2,
    "y": (BOX[1] + BOX[3]) / 2,
    "width": BOX[2] - BOX[0],
    "height": BOX[3] - BOX[1],
}

# Runs in the SDK's venv: every call, one JSON document on stdout.
SCRIPT = """
import json, sys
import requests
from inference_sdk import InferenceHTTPClient
from inference_sdk.http.errors import HTTPCallErrorError

url, key, image, point, box = sys.argv[1], sys.argv[2], sys.argv[3], *map(json.loads, sys.argv[4:])
client = InferenceHTTPClient(api_url=url, api_key=key)
out = {}
for name, prompt in (("point", {"points": [point]}), ("box", {"box": box})):
    for fmt in ("json", "rle"):
        out[f"{name}-{fmt}"] = client.sam2_segment_image(
            image, prompts=[prompt], mask_input_format=fmt
        )
try:
    client.sam2_segment_image(image, prompts=[{"points": [point]}], sam2_version_id="hiera_xl")
except HTTPCallErrorError as error:
    out["error"] = {"status": error.status_code, "message": error.api_message}
wrong = InferenceHTTPClient(api_url=url, api_key="not-the-token")
try:
    wrong.sam2_segment_image(image, prompts=[{"points": [point]}])
except HTTPCallErrorError as error:
    out["unauthorized"] = error.status_code
import base64
data = {"type": "base64", "value": base64.b64encode(open(image, "rb").read()).decode()}
embedded = requests.post(
    f"{url}/sam2/embed_image?api_key={key}", json={"image": data, "image_id": "cars"}, timeout=60
)
out["embed"] = embedded.json()
by_id = requests.post(
    f"{url}/sam2/segment_image",
    json={"api_key": key, "image_id": "cars", "prompts": {"prompts": [{"points": [point]}]},
          "format": "rle"},
    timeout=60,
)
out["by_id"] = by_id.json()
print(json.dumps(out))
"""


def run_sdk(server: Server) -> dict[str, Any]:
    done = subprocess.run(
        [
            str(tool_python("roboflow")),
            "-c",
            SCRIPT,
            server.url,
            TOOLS_TOKEN,
            str(IMAGE),
            json.dumps(POINT),
            json.dumps(CENTRE_BOX),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def from_rle(masks: dict[str, Any]) -> np.ndarray:
    return coco_mask.decode({"size": masks["size"], "counts": masks["counts"].encode()}) > 0


def from_polygons(contours: list[list[list[int]]], height: int, width: int) -> np.ndarray:
    return rasterize([[ring] for ring in contours if ring], height, width).astype(bool)


def holes_filled(mask: np.ndarray) -> np.ndarray:
    padded = np.ascontiguousarray(np.pad(mask.astype(np.uint8), 1))  # pycocotools: F order
    cv2.floodFill(padded, None, (0, 0), 2)  # the background reachable from outside
    return (padded != 2)[1:-1, 1:-1]


def test_roboflow_sdk_gets_the_native_best_mask(tools_server: Server) -> None:
    out = run_sdk(tools_server)
    data = IMAGE.read_bytes()
    point = native_masks(
        tools_server.url, TOOLS_TOKEN, data, points=[[POINT["x"], POINT["y"]]], labels=[1]
    )
    box = native_masks(tools_server.url, TOOLS_TOKEN, data, box=BOX)
    for name, (masks, scores) in (("point", point), ("box", box)):
        best = masks[0]
        height, width = best.shape
        [rle] = out[f"{name}-rle"]["predictions"]
        assert rle["format"] == "rle"
        np.testing.assert_array_equal(from_rle(rle["masks"]), best)
        assert rle["confidence"] == float(scores[0])
        [polygon] = out[f"{name}-json"]["predictions"]
        assert polygon["format"] == "polygon"
        # Roboflow's polygons are the outer contours: exact, with the holes filled.
        np.testing.assert_array_equal(
            from_polygons(polygon["masks"], height, width), holes_filled(best)
        )
        assert polygon["confidence"] == rle["confidence"]
    # The SDK's default sam2_version_id (hiera_tiny) is answered by the served model.
    assert out["point-rle"]["model_id"]
    assert out["error"]["status"] == 400
    assert "sam2_version_id" in out["error"]["message"]
    assert out["unauthorized"] == 401
    # embed_image, then a segment that names the image by the client's id only.
    assert out["embed"]["image_id"] == "cars"
    [by_id] = out["by_id"]["predictions"]
    np.testing.assert_array_equal(from_rle(by_id["masks"]), point[0][0])
