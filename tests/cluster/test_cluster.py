"""The cluster on a real local Ray: 2 engine replicas of the small video-test model.

One `sam2-server serve --replicas 2` for the module (about 15 s to start on
two cores), as a user runs it; the replicas reserve
one CPU each, so each computes on one thread, and the single-process answers
they are compared with are computed on one thread too (PyTorch's sums are
not bit-identical across thread counts).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import psutil
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from sam2_server.api import create_app
from sam2_server.client import image_id_of
from sam2_server.domain import FrameMasks
from sam2_server.engine import Engine
from tests.api.test_videos import _equal, _frame, _frames_upload, prompt_two_objects
from tests.conftest import DATA
from tests.e2e.process import Server, start_server
from tests.video_reference import POINTS

pytestmark = pytest.mark.cluster

ray = pytest.importorskip("ray")

VIDEOS = "/v1/videos"


@pytest.fixture(scope="module")
def cluster_server(video_model) -> Iterator[Server]:
    """`sam2-server serve --replicas 2` as a user starts it, with the video tests' limits."""
    server = start_server(
        {"VIDEO_MAX_SESSIONS": "3", "VIDEO_MAX_FRAMES": "8"},
        *("--model-id", str(video_model.checkpoint), "--model-config", str(video_model.config)),
        *("--replicas", "2"),
        wait_for=None,  # Serve's proxy answers 404 in plain text until the app is deployed
    )
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            _wait(lambda: client.get("/health").json()["status"] == "OK", 180, "health OK")
            _wait(lambda: len(client.get("/stats").json()["replicas"]) == 2, 120, "two replicas")
        yield server
    finally:
        server.process.send_signal(signal.SIGTERM)  # the CLI takes the Ray cluster down
        try:
            assert server.process.wait(timeout=90) == 0
        finally:
            server.stop()


@pytest.fixture(scope="module")
def cluster(cluster_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster_server.url, timeout=120) as client:
        yield client


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def one_server(video_settings) -> Iterator[TestClient]:
    """A single server with the cluster's settings, computing on one thread as a replica does.

    Its own engine and client, built while torch is set to one thread: a thread
    fixes its OpenMP thread count when it first computes, so the session's
    shared engine (its threads made earlier, with two) would not do.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = Engine(video_settings)
        engine.load()
        with TestClient(create_app(video_settings, engine, load=False)) as client:
            yield client
    finally:
        torch.set_num_threads(threads)


def _png(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A distinct small photo: a crop of a test photo at a seeded offset."""
    photo = Image.open(DATA / "cars.jpg").convert("RGB")
    rng = np.random.default_rng(seed)
    left = int(rng.integers(0, photo.width - size[0]))
    top = int(rng.integers(0, photo.height - size[1]))
    buffer = io.BytesIO()
    photo.crop((left, top, left + size[0], top + size[1])).save(buffer, "PNG")
    return buffer.getvalue()


def _click(client: Any, image: bytes, x: int = 100, y: int = 80) -> Any:
    return client.post(
        "/segment-anything-2",
        files={"image": ("photo.png", image, "image/png")},
        data={"point_coords": f"[[{x},{y}]]", "point_labels": "[1]"},
    )


def _stats(cluster: httpx.Client) -> dict[str, Any]:
    time.sleep(1.5)  # the replicas report twice a second
    return cluster.get("/stats").json()


# A Ray session's directory, as its processes name it on their command lines
# (--session-dir=..., --raylet_socket_name=.../sockets/raylet, --logs-dir=...).
_SESSION_DIR = re.compile(r"/[^\s=,]*/session_[0-9_-]+")
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _on_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket bound to 127.0.0.1 shows as ::ffff:127.0.0.1
    return any(ip in network for network in _LOOPBACK)


def _cluster_processes(server: Server) -> dict[int, psutil.Process]:
    """The server, every process under it, and every process of its Ray session.

    Ray's GCS, raylet, agents and workers start under the server, but a process
    that outlives its parent is re-parented: those are found by the session
    directory on their command lines (the workers rename themselves `ray::...`,
    but they are the raylet's children).
    """
    root = psutil.Process(server.process.pid)
    found = {p.pid: p for p in (root, *root.children(recursive=True))}
    sessions: set[str] = set()
    for process in found.values():
        with contextlib.suppress(psutil.Error):
            sessions.update(_SESSION_DIR.findall(" ".join(process.cmdline())))
    assert sessions, "no Ray session found under the server"
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if any(session in cmdline for session in sessions):
            found[process.pid] = process
            with contextlib.suppress(psutil.Error):
                found.update((p.pid, p) for p in process.children(recursive=True))
    return found


def _label(cmdline: list[str]) -> str:
    """`gcs_server --log_dir=...`, `python -u monitor.py`, `ray::ServeReplica:...`."""
    return " ".join(os.path.basename(arg) if arg.startswith("/") else arg for arg in cmdline[:3])[
        :80
    ]


def test_a_local_cluster_listens_on_loopback_only(cluster_server: Server) -> None:
    """Started with --host 127.0.0.1, no process of the cluster listens beyond loopback.

    Ray's services run code for whoever reaches them: a local cluster keeps all
    of them on 127.0.0.1 (cluster/loopback.py). First in the module, while every
    replica is the one that started with it.
    """
    listening: list[tuple[str, int, str]] = []
    processes = _cluster_processes(cluster_server)
    for process in processes.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            name = _label(process.cmdline())
            listening += [
                (c.laddr.ip, c.laddr.port, name)
                for c in process.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
    names = " ".join(name for _, _, name in listening)
    # Not vacuous: the API, and Ray's own servers, were seen.
    assert ("127.0.0.1", cluster_server.port) in {(ip, port) for ip, port, _ in listening}
    for ray_server in ("gcs_server", "raylet", "ServeReplica"):
        assert ray_server in names, names
    exposed = sorted(item for item in listening if not _on_loopback(item[0]))
    assert not exposed, "\n".join(f"{ip}:{port} {name}" for ip, port, name in exposed)


def test_answers_equal_one_server(cluster: httpx.Client, one_server: TestClient) -> None:
    image = _png(100)
    expected = _click(one_server, image)
    native_expected = one_server.post(
        f"/v1/images/{image_id_of(image)}/segment", json={"points": [[60, 50]], "labels": [1]}
    )
    assert expected.status_code == 200
    answer = _click(cluster, image)
    assert answer.status_code == 200, answer.text
    assert answer.content == expected.content

    upload = cluster.post("/v1/images", files={"image": ("photo.png", image, "image/png")})
    assert upload.status_code == 200, upload.text
    assert upload.json()["image_id"] == image_id_of(image)
    assert upload.json()["cached"] is True  # routed to the replica that just encoded it
    native = cluster.post(
        f"/v1/images/{image_id_of(image)}/segment", json={"points": [[60, 50]], "labels": [1]}
    )
    assert native.status_code == 200, native.text
    # Equal but for `answer_id`, which names each answer anew (random, per server).
    answer, expected_answer = native.json(), native_expected.json()
    assert answer.pop("answer_id") != expected_answer.pop("answer_id")
    assert answer == expected_answer


def test_six_images_with_more_clicks_are_encoded_six_times(cluster: httpx.Client) -> None:
    before = _stats(cluster)
    images = [_png(seed) for seed in range(6)]
    for image in images:
        assert _click(cluster, image).status_code == 200
    for image in images:  # more clicks, on the Livepeer route and by id
        assert _click(cluster, image, 30, 40).status_code == 200
        upload = cluster.post("/v1/images", files={"image": ("photo.png", image, "image/png")})
        assert upload.json()["cached"] is True
        for x in (10, 50, 90):
            answer = cluster.post(
                f"/v1/images/{image_id_of(image)}/segment",
                json={"points": [[x, 40]], "labels": [1], "return_logits": False},
            )
            assert answer.status_code == 200, answer.text
    after = _stats(cluster)
    assert after["encoded_images"] - before["encoded_images"] == 6
    assert after["cache"]["hits"] - before["cache"]["hits"] == 6 * 2  # a click and an upload
    assert after["prompts_by_image_id"] - before["prompts_by_image_id"] == 6 * 3
    worked = {
        r["replica"]: r["encoded_images"]
        - next(
            (b["encoded_images"] for b in before["replicas"] if b["replica"] == r["replica"]),
            0,
        )
        for r in after["replicas"]
    }
    assert sorted(worked.values()) != [0, 6], worked  # both replicas encoded some
    assert sum(worked.values()) == 6


def test_metrics_are_labelled_by_replica(cluster: httpx.Client) -> None:
    text = cluster.get("/metrics").text
    replicas = {r["replica"] for r in cluster.get("/stats").json()["replicas"]}
    assert "sam2_cluster_replicas 2.0" in text
    for replica in replicas:
        assert f'replica="{replica}"' in text
    requests = [line for line in text.splitlines() if line.startswith("sam2_requests_total{")]
    assert requests
    assert all('replica="' in line for line in requests)


def _session(client: Any) -> tuple[str, list[FrameMasks]]:
    """Open the bedroom clip, prompt two objects at once, propagate: every answer."""
    opened = client.post(VIDEOS, files=_frames_upload())
    assert opened.status_code == 201, opened.text
    video = opened.json()["video_id"]
    # At once: the router may not have heard of the new session yet.
    first, second = prompt_two_objects(client, video)
    with client.stream("POST", f"{VIDEOS}/{video}/propagate", json={}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [orjson.loads(line) for line in response.iter_lines() if line]
    return video, [_frame(answer) for answer in (first, second, *lines)]


def test_a_video_session_follows_its_replica(cluster: httpx.Client, one_server: TestClient) -> None:
    video, expected = _session(one_server)
    one_server.delete(f"{VIDEOS}/{video}")
    video, answers = _session(cluster)
    assert cluster.delete(f"{VIDEOS}/{video}").status_code == 204
    assert cluster.get(f"{VIDEOS}/{video}").status_code == 404
    _equal(answers, expected)
    assert len(answers) == 2 + 8
    assert all(frame.masks.reshape(2, -1).any(axis=1).all() for frame in answers[2:])


def test_a_killed_replica_is_replaced_and_requests_keep_succeeding(cluster: httpx.Client) -> None:
    images = [_png(seed) for seed in (200, 201)]
    for image in images:  # one on each replica: Ray sends a new id to the one with fewer
        upload = cluster.post("/v1/images", files={"image": ("photo.png", image, "image/png")})
        assert upload.status_code == 200, upload.text
    replicas = _stats(cluster)["replicas"]
    victim = replicas[0]
    os.kill(victim["pid"], signal.SIGKILL)

    # At once, while Ray's router may still pick the dead replica: every image still
    # answers by id (the survivor encodes the victim's from the kept upload).
    for image in images:
        answer = cluster.post(
            f"/v1/images/{image_id_of(image)}/segment", json={"points": [[50, 50]], "labels": [1]}
        )
        assert answer.status_code == 200, answer.text
    assert _click(cluster, _png(202)).status_code == 200

    def replaced() -> bool:
        ids = {r["replica"] for r in cluster.get("/stats").json()["replicas"]}
        return len(ids) == 2 and victim["replica"] not in ids

    _wait(replaced, 120, "Ray to replace the killed replica")
    assert cluster.get("/health").json() == {"status": "OK"}
    for seed in (203, 204, 205):
        answer = _click(cluster, _png(seed))
        assert answer.status_code == 200, answer.text


def test_a_client_that_leaves_stops_the_replicas_propagation(cluster: httpx.Client) -> None:
    opened = cluster.post(VIDEOS, files=_frames_upload())
    assert opened.status_code == 201, opened.text
    video = opened.json()["video_id"]
    prompt = {"frame_index": 0, "object_id": 1, "points": POINTS.tolist(), "labels": [1, 0]}
    assert cluster.post(f"{VIDEOS}/{video}/prompts", json=prompt).status_code == 200
    before = _stats(cluster)["video"]["frames_propagated"]
    with cluster.stream("POST", f"{VIDEOS}/{video}/propagate", json={}) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # one frame, then the client is gone
    # The session takes requests again (a propagation still running would be a 409) ...
    _wait(
        lambda: cluster.post(f"{VIDEOS}/{video}/prompts", json=prompt).status_code == 200,
        30,
        "the session to be free again",
    )
    computed = _stats(cluster)["video"]["frames_propagated"] - before
    time.sleep(1.0)
    # ... and computes nothing more: fewer than the clip's 8 frames were computed.
    assert _stats(cluster)["video"]["frames_propagated"] - before == computed
    assert computed < 8, computed
    assert cluster.delete(f"{VIDEOS}/{video}").status_code == 204
