"""Fault tests on real server processes: shutdown, stalled uploads, clients that
leave, bad settings, models that fail to load.

These use the full hiera-tiny model (seconds per encode on CPU) where work
must be in flight long enough to be interrupted, and fresh images so that
every request really encodes.
"""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.e2e.process import metric, start_server, wait_until

POINT = {"point_coords": "[[300, 200]]", "point_labels": "[1]"}


def fresh_image(n: int, size: tuple[int, int] = (900, 600)) -> bytes:
    """A JPEG no other test sends (so it is not in the cache)."""
    image = Image.new("RGB", size, ((n * 37) % 256, (n * 91) % 256, 120))
    for x in range(0, size[0], 50):
        image.putpixel((x, n % size[1]), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def segment(url: str, n: int, results: list, timeout: float = 120) -> None:
    try:
        response = httpx.post(
            url + "/segment-anything-2",
            data=POINT,
            files={"image": ("f.jpg", fresh_image(n), "image/jpeg")},
            timeout=timeout,
        )
        results.append(response.status_code)
    except httpx.HTTPError as exc:
        results.append(type(exc).__name__)


def stats(url: str) -> dict:
    return httpx.get(url + "/stats", timeout=5).json()


def inflight(url: str) -> int:
    return int(metric(url, "sam2_inflight_requests"))


# -- SIGTERM ---------------------------------------------------------------------------


def test_sigterm_drains_work_in_flight_then_exits(hf_tiny):
    server = start_server({"MODEL_ID": hf_tiny})
    try:
        results: list = []
        workers = [
            threading.Thread(target=segment, args=(server.url, 1000 + i, results)) for i in range(2)
        ]
        for worker in workers:
            worker.start()
        assert wait_until(lambda: inflight(server.url) >= 1, 20)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(server.url + "/health", timeout=2)
        for worker in workers:
            worker.join(120)
        assert results == [200, 200]
        server.process.wait(timeout=30)
    finally:
        server.stop()


def test_drain_deadline_and_second_signal_end_the_process(hf_tiny):
    server = start_server({"MODEL_ID": hf_tiny, "DRAIN_TIMEOUT": "1"})
    try:
        results: list = []
        for i in range(4):  # ~10 s of encoder work on 2 cores
            threading.Thread(
                target=segment, args=(server.url, 2000 + i, results), daemon=True
            ).start()
        assert wait_until(lambda: inflight(server.url) >= 1, 20)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=15)  # deadline 1 s, then the watchdog
        assert time.monotonic() - started < 10
    finally:
        server.stop()

    server = start_server({"MODEL_ID": hf_tiny})
    try:
        results = []
        for i in range(3):
            threading.Thread(
                target=segment, args=(server.url, 3000 + i, results), daemon=True
            ).start()
        assert wait_until(lambda: inflight(server.url) >= 1, 20)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=5)
        assert time.monotonic() - started < 3
    finally:
        server.stop()


# -- time limits and clients that leave -------------------------------------------------


def test_stalled_upload_is_dropped_with_408(reduced_model):
    server = start_server(
        {
            "MODEL_ID": str(reduced_model.checkpoint),
            "MODEL_CONFIG": str(reduced_model.config),
            "BODY_READ_TIMEOUT": "1",
        }
    )
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /segment-anything-2 HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n"
            )
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):  # the server closes the connection
                answer += chunk
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'{"detail":{"msg":' in answer
        assert 0.8 < waited < 10
        assert httpx.get(server.url + "/health", timeout=5).json()["status"] == "OK"
    finally:
        server.stop()


def test_work_for_a_client_that_left_is_abandoned(hf_tiny):
    # A budget of one byte admits one request at a time: the second one waits.
    server = start_server({"MODEL_ID": hf_tiny, "WORK_MEMORY_BYTES": "1"})
    try:
        before = stats(server.url)["encoded_images"]
        results: list = []
        first = threading.Thread(target=segment, args=(server.url, 4000, results))
        first.start()
        assert wait_until(lambda: inflight(server.url) >= 1, 20)
        segment(server.url, 4001, results, timeout=1.0)  # gives up while queued
        first.join(120)
        assert results[0] == "ReadTimeout" or results[1] == 200
        assert 200 in results
        time.sleep(3)  # were it still queued, it would have run by now
        assert stats(server.url)["encoded_images"] - before == 1
        assert inflight(server.url) == 0
    finally:
        server.stop()


# -- start-up ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "args", "fragment"),
    [
        ({"DEVICE": "banana"}, (), "banana"),
        ({"DEVICE": "cuda"}, (), "CUDA"),
        ({"LOG_LEVEL": "loud"}, (), "loud"),
        ({"AUTH_TOKEN": ""}, (), "AUTH_TOKEN"),
        ({"MAX_POINTS": "-3"}, (), "MAX_POINTS"),
        ({"BODY_READ_TIMEOUT": "0"}, (), "BODY_READ_TIMEOUT"),
        ({}, ("--log-level", "chatty"), "chatty"),
    ],
)
def test_bad_setting_is_one_line_and_nonzero_exit(env, args, fragment):
    command = [sys.executable, "-m", "sam2_server.cli", "serve", *args]
    full_env = {**__import__("os").environ, "MODEL_ID": "/nonexistent/x.pt", **env}
    if "DEVICE" not in env:
        full_env["DEVICE"] = "cpu"
    if "LOG_LEVEL" not in env:
        full_env["LOG_LEVEL"] = "info"
    out = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert fragment in lines[0]


def test_auth_off_is_warned_at_start(reduced_model):
    server = start_server(
        {"MODEL_ID": str(reduced_model.checkpoint), "MODEL_CONFIG": str(reduced_model.config)},
        stderr=subprocess.PIPE,
    )
    try:
        server.process.send_signal(signal.SIGTERM)
        _, err = server.process.communicate(timeout=30)
        assert b"auth is off" in err
    finally:
        server.stop()


def test_one_missing_model_leaves_the_others_serving(reduced_model, tmp_path):
    missing = str(tmp_path / "gone" / "sam2.1_hiera_tiny.pt")
    good = str(reduced_model.checkpoint)
    server = start_server(
        {"MODEL_ID": f"{good},{missing}", "MODEL_CONFIG": str(reduced_model.config)}
    )
    try:
        health = httpx.get(server.url + "/health", timeout=5).json()
        assert health["status"] == "OK"
        assert missing in health["unavailable"]
        files = {"image": ("f.jpg", fresh_image(5000, (64, 48)), "image/jpeg")}
        ok = httpx.post(server.url + "/segment-anything-2", data=POINT, files=files, timeout=60)
        assert ok.status_code == 200
        gone = httpx.post(
            server.url + "/segment-anything-2",
            data={**POINT, "model_id": missing},
            files=files,
            timeout=60,
        )
        assert gone.status_code == 503
        assert missing in gone.json()["detail"]["msg"]
    finally:
        server.stop()


def test_exit_on_load_error(tmp_path, reduced_model):
    missing = str(tmp_path / "sam2.1_hiera_tiny.pt")
    server = start_server(
        {"MODEL_ID": missing, "MODEL_CONFIG": str(reduced_model.config)},
        "--exit-on-load-error",
        wait_for=None,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = server.process.communicate(timeout=60)
        assert server.process.returncode == 1
        assert b"Traceback" not in err
        assert missing.encode() in err
    finally:
        server.stop()
