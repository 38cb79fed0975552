"""Health states, version, OpenAPI names, and the api/ → torch boundary."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import threading

import numpy as np
from fastapi.testclient import TestClient

from sam2_server import __version__
from sam2_server.api import create_app
from sam2_server.config import Settings
from sam2_server.domain import Prediction, Prompt
from sam2_server.errors import ErrorKind, ServiceError
from tests.api.test_errors import PNG, assert_error


class SlowLoader:
    """A stand-in for the engine whose load waits for the test's signal."""

    def __init__(self, fail: bool = False) -> None:
        self.status = "LOADING"
        self.served_model_ids = ("m",)
        self.default_model_id = "m"
        self.error: str | None = None
        self.release = threading.Event()
        self.fail = fail

    def load(self) -> None:
        self.release.wait(10)
        if self.fail:
            self.status, self.error = "ERROR", "weights not found"
            raise RuntimeError(self.error)
        self.status = "OK"

    def unavailable(self) -> dict[str, str]:
        return {"m": self.error} if self.error else {}

    def image_size(self, image_bytes: bytes) -> tuple[int, int]:
        return (2, 2)

    def stats(self) -> dict:
        return {}

    def segment(self, model_id: str, image_bytes: bytes, prompt: Prompt, *_) -> Prediction:
        if self.error:
            raise ServiceError(ErrorKind.UNAVAILABLE, f"{model_id} is unavailable: {self.error}")
        ones = np.ones((3, 2, 2), np.float32)
        return Prediction(ones, np.array([0.9, 0.5, 0.1], np.float32), ones)


def wait_for(client: TestClient, status: str) -> None:
    for _ in range(200):
        if client.get("/health").json()["status"] == status:
            return
        threading.Event().wait(0.02)
    raise AssertionError(f"health never became {status}")


def test_health_loading_then_ok_and_503_while_loading():
    segmenter = SlowLoader()
    with TestClient(create_app(Settings(), segmenter)) as client:
        assert client.get("/health").json() == {"status": "LOADING"}
        response = client.post("/segment-anything-2", files={"image": PNG})
        assert_error(response, 503, "loading")
        assert response.headers["retry-after"] == "5"
        segmenter.release.set()
        wait_for(client, "OK")
        assert client.post("/segment-anything-2", files={"image": PNG}).status_code == 200


def test_health_error_when_loading_fails():
    segmenter = SlowLoader(fail=True)
    segmenter.release.set()
    with TestClient(create_app(Settings(), segmenter)) as client:
        wait_for(client, "ERROR")
        assert client.get("/health").json() == {
            "status": "ERROR",
            "unavailable": {"m": "weights not found"},
        }
        response = client.post("/segment-anything-2", files={"image": PNG})
        assert_error(response, 503, "weights not found")


def test_version(client, reduced_settings):
    assert client.get("/version").json() == {
        "pipeline": "segment-anything-2",
        "model_id": reduced_settings.model_ids[0],
        "version": __version__,
    }


def test_openapi_names_match_the_contract(client):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/segment-anything-2"]["post"]
    assert operation["operationId"] == "genSegmentAnything2"
    assert operation["tags"] == ["generate"]
    body_ref = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    assert body_ref.endswith("/Body_genSegmentAnything2")
    responses = operation["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/MasksResponse"
    )
    for code in ("400", "401", "500"):
        assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/HTTPError"
        )
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/HTTPValidationError"
    )
    body = schema["components"]["schemas"]["Body_genSegmentAnything2"]
    assert body["required"] == ["image"]
    assert set(body["properties"]) == {
        "image",
        "model_id",
        "point_coords",
        "point_labels",
        "box",
        "mask_input",
        "multimask_output",
        "return_logits",
        "normalize_coords",
        "mask_format",  # ours: the native answer on the Livepeer route (optional)
    }
    # Plain strings, not anyOf[string, null]: the go code generator reads OpenAPI 3.0 types.
    for name in ("point_coords", "point_labels", "box", "mask_input"):
        assert body["properties"][name]["type"] == "string"
    assert body["properties"]["return_logits"]["default"] is True
    image = body["properties"]["image"]
    assert (image["type"], image["format"]) == ("string", "binary")
    assert operation["security"] == [{"HTTPBearer": []}]


def test_http_layer_never_imports_torch():
    code = (
        "import sys; import sam2_server.api, sam2_server.codecs, sam2_server.cli; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stats_count_cache_hits_and_misses(client):
    from tests.api.test_errors import uncached_png

    image = uncached_png()
    before = client.get("/stats").json()
    for _ in range(3):
        assert client.post("/segment-anything-2", files={"image": image}).status_code == 200
    after = client.get("/stats").json()
    assert after["cache"]["misses"] - before["cache"]["misses"] == 1
    assert after["cache"]["hits"] - before["cache"]["hits"] == 2
    assert after["encoded_images"] - before["encoded_images"] == 1
    assert after["precision"] == "fp32"
    assert after["encoder_backend"] == "torch"
    # What the precision was decided on: this CPU's name and features.
    assert set(after["cpu_features"]) == {"model", "avx2", "avx512", "bf16", "amx"}
    assert after["cache"]["bytes"] <= after["cache"]["max_bytes"]


def test_docs_are_served_from_the_package_with_a_strict_policy():
    """/docs is Swagger UI with its files from this server (no CDN), open with
    auth on like /docs always was; the page's one inline script is allowed by
    its hash and nothing else by the policy. FastAPI's CDN-backed /redoc is gone."""
    from importlib.resources import files

    app = create_app(Settings(auth_token="secret"), SlowLoader(), load=False)
    with TestClient(app) as client:
        docs = client.get("/docs")
        assert docs.status_code == 200
        assert docs.headers["content-type"].startswith("text/html")
        assert "//" not in docs.text.replace("<!--", "")  # no URL of another host
        scripts = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
        assert len(scripts) == 1
        assert "url: '/openapi.json'" in scripts[0]
        digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
        assert docs.headers["content-security-policy"] == (
            f"default-src 'self'; script-src 'self' 'sha256-{digest}'; "
            "img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        # Behind a proxy's root_path, every URL of the page follows it, as FastAPI's own.
        proxied = TestClient(app, root_path="/sam2").get("/docs").text
        assert "url: '/sam2/openapi.json'" in proxied
        assert 'src="/sam2/docs/swagger-ui-bundle.js"' in proxied

        bundled = files("fastapi_swagger") / "resources"
        for path, kind in [
            ("/docs/swagger-ui-bundle.js", "text/javascript"),
            ("/docs/swagger-ui.css", "text/css"),
            ("/docs/favicon-32x32.png", "image/png"),
        ]:
            assert f'"{path}"' in docs.text
            asset = client.get(path)
            assert asset.status_code == 200
            assert asset.headers["content-type"].startswith(kind)
            assert asset.content == (bundled / path.rsplit("/", 1)[1]).read_bytes()
            again = client.get(path, headers={"If-None-Match": asset.headers["etag"]})
            assert again.status_code == 304
        assert b'PACKAGE_VERSION:"5.' in client.get("/docs/swagger-ui-bundle.js").content

        assert client.head("/docs").status_code == 200
        for gone in ("/redoc", "/docs/oauth2-redirect", "/docs/nope.js"):
            assert client.get(gone).status_code == 404
        # Each file is a metrics route of its own, not "other".
        metrics = client.get("/metrics", headers={"Authorization": "Bearer secret"}).text
        for route in ("/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"):
            assert f'sam2_requests_total{{route="{route}",status="200"}}' in metrics


def test_every_reference_in_the_openapi_document_resolves(client):
    """Client generators follow every `$ref` from the document's root: none may dangle
    (a schema embedded with its own `$defs` would)."""
    schema = client.get("/openapi.json").json()
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert len(refs) > 50
    for ref in refs:
        assert ref.startswith("#/"), ref
        target: object = schema
        for part in ref[2:].split("/"):
            assert isinstance(target, dict), f"dangling {ref}"
            assert part in target, f"dangling {ref}"
            target = target[part]
    propagate = schema["paths"]["/v1/videos/{video_id}/propagate"]["post"]["responses"]["200"]
    ndjson = propagate["content"]["application/x-ndjson"]["schema"]
    assert ndjson == {"$ref": "#/components/schemas/FrameResponse"}
