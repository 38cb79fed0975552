"""Which replica a request should reach: the routing key the ingress derives from it.

The key becomes the request's Ray Serve *multiplexed model id*; a replica
that holds the key's embedding or video session reports it, and Ray's
router prefers that replica (docs/scaling.md). Keys:

- an image upload (the Livepeer route, `POST /v1/images`): the SHA-256 of the
  `image` part, the engine's cache key and the native API's `image_id`, so the
  first click and the later ones meet the same embedding;
- `/v1/images/{image_id}/...`: that id;
- `/v1/videos/{video_id}/...`: that id, which must reach the one replica that
  holds the session (`strict`: a replica that does not have it says so and
  the ingress asks again, see cluster/ingress.py);
- an annotation tool's click that carries the image itself, base64 in a JSON
  body (CVAT's invocation, X-AnyLabeling's predict, Roboflow's segment and
  embed): the SHA-256 of the decoded image, so each click of a tool that
  re-sends the whole image every time meets the embedding of the first;
- anything else (a new video, health, the web page, Label Studio's task URLs):
  no key, any replica.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from sam2_server.api.paths import (
    CVAT_PATHS,
    IMAGES_PATH,
    ROBOFLOW_PATH,
    SEGMENT_PATH,
    VIDEOS_PATH,
    XANYLABELING_PATH,
)
from sam2_server.domain import IMAGE_ID_PATTERN, image_id_of

# The tool paths whose JSON body may carry the image as base64.
_INLINE_IMAGE_PATHS = (
    CVAT_PATHS[1],  # /api/function_invocations
    XANYLABELING_PATH + "/v1/predict",
    ROBOFLOW_PATH + "/segment_image",
    ROBOFLOW_PATH + "/embed_image",
)


@dataclass(frozen=True)
class Route:
    key: str | None = None  # the multiplexed model id; None: any replica
    upload: bool = False  # the key is the hash of the form's `image` part, still to compute
    video: bool = False  # the key names a video session only one replica holds


ANY = Route()
UPLOAD = Route(upload=True)


def route_of(method: str, path: str) -> Route:
    """The routing of a request from its method and path alone (the body is hashed later)."""
    path = path.rstrip("/")
    if method == "POST" and path in (SEGMENT_PATH, IMAGES_PATH):
        return UPLOAD
    for prefix, video in ((IMAGES_PATH, False), (VIDEOS_PATH, True)):
        if path.startswith(prefix + "/"):
            first = path[len(prefix) + 1 :].split("/", 1)[0]
            if not first:
                return ANY
            if not video and not IMAGE_ID_PATTERN.fullmatch(first):
                return ANY  # the replica answers the 4xx for a malformed id
            return Route(key=first.lower() if not video else first, video=video)
    return ANY


def inline_image_key(method: str, path: str, body: bytes) -> str | None:
    """The SHA-256 of a tool request's base64 image, which the replica will encode; else None.

    The engine keys its cache by the image's bytes, so hashing the decoded
    base64 here gives the key a replica reports once it holds the embedding.
    Anything unexpected is no key: the replica answers the error.
    """
    if method != "POST" or path.rstrip("/") not in _INLINE_IMAGE_PATHS:
        return None
    try:
        content: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    image = content.get("image") if isinstance(content, dict) else None
    if isinstance(image, dict):  # Roboflow: {"type": "base64", "value": ...}
        image = image.get("value") if image.get("type") == "base64" else None
    if not isinstance(image, str):
        return None
    if image.startswith("data:"):  # X-AnyLabeling: a data URL
        image = image.partition(",")[2]
    try:
        return image_id_of(base64.b64decode(image, validate=False))
    except (binascii.Error, ValueError):
        return None


def video_id_of(path: str) -> str | None:
    """The session a `/v1/videos/{video_id}...` path names, else None."""
    route = route_of("GET", path)
    return route.key if route.video else None
