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
- anything else (a new video, health, the web page): no key, any replica.
"""

from __future__ import annotations

from dataclasses import dataclass

from sam2_server.api.paths import IMAGES_PATH, SEGMENT_PATH, VIDEOS_PATH
from sam2_server.domain import IMAGE_ID_PATTERN


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


def video_id_of(path: str) -> str | None:
    """The session a `/v1/videos/{video_id}...` path names, else None."""
    route = route_of("GET", path)
    return route.key if route.video else None
