"""The video routes over HTTP: answers decode to the fixed library's masks; bounds and errors.

Masks come back as COCO RLE (decoded with pycocotools) or PNG (decoded with
PIL) and are compared with SAM2's own video predictor on the same JPEG frames
(tests/video_reference.py), propagated forwards and in reverse.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as coco_mask

from sam2_server.api.errors import headers_of, status_of
from sam2_server.codecs.polygons import rasterize
from sam2_server.domain import FrameMasks
from tests.api.raw_asgi import leave_mid_answer
from tests.clips import rotate_mp4, write_mp4
from tests.codecs.test_polygons import assert_within_tolerance
from tests.conftest import VIDEO_FRAMES
from tests.video_reference import BOX, POINTS

VIDEOS = "/v1/videos"


def _frames_upload(paths: list[Path] | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("frames", (path.name, path.read_bytes(), "image/jpeg")) for path in paths or VIDEO_FRAMES
    ]


def _open(client: TestClient, **files: object) -> str:
    response = client.post(VIDEOS, files=files.get("files") or _frames_upload())
    assert response.status_code == 201, response.text
    return response.json()["video_id"]


@pytest.fixture
def video(video_client: TestClient) -> Iterator[str]:
    video_id = _open(video_client)
    yield video_id
    video_client.delete(f"{VIDEOS}/{video_id}")


def _decode(mask: object) -> np.ndarray:
    if isinstance(mask, str):  # png
        return np.array(Image.open(io.BytesIO(base64.b64decode(mask)))) == 255
    assert isinstance(mask, dict)
    rle = {"size": mask["size"], "counts": mask["counts"].encode()}
    return coco_mask.decode(rle).astype(bool)


def _frame(answer: dict) -> FrameMasks:
    ids = tuple(o["object_id"] for o in answer["objects"])
    masks = np.stack([_decode(o["mask"]) for o in answer["objects"]])
    return FrameMasks(answer["frame_index"], ids, masks)


def _equal(ours: list[FrameMasks], theirs: list[FrameMasks]) -> None:
    assert [f.frame_index for f in ours] == [f.frame_index for f in theirs]
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine.object_ids == ref.object_ids
        assert np.array_equal(mine.masks, ref.masks), f"frame {mine.frame_index} differs"


def _stream(client: TestClient, video_id: str, **body: object) -> list[dict]:
    response = client.post(f"{VIDEOS}/{video_id}/propagate", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in response.text.splitlines()]


def prompt_two_objects(client: Any, video: str) -> tuple[dict, dict]:
    """The oracle's prompts: points for object 1 on frame 0, a box for object 2 on frame 3."""
    answers = []
    for prompt in (
        {"frame_index": 0, "object_id": 1, "points": POINTS.tolist(), "labels": [1, 0]},
        {"frame_index": 3, "object_id": 2, "box": BOX.tolist(), "mask_format": "png"},
    ):
        answer = client.post(f"{VIDEOS}/{video}/prompts", json=prompt)
        assert answer.status_code == 200, answer.text
        answers.append(answer.json())
    return answers[0], answers[1]


def test_a_session_over_http_equals_the_fixed_library(
    video_client: TestClient, video: str, video_reference: dict[str, list[FrameMasks]]
) -> None:
    info = video_client.get(f"{VIDEOS}/{video}").json()
    assert info == {
        "video_id": video,
        "model_id": info["model_id"],
        "frames": 8,
        "width": 960,
        "height": 540,
        "fps": None,
        "objects": [],
    }
    first, second = prompt_two_objects(video_client, video)
    _equal([_frame(first), _frame(second)], video_reference["prompts"])
    assert video_client.get(f"{VIDEOS}/{video}").json()["objects"] == [1, 2]

    forward = _stream(video_client, video)
    _equal([_frame(line) for line in forward], video_reference["forward"])
    reverse = _stream(video_client, video, start_frame_index=7, reverse=True, mask_format="png")
    _equal([_frame(line) for line in reverse], video_reference["reverse"])
    # Not trivially equal: the tracked objects are on every frame.
    assert all(_frame(line).masks.reshape(2, -1).any(axis=1).all() for line in forward)


def test_a_video_file_gives_the_frames_ffmpeg_decodes(
    video_client: TestClient, tmp_path: Path
) -> None:
    """An mp4 and the PNG frames PyAV decodes from it make the same session.

    The clip is a phone's portrait clip: stored 320x540, shown turned 90°
    clockwise; the session is the upright 540x320 picture a player shows.
    """
    originals = [np.array(Image.open(path))[:, :320] for path in VIDEO_FRAMES[:4]]
    clip = rotate_mp4(write_mp4(originals, tmp_path / "clip.mp4"), 90)
    with av.open(str(clip)) as container:
        decoded = [
            np.rot90(frame.to_ndarray(format="rgb24"), k=-1) for frame in container.decode(video=0)
        ]
    pngs = []
    for index, pixels in enumerate(decoded):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(("frames", (f"{index}.png", buffer.getvalue(), "image/png")))

    from_file = video_client.post(
        VIDEOS, files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")}
    )
    assert from_file.status_code == 201, from_file.text
    assert from_file.json()["fps"] == 24.0
    described = from_file.json()
    assert (described["frames"], described["width"], described["height"]) == (4, 540, 320)
    from_frames = video_client.post(VIDEOS, files=pngs)
    assert from_frames.status_code == 201, from_frames.text
    answers = []
    for response in (from_file, from_frames):
        video_id = response.json()["video_id"]
        prompt = {"frame_index": 1, "object_id": 4, "points": [[100, 200]], "labels": [1]}
        assert video_client.post(f"{VIDEOS}/{video_id}/prompts", json=prompt).status_code == 200
        answers.append([_frame(line) for line in _stream(video_client, video_id)])
        assert video_client.delete(f"{VIDEOS}/{video_id}").status_code == 204
    _equal(answers[0], answers[1])
    assert [f.frame_index for f in answers[0]] == [1, 2, 3]
    assert all(f.masks.any() for f in answers[0])


def test_remove_reset_and_close(video_client: TestClient, video: str) -> None:
    base = f"{VIDEOS}/{video}"
    for object_id in (3, 5):
        body = {"frame_index": 0, "object_id": object_id, "box": BOX.tolist()}
        assert video_client.post(f"{base}/prompts", json=body).status_code == 200
    removed = video_client.delete(f"{base}/objects/3")
    assert removed.status_code == 200
    assert removed.json()["objects"] == [5]
    assert video_client.delete(f"{base}/objects/3").status_code == 404
    assert video_client.delete(f"{base}/objects/-1").status_code == 404
    nulls = {"mask_format": None, "polygon_epsilon": None}  # null: the defaults (rle)
    again = video_client.post(
        f"{base}/prompts", json={"frame_index": 0, "object_id": 5, "box": BOX.tolist(), **nulls}
    )
    assert again.status_code == 200, again.text
    assert isinstance(again.json()["objects"][0]["mask"], dict)
    lines = _stream(video_client, video, max_frames=1)
    assert [[o["object_id"] for o in line["objects"]] for line in lines] == [[5], [5]]
    assert video_client.post(f"{base}/reset").json()["objects"] == []
    assert video_client.post(f"{base}/propagate", json={}).status_code == 400
    # Misspelt fields are refused by name, not ignored.
    for path, body in (
        ("prompts", {"frame_index": 0, "object_id": 1, "box": BOX.tolist(), "obj_id": 2}),
        ("propagate", {"max_frame": 1}),
    ):
        refused = video_client.post(f"{base}/{path}", json=body)
        assert refused.status_code == 422
        assert [e["loc"][-1] for e in refused.json()["detail"]] == [next(reversed(body))]
    assert video_client.delete(base).status_code == 204
    assert video_client.get(base).status_code == 404
    assert video_client.delete(base).status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"frame_index": 8, "object_id": 1, "box": [0, 0, 9, 9]}, "not a frame"),
        ({"frame_index": 0, "object_id": 1}, "points"),
        ({"frame_index": 0, "object_id": 1, "points": [[1, 2]]}, "labels"),
        ({"frame_index": 0, "object_id": 1, "points": [[1, 2]], "labels": [7]}, "labels"),
        ({"frame_index": 0, "object_id": 1, "box": [[0, 0, 9, 9], [1, 1, 5, 5]]}, "one"),
        ({"frame_index": 0, "object_id": 1, "points": [[[1, 2]], [[3, 4]]]}, "points"),
        ({"frame_index": 0, "object_id": 1, "points": [[1e300, 2]], "labels": [1]}, "points"),
        (
            {"frame_index": 0, "object_id": 1, "box": [0, 0, 9, 9], "clear_old_points": False},
            "box",
        ),
    ],
)
def test_bad_prompts_are_400s_naming_the_field(
    video_client: TestClient, video: str, body: dict, message: str
) -> None:
    response = video_client.post(f"{VIDEOS}/{video}/prompts", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]["msg"]


def test_unknown_sessions_and_bad_uploads(video_client: TestClient) -> None:
    assert video_client.get(f"{VIDEOS}/nope").status_code == 404
    body = {"frame_index": 0, "object_id": 1, "box": [0, 0, 9, 9]}
    assert video_client.post(f"{VIDEOS}/nope/prompts", json=body).status_code == 404
    assert video_client.post(f"{VIDEOS}/nope/propagate", json={}).status_code == 404
    assert video_client.post(f"{VIDEOS}/nope/reset").status_code == 404
    # The contract's 404 for any id that is not a session's: long ones, and before a bad body.
    long = video_client.post(f"{VIDEOS}/{'x' * 500}/reset")
    assert long.status_code == 404
    assert "x" * 64 + "..." in long.json()["detail"]["msg"]
    assert "x" * 65 not in long.json()["detail"]["msg"]
    bad = {"frame_index": 0, "object_id": 1}
    assert video_client.post(f"{VIDEOS}/nope/prompts", json=bad).status_code == 404

    neither = video_client.post(VIDEOS, data={"model_id": ""})
    assert neither.status_code == 400
    both = video_client.post(
        VIDEOS,
        files=[("video", ("a.mp4", b"x", "video/mp4")), *_frames_upload(VIDEO_FRAMES[:1])],
    )
    assert both.status_code == 400
    empty = video_client.post(VIDEOS, files={"video": ("a.mp4", b"", "video/mp4")})
    assert empty.status_code == 400
    assert empty.json()["detail"]["msg"] == "video: the uploaded file is empty."
    garbage = video_client.post(VIDEOS, files={"video": ("a.mp4", b"\0" * 4096, "video/mp4")})
    assert garbage.status_code == 400
    assert "video" in garbage.json()["detail"]["msg"]
    not_image = video_client.post(VIDEOS, files=[("frames", ("a.jpg", b"hello", "image/jpeg"))])
    assert not_image.status_code == 400
    assert "frames[0]" in not_image.json()["detail"]["msg"]
    small = io.BytesIO()
    Image.new("RGB", (64, 64)).save(small, format="PNG")
    mixed = [
        *_frames_upload(VIDEO_FRAMES[:1]),
        ("frames", ("s.png", small.getvalue(), "image/png")),
    ]
    sizes = video_client.post(VIDEOS, files=mixed)
    assert sizes.status_code == 400
    assert "same size" in sizes.json()["detail"]["msg"]
    # The fixture's server takes at most 8 frames per session.
    too_long = video_client.post(VIDEOS, files=_frames_upload([*VIDEO_FRAMES, VIDEO_FRAMES[0]]))
    assert too_long.status_code == 413
    assert "VIDEO_MAX_FRAMES" in too_long.json()["detail"]["msg"]
    # A flood of parts (the multipart parser's own limit, not the clip's) is the same 413.
    flood = [("frames", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(1001)]
    flooded = video_client.post(VIDEOS, files=flood)
    assert flooded.status_code == 413
    assert flooded.json()["detail"]["msg"] == too_long.json()["detail"]["msg"]


def test_sessions_are_bounded_in_number(video_client: TestClient) -> None:
    opened = [_open(video_client, files=_frames_upload(VIDEO_FRAMES[:1])) for _ in range(3)]
    try:
        refused = video_client.post(VIDEOS, files=_frames_upload(VIDEO_FRAMES[:1]))
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert "VIDEO_MAX_SESSIONS" in refused.json()["detail"]["msg"]
    finally:
        for video_id in opened:
            video_client.delete(f"{VIDEOS}/{video_id}")
    again = _open(video_client, files=_frames_upload(VIDEO_FRAMES[:1]))
    video_client.delete(f"{VIDEOS}/{again}")


def test_sessions_are_bounded_in_memory_and_expire(video_engine) -> None:
    """A private VideoSessions on the engine's model: a small budget and a short idle time."""
    from sam2_server.engine.video import VideoSessions
    from sam2_server.engine.video_predictor import FrameStore
    from sam2_server.errors import ServiceError

    frame = FrameStore.frame_bytes(256)
    settings = video_engine.settings.with_(
        video_memory_bytes=5 * frame + frame // 2, video_idle_timeout_s=0.3
    )
    sessions = VideoSessions(
        settings,
        video_engine.models.video_model,
        video_engine.compute.context,
        video_engine.models.video_locks.__getitem__,
    )
    model = video_engine.default_model_id

    def open_frames(count: int) -> str:
        files = [path.open("rb") for path in VIDEO_FRAMES[:count]]
        try:
            return sessions.open(model, frames=files).video_id
        finally:
            for file in files:
                file.close()

    with pytest.raises(ServiceError) as too_big:
        open_frames(8)
    assert status_of(too_big.value) == 413
    assert "VIDEO_MEMORY_BYTES" in too_big.value.message
    first = open_frames(3)
    with pytest.raises(ServiceError) as full:
        open_frames(3)
    assert status_of(full.value) == 503
    assert headers_of(full.value) == {"Retry-After": "30"}
    assert sessions.stats()["bytes"] >= 3 * frame

    deadline = time.monotonic() + 10
    while sessions.stats()["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions.stats()["sessions"] == 0
    assert sessions.stats()["expired"] == 1
    with pytest.raises(ServiceError) as gone:
        sessions.get(first)
    assert status_of(gone.value) == 404
    assert open_frames(3)  # the memory came back


def test_video_routes_need_the_token(video_settings, video_engine) -> None:
    from sam2_server.api import create_app

    app = create_app(video_settings.with_(auth_token="secret"), video_engine, load=False)
    with TestClient(app) as client:
        assert client.post(VIDEOS, files=_frames_upload(VIDEO_FRAMES[:1])).status_code == 401
        assert client.get(f"{VIDEOS}/x").status_code == 401
        assert client.delete(f"{VIDEOS}/x").status_code == 401
        authorised = client.get(f"{VIDEOS}/x", headers={"Authorization": "Bearer secret"})
        assert authorised.status_code == 404


def test_the_schema_names_every_video_operation(video_client: TestClient) -> None:
    schema = video_client.get("/openapi.json").json()
    operations = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {
        "uploadVideo",
        "getVideo",
        "promptVideo",
        "propagateVideo",
        "removeVideoObject",
        "resetVideo",
        "closeVideo",
    } <= operations
    assert "application/x-ndjson" in str(schema["paths"][f"{VIDEOS}/{{video_id}}/propagate"])


def test_stats_and_metrics_count_sessions(video_client: TestClient, video: str) -> None:
    stats = video_client.get("/stats").json()["video"]
    assert stats["sessions"] >= 1
    assert stats["bytes"] >= 8 * 256 * 256 * 3  # the frames, at the test model's input size
    metrics = video_client.get("/metrics").text
    assert "sam2_video_sessions " in metrics
    assert "sam2_video_frames_propagated_total" in metrics
    logged = video_client.get(f"{VIDEOS}/{video}")
    assert logged.status_code == 200
    assert 'route="/v1/videos/{id}"' in video_client.get("/metrics").text


# -- mask_format "polygon" ---------------------------------------------------------------


def _polygon_frame(answer: dict) -> FrameMasks:
    """A frame whose masks are {size, polygons}, drawn back."""
    ids = tuple(o["object_id"] for o in answer["objects"])
    masks = []
    for item in answer["objects"]:
        assert list(item["mask"]) == ["size", "polygons"]
        assert item["mask"]["size"] == [540, 960]
        masks.append(rasterize(item["mask"]["polygons"], *item["mask"]["size"]).astype(bool))
    return FrameMasks(answer["frame_index"], ids, np.stack(masks))


def test_polygon_masks_draw_back_to_the_librarys(
    video_client: TestClient, video: str, video_reference: dict[str, list[FrameMasks]]
) -> None:
    """The oracle's session (the RLE answers equal it, above), answered as polygons."""
    prompts = video_client.post(
        f"{VIDEOS}/{video}/prompts",
        json={"frame_index": 0, "object_id": 1, "points": POINTS.tolist(), "labels": [1, 0]}
        | {"mask_format": "polygon"},
    )
    assert prompts.status_code == 200, prompts.text
    second = video_client.post(
        f"{VIDEOS}/{video}/prompts",
        json={"frame_index": 3, "object_id": 2, "box": BOX.tolist(), "mask_format": "polygon"},
    ).json()
    _equal([_polygon_frame(prompts.json()), _polygon_frame(second)], video_reference["prompts"])
    forward = _stream(video_client, video, mask_format="polygon")
    _equal([_polygon_frame(line) for line in forward], video_reference["forward"])
    simple = _stream(video_client, video, max_frames=1, mask_format="polygon", polygon_epsilon=2)
    assert [line["frame_index"] for line in simple] == [0, 1]
    for line, exact in zip(simple, forward, strict=False):
        assert_within_tolerance(_polygon_frame(line).masks, _polygon_frame(exact).masks, 2)


@pytest.mark.parametrize(
    "extra",
    [
        {"mask_format": "polygon", "polygon_epsilon": -0.5},
        {"mask_format": "polygon", "polygon_epsilon": 1e9},
        {"mask_format": "rle", "polygon_epsilon": 1},
    ],
)
def test_a_bad_polygon_epsilon_is_400_naming_it(
    video_client: TestClient, video: str, extra: dict
) -> None:
    body = {"frame_index": 0, "object_id": 1, "box": [0, 0, 9, 9], **extra}
    for path, sent in (("prompts", body), ("propagate", extra)):
        response = video_client.post(f"{VIDEOS}/{video}/{path}", json=sent)
        assert response.status_code == 400, response.text
        assert "polygon_epsilon" in response.json()["detail"]["msg"]
    nan = video_client.post(
        f"{VIDEOS}/{video}/propagate",
        content=b'{"mask_format": "polygon", "polygon_epsilon": NaN}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 400
    assert "polygon_epsilon" in nan.json()["detail"]["msg"]


def test_a_client_that_leaves_propagation_is_logged_499_and_the_session_is_freed(
    video_settings, video_engine
) -> None:
    """Disconnect after the first frame line (raw ASGI, as a browser's Stop does): the
    request is logged and counted as 499 (the clip's answer never came), not 200; the
    propagation stops and gives its admission back; the session takes prompts again."""
    from sam2_server.api.app import create_app

    app = create_app(video_settings, video_engine, load=False)
    with TestClient(app) as client:
        video_id = _open(client)
        prompt_two_objects(client, video_id)
        lines = leave_mid_answer(
            app,
            f"{VIDEOS}/{video_id}/propagate",
            b"{}",
            leave_after=bool,  # the first frame's line
            settled=lambda: app.state.admission.in_use == 0,  # at the propagation's next frame
        )
        assert orjson.loads(lines[0])["frame_index"] == 0
        assert app.state.admission.in_use == 0
        requests = app.state.metrics.requests
        route = "/v1/videos/{id}/propagate"
        assert requests.labels(route, "499")._value.get() == 1
        assert requests.labels(route, "200")._value.get() == 0
        again = client.post(
            f"{VIDEOS}/{video_id}/prompts",
            json={"frame_index": 1, "object_id": 1, "points": [[10, 10]], "labels": [1]},
        )
        assert again.status_code == 200, again.text
        client.delete(f"{VIDEOS}/{video_id}")
