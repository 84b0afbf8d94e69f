"""Where certificate chains and CRLs come from: a directory mirror, HTTPS, or nowhere.

This is the only network code in stirscope. ``HttpSource`` dereferences ``x5u`` and CRL URLs
with the rules of STANDARDS.md section 6.2 (https only, port 443/8443, no redirects, HTTP 200,
content type, size cap, timeout) and refuses to connect to non-public addresses: ``x5u`` is
chosen by whoever sent the call, so it is a server-side request forgery vector.

Address pinning (DNS rebinding): the check runs inside the connection step. A custom
``httpcore`` network backend resolves the host once, refuses the whole URL when *any*
resolved address is not public, and then connects to exactly the addresses it checked. TLS
still uses the URL's host name for SNI and certificate verification, and the Host header is
unchanged, because only the TCP connect is redirected to the pinned address.

RFC 8224 section 7.2-7.4; STANDARDS.md section 6.2, 7.4 and section 10 steps 16-17.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from analyzer.version import __version__
from shaken.source import (
    DEFAULT_ALLOWED_PORTS,
    STANDARD_CONTENT_TYPES,
    CachingSource,
    CertificateSource,
    Fetched,
    FetchKind,
    FetchStatus,
    check_info_url,
    infer_content_type,
    is_acceptable_content_type,
    media_type,
    parse_cache_headers,
)

# Body caps. Asterisk caps an x5u body at 8192 bytes (STANDARDS.md section 6.2); a real SHAKEN
# chain (P-256 EE + intermediate, PEM) is 2-4 KiB. 64 KiB leaves room for long chains with
# RSA CA certificates and stays far below anything that could hurt memory.
DEFAULT_MAX_CERT_BYTES = 64 * 1024
# CRLs grow with revocations (~35 bytes per entry, RFC 5280 section 5.1.2.6): 1 MiB holds
# ~30,000 entries; the STI-PA CRL is far smaller.
DEFAULT_MAX_CRL_BYTES = 1024 * 1024
# RFC 8224 section 6.2 leaves the timeout open; a fetch happens while the call waits
# (post-dial delay), and Asterisk and secsipid use a few seconds. 2 s total per fetch.
DEFAULT_TIMEOUT_SECONDS = 2.0
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


class DirectorySource:
    """Serves ``http(s)://host[:port]/path`` from ``root/host/path`` (an offline mirror).

    With an explicit port, ``root/host_port/path`` is tried first, then ``root/host/path``
    (so a mirror may ignore ports). Both http and https are served: the URL policy is the
    verifier's step 16, and a local file carries no SSRF risk. Refused (``bad_url``): other
    schemes, userinfo, query, fragment, ``.``/``..``/empty segments, backslashes and NUL;
    files (after resolving symlinks) must lie inside ``root``. ARCHITECTURE.md "Fetching".
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = DEFAULT_MAX_CERT_BYTES,
        max_crl_bytes: int = DEFAULT_MAX_CRL_BYTES,
        strict_content_type: bool = False,
    ) -> None:
        self._root = root.resolve()
        self._caps = {FetchKind.CERT: max_bytes, FetchKind.CRL: max_crl_bytes}
        self._strict = strict_content_type

    def _candidates(self, url: str) -> list[Path] | str:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"unparseable URL ({exc})"
        if parts.scheme.lower() not in ("http", "https"):
            return f"scheme {parts.scheme!r} is not served by a mirror"
        if "@" in parts.netloc or "?" in url or "#" in url:
            return "userinfo, query or fragment in URL"
        host = parts.hostname or ""
        segments = unquote(parts.path).split("/")[1:]
        if not host or host in (".", "..") or "/" in host or "\\" in host:
            return f"host {host!r} cannot name a mirror folder"
        if not segments or any(s in ("", ".", "..") or "\\" in s or "\0" in s for s in segments):
            return f"path {parts.path!r} is not a plain relative file path"
        folders = ([f"{host}_{port}"] if port is not None else []) + [host]
        return [self._root.joinpath(folder, *segments) for folder in folders]

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        candidates = self._candidates(url)
        if isinstance(candidates, str):
            return Fetched.failure(url, FetchStatus.BAD_URL, candidates, kind=kind)
        for candidate in candidates:
            try:
                resolved = candidate.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if not resolved.is_relative_to(self._root):
                return Fetched.failure(
                    url, FetchStatus.REFUSED, "path escapes the mirror", kind=kind
                )
            if not resolved.is_file():
                continue
            return self._read(url, kind, resolved)
        return Fetched.failure(url, FetchStatus.NOT_FOUND, "not in mirror", kind=kind)

    def _read(self, url: str, kind: FetchKind, path: Path) -> Fetched:
        cap = self._caps[kind]
        try:
            with path.open("rb") as handle:
                body = handle.read(cap + 1)
        except OSError as exc:
            return Fetched.failure(
                url, FetchStatus.FAILED, f"cannot read mirror file: {exc}", kind=kind
            )
        if len(body) > cap:
            detail = f"mirror file exceeds the {cap}-byte cap"
            return Fetched.failure(url, FetchStatus.TOO_LARGE, detail, kind=kind)
        ctype = infer_content_type(body, path.name)
        if not is_acceptable_content_type(ctype, kind, strict=self._strict):
            detail = f"mirror file looks like {ctype}, not a {kind}"
            return Fetched.failure(url, FetchStatus.BAD_CONTENT_TYPE, detail, kind=kind)
        return Fetched(url, FetchStatus.OK, body, ctype, "mirror", kind=kind)


class OfflineSource:
    """Fetches nothing: every URL is ``offline`` (network fetching not enabled)."""

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        detail = "not available offline (enable fetching or add a mirror)"
        return Fetched.failure(url, FetchStatus.OFFLINE, detail, kind=kind)


class ChainSource:
    """Tries each source in order and returns the first ``ok``; otherwise the last failure,
    its detail prefixed by the earlier ones (e.g. "mirror: not in mirror; timed out")."""

    def __init__(self, *sources: CertificateSource) -> None:
        if not sources:
            raise ValueError("ChainSource needs at least one source")
        self._sources = sources

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        notes: list[str] = []
        result = Fetched.failure(url, FetchStatus.FAILED, "no source", kind=kind)
        for source in self._sources:
            try:
                result = source.fetch(url, kind=kind)
            except Exception as exc:  # contain a faulty source
                result = Fetched.failure(url, FetchStatus.FAILED, repr(exc), kind=kind)
            if result.ok:
                return result
            notes.append(f"{type(source).__name__}: {result.status}")
        if len(notes) > 1:
            prefix = "; ".join(notes[:-1])
            return Fetched.failure(url, result.status, f"{prefix}; {result.detail}", kind=kind)
        return result

    def close(self) -> None:
        for source in self._sources:
            closer = getattr(source, "close", None)
            if callable(closer):
                closer()


def origin_source(
    *,
    certs_dirs: Sequence[Path] = (),
    fetch: bool = False,
    ca_bundle: Path | None = None,
    allow_private: bool = False,
    clock: Callable[[], float] = time.time,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    strict_content_type: bool = False,
) -> CertificateSource:
    """Where certificates come from, uncached: the mirrors in order, then HTTPS (when
    ``fetch``) or ``offline``. STANDARDS.md section 6.2."""
    sources: list[CertificateSource] = [
        DirectorySource(path, strict_content_type=strict_content_type) for path in certs_dirs
    ]
    if fetch:
        sources.append(
            HttpSource(
                timeout=timeout,
                ca_bundle=ca_bundle,
                allow_private=allow_private,
                strict_content_type=strict_content_type,
                clock=clock,
            )
        )
    else:
        sources.append(OfflineSource())
    return sources[0] if len(sources) == 1 else ChainSource(*sources)


def build_source(
    *,
    certs_dirs: Sequence[Path] = (),
    fetch: bool = False,
    ca_bundle: Path | None = None,
    allow_private: bool = False,
    clock: Callable[[], float] = time.time,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    strict_content_type: bool = False,
) -> CachingSource:
    """The one factory for the CLI and the service: ``origin_source`` behind a
    ``CachingSource`` (24 h floor, notAfter cap, 30 s negative caching). Close it when done.
    STANDARDS.md section 6.2.
    """
    inner = origin_source(
        certs_dirs=certs_dirs,
        fetch=fetch,
        ca_bundle=ca_bundle,
        allow_private=allow_private,
        clock=clock,
        timeout=timeout,
        strict_content_type=strict_content_type,
    )
    return CachingSource(inner, clock=clock)
