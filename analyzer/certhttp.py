"""The HTTPS certificate fetcher: ``HttpSource``, the only network code in stirscope.

``HttpSource`` dereferences ``x5u`` and CRL URLs with the rules of STANDARDS.md section 6.2
(https only, port 443/8443, no redirects, HTTP 200, content type, size cap, timeout) and
refuses to connect to non-public addresses: ``x5u`` is chosen by whoever sent the call, so it
is a server-side request forgery vector.

Address pinning (DNS rebinding): the check runs inside the connection step. A custom
``httpcore`` network backend resolves the host once, refuses the whole URL when *any*
resolved address is not public, and then connects to exactly the addresses it checked. TLS
still uses the URL's host name for SNI and certificate verification, and the Host header is
unchanged, because only the TCP connect is redirected to the pinned address.

This module is apart from ``analyzer.certsource`` so that httpx and httpcore (a large part of
start-up time) are imported only when fetching is enabled; ``analyzer.certsource`` imports it
on use.

RFC 8224 section 7.2-7.4; STANDARDS.md section 6.2, 7.4 and section 10 steps 16-17.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpcore
import httpx

from analyzer.certsource import (
    DEFAULT_MAX_CERT_BYTES,
    DEFAULT_MAX_CRL_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
)
from analyzer.version import __version__
from shaken.source import (
    DEFAULT_ALLOWED_PORTS,
    STANDARD_CONTENT_TYPES,
    Fetched,
    FetchKind,
    FetchStatus,
    check_info_url,
    is_acceptable_content_type,
    media_type,
    parse_cache_headers,
)

USER_AGENT = f"stirscope/{__version__}"
# Our choice: a verifier talks to a few hundred repositories (253 hosts in three years of US
# traffic, martinisecurity shaken-pki-reports); bound sockets, keep the busy hosts warm.
MAX_CONNECTIONS = 32
MAX_KEEPALIVE_CONNECTIONS = 16
KEEPALIVE_SECONDS = 30.0


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix


def _judged_addresses(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses a connection to ``ip`` really reaches. IPv4-mapped and NAT64 addresses
    are judged by their IPv4 address alone (their IPv6 prefixes count as "reserved"); 6to4 and
    Teredo addresses by both the IPv6 address and the embedded IPv4 ones."""
    if isinstance(ip, ipaddress.IPv4Address):
        return [ip]
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def address_problem(address: str) -> str | None:
    """Why a resolved address must not be contacted, None when it is public.

    Refused: loopback, private, link-local, multicast, reserved, unspecified, shared
    (100.64/10) and every other non-global range, also when embedded in an IPv6 address.
    STANDARDS.md section 6.2 (ARCHITECTURE "Fetching": x5u is an SSRF vector).
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    for candidate in _judged_addresses(ip):
        checks = (
            (candidate.is_loopback, "loopback"),
            (candidate.is_private, "private"),
            (candidate.is_link_local, "link-local"),
            (candidate.is_multicast, "multicast"),
            (candidate.is_reserved, "reserved"),
            (candidate.is_unspecified, "unspecified"),
        )
        for flagged, label in checks:
            if flagged:
                return f"{address} is {label}"
        if not candidate.is_global:
            return f"{address} is not a public address"
    return None


class AddressRefused(Exception):
    """Raised inside the connection step when a host resolves to a forbidden address."""


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves, checks every address, then connects only to the checked addresses."""

    def __init__(self, *, allow_private: bool) -> None:
        self._allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self._allow_private:
            for address in addresses:
                problem = address_problem(address)
                if problem is not None:
                    raise AddressRefused(f"{host} resolves to {problem}")
        last: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last


class _CoreStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        closer = getattr(self._stream, "close", None)
        if callable(closer):
            closer()


class _PinnedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool that uses ``_GuardedBackend``.

    httpcore exceptions (and ``AddressRefused``) propagate unmapped; ``HttpSource`` maps them.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext, allow_private: bool) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_SECONDS,
            network_backend=_GuardedBackend(allow_private=allow_private),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=typing.cast(Iterable[bytes], request.stream),
            extensions=request.extensions,
        )
        response = self._pool.handle_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_CoreStream(typing.cast(Iterable[bytes], response.stream)),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class HttpSource:
    """Fetches ``x5u`` chains and CRLs over HTTPS with the STANDARDS.md section 6.2 rules.

    One ``httpx.Client`` is kept for connection reuse (call ``close()``). ``ca_bundle``
    replaces the default trust roots for the TLS connection (tests, private STI-CRs);
    ``allow_private`` disables the address check (tests only). ``timeout`` bounds each
    connect attempt and each read, and the body download as a whole; DNS resolution is not
    bounded (the standard library cannot), so a fetch can take a little longer than
    ``timeout``. STANDARDS.md section 6.2 and section 10 step 17.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_bytes: int = DEFAULT_MAX_CERT_BYTES,
        max_crl_bytes: int = DEFAULT_MAX_CRL_BYTES,
        ca_bundle: Path | None = None,
        allow_private: bool = False,
        allowed_ports: frozenset[int] = DEFAULT_ALLOWED_PORTS,
        user_agent: str = USER_AGENT,
        strict_content_type: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        context = (
            ssl.create_default_context(cafile=str(ca_bundle))
            if ca_bundle is not None
            else httpx.create_ssl_context()
        )
        self._timeout = timeout
        self._caps = {FetchKind.CERT: max_bytes, FetchKind.CRL: max_crl_bytes}
        self._allowed_ports = allowed_ports
        self._strict = strict_content_type
        self._clock = clock
        self._client = httpx.Client(
            transport=_PinnedTransport(ssl_context=context, allow_private=allow_private),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": user_agent},
        )

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        problem = check_info_url(url, allowed_ports=self._allowed_ports)
        if problem is not None:
            return Fetched.failure(url, FetchStatus.BAD_URL, problem, kind=kind)
        deadline = time.monotonic() + self._timeout
        try:
            return self._fetch(url, kind, deadline)
        except AddressRefused as exc:
            return Fetched.failure(url, FetchStatus.REFUSED, str(exc), kind=kind)
        except (httpx.TimeoutException, httpcore.TimeoutException) as exc:
            detail = f"timed out after {self._timeout:g} s ({type(exc).__name__})"
            return Fetched.failure(url, FetchStatus.TIMEOUT, detail, kind=kind)
        except (httpx.HTTPError, httpcore.ConnectError, httpcore.NetworkError) as exc:
            return Fetched.failure(
                url, FetchStatus.FAILED, f"{type(exc).__name__}: {exc}", kind=kind
            )
        except Exception as exc:  # never raise (CertificateSource contract)
            return Fetched.failure(
                url, FetchStatus.FAILED, f"{type(exc).__name__}: {exc}", kind=kind
            )

    def _fetch(self, url: str, kind: FetchKind, deadline: float) -> Fetched:
        cap = self._caps[kind]
        # identity only: a compressed body could expand past the cap inside one decode step.
        headers = {"Accept": STANDARD_CONTENT_TYPES[kind], "Accept-Encoding": "identity"}
        with self._client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if 300 <= status < 400:
                location = response.headers.get("location", "(none)")
                detail = f"HTTP {status} redirect to {location} not followed"
                return Fetched.failure(url, FetchStatus.FAILED, detail, kind=kind)
            if status in (404, 410):
                return Fetched.failure(url, FetchStatus.NOT_FOUND, f"HTTP {status}", kind=kind)
            if status != 200:
                return Fetched.failure(url, FetchStatus.FAILED, f"HTTP {status}", kind=kind)
            ctype = response.headers.get("content-type")
            if not is_acceptable_content_type(ctype, kind, strict=self._strict):
                detail = f"content type {media_type(ctype) or '(none)'} is not a {kind}"
                return Fetched.failure(url, FetchStatus.BAD_CONTENT_TYPE, detail, kind=kind)
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                detail = f"content encoding {encoding!r} was not requested"
                return Fetched.failure(url, FetchStatus.FAILED, detail, kind=kind)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                detail = f"Content-Length {declared} exceeds the {cap}-byte cap"
                return Fetched.failure(url, FetchStatus.TOO_LARGE, detail, kind=kind)
            body = bytearray()
            for chunk in response.iter_raw():  # as received: at most one 64 KiB read
                body += chunk
                if len(body) > cap:
                    detail = f"body exceeds the {cap}-byte cap"
                    return Fetched.failure(url, FetchStatus.TOO_LARGE, detail, kind=kind)
                if time.monotonic() > deadline:
                    detail = f"body not complete after {self._timeout:g} s"
                    return Fetched.failure(url, FetchStatus.TIMEOUT, detail, kind=kind)
            cache = parse_cache_headers(
                response.headers.get("cache-control"),
                response.headers.get("expires"),
                response.headers.get("date"),
                received_at=self._clock(),
            )
            return Fetched(
                url=url,
                status=FetchStatus.OK,
                body=bytes(body),
                content_type=ctype,
                detail=f"HTTP {status}",
                max_age=cache.max_age,
                kind=kind,
                no_store=cache.no_store,
            )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
