"""The web page: `GET /` and its static files under `/web/`.

The page is plain HTML, CSS and JavaScript modules with no build step, shipped
inside the package and read with importlib.resources, so an installed wheel
serves it exactly as a source checkout does. It talks only to this server's
native API (`/v1/images`); nothing is fetched from anywhere else, and the
Content-Security-Policy says so to the browser too.

The files are read once, when the router is built: they are a few kilobytes,
and a fixed set of names means a request path never reaches the filesystem.
`Cache-Control: no-cache` with an ETag makes a browser revalidate each time
(a 304 costs a round trip, not the bytes), so an upgraded server is never
paired with a stale script.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sam2_server.api.paths import WEB_PREFIX
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
# masks. No inline script or style: the page has none.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_web_files() -> dict[str, StaticFile]:
    """Every servable file of the package's `web/` folder, by name."""
    folder = files("sam2_server") / "web"
    loaded = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if not entry.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        loaded[entry.name] = StaticFile(body, CONTENT_TYPES[suffix], etag)
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
