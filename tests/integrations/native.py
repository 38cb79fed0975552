"""The native API's answer for an image and a prompt: what every tool's mask must equal."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
from pycocotools import mask as coco_mask


def native_masks(
    url: str,
    token: str,
    image: bytes,
    *,
    points: list[list[float]] | None = None,
    labels: list[int] | None = None,
    box: list[float] | None = None,
    multimask_output: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(C x H x W bool masks best first, C scores) from POST /v1/images + /segment."""
    headers = {"Authorization": f"Bearer {token}"}
    uploaded = httpx.post(
        f"{url}/v1/images", files={"image": ("image", image)}, headers=headers, timeout=120
    )
    uploaded.raise_for_status()
    body: dict[str, Any] = {"multimask_output": multimask_output, "return_logits": False}
    if points is not None:
        body["points"] = points
        body["labels"] = labels
    if box is not None:
        body["box"] = box
    answer = httpx.post(
        f"{url}/v1/images/{uploaded.json()['image_id']}/segment",
        json=body,
        headers=headers,
        timeout=120,
    )
    answer.raise_for_status()
    content = answer.json()
    masks = np.stack(
        [
            coco_mask.decode({"size": m["size"], "counts": m["counts"].encode()}).astype(bool)
            for m in content["masks"]
        ]
    )
    return masks, np.asarray(content["scores"], dtype=np.float32)
