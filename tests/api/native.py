"""The native API's best mask for an image and a prompt, in process: what each tool's
answer (Label Studio, CVAT, X-AnyLabeling, on SAM2 or EdgeTAM) must equal."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from pycocotools import mask as coco_mask


def native_best(
    client: TestClient,
    image: bytes,
    *,
    model_id: str | None = None,
    headers: dict[str, str] | None = None,
    **prompt: Any,
) -> tuple[np.ndarray, float]:
    """`image` through POST /v1/images and /segment (`prompt` in pixels, plus any of the
    route's options; no logits): the first mask, of the first object if there are
    several, as booleans, and its score. With `model_id`, that model is asked for and
    both answers must say it answered."""
    form = {} if model_id is None else {"model_id": model_id}
    uploaded = client.post(
        "/v1/images", data=form, files={"image": ("image", image)}, headers=headers
    )
    assert uploaded.status_code == 200, uploaded.text
    if model_id is not None:
        assert uploaded.json()["model_id"] == model_id
    body = {**form, **prompt, "return_logits": False}
    answer = client.post(
        f"/v1/images/{uploaded.json()['image_id']}/segment", json=body, headers=headers
    )
    assert answer.status_code == 200, answer.text
    if model_id is not None:
        assert answer.json()["model_id"] == model_id
    best = answer.json()["masks"][0]
    if isinstance(best, list):  # several objects: the first one's
        best = best[0]
    mask = coco_mask.decode({"size": best["size"], "counts": best["counts"].encode()})
    return mask.astype(bool), float(np.ravel(answer.json()["scores"])[0])
