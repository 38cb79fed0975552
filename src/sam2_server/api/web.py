"""The web page (`GET /`, its static files under `/web/`) and the API docs (`GET /docs`).

The page is plain HTML, CSS and JavaScript modules with no build step, shipped
inside the package and read with importlib.resources, so an installed wheel
serves it exactly as a source checkout does. It talks only to this server's
native API (`/v1/images`, `/v1/videos`); nothing is fetched from anywhere else, and the
Content-Security-Policy says so to the browser too.

The files are read once, when the router is built: they are a few kilobytes,
and a fixed set of names means a request path never reaches the filesystem.
`Cache-Control: no-cache` with an ETag makes a browser revalidate each time
(a 304 costs a round trip, not the bytes), so an upgraded server is never
paired with a stale script.

`GET /docs` is FastAPI's Swagger UI page with Swagger UI's own files served
from here too (`/docs/swagger-ui-bundle.js`, ...), not from a CDN: the docs
work without internet, and load nothing from elsewhere. The files are
swagger-ui-dist's, as the pinned `fastapi-swagger` package ships them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response

from sam2_server.api.paths import DOCS_FILES, WEB_PREFIX
from sam2_server.errors import ErrorKind, ServiceError

INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    # Module scripts are refused by browsers unless served with a JavaScript type.
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# Same origin only; blob: and data: for the user's own image and the decoded
# masks, blob: for the user's own video file (video mode plays it in a <video>
# element to show its frames). No inline script or style: the page has none.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# The package whose copy of swagger-ui-dist /docs serves (pinned in pyproject.toml:
# its files are byte-for-byte the npm package's), and the folder they are in.
SWAGGER_UI_PACKAGE = "fastapi_swagger"
SWAGGER_UI_FOLDER = "resources"

# Swagger UI: its own files, and FastAPI's inline script that starts it (allowed
# by its hash, computed per page); data: for the icons inlined in its CSS, blob:
# for an image answer shown by "Try it out", which calls this server only.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' {script_hashes}; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> StaticFile:
        """`body` typed by `name`'s suffix (one of CONTENT_TYPES), its ETag from its bytes."""
        suffix = "." + name.rsplit(".", 1)[-1]
        return cls(body, CONTENT_TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def load_web_files() -> dict[str, StaticFile]:
    """Every servable file of the package's `web/` folder, by name."""
    folder = files("sam2_server") / "web"
    loaded = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if not entry.is_file() or suffix not in CONTENT_TYPES:
            continue
        loaded[entry.name] = StaticFile.of(entry.name, entry.read_bytes())
    if INDEX not in loaded:
        raise RuntimeError(f"sam2_server/web/{INDEX} is missing from the installed package")
    return loaded


def build_web_router() -> APIRouter:
    """`GET /` (the page) and `GET /web/{name}` (its scripts and styles), outside the schema."""
    web_files = load_web_files()
    router = APIRouter(include_in_schema=False)

    @router.api_route("/", methods=["GET", "HEAD"])
    async def index(request: Request) -> Response:
        return _serve(request, web_files[INDEX])

    @router.api_route(WEB_PREFIX + "/{name}", methods=["GET", "HEAD"])
    async def asset(request: Request, name: str) -> Response:
        found = web_files.get(name)
        if found is None:
            raise ServiceError(ErrorKind.NOT_FOUND, f"No such file of the web page: {name[:100]}")
        return _serve(request, found)

    return router


@cache
def load_swagger_ui_files() -> dict[str, StaticFile]:
    """Swagger UI's files for /docs, by their path (read once per process: 1.9 MB)."""
    try:
        folder = files(SWAGGER_UI_PACKAGE) / SWAGGER_UI_FOLDER
    except ModuleNotFoundError as missing:
        raise RuntimeError(
            f"{SWAGGER_UI_PACKAGE} (Swagger UI's files for /docs) is not installed: make install"
        ) from missing
    loaded = {}
    for path in DOCS_FILES:
        name = path.rsplit("/", 1)[-1]
        loaded[path] = StaticFile.of(name, (folder / name).read_bytes())
    return loaded


def build_docs_router(title: str, openapi_url: str) -> APIRouter:
    """`GET /docs` (Swagger UI on `openapi_url`) and its files, all from this server."""
    docs_files = load_swagger_ui_files()
    script, style, icon = DOCS_FILES
    router = APIRouter(include_in_schema=False)

    @router.api_route("/docs", methods=["GET", "HEAD"])
    async def docs(request: Request) -> Response:
        # Absolute, as FastAPI's own /docs: behind a proxy's root_path too.
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=root + script,
            swagger_css_url=root + style,
            swagger_favicon_url=root + icon,
        )
        html = bytes(page.body).decode()
        policy = DOCS_CONTENT_SECURITY_POLICY.format(script_hashes=script_hashes(html))
        headers = {
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": policy,
            "Referrer-Policy": "no-referrer",
        }
        return Response(html, media_type=CONTENT_TYPES[".html"], headers=headers)

    for path, file in docs_files.items():
        router.add_api_route(path, _serving(file), methods=["GET", "HEAD"])
    return router


def _serving(file: StaticFile) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        return _serve(request, file)

    return serve


def script_hashes(html: str) -> str:
    """CSP sources allowing exactly the page's inline scripts, by their SHA-256."""
    digests = (hashlib.sha256(text.encode()).digest() for text in INLINE_SCRIPT.findall(html))
    return " ".join(f"'sha256-{base64.b64encode(digest).decode()}'" for digest in digests)


def _serve(request: Request, file: StaticFile) -> Response:
    headers = {
        "Cache-Control": "no-cache",
        "ETag": file.etag,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Referrer-Policy": "no-referrer",
    }
    if file.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else file.body
    response = Response(body, media_type=file.content_type, headers=headers)
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(file.body))
    return response
