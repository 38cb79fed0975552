"""sam2-server as a CVAT interaction function, for CVAT's agent-based functions.

CVAT Online and CVAT Enterprise can hand interactive clicks to an agent that
the user runs with `cvat-cli` (its `function` commands are "Enterprise/Cloud
only"); the agent calls an interaction function written against
`cvat_sdk.auto_annotation`. This file is such a function. It runs wherever
cvat-cli runs and needs only what `cvat-sdk[masks]` installs (numpy, Pillow,
urllib3, attrs); it talks to sam2-server over HTTP:

- `preprocess_image` uploads the frame once (`POST /v1/images`, as a lossless
  PNG), unless the server already holds it: sam2-server names an image by the
  SHA-256 of its bytes, so the function asks `GET /v1/images/{sha256}` first.
  The agent keeps the result for the frame and passes it to every click.
- `detect` sends the clicks (`POST /v1/images/{id}/segment`: positive points,
  then negative points, and the box) and returns the best mask as a CVAT mask
  shape (`cvat_sdk.masks.encode_mask`); no shape when the mask is empty. If the
  server has evicted the frame's embedding (404), it uploads the frame again.

Configuration: the function's parameters, else the environment, else defaults:

    url      SAM2_SERVER_URL    http://localhost:8000   sam2-server's address
    token    SAM2_SERVER_TOKEN  (none)                  its AUTH_TOKEN, sent as a bearer token
    model    SAM2_SERVER_MODEL  (the server's default)  one of its MODEL_ID models
    timeout  SAM2_SERVER_TIMEOUT  120                   seconds to wait for an answer

Register the function with CVAT once, then run the agent (cvat-cli's `-p`
takes NAME=TYPE:VALUE; keep the token in the environment, not on the command line):

    cvat-cli --server-host https://cvat.example.com --auth me \\
        function create-native "SAM2 (sam2-server)" --function-file sam2_server_function.py
    export SAM2_SERVER_TOKEN=...
    cvat-cli --server-host https://cvat.example.com --auth me \\
        function run-agent <function id> --function-file sam2_server_function.py \\
        -p url=str:http://sam2-server:8000 -p model=str:facebook/sam2.1-hiera-large

The agent passes CVAT the message of only some exceptions (others become
"Unknown error"); sam2-server's refusals (a model still loading, an image too
large) are raised as `Sam2ServerError`, a `BadFunctionError`, which CVAT shows
as "Underlying function returned incorrect result: sam2-server answered HTTP
503 to POST /v1/images: ...". An unreachable server is urllib3's
`MaxRetryError`, shown as "Failed to make an HTTP request to <url> (...)".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any
from urllib.parse import quote

import attrs
import cvat_sdk.auto_annotation as cvataa
import numpy as np
import PIL.Image
import urllib3
from cvat_sdk.masks import encode_mask

DEFAULT_URL = "http://localhost:8000"
DEFAULT_TIMEOUT_S = 120.0


class Sam2ServerError(cvataa.BadFunctionError):
    """sam2-server refused or failed a request; the message is the server's own."""


@attrs.frozen
class UploadedFrame:
    """A frame sam2-server holds: its id there, and the bytes to upload again if evicted.

    The id is the SHA-256 of the bytes, so uploading them again gives the same id.
    (attrs, not dataclasses: cvat-cli loads this file without registering it in
    `sys.modules`, where dataclasses look up string annotations.)
    """

    image_id: str
    data: bytes
    width: int
    height: int


class Sam2ServerFunction:
    """A `cvat_sdk.auto_annotation.InteractionFunction` backed by sam2-server."""

    # Like CVAT's own Segment Anything function: any points, an optional box.
    spec = cvataa.InteractionFunctionSpec(min_pos_points=0, min_neg_points=0, min_bounding_boxes=0)

    def __init__(self, url: str, token: str | None, model: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Connection failures are retried; a request the server received is not.
        self._http = urllib3.PoolManager(
            retries=urllib3.Retry(total=2, read=0, redirect=0, status=0),
            timeout=urllib3.Timeout(connect=10.0, read=timeout_s),
        )

    def preprocess_image(
        self, context: cvataa.InteractionFunctionContext, image: PIL.Image.Image
    ) -> UploadedFrame:
        data = _png(image)
        image_id = hashlib.sha256(data).hexdigest()
        if not self._holds(image_id):
            self._upload(data, image_id)
        return UploadedFrame(image_id, data, image.width, image.height)

    def detect(
        self,
        context: cvataa.InteractionFunctionContext,
        pp_image: UploadedFrame,
        prompts: cvataa.InteractionPrompts,
    ) -> list[cvataa.InteractionResultShape]:
        body = segment_body(prompts, self.model)
        if body is None:  # every prompt removed: nothing to segment
            return []
        path = f"/v1/images/{pp_image.image_id}/segment"
        payload = json.dumps(body).encode()
        status, answer = self._request("POST", path, body=payload)
        if status == 404:  # evicted since the upload: upload again (same id), then retry
            self._upload(pp_image.data, pp_image.image_id)
            status, answer = self._request("POST", path, body=payload)
        self._check(status, answer, "POST", path)
        best = decode_coco_rle(answer["masks"][0])
        if not best.any():
            return []
        return [cvataa.InteractionResultShape(type="mask", points=encode_mask(best))]

    # -- HTTP ------------------------------------------------------------------------------

    def _holds(self, image_id: str) -> bool:
        path = f"/v1/images/{image_id}?model_id={quote(self.model)}"
        status, answer = self._request("GET", path)
        if status == 404:
            return False
        self._check(status, answer, "GET", path)
        return True

    def _upload(self, data: bytes, image_id: str) -> None:
        fields = {"image": ("frame.png", data, "image/png"), "model_id": self.model}
        status, answer = self._request("POST", "/v1/images", fields=fields)
        self._check(status, answer, "POST", "/v1/images")
        if answer.get("image_id") != image_id:
            raise Sam2ServerError(
                f"sam2-server named the upload {answer.get('image_id')!r}, not its SHA-256 "
                f"{image_id}: is {self.url} a sam2-server?"
            )

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        fields: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON object answered, or {}); a body is JSON, fields a multipart form."""
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        response = self._http.request(
            method, self.url + path, body=body, fields=fields, headers=headers
        )
        try:
            answer = json.loads(response.data) if response.data else {}
        except ValueError:
            answer = {}
        return response.status, answer if isinstance(answer, dict) else {}

    def _check(self, status: int, answer: dict[str, Any], method: str, path: str) -> None:
        if status == 200:
            return
        detail = answer.get("detail")
        message = detail.get("msg") if isinstance(detail, dict) else None
        shown = path.split("?")[0]
        raise Sam2ServerError(
            f"sam2-server answered HTTP {status} to {method} {shown}"
            + (f": {message}" if isinstance(message, str) else "")
        )


def segment_body(prompts: cvataa.InteractionPrompts, model: str) -> dict[str, Any] | None:
    """The native segment request for CVAT's prompts; None when there is none.

    Positive points come first, then negative ones; with `multimask_output` the
    answer's first mask is the best-scored one, the native API's best mask.
    """
    points = [[float(x), float(y)] for x, y in (*prompts.pos_points, *prompts.neg_points)]
    box = prompts.bounding_box
    if not points and box is None:
        return None
    body: dict[str, Any] = {
        "model_id": model,
        "multimask_output": True,
        "return_logits": False,
        "mask_format": "rle",
    }
    if points:
        body["points"] = points
        body["labels"] = [1] * len(prompts.pos_points) + [0] * len(prompts.neg_points)
    if box is not None:
        (x1, y1), (x2, y2) = box
        body["box"] = [float(x1), float(y1), float(x2), float(y2)]
    return body


def decode_coco_rle(rle: dict[str, Any]) -> np.ndarray:
    """A COCO RLE (`counts` as pycocotools' compressed string) as an H x W bool mask.

    pycocotools' `rleFrString`: 5-bit groups with a continuation bit, the
    sign in the last group, each count from the third on relative to the one
    two before; runs alternate from 0 over the pixels in column order.
    """
    height, width = (int(n) for n in rle["size"])
    text = rle["counts"]
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    if any(count < 0 for count in counts) or sum(counts) != height * width:
        raise Sam2ServerError("sam2-server's mask does not match its size")
    values = (np.arange(len(counts)) % 2).astype(bool)
    return np.repeat(values, counts).reshape(width, height).T


def _png(image: PIL.Image.Image) -> bytes:
    """The frame as a PNG: lossless, so the server sees exactly the agent's pixels."""
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG", compress_level=1)
    except (OSError, KeyError, ValueError):  # a mode PNG cannot hold (CMYK, YCbCr, ...)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def create(
    url: str | None = None,
    token: str | None = None,
    model: str | None = None,
    timeout: float | None = None,
) -> Sam2ServerFunction:
    """The function, configured by cvat-cli's `-p` parameters or the environment."""
    return Sam2ServerFunction(
        url=url or os.environ.get("SAM2_SERVER_URL") or DEFAULT_URL,
        token=token or os.environ.get("SAM2_SERVER_TOKEN") or None,
        model=model if model is not None else os.environ.get("SAM2_SERVER_MODEL", ""),
        timeout_s=float(timeout or os.environ.get("SAM2_SERVER_TIMEOUT") or DEFAULT_TIMEOUT_S),
    )
