"""`api/downloads.py` against hostile URLs, with a real HTTP server on loopback.

A task URL is input from whoever can write a Label Studio task (or a
Roboflow request): it must never make the server fetch an address it was
not told to trust, wait forever, fill its memory, or echo credentials.
"""

from __future__ import annotations

import asyncio
import gzip
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from sam2_server.api.downloads import MAX_REDIRECTS, Downloader
from sam2_server.config import Settings
from sam2_server.errors import ErrorKind, ServiceError

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 100


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class FileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 whose paths answer as the test says."""

    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def serve(self, path: str, body: bytes, content_type: str = "image/png") -> None:
        def send(handler: http.server.BaseHTTPRequestHandler) -> None:
            reply(handler, 200, body, {"Content-Type": content_type})

        self.routes[path] = send

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


def reply(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def files() -> Iterator[FileServer]:
    with file_server() as server:
        yield server


@contextmanager
def file_server() -> Iterator[FileServer]:
    state = FileServer()

    class Answer(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            state.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
            route = state.routes.get(self.path)
            if route is None:
                reply(self, 404, b"not here")
            else:
                route(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def downloader(*hosts: str, **changes: Any) -> Downloader:
    return Downloader(replace(Settings(), **changes), hosts=hosts)


def fetch(loader: Downloader, url: str, headers: dict[str, str] | None = None) -> bytes:
    return asyncio.run(loader.fetch(url, headers))


def refused(loader: Downloader, url: str, headers: dict[str, str] | None = None) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        fetch(loader, url, headers)
    return caught.value


def test_an_allowed_host_is_fetched(files: FileServer) -> None:
    files.serve("/a.png", PNG)
    assert fetch(downloader(files.host), files.url + "/a.png") == PNG


def test_a_host_not_on_the_list_is_refused_before_any_connection(files: FileServer) -> None:
    files.serve("/a.png", PNG)
    error = refused(downloader("example.com"), files.url + "/a.png")
    assert error.kind is ErrorKind.BAD_INPUT
    assert "DOWNLOAD_HOSTS" in error.message
    assert "127.0.0.1" in error.message
    assert files.seen == []


def test_an_allowed_name_admits_its_default_port_only(files: FileServer) -> None:
    files.serve("/a.png", PNG)
    error = refused(downloader("127.0.0.1"), files.url + "/a.png")  # not :port
    assert error.kind is ErrorKind.BAD_INPUT
    assert files.seen == []


def test_localhost_and_127_0_0_1_are_different_names(files: FileServer) -> None:
    """The allow-list holds names: allowing one spelling does not allow the other."""
    files.serve("/a.png", PNG)
    assert refused(downloader(files.host), f"http://localhost:{files.port}/a.png")
    assert refused(downloader(f"localhost:{files.port}"), files.url + "/a.png")
    assert files.seen == []
    assert fetch(downloader(f"localhost:{files.port}"), f"http://localhost:{files.port}/a.png")


@pytest.mark.parametrize(
    ("family", "dead_host"),
    [
        # Most hosts files name ::1 first; Label Studio's runserver listens on IPv4 only.
        pytest.param(socket.AF_INET6, "::1", id="ipv6-first"),
        # 127.0.0.2 is loopback too, but nothing listens there.
        pytest.param(socket.AF_INET, "127.0.0.2", id="dead-ipv4-first"),
    ],
)
def test_localhost_falls_back_past_an_address_nothing_listens_on(
    files: FileServer, monkeypatch: pytest.MonkeyPatch, family: int, dead_host: str
) -> None:
    files.serve("/a.png", PNG)
    real = socket.getaddrinfo

    def dead_first(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        found = real(host, port, *args, **kwargs)
        if host == "localhost":
            address = (dead_host, port, 0, 0) if family == socket.AF_INET6 else (dead_host, port)
            return [(family, socket.SOCK_STREAM, 6, "", address), *found]
        return found

    monkeypatch.setattr(socket, "getaddrinfo", dead_first)
    url = f"http://localhost:{files.port}/a.png"
    assert fetch(downloader(f"localhost:{files.port}"), url) == PNG


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/a.png",
        "gopher://127.0.0.1:70/_x",
        "/etc/passwd",
        "http:///a.png",
    ],
)
def test_only_http_urls_are_fetched(url: str) -> None:
    error = refused(downloader("127.0.0.1", "localhost"), url)
    assert error.kind is ErrorKind.BAD_INPUT
    assert "http" in error.message


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",  # the cloud metadata service
        "[::ffff:169.254.169.254]",  # the same, IPv4-mapped
        "[fe80::1]",  # IPv6 link-local
        "0.0.0.0",  # unspecified: reaches the host itself on Linux
        "224.0.0.1",  # multicast
    ],
)
def test_refused_addresses_stay_refused_when_allowed(host: str) -> None:
    error = refused(downloader(host), f"http://{host}/latest/meta-data/")
    assert error.kind is ErrorKind.BAD_INPUT
    assert "refused" in error.message


def test_a_name_that_resolves_to_the_metadata_service_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS decides the address: a harmless-looking allowed name pointing at 169.254/16."""

    def metadata(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    monkeypatch.setattr(socket, "getaddrinfo", metadata)
    error = refused(downloader("images.example.com"), "http://images.example.com/a.png")
    assert "169.254.169.254" in error.message


def test_a_redirect_to_a_host_not_on_the_list_is_refused(files: FileServer) -> None:
    def away(handler: http.server.BaseHTTPRequestHandler) -> None:
        reply(handler, 302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})

    files.routes["/away"] = away
    error = refused(downloader(files.host), files.url + "/away")
    assert error.kind is ErrorKind.BAD_INPUT
    assert "169.254.169.254" in error.message


def test_a_redirect_to_an_allowed_host_is_followed(files: FileServer) -> None:
    files.serve("/b.png", PNG)

    def moved(handler: http.server.BaseHTTPRequestHandler) -> None:
        reply(handler, 301, headers={"Location": "/b.png"})

    files.routes["/a.png"] = moved
    assert fetch(downloader(files.host), files.url + "/a.png") == PNG


def test_a_redirect_loop_ends(files: FileServer) -> None:
    def loop(handler: http.server.BaseHTTPRequestHandler) -> None:
        reply(handler, 302, headers={"Location": "/loop"})

    files.routes["/loop"] = loop
    error = refused(downloader(files.host), files.url + "/loop")
    assert "redirects" in error.message
    assert len(files.requests_to("/loop")) == MAX_REDIRECTS + 1


def test_credentials_do_not_follow_a_redirect_to_another_host() -> None:
    with file_server() as first, file_server() as second:
        second.serve("/b.png", PNG)

        def elsewhere(handler: http.server.BaseHTTPRequestHandler) -> None:
            reply(handler, 302, headers={"Location": f"http://localhost:{second.port}/b.png"})

        first.routes["/a.png"] = elsewhere
        loader = downloader(first.host, f"localhost:{second.port}")
        assert fetch(loader, first.url + "/a.png", {"Authorization": "Token secret"}) == PNG
        assert first.seen[0].headers["authorization"] == "Token secret"
        assert "authorization" not in second.seen[0].headers


def test_a_declared_oversize_body_is_refused_unread(files: FileServer) -> None:
    files.serve("/big.png", PNG * 20)
    error = refused(downloader(files.host, download_max_bytes=1000), files.url + "/big.png")
    assert error.kind is ErrorKind.TOO_LARGE
    assert "DOWNLOAD_MAX_BYTES" in error.message


def test_an_oversize_body_without_length_is_cut_while_it_streams(files: FileServer) -> None:
    """A chunked body that never ends: refused once past the cap, not read to the end."""
    sent = []

    def endless(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"\0" * 65536
        try:
            for _ in range(2000):  # 128 MiB if nobody stops reading
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent.append(len(chunk))
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    files.routes["/endless"] = endless
    started = time.monotonic()
    error = refused(downloader(files.host, download_max_bytes=200_000), files.url + "/endless")
    assert error.kind is ErrorKind.TOO_LARGE
    assert time.monotonic() - started < 10
    assert sum(sent) < 64 * 1024 * 1024


def test_a_slow_body_is_given_up_at_the_timeout(files: FileServer) -> None:
    def trickle(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        try:
            for _ in range(1000):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    files.routes["/slow"] = trickle
    started = time.monotonic()
    error = refused(downloader(files.host, download_timeout_s=0.5), files.url + "/slow")
    assert time.monotonic() - started < 3
    assert error.kind is ErrorKind.UNAVAILABLE
    assert "DOWNLOAD_TIMEOUT" in error.message


def test_a_server_that_never_answers_is_given_up_at_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        error = refused(
            downloader(f"127.0.0.1:{port}", download_timeout_s=0.5),
            f"http://127.0.0.1:{port}/a.png",
        )
    assert time.monotonic() - started < 3
    assert error.kind is ErrorKind.UNAVAILABLE


def test_a_closed_port_is_a_service_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = refused(downloader(f"127.0.0.1:{port}"), f"http://127.0.0.1:{port}/a.png")
    assert error.kind in (ErrorKind.UNAVAILABLE, ErrorKind.BAD_INPUT)


def test_an_http_error_is_a_bad_request_naming_the_status(files: FileServer) -> None:
    error = refused(downloader(files.host), files.url + "/missing.png")
    assert error.kind is ErrorKind.BAD_INPUT
    assert "404" in error.message


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@{host}/missing.png",
        "http://{host}/missing.png?token=hunter2",
        "http://{host}/missing.png#hunter2",
        "ftp://user:hunter2@{host}/a.png",
        "http://user:hunter2@example.com/a.png",
    ],
)
def test_credentials_in_a_url_are_not_echoed(files: FileServer, url: str) -> None:
    error = refused(downloader(files.host), url.format(host=files.host))
    assert "hunter2" not in error.message
    assert "hunter2" not in str(error)


def test_headers_the_caller_gives_reach_the_server(files: FileServer) -> None:
    files.serve("/a.png", PNG)
    fetch(downloader(files.host), files.url + "/a.png", {"Authorization": "Token abc"})
    assert files.seen[0].headers["authorization"] == "Token abc"
    assert files.seen[0].headers["host"] == files.host


def test_a_server_that_compresses_when_asked_is_still_read(files: FileServer) -> None:
    def compressing(handler: http.server.BaseHTTPRequestHandler) -> None:
        if "gzip" in handler.headers.get("Accept-Encoding", ""):
            reply(handler, 200, gzip.compress(PNG), {"Content-Encoding": "gzip"})
        else:
            reply(handler, 200, PNG)

    files.routes["/a.png"] = compressing
    assert fetch(downloader(files.host), files.url + "/a.png") == PNG
