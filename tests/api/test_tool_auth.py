"""Each annotation tool's surface takes the token the way its client sends it.

The guard answers before any body is read (except a JSON body that may carry
Roboflow's `api_key`), on the paths of each surface, with the same token:
Label Studio's HTTP Basic password, X-AnyLabeling's `Token` header, Roboflow's
`api_key`, and the bearer header everywhere. OPEN_SURFACES opens one surface by
name and no other.
"""

from __future__ import annotations

import base64

import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sam2_server.api.app import surfaces
from sam2_server.api.guard import RequestGuard
from sam2_server.config import Settings

TOKEN = "s3cret-token"


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"path": request.url.path, "body": len(body)})


def guarded(**settings: object) -> TestClient:
    config = Settings(auth_token=TOKEN, max_request_bytes=10_000, **settings)  # type: ignore[arg-type]
    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    app.add_middleware(
        RequestGuard,
        auth_token=config.auth_token,
        surfaces=surfaces(config),
        max_request_bytes=config.max_request_bytes,
    )
    return TestClient(app)


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


BEARER = {"Authorization": f"Bearer {TOKEN}"}
SURFACE_PATHS = (
    "/labelstudio/predict",
    "/api/functions",
    "/api/function_invocations",
    "/xanylabeling/v1/predict",
    "/sam2/segment_image",
    "/segment-anything-2",
    "/v1/images",
)


@pytest.mark.parametrize("path", SURFACE_PATHS)
def test_every_surface_refuses_no_token_and_takes_the_bearer(path: str) -> None:
    client = guarded()
    assert client.post(path, json={}).status_code == 401
    assert client.post(path, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post(path, json={}, headers=BEARER).status_code == 200


def test_label_studio_takes_the_token_as_the_basic_password() -> None:
    client = guarded()
    answer = client.post("/labelstudio/predict", json={}, headers=basic("anyone", TOKEN))
    assert answer.status_code == 200
    refused = client.post("/labelstudio/predict", json={}, headers=basic(TOKEN, "wrong"))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic")
    garbage = client.post("/labelstudio/health", headers={"Authorization": "Basic %%%not-base64"})
    assert garbage.status_code == 401
    # Its webhooks come without credentials; the route only acknowledges them.
    assert client.post("/labelstudio/webhook", json={}).status_code == 200
    # Basic is Label Studio's way only: the native API does not take it.
    assert client.post("/v1/images", headers=basic("x", TOKEN)).status_code == 401


def test_x_anylabeling_takes_its_token_header_and_answers_in_its_shape() -> None:
    client = guarded()
    assert client.get("/xanylabeling/v1/models", headers={"Token": TOKEN}).status_code == 200
    refused = client.get("/xanylabeling/v1/models", headers={"Token": "wrong"})
    assert refused.status_code == 401
    assert refused.json()["success"] is False
    assert refused.json()["error"]["code"] == "UNAUTHORIZED"
    assert client.get("/v1/images/x", headers={"Token": TOKEN}).status_code == 401
    # Its server's /health is open, as the rest of the API's /health is.
    assert client.get("/xanylabeling/health").status_code == 200


def test_roboflow_takes_api_key_in_the_query_or_the_json_body() -> None:
    client = guarded()
    assert client.post(f"/sam2/segment_image?api_key={TOKEN}", json={}).status_code == 200
    assert client.post("/sam2/segment_image?api_key=wrong", json={}).status_code == 401
    body = {"api_key": TOKEN, "image": {"type": "base64", "value": "AAAA"}}
    answer = client.post("/sam2/segment_image", json=body)
    assert answer.status_code == 200
    assert answer.json()["body"] == len(orjson.dumps(body))  # the body reaches the route whole
    assert client.post("/sam2/segment_image", json={"api_key": "wrong"}).status_code == 401
    assert client.post("/sam2/segment_image", json={"api_key": 7}).status_code == 401
    assert (
        client.post(
            "/sam2/segment_image", content=b"[1]", headers={"content-type": "application/json"}
        ).status_code
        == 401
    )
    refused = client.post("/sam2/segment_image", json={})
    assert refused.status_code == 401
    assert "message" in refused.json()
    # A body over the limit is a 413 even while the key is looked for in it.
    big = {"api_key": TOKEN, "pad": "x" * 20_000}
    assert client.post("/sam2/segment_image", json=big).status_code == 413
    assert client.post(f"/v1/images?api_key={TOKEN}").status_code == 401


def test_open_surfaces_open_only_the_surface_named() -> None:
    client = guarded(open_surfaces=("cvat",))
    assert client.get("/api/functions").status_code == 200
    assert client.post("/api/function_invocations", json={}).status_code == 200
    # A token that is sent is still checked.
    wrong = {"Authorization": "Bearer wrong"}
    assert client.post("/api/function_invocations", json={}, headers=wrong).status_code == 401
    for path in ("/labelstudio/predict", "/xanylabeling/v1/predict", "/sam2/segment_image"):
        assert client.post(path, json={}).status_code == 401, path
    assert client.post("/v1/images").status_code == 401


def test_without_a_token_every_surface_is_open() -> None:
    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    app.add_middleware(
        RequestGuard, auth_token=None, surfaces=surfaces(Settings()), max_request_bytes=1000
    )
    client = TestClient(app)
    for path in SURFACE_PATHS:
        assert client.post(path, json={}).status_code == 200, path


def test_open_surfaces_are_read_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env({"OPEN_SURFACES": "cvat, LabelStudio"}).open_surfaces == (
        "cvat",
        "labelstudio",
    )
    with pytest.raises(SystemExit, match="OPEN_SURFACES names livepeer"):
        Settings.from_env({"OPEN_SURFACES": "livepeer"})
