"""Download a remote archive the server's config allows, without reaching anything it does not.

Each hop (the URL, then every redirect) is checked the same way before it is requested:

- the URL is parsed, and ``allowed_urls`` is matched against what was parsed
  (``scheme://host[:port]/path?query``), so the host a pattern sees is the host connected to;
  user names in URLs (``https://allowed@elsewhere/``) are refused outright;
- the host's addresses are resolved once and must all be public, or inside a network the
  config allows explicitly (``allowed_networks``): loopback, link-local (cloud metadata) and
  private addresses are refused, so an allowed host cannot redirect the server to them;
- the connection goes to the address that was checked (no second lookup to be raced).

The body goes to a temporary file in the server's own downloads folder, counted against
``max_download_bytes``, all within one ``download_timeout_s`` deadline, and is renamed once
complete: a failure leaves nothing behind and never touches the model store. Blocking; the
manager runs it on a worker thread. No Ray here.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from handlers.errors import BadInputError, DownloadArchiveError

MAX_REDIRECTS = 5
REDIRECTS = {301, 302, 303, 307, 308}
CHUNK_BYTES = 1 << 20
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., list[Any]]


@dataclass(frozen=True)
class DownloadPolicy:
    """What downloads may reach, how long they may take and how much they may bring."""

    allowed_urls: tuple[str, ...]
    allowed_networks: tuple[Network, ...] = ()
    timeout_s: float = 300.0
    max_bytes: int = 2 * 1024**3

    @classmethod
    def create(
        cls, allowed_urls: list[str], allowed_networks: list[str], timeout_s: float, max_bytes: int
    ) -> DownloadPolicy:
        """From the management args' fields of the same names."""
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
        return cls(tuple(allowed_urls), networks, timeout_s, max_bytes)


@dataclass(frozen=True)
class Hop:
    """One URL to request, as parsed."""

    url: str  # rebuilt from its parts: what allowed_urls is matched against
    scheme: str
    host: str
    port: int
    target: str  # path and query


def parse_allowed(url: str, policy: DownloadPolicy) -> Hop:
    """Parse ``url`` and check it against ``allowed_urls``; 400 when it is not allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInputError(f"URL {url[:200]!r} is not a valid URL: {exc}") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("http", "https") or not host:
        raise BadInputError(f"URL {url[:200]!r} is not allowed: only http and https URLs with a host")
    if "@" in parts.netloc:
        raise BadInputError(f"URL {url[:200]!r} is not allowed: user names in URLs are refused")
    shown_host = f"[{host}]" if ":" in host else host
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    canonical = f"{scheme}://{shown_host}{f':{port}' if port is not None else ''}{target}"
    if not any(re.fullmatch(pattern, canonical) for pattern in policy.allowed_urls):
        raise BadInputError(f"URL {canonical[:200]} is not allowed: add a matching pattern to allowed_urls")
    default_port = 443 if scheme == "https" else 80
    return Hop(canonical, scheme, host, port if port is not None else default_port, target)


def _kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-public"


def checked_address(hop: Hop, policy: DownloadPolicy, resolve: Resolver = socket.getaddrinfo) -> str:
    """The address to connect to: every address the host resolves to must be allowed."""
    try:
        found = resolve(hop.host, hop.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DownloadArchiveError(
            f"Failed to download archive from: {hop.url} (cannot resolve {hop.host}: {exc})"
        ) from None
    addresses = list(dict.fromkeys(info[4][0] for info in found))
    if not addresses:
        raise DownloadArchiveError(f"Failed to download archive from: {hop.url} ({hop.host} has no address)")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        mapped = getattr(address, "ipv4_mapped", None)
        address = mapped or address
        if address.is_global or any(address in network for network in policy.allowed_networks):
            continue
        raise DownloadArchiveError(
            f"Download from {hop.url} refused: {hop.host} is {address}, a {_kind(address)} address. "
            "Downloads reach only public addresses unless allowed_networks lists the network."
        )
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to an address checked beforehand (the Host header still names the host)."""

    def __init__(self, hop: Hop, address: str, timeout: float) -> None:
        super().__init__(hop.host, hop.port, timeout=timeout)
        self.address = address
        self.raw: socket.socket | None = None

    def connect(self) -> None:
        self.sock = self.raw = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is verified against the host name."""

    def __init__(self, hop: Hop, address: str, timeout: float) -> None:
        super().__init__(hop.host, hop.port, timeout=timeout, context=ssl.create_default_context())
        self.address = address
        self.raw: socket.socket | None = None

    def connect(self) -> None:
        plain = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.raw = self._context.wrap_socket(plain, server_hostname=self.host)


def _safe_name(url: str) -> str:
    last = urlsplit(url).path.rstrip("/").rpartition("/")[2]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", last).lstrip(".")
    return name[:100] or "archive"


class _Download:
    """One download's deadline and byte count."""

    def __init__(self, url: str, policy: DownloadPolicy, resolve: Resolver) -> None:
        self.url, self.policy, self.resolve = url, policy, resolve
        self.deadline = time.monotonic() + policy.timeout_s

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DownloadArchiveError(
                f"Failed to download archive from: {self.url} (not done within {self.policy.timeout_s:g}s)"
            )
        return left

    def fetch(self, out: Any) -> None:
        current = self.url
        for _ in range(MAX_REDIRECTS + 1):
            hop = parse_allowed(current, self.policy)
            address = checked_address(hop, self.policy, self.resolve)
            kind = _PinnedHTTPS if hop.scheme == "https" else _PinnedHTTP
            connection = kind(hop, address, self.remaining())
            try:
                connection.request("GET", hop.target, headers={"Accept-Encoding": "identity"})
                response = connection.getresponse()
                if response.status in REDIRECTS and response.getheader("Location"):
                    current = urljoin(hop.url, response.getheader("Location", ""))
                    continue
                if response.status != 200:
                    raise DownloadArchiveError(
                        f"Failed to download archive from: {self.url} (HTTP {response.status} from {hop.url})"
                    )
                self._copy(response, connection.raw, out)
                return
            finally:
                connection.close()
        raise DownloadArchiveError(
            f"Failed to download archive from: {self.url} (over {MAX_REDIRECTS} redirects)"
        )

    def _copy(self, response: http.client.HTTPResponse, raw: socket.socket | None, out: Any) -> None:
        limit = self.policy.max_bytes
        declared = response.getheader("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise DownloadArchiveError(
                f"Archive at {self.url} is {declared} bytes, over the limit of {limit} bytes"
            )
        copied = 0
        while True:
            if raw is not None:  # each read may wait only for what is left of the deadline
                raw.settimeout(self.remaining())
            chunk = response.read1(CHUNK_BYTES)
            if not chunk:
                return
            copied += len(chunk)
            if copied > limit:
                raise DownloadArchiveError(f"Archive at {self.url} is over the limit of {limit} bytes")
            out.write(chunk)


def download(
    url: str, directory: Path, policy: DownloadPolicy, resolve: Resolver = socket.getaddrinfo
) -> Path:
    """Fetch ``url`` into ``directory`` (see the module docstring); returns the complete file."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                _Download(url, policy, resolve).fetch(out)
            except (BadInputError, DownloadArchiveError):
                raise
            except TimeoutError:
                raise DownloadArchiveError(
                    f"Failed to download archive from: {url} (not done within {policy.timeout_s:g}s)"
                ) from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise DownloadArchiveError(f"Failed to download archive from: {url} ({reason})") from None
        complete = directory / f"{Path(partial).stem.removeprefix('.download-')}-{_safe_name(url)}"
        os.replace(partial, complete)
        return complete
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
