"""Outbound HTTP to addresses that users chose (webhook endpoints), guarded against SSRF.

A URL an admin registers is a request dropgate will make from inside the cluster: to the cloud's
metadata service (169.254.169.254), to the database, to anything on the pod network. Standard
Webhooks names the risk ("Server side request forgery (SSRF)", spec/standard-webhooks.md); the
guard here is the one it describes for a sender without a filtering proxy:

- `EgressPolicy.check` at registration: https only (unless the setting allows http), no user info,
  and every address the host resolves to must be a public one (`ipaddress.is_global`, not
  multicast), unless inside a network the settings allow (the local stack allows loopback).
- `post` at every delivery resolves again, checks every address again, and connects to the checked
  address itself (TLS still verifies the certificate for the host name): a name that resolved to a
  public address at registration and to 127.0.0.1 now (DNS rebinding) is refused, not followed.
- No redirect is followed (http.client follows none): a 3xx is a failed delivery, as the spec says.
- Timeouts on connect and every read, a deadline for the whole answer, and at most
  `max_response_bytes` of it read.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from shared.platform.settings_webhooks import WebhookSettings

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URL_LENGTH = 2048
_READ_CHUNK = 8192


class EgressRefused(ValueError):
    """The URL may not be called: `reason` says why, in words an admin can act on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Destination:
    """A checked URL: where to connect, and what to ask for."""

    scheme: str
    host: str  # the name (or literal address) of the URL, for Host and TLS
    port: int
    path: str  # path and query, never empty

    @property
    def host_header(self) -> str:
        literal = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return literal if self.port == default else f"{literal}:{self.port}"


@dataclass(frozen=True)
class Answer:
    """What the receiver said: its status, the first bytes of its body, and Retry-After when given."""

    status: int
    body: bytes
    retry_after: str | None = None


def address_refusal(address: IpAddress, allowed: tuple[IpNetwork, ...]) -> str | None:
    """Why this address may not be called, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in network for network in allowed):
        return None
    if address.is_global and not address.is_multicast:
        return None
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{kind}"):
            what = "link-local (cloud metadata services live there)" if kind == "link_local" else kind
            return f"{address} is a {what} address"
    return f"{address} is not a public address"


@dataclass(frozen=True)
class EgressPolicy:
    require_https: bool
    allowed_networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> EgressPolicy:
        """The policy registration and delivery both apply, so a URL passes or fails the same in each."""
        return cls(settings.require_https, settings.allowed_networks)

    def parse(self, url: object) -> Destination:
        """The URL's parts, or EgressRefused; resolves nothing."""
        if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
            raise EgressRefused(f"url must be a string of 1 to {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise EgressRefused(f"url is malformed: {exc}") from None
        allowed_schemes = ("https",) if self.require_https else ("https", "http")
        if parts.scheme not in allowed_schemes:
            raise EgressRefused(f"url must be {' or '.join(s + '://' for s in allowed_schemes)}"
                                + (" (this deployment requires https)" if self.require_https else ""))
        if not parts.hostname:
            raise EgressRefused("url has no host")
        if parts.username is not None or parts.password is not None:
            raise EgressRefused("url may not carry user info (credentials belong in the signature, not the URL)")
        if parts.fragment:
            raise EgressRefused("url may not carry a fragment")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Destination(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)

    def resolve(self, destination: Destination) -> list[IpAddress]:
        """Every address the host resolves to, or EgressRefused naming the first that may not be called."""
        try:
            infos = socket.getaddrinfo(destination.host, destination.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, ValueError) as exc:  # ValueError: a NUL in the name
            raise EgressRefused(f"{destination.host} does not resolve: {exc}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))
        if not addresses:
            raise EgressRefused(f"{destination.host} does not resolve")
        # Every address, not the first: a resolver answering one public and one private address
        # would otherwise let the connection pick the private one.
        for address in addresses:
            refusal = address_refusal(address, self.allowed_networks)
            if refusal is not None:
                via = "" if destination.host == str(address) else f"{destination.host} resolves to "
                raise EgressRefused(f"{via}{refusal}")
        return addresses

    def check(self, url: object) -> Destination:
        """What registration asks: the URL parses, and its host resolves to addresses that may be called."""
        destination = self.parse(url)
        self.resolve(destination)
        return destination


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand, with SNI and certificate checks for the host name."""

    def __init__(self, host: str, address: str, port: int, *, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._pinned_address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._pinned_address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(policy: EgressPolicy, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float,
         max_response_bytes: int) -> Answer:
    """POST `body` once, to an address checked now. EgressRefused, OSError (and its timeouts) or an Answer."""
    destination = policy.parse(url)
    address = str(policy.resolve(destination)[0])
    if destination.scheme == "https":
        connection: http.client.HTTPConnection = _PinnedHTTPSConnection(
            destination.host, address, destination.port, timeout=timeout, context=ssl.create_default_context())
    else:  # the port is passed apart: http.client would read "::1" as host ":" and port 1
        connection = http.client.HTTPConnection(address, destination.port, timeout=timeout)
    try:
        connection.request("POST", destination.path, body=body,
                           headers={**headers, "Host": destination.host_header, "Content-Length": str(len(body))})
        response = connection.getresponse()
        return Answer(response.status, _read_capped(response, max_response_bytes, deadline=time.monotonic() + timeout),
                      response.getheader("Retry-After"))
    except http.client.HTTPException as exc:  # a malformed answer is no answer
        raise ConnectionError(f"malformed HTTP answer: {type(exc).__name__}") from None
    finally:
        connection.close()


def _read_capped(response: http.client.HTTPResponse, cap: int, *, deadline: float) -> bytes:
    """At most `cap` bytes, and no longer than the deadline: a receiver that drips its answer is cut off."""
    chunks, size = [], 0
    while size < cap and time.monotonic() < deadline:
        chunk = response.read1(min(_READ_CHUNK, cap - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
