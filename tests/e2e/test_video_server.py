"""A real server process: a propagation streams frame by frame, and stops when
its client leaves (the work stops, the session is free again)."""

from __future__ import annotations

import time

import httpx
import orjson

from tests.conftest import VIDEO_FRAMES, LocalModel
from tests.e2e.process import serving_local

FRAMES = 32


def _frames_stat(url: str) -> int:
    return httpx.get(url + "/stats", timeout=10).json()["video"]["frames_propagated"]


def test_a_client_that_leaves_stops_its_propagation(video_model: LocalModel) -> None:
    with serving_local(video_model, VIDEO_MAX_FRAMES=str(FRAMES)) as server:
        files = [
            ("frames", (f"{i}.jpg", VIDEO_FRAMES[i % 8].read_bytes(), "image/jpeg"))
            for i in range(FRAMES)
        ]
        opened = httpx.post(server.url + "/v1/videos", files=files, timeout=120)
        assert opened.status_code == 201, opened.text
        video = f"{server.url}/v1/videos/{opened.json()['video_id']}"
        prompt = {"frame_index": 0, "object_id": 1, "points": [[300, 200]], "labels": [1]}
        assert httpx.post(video + "/prompts", json=prompt, timeout=60).status_code == 200

        started = time.monotonic()
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", video + "/propagate", json={}) as response,
        ):
            assert response.status_code == 200
            lines = response.iter_lines()
            first = orjson.loads(next(lines))
            second = orjson.loads(next(lines))
            # Frames arrive as they are computed, not at the end.
            assert (first["frame_index"], second["frame_index"]) == (0, 1)
            health = httpx.get(server.url + "/health", timeout=10)
            assert health.json() == {"status": "OK"}
        left_after = time.monotonic() - started

        # The session is released at the frame in progress: a prompt soon succeeds.
        deadline = time.monotonic() + 30
        while True:
            status = httpx.post(video + "/prompts", json=prompt, timeout=60).status_code
            if status == 200 or time.monotonic() > deadline:
                break
            assert status == 409
            time.sleep(0.1)
        assert status == 200
        done = _frames_stat(server.url)
        time.sleep(1.0)
        assert _frames_stat(server.url) == done, "propagation went on after the client left"
        assert done < FRAMES - 4, f"{done} of {FRAMES} frames computed ({left_after:.1f} s)"

        # And a propagation that is read to its end gives every frame.
        response = httpx.post(video + "/propagate", json={"max_frames": 3}, timeout=120)
        assert [orjson.loads(line)["frame_index"] for line in response.text.splitlines()] == [
            0,
            1,
            2,
            3,
        ]
        assert httpx.delete(video, timeout=30).status_code == 204
