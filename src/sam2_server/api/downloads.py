"""Downloading a tool's image by URL without becoming a proxy into the network.

Label Studio tasks name their image by URL, and Roboflow's SDK may too. A
URL in a request must never make the server fetch an arbitrary address
(SSRF: a cloud's metadata service, an admin page on loopback), so:

- only `http` and `https`, and only hosts on the allow-list (DOWNLOAD_HOSTS,
  plus the Label Studio host the operator or Label Studio's /setup names);
- the name is resolved once and the connection goes to the address that was
  checked (no DNS rebinding between check and connect); link-local
  (169.254.0.0/16, where clouds serve credentials), multicast and
  unspecified addresses are refused even for an allowed host;
- redirects are followed only to allowed hosts, at most `MAX_REDIRECTS`;
- the body is capped (DOWNLOAD_MAX_BYTES) while it streams, and the whole
  download has one deadline (DOWNLOAD_TIMEOUT).

`RememberedUrls` maps a URL to the SHA-256 of what it gave, so a second
click on the same task neither downloads nor encodes again while the
embedding is cached.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import httpx

from sam2_server.config import Settings
from sam2_server.errors import ErrorKind, ServiceError, bad_request

MAX_REDIRECTS = 3
REMEMBER_S = 3600.0  # how long a URL's image id is trusted without downloading again
REMEMBER_URLS = 4096


class Downloader:
    """Fetches image bytes from allowed hosts only (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        hosts: Iterable[str] = (),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.max_bytes = settings.download_max_bytes
        self.timeout_s = settings.download_timeout_s
        self._hosts = {_host_key(h) for h in (*settings.download_hosts, *hosts) if h}
        self._transport = transport

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(self._hosts)

    def allow(self, url_or_host: str) -> None:
        """Add a host (or a URL's host) to the allow-list: the Label Studio that called."""
        self._hosts.add(_host_key(url_or_host))

    def allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and _url_key(url) in self._hosts

    async def fetch(self, url: str, headers: Mapping[str, str] | None = None) -> bytes:
        """The body at `url`; a ServiceError (400, 413 or 503) saying why when refused."""
        try:
            return await asyncio.wait_for(self._fetch(url, dict(headers or {})), self.timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError(
                ErrorKind.UNAVAILABLE,
                f"downloading {_shown(url)} took longer than {self.timeout_s:g} s "
                "(DOWNLOAD_TIMEOUT)",
                retry_after_s=1,
            ) from None

    async def _fetch(self, url: str, headers: dict[str, str]) -> bytes:
        # Ask for the bytes as stored: the cap counts the wire, and encoded bodies are refused.
        headers = {**headers, "accept-encoding": "identity"}
        async with httpx.AsyncClient(
            transport=self._transport, follow_redirects=False, trust_env=False, timeout=None
        ) as client:
            for _ in range(MAX_REDIRECTS + 1):
                response = await self._send(client, url, headers)
                try:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        target = urljoin(url, location)
                        if _crosses_origin(url, target):
                            # As browsers and requests do: credentials stay with their host.
                            headers = {
                                k: v
                                for k, v in headers.items()
                                if k.lower() not in ("authorization", "cookie")
                            }
                        url = target
                        continue
                    if response.status_code != 200:
                        raise bad_request(
                            f"downloading {_shown(url)} failed: HTTP {response.status_code}"
                        )
                    return await self._read(response, url)
                finally:
                    await response.aclose()
        raise bad_request(f"downloading {_shown(url)}: more than {MAX_REDIRECTS} redirects")

    async def _send(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str]
    ) -> httpx.Response:
        """The response from the first checked address of the URL's host that connects."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request(f"only http(s) image URLs can be downloaded, got {_shown(url)}")
        if _url_key(url) not in self._hosts:
            allowed = ", ".join(sorted(self._hosts)) or "none"
            raise bad_request(
                f"{parts.hostname} is not a host this server downloads from (allowed: "
                f"{allowed}); add it to DOWNLOAD_HOSTS"
            )
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host_header = parts.netloc.rpartition("@")[2]
        failure = ""
        for address in await _checked_addresses(parts.hostname, port):
            request = client.build_request(
                "GET",
                httpx.URL(url).copy_with(host=address, port=port),
                headers={**headers, "host": host_header},
                extensions={"sni_hostname": parts.hostname},
            )
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                failure = str(exc) or type(exc).__name__
            except httpx.TransportError as exc:
                raise ServiceError(
                    ErrorKind.UNAVAILABLE,
                    f"downloading {_shown(url)} failed: {type(exc).__name__}",
                    retry_after_s=5,
                ) from None
        raise ServiceError(
            ErrorKind.UNAVAILABLE,
            f"cannot connect to {parts.hostname}:{port} ({failure})",
            retry_after_s=5,
        )

    async def _read(self, response: httpx.Response, url: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(url)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large(url)
            chunks.append(chunk)
        encoding = response.headers.get("content-encoding", "identity").lower()
        if encoding not in ("", "identity"):
            raise bad_request(f"{_shown(url)} came {encoding}-encoded; serve it unencoded")
        return b"".join(chunks)

    def _too_large(self, url: str) -> ServiceError:
        return ServiceError(
            ErrorKind.TOO_LARGE,
            f"{_shown(url)} is larger than this server's download limit of "
            f"{self.max_bytes} bytes (DOWNLOAD_MAX_BYTES)",
        )


class RememberedUrls:
    """URL → SHA-256 of its bytes, per model, least recently used first out, for an hour."""

    def __init__(self, capacity: int = REMEMBER_URLS, ttl_s: float = REMEMBER_S) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._ids: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def get(self, model: str, url: str) -> str | None:
        entry = self._ids.get((model, url))
        if entry is None or time.monotonic() - entry[1] > self.ttl_s:
            return None
        self._ids.move_to_end((model, url))
        return entry[0]

    def put(self, model: str, url: str, image_id: str) -> None:
        self._ids[(model, url)] = (image_id, time.monotonic())
        self._ids.move_to_end((model, url))
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


async def _checked_addresses(host: str, port: int) -> list[str]:
    """The addresses of `host`, in the resolver's order, without link-local, multicast,
    reserved or unspecified ones (a 400 naming them when none is left)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise ServiceError(
            ErrorKind.UNAVAILABLE, f"cannot resolve {host}", retry_after_s=5
        ) from None
    accepted: list[str] = []
    refused: list[str] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None) or address
        if (
            mapped.is_link_local
            or mapped.is_multicast
            or mapped.is_unspecified
            or mapped.is_reserved
        ):
            refused.append(str(address))
        elif str(address) not in accepted:
            accepted.append(str(address))
    if not accepted:
        raise bad_request(f"{host} resolves to refused addresses ({', '.join(refused)})")
    return accepted


def _crosses_origin(source: str, target: str) -> bool:
    """A redirect to another host or port, or from https down to http."""
    before, after = urlsplit(source), urlsplit(target)
    downgrade = before.scheme == "https" and after.scheme != "https"
    return downgrade or _url_key(source) != _url_key(target)


def _host_key(url_or_host: str) -> str:
    """`host` or `host:port`, lower-case, from a URL or a bare host."""
    text = url_or_host.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    host = (parts.hostname or "").lower()
    return host if parts.port in (None, 80, 443) else f"{host}:{parts.port}"


def _url_key(url: str) -> str:
    """The allow-list key a URL must match: `host:port`, or `host` on the default port.

    An allowed bare host admits its default ports only (80, 443); `host:port`
    admits that port.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def _shown(url: str) -> str:
    """A URL for a message: without credentials or query (tokens travel there), cut short."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    shown = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else url
    return shown if len(shown) <= 200 else shown[:200] + "..."
