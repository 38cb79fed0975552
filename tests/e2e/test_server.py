"""A real `sam2-server serve` process on loopback, driven by real clients.

The model is the full hiera-tiny architecture (random weights) resolved by its
Hugging Face id from the temporary cache, so this also covers the CLI, env
configuration and hub resolution; the encoder takes seconds per image on CPU,
which the health test needs.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, image_bytes
from tests.e2e.process import Server, start_server

TOKEN = "e2e-token"


@pytest.fixture(scope="module")
def server(hf_tiny: str) -> Iterator[Server]:
    server = start_server({"AUTH_TOKEN": TOKEN, "MODEL_ID": hf_tiny})
    try:
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)


def curl_segment(server: Server, *fields: str) -> dict:
    """The contract's curl call with these `-F` fields; asserts a 200, returns the body."""
    command = ["curl", "-sS", "-X", "POST", server.url + "/segment-anything-2"]
    command += ["-H", f"Authorization: Bearer {TOKEN}", "-w", "\n%{http_code}"]
    for field in fields:
        command += ["-F", field]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200", body[:300]
    return json.loads(body)


@pytest.fixture(scope="module")
def hf_oracle(hf_tiny):
    """sam2's own from_pretrained on the same repo id, through the same offline cache."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor.from_pretrained(hf_tiny, device="cpu")
    image = Image.open(io.BytesIO(image_bytes("groceries.jpg"))).convert("RGB")
    predictor.set_image(image)
    return predictor


def test_livepeer_sdk_against_the_server(server, hf_oracle):
    from livepeer_ai import Livepeer

    lp = Livepeer(server_url=server.url, http_bearer=TOKEN)
    with open(DATA / "groceries.jpg", "rb") as image:
        result = lp.generate.segment_anything2(
            request={
                "image": {"file_name": "groceries.jpg", "content": image},
                "point_coords": "[[400,250],[120,90]]",
                "point_labels": "[1,0]",
            }
        )
    answer = result.masks_response
    masks = np.array(json.loads(answer.masks), dtype=np.float32)
    scores = np.array(json.loads(answer.scores), dtype=np.float32)
    logits = np.array(json.loads(answer.logits), dtype=np.float32)

    want_masks, want_scores, want_logits = hf_oracle.predict(
        point_coords=np.array([[400, 250], [120, 90]]),
        point_labels=np.array([1, 0]),
        return_logits=True,
    )
    order = np.argsort(want_scores)[::-1]
    np.testing.assert_array_equal(scores, want_scores[order])
    np.testing.assert_array_equal(masks, want_masks[order])
    np.testing.assert_array_equal(logits, want_logits[order])


def test_livepeer_sdk_sees_typed_errors(server):
    from livepeer_ai import Livepeer
    from livepeer_ai.models import errors

    lp = Livepeer(server_url=server.url, http_bearer=TOKEN)
    with pytest.raises(errors.HTTPError) as info:
        lp.generate.segment_anything2(
            request={
                "image": {"file_name": "x.png", "content": b"not an image"},
                "point_coords": "[[1, 2, 3]]",
                "point_labels": "[1]",
            }
        )
    assert "point_coords" in info.value.data.detail.msg

    wrong = Livepeer(server_url=server.url, http_bearer="wrong")
    with pytest.raises(errors.HTTPError) as info:
        wrong.generate.segment_anything2(request={"image": {"file_name": "x.png", "content": b"x"}})
    assert info.value.data.detail.msg == "Invalid bearer token."


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_contract_curl_example(server, hf_tiny):
    answer = curl_segment(
        server,
        f"model_id={hf_tiny}",
        "point_coords=[[120,100],[120,50]]",
        "point_labels=[1,0]",
        f"image=@{DATA / 'groceries.jpg'}",
    )
    assert np.array(json.loads(answer["masks"])).shape == (3, 534, 800)


def test_health_answers_fast_during_inference(server):
    """Three requests keep the encoder busy for several seconds; /health must not wait."""
    data = image_bytes("truck.jpg")
    finished: list[float] = []

    def segment() -> None:
        response = httpx.post(
            server.url + "/segment-anything-2",
            headers={"Authorization": f"Bearer {TOKEN}"},
            data={"point_coords": "[[900, 600]]", "point_labels": "[1]"},
            files={"image": ("truck.jpg", data, "image/jpeg")},
            timeout=300,
        )
        assert response.status_code == 200
        finished.append(time.monotonic())

    workers = [threading.Thread(target=segment) for _ in range(3)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # let the uploads arrive and the first encode start
    latencies = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while any(w.is_alive() for w in workers) and len(latencies) < 200:
            started = time.monotonic()
            assert client.get("/health").json() == {"status": "OK"}
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
    for worker in workers:
        worker.join()
    assert len(finished) == 3
    assert len(latencies) >= 10, "inference ended before health was polled"
    assert max(latencies) < 1.0, f"slowest /health took {max(latencies):.2f} s"


def test_health_answers_fast_while_a_large_answer_is_streamed(server):
    """cars.jpg with logits is a ~120 MB answer, written in chunks off the event loop."""
    data = image_bytes("cars.jpg")
    sizes: list[int] = []

    def segment() -> None:
        with httpx.stream(
            "POST",
            server.url + "/segment-anything-2",
            headers={"Authorization": f"Bearer {TOKEN}"},
            data={"point_coords": "[[900, 600]]", "point_labels": "[1]"},
            files={"image": ("cars.jpg", data, "image/jpeg")},
            timeout=300,
        ) as response:
            assert response.status_code == 200
            assert "content-length" not in response.headers  # streamed
            total = 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                time.sleep(0.001)  # a client reading at its own pace
            sizes.append(total)

    worker = threading.Thread(target=segment)
    worker.start()
    latencies = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while worker.is_alive() and len(latencies) < 2000:
            started = time.monotonic()
            assert client.get("/health").json() == {"status": "OK"}
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
    worker.join()
    assert sizes
    assert sizes[0] > 100_000_000
    assert max(latencies) < 1.0, f"slowest /health took {max(latencies):.2f} s"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_mask_input_as_a_file(server, tmp_path):
    first = httpx.post(
        server.url + "/segment-anything-2",
        headers={"Authorization": f"Bearer {TOKEN}"},
        data={"point_coords": "[[120, 100]]", "point_labels": "[1]", "return_logits": "false"},
        files={"image": ("g.jpg", image_bytes("groceries.jpg"), "image/jpeg")},
        timeout=120,
    ).json()
    logits = json.loads(first["logits"])[:1]
    path = tmp_path / "logits.json"
    path.write_text(json.dumps(logits))
    answer = curl_segment(
        server,
        "point_coords=[[120,100]]",
        "point_labels=[1]",
        "return_logits=false",
        f"mask_input=@{path}",
        f"image=@{DATA / 'groceries.jpg'}",
    )
    assert np.array(json.loads(answer["masks"])).shape == (3, 534, 800)
