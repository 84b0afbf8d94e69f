"""Tests for analyzer.certsource and analyzer.certhttp: mirror, HTTPS client (against a real local
server), chain."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from analyzer.certhttp import HttpSource, address_problem
from analyzer.certsource import (
    ChainSource,
    DirectorySource,
    OfflineSource,
    build_source,
    origin_source,
)
from shaken.errors import Reason
from shaken.source import (
    CRL_TYPE,
    PEM_CHAIN_TYPE,
    CachingSource,
    Fetched,
    FetchKind,
    FetchStatus,
    MemorySource,
)
from tests.analyzer.https_server import TEST_HOST, LocalHttpsServer, LocalPki, Route

CHAIN = (
    b"-----BEGIN CERTIFICATE-----\nMIIBsjCCAVmgAwIBAgIUX\n-----END CERTIFICATE-----\n"
    b"-----BEGIN CERTIFICATE-----\nMIIBsjCCAVmgAwIBAgIUY\n-----END CERTIFICATE-----\n"
)
CRL_PEM = b"-----BEGIN X509 CRL-----\nMIIBAAAA\n-----END X509 CRL-----\n"


# --- address policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "not-an-ip",
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert address_problem(address) is not None


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses(address: str) -> None:
    assert address_problem(address) is None


# --- DirectorySource -------------------------------------------------------------------------


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    (root / "cr.example.com" / "certs").mkdir(parents=True)
    (root / "cr.example.com" / "certs" / "sp.pem").write_bytes(CHAIN)
    (root / "cr.example.com" / "sp.pem").write_bytes(CHAIN)
    (root / "cr.example.com" / "ca.crl").write_bytes(CRL_PEM)
    (root / "cr.example.com" / "page.html").write_bytes(b"<html>login</html>")
    (root / "cr.example.com" / "big.pem").write_bytes(CHAIN + b"x" * 70_000)
    (root / "cert2.sticr.att.net_8443").mkdir()
    (root / "cert2.sticr.att.net_8443" / "a.pem").write_bytes(CHAIN)
    (root / "ports.example").mkdir()
    (root / "ports.example" / "b.pem").write_bytes(CHAIN)
    (tmp_path / "secret.pem").write_bytes(CHAIN)
    (root / "cr.example.com" / "link.pem").symlink_to(tmp_path / "secret.pem")
    (root / "cr.example.com" / "inside.pem").symlink_to(root / "cr.example.com" / "sp.pem")
    (root / "escape.example").symlink_to(tmp_path)
    return root


@pytest.mark.parametrize(
    ("url", "kind", "status"),
    [
        ("https://cr.example.com/certs/sp.pem", FetchKind.CERT, FetchStatus.OK),
        ("https://cr.example.com/sp.pem", FetchKind.CERT, FetchStatus.OK),
        ("https://CR.EXAMPLE.COM/sp.pem", FetchKind.CERT, FetchStatus.OK),
        ("http://cr.example.com/sp.pem", FetchKind.CERT, FetchStatus.OK),
        ("https://cr.example.com:443/sp.pem", FetchKind.CERT, FetchStatus.OK),
        ("https://cert2.sticr.att.net:8443/a.pem", FetchKind.CERT, FetchStatus.OK),
        ("https://ports.example:8443/b.pem", FetchKind.CERT, FetchStatus.OK),
        ("https://cr.example.com/a%2Fb/../sp.pem", FetchKind.CERT, FetchStatus.BAD_URL),
        ("https://cr.example.com/ca.crl", FetchKind.CRL, FetchStatus.OK),
        ("https://cr.example.com/inside.pem", FetchKind.CERT, FetchStatus.OK),
        ("https://cr.example.com/missing.pem", FetchKind.CERT, FetchStatus.NOT_FOUND),
        ("https://other.example/sp.pem", FetchKind.CERT, FetchStatus.NOT_FOUND),
        ("https://cr.example.com/certs", FetchKind.CERT, FetchStatus.NOT_FOUND),
        ("https://cr.example.com/ca.crl", FetchKind.CERT, FetchStatus.BAD_CONTENT_TYPE),
        ("https://cr.example.com/sp.pem", FetchKind.CRL, FetchStatus.BAD_CONTENT_TYPE),
        ("https://cr.example.com/page.html", FetchKind.CERT, FetchStatus.BAD_CONTENT_TYPE),
        ("https://cr.example.com/big.pem", FetchKind.CERT, FetchStatus.TOO_LARGE),
        ("https://cr.example.com/big.pem", FetchKind.CRL, FetchStatus.BAD_CONTENT_TYPE),
        ("https://cr.example.com/sp.pem?v=1", FetchKind.CERT, FetchStatus.BAD_URL),
        ("https://cr.example.com/sp.pem#x", FetchKind.CERT, FetchStatus.BAD_URL),
        ("https://u@cr.example.com/sp.pem", FetchKind.CERT, FetchStatus.BAD_URL),
        ("ftp://cr.example.com/sp.pem", FetchKind.CERT, FetchStatus.BAD_URL),
        ("file:///etc/passwd", FetchKind.CERT, FetchStatus.BAD_URL),
        ("https://cr.example.com/", FetchKind.CERT, FetchStatus.BAD_URL),
        ("https://cr.example.com", FetchKind.CERT, FetchStatus.BAD_URL),
        ("https://cr.example.com//sp.pem", FetchKind.CERT, FetchStatus.BAD_URL),
    ],
    ids=[
        "nested",
        "top",
        "host-case",
        "http-served",
        "default-port-explicit",
        "port-folder",
        "port-fallback-to-host",
        "encoded-slash-dotdot",
        "crl",
        "symlink-inside",
        "missing",
        "unknown-host",
        "directory",
        "crl-asked-as-cert",
        "cert-asked-as-crl",
        "html",
        "over-cap",
        "crl-cap-larger-but-not-crl",
        "query",
        "fragment",
        "userinfo",
        "ftp",
        "file-scheme",
        "trailing-slash",
        "no-path",
        "empty-segment",
    ],
)
def test_directory_source(mirror: Path, url: str, kind: FetchKind, status: FetchStatus) -> None:
    got = DirectorySource(mirror).fetch(url, kind=kind)
    assert got.status is status, got.detail
    if status is FetchStatus.OK:
        assert got.body in (CHAIN, CRL_PEM)
        assert got.has_standard_content_type


@pytest.mark.parametrize(
    "url",
    [
        "https://cr.example.com/../secret.pem",
        "https://cr.example.com/certs/../../secret.pem",
        "https://cr.example.com/%2e%2e/secret.pem",
        "https://cr.example.com/..%2fsecret.pem",
        "https://cr.example.com/..%5csecret.pem",
        "https://cr.example.com/%2fetc/passwd",
        "https://cr.example.com/sp.pem%00.txt",
        "https://../secret.pem",
        "https://cr.example.com/link.pem",
        "https://escape.example/secret.pem",
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "encoded-dotdot",
        "encoded-slash",
        "encoded-backslash",
        "absolute",
        "nul",
        "dotdot-host",
        "symlink-file-out",
        "symlink-dir-out",
    ],
)
def test_directory_source_traversal(mirror: Path, url: str) -> None:
    got = DirectorySource(mirror).fetch(url)
    assert got.status in (FetchStatus.BAD_URL, FetchStatus.REFUSED, FetchStatus.NOT_FOUND)
    assert got.body is None


def test_directory_source_strict_content_type(mirror: Path, tmp_path: Path) -> None:
    (mirror / "cr.example.com" / "sp.cer").write_bytes(b"\x30\x82\x01\x00")
    url = "https://cr.example.com/sp.cer"
    assert DirectorySource(mirror).fetch(url).status is FetchStatus.OK
    strict = DirectorySource(mirror, strict_content_type=True).fetch(url)
    assert strict.reason is Reason.FETCH_BAD_CONTENT_TYPE


# --- Offline and Chain -----------------------------------------------------------------------


def test_offline_source() -> None:
    got = OfflineSource().fetch("https://cr.example.com/sp.pem")
    assert (got.status, got.reason) == (FetchStatus.OFFLINE, Reason.FETCH_OFFLINE)


def test_chain_source_order(mirror: Path) -> None:
    memory = MemorySource({"https://mem.example/sp.pem": CHAIN})
    chain = ChainSource(DirectorySource(mirror), memory, OfflineSource())
    assert chain.fetch("https://cr.example.com/sp.pem").detail == "mirror"
    assert chain.fetch("https://mem.example/sp.pem").detail == "memory"
    missing = chain.fetch("https://nowhere.example/sp.pem")
    assert missing.status is FetchStatus.OFFLINE
    assert memory.calls == ["https://mem.example/sp.pem", "https://nowhere.example/sp.pem"]


def test_chain_source_contains_errors() -> None:
    class Broken:
        def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
            raise OSError("disk")

    got = ChainSource(Broken(), MemorySource({})).fetch("https://x.example/a")
    assert got.status is FetchStatus.NOT_FOUND
    with pytest.raises(ValueError, match="at least one"):
        ChainSource()


@pytest.mark.parametrize(
    ("fetch", "dirs", "status"),
    [
        (False, False, FetchStatus.OFFLINE),
        (False, True, FetchStatus.OK),
        (True, True, FetchStatus.OK),
    ],
    ids=["offline", "mirror", "mirror-before-http"],
)
def test_build_source(mirror: Path, fetch: bool, dirs: bool, status: FetchStatus) -> None:
    source = build_source(certs_dirs=[mirror] if dirs else [], fetch=fetch)
    try:
        assert isinstance(source, CachingSource)
        assert source.fetch("https://cr.example.com/sp.pem").status is status
    finally:
        source.close()


def test_origin_source_fetch_is_http_source() -> None:
    source = origin_source(fetch=True)
    assert isinstance(source, HttpSource)
    source.close()


# The offline start path (CLI start, every Dask worker) must not pay for the HTTP client:
# httpx imports its CLI (rich) and takes a large part of start-up.
_IMPORT_PROBE = """
import sys
import analyzer.cluster, service.cmd_analyze
from analyzer.certsource import build_source
build_source().close()
heavy = {"httpx", "httpcore", "rich", "sqlalchemy", "pydantic", "fastapi", "redis", "pyarrow",
         "dask", "distributed", "analyzer.certhttp"}
print(sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy))
"""


def test_offline_start_imports_no_http_client() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


# --- HttpSource against a real HTTPS server ---------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> LocalPki:
    return LocalPki.generate()


@pytest.fixture
def ca_bundle(pki: LocalPki, tmp_path: Path) -> Path:
    return pki.write_ca(tmp_path)


def serve(pki: LocalPki, routes: dict[str, Route]) -> LocalHttpsServer:
    return LocalHttpsServer(pki, routes)


def client(server: LocalHttpsServer, ca_bundle: Path, **kwargs: object) -> HttpSource:
    options: dict[str, object] = {
        "ca_bundle": ca_bundle,
        "allow_private": True,
        "allowed_ports": frozenset({server.port}),
        "timeout": 1.0,
    }
    options.update(kwargs)
    return HttpSource(**options)  # type: ignore[arg-type]


@pytest.fixture
def routes() -> dict[str, Route]:
    pem = {"Content-Type": PEM_CHAIN_TYPE}
    return {
        "/sp.pem": Route(body=CHAIN, headers={**pem, "Cache-Control": "max-age=3600"}),
        "/expires.pem": Route(
            body=CHAIN,
            headers={
                **pem,
                "Date": "Tue, 14 Nov 2023 22:13:20 GMT",
                "Expires": "Wed, 15 Nov 2023 22:13:20 GMT",
            },
        ),
        "/nostore.pem": Route(body=CHAIN, headers={**pem, "Cache-Control": "no-store"}),
        "/xpem.pem": Route(body=CHAIN, headers={"Content-Type": "application/x-pem-file"}),
        "/html.pem": Route(body=b"<html>", headers={"Content-Type": "text/html"}),
        "/noctype.pem": Route(body=CHAIN, headers={}),
        "/ca.crl": Route(body=CRL_PEM, headers={"Content-Type": CRL_TYPE}),
        "/gone.pem": Route(status=410, body=b"gone"),
        "/error.pem": Route(status=500, body=b"oops"),
        "/accepted.pem": Route(status=202, body=CHAIN),
        "/moved.pem": Route(status=302, headers={"Location": "/sp.pem"}),
        "/gzip.pem": Route(body=b"\x1f\x8b", headers={**pem, "Content-Encoding": "gzip"}),
        "/big-declared.pem": Route(body=b"A" * 70_000),
        "/big-streamed.pem": Route(body=b"A" * 1_000_000, content_length=False, chunk=16384),
    }


@pytest.mark.parametrize(
    ("path", "kind", "strict", "status"),
    [
        ("/sp.pem", FetchKind.CERT, False, FetchStatus.OK),
        ("/sp.pem", FetchKind.CERT, True, FetchStatus.OK),
        ("/xpem.pem", FetchKind.CERT, False, FetchStatus.OK),
        ("/xpem.pem", FetchKind.CERT, True, FetchStatus.BAD_CONTENT_TYPE),
        ("/noctype.pem", FetchKind.CERT, False, FetchStatus.OK),
        ("/noctype.pem", FetchKind.CERT, True, FetchStatus.BAD_CONTENT_TYPE),
        ("/html.pem", FetchKind.CERT, False, FetchStatus.BAD_CONTENT_TYPE),
        ("/ca.crl", FetchKind.CRL, True, FetchStatus.OK),
        ("/ca.crl", FetchKind.CERT, False, FetchStatus.BAD_CONTENT_TYPE),
        ("/missing.pem", FetchKind.CERT, False, FetchStatus.NOT_FOUND),
        ("/gone.pem", FetchKind.CERT, False, FetchStatus.NOT_FOUND),
        ("/error.pem", FetchKind.CERT, False, FetchStatus.FAILED),
        ("/accepted.pem", FetchKind.CERT, False, FetchStatus.FAILED),
        ("/gzip.pem", FetchKind.CERT, False, FetchStatus.FAILED),
        ("/big-declared.pem", FetchKind.CERT, False, FetchStatus.TOO_LARGE),
        ("/big-declared.pem", FetchKind.CRL, False, FetchStatus.BAD_CONTENT_TYPE),
        ("/big-streamed.pem", FetchKind.CERT, False, FetchStatus.TOO_LARGE),
    ],
    ids=[
        "ok",
        "ok-strict",
        "x-pem-lenient",
        "x-pem-strict",
        "no-content-type-lenient",
        "no-content-type-strict",
        "html",
        "crl",
        "crl-as-cert",
        "404",
        "410",
        "500",
        "202-not-200",
        "gzip",
        "content-length-over-cap",
        "crl-wrong-type",
        "streamed-over-cap",
    ],
)
def test_http_statuses(
    pki: LocalPki,
    ca_bundle: Path,
    routes: dict[str, Route],
    path: str,
    kind: FetchKind,
    strict: bool,
    status: FetchStatus,
) -> None:
    with serve(pki, routes) as server, client(server, ca_bundle, strict_content_type=strict) as src:
        got = src.fetch(server.url(path), kind=kind)
    assert got.status is status, got.detail
    assert got.kind is kind
    if status is FetchStatus.OK:
        assert got.body == routes[path].body
    else:
        assert got.body is None


def test_http_body_cap_stops_reading(pki: LocalPki, ca_bundle: Path) -> None:
    # 64 MiB offered without Content-Length; the client must stop right after the cap.
    route = Route(body=b"A" * (64 * 1024 * 1024), content_length=False, chunk=65536)
    with serve(pki, {"/huge.pem": route}) as server, client(server, ca_bundle) as src:
        started = time.monotonic()
        got = src.fetch(server.url("/huge.pem"))
        elapsed = time.monotonic() - started
    assert got.reason is Reason.FETCH_TOO_LARGE
    assert elapsed < 1.0


def test_http_redirect_not_followed(
    pki: LocalPki, ca_bundle: Path, routes: dict[str, Route]
) -> None:
    with serve(pki, routes) as server, client(server, ca_bundle) as src:
        got = src.fetch(server.url("/moved.pem"))
    assert got.reason is Reason.FETCH_FAILED
    assert "/sp.pem" in got.detail  # the Location is kept for the investigator
    assert [r.path for r in server.requests] == ["/moved.pem"]


@pytest.mark.parametrize(
    ("path", "max_age", "no_store"),
    [("/sp.pem", 3600.0, False), ("/expires.pem", 86400.0, False), ("/nostore.pem", None, True)],
    ids=["max-age", "expires-minus-date", "no-store"],
)
def test_http_cache_headers(
    pki: LocalPki,
    ca_bundle: Path,
    routes: dict[str, Route],
    path: str,
    max_age: float | None,
    no_store: bool,
) -> None:
    with serve(pki, routes) as server, client(server, ca_bundle) as src:
        got = src.fetch(server.url(path))
    assert got.ok
    assert (got.max_age, got.no_store) == (max_age, no_store)


@pytest.mark.parametrize(
    "route",
    [Route(body=CHAIN, delay=3.0), Route(body=CHAIN * 40, trickle=0.1, chunk=64)],
    ids=["slow-headers", "trickled-body"],
)
def test_http_timeout(pki: LocalPki, ca_bundle: Path, route: Route) -> None:
    with serve(pki, {"/slow.pem": route}) as server, client(server, ca_bundle, timeout=0.3) as src:
        started = time.monotonic()
        got = src.fetch(server.url("/slow.pem"))
        elapsed = time.monotonic() - started
    assert got.reason is Reason.FETCH_TIMEOUT, got.detail
    assert elapsed < 1.5


def test_http_keeps_host_name_for_tls_and_host_header(
    pki: LocalPki, ca_bundle: Path, routes: dict[str, Route]
) -> None:
    with serve(pki, routes) as server, client(server, ca_bundle) as src:
        got = src.fetch(server.url("/sp.pem", host="localhost"))
    assert got.ok, got.detail
    assert server.server_names == ["localhost"]
    assert server.requests[0].headers["host"] == f"localhost:{server.port}"
    assert server.requests[0].headers["accept"] == PEM_CHAIN_TYPE
    assert server.requests[0].headers["user-agent"].startswith("stirscope/")


def test_http_reuses_connections(pki: LocalPki, ca_bundle: Path, routes: dict[str, Route]) -> None:
    with serve(pki, routes) as server, client(server, ca_bundle) as src:
        assert src.fetch(server.url("/sp.pem")).ok
        assert src.fetch(server.url("/xpem.pem")).ok
    assert server.connections == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_http_refuses_private_before_connecting(
    pki: LocalPki, ca_bundle: Path, routes: dict[str, Route], host: str
) -> None:
    with serve(pki, routes) as server, client(server, ca_bundle, allow_private=False) as src:
        got = src.fetch(server.url("/sp.pem", host=host))
    assert (got.status, got.reason) == (FetchStatus.REFUSED, Reason.FETCH_REFUSED)
    assert server.connections == 0
    assert server.requests == []


@pytest.mark.parametrize(
    ("url_template", "status"),
    [
        ("http://127.0.0.1:{port}/sp.pem", FetchStatus.BAD_URL),
        ("https://127.0.0.1:{port}/sp.pem?x=1", FetchStatus.BAD_URL),
        ("https://user@127.0.0.1:{port}/sp.pem", FetchStatus.BAD_URL),
        ("https://127.0.0.1/sp.pem", FetchStatus.BAD_URL),  # 443 not in the test's ports
    ],
    ids=["http", "query", "userinfo", "port-not-allowed"],
)
def test_http_url_policy_before_connecting(
    pki: LocalPki, ca_bundle: Path, routes: dict[str, Route], url_template: str, status: FetchStatus
) -> None:
    with serve(pki, routes) as server, client(server, ca_bundle) as src:
        got = src.fetch(url_template.format(port=server.port))
    assert got.status is status
    assert server.connections == 0


@pytest.mark.parametrize("trust", ["other-ca", "default-roots"])
def test_http_untrusted_server_certificate(
    pki: LocalPki, routes: dict[str, Route], tmp_path: Path, trust: str
) -> None:
    bundle = LocalPki.generate().write_ca(tmp_path) if trust == "other-ca" else None
    with serve(pki, routes) as server, client(server, bundle) as src:  # type: ignore[arg-type]
        got = src.fetch(server.url("/sp.pem"))
    assert got.reason is Reason.FETCH_FAILED
    assert server.requests == []


def test_http_connection_refused(ca_bundle: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with HttpSource(
        ca_bundle=ca_bundle, allow_private=True, allowed_ports=frozenset({port})
    ) as src:
        got = src.fetch(f"https://127.0.0.1:{port}/sp.pem")
    assert got.reason is Reason.FETCH_FAILED


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Answer getaddrinfo for ``answers`` (no real DNS); record the names looked up."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        if not answers[host]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        family = {True: socket.AF_INET6, False: socket.AF_INET}
        return [(family[":" in ip], socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_http_pins_checked_address_keeps_name(
    pki: LocalPki, ca_bundle: Path, routes: dict[str, Route], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = fake_dns(monkeypatch, {TEST_HOST: ["127.0.0.1"]})
    with serve(pki, routes) as server, client(server, ca_bundle) as src:
        assert src.fetch(server.url("/sp.pem", host=TEST_HOST)).ok
        assert src.fetch(server.url("/xpem.pem", host=TEST_HOST)).ok
    assert asked == [TEST_HOST]  # resolved once, for the one connection, then pinned
    assert server.connections == 1
    assert server.server_names == [TEST_HOST]
    assert {r.headers["host"] for r in server.requests} == {f"{TEST_HOST}:{server.port}"}


@pytest.mark.parametrize(
    ("answers", "status"),
    [
        (["8.8.8.8", "10.0.0.1"], FetchStatus.REFUSED),
        (["10.0.0.1", "8.8.8.8"], FetchStatus.REFUSED),
        (["::ffff:127.0.0.1"], FetchStatus.REFUSED),
        (["169.254.169.254"], FetchStatus.REFUSED),
        ([], FetchStatus.FAILED),
    ],
    ids=["public-then-private", "private-then-public", "mapped-loopback", "metadata", "nxdomain"],
)
def test_http_resolution_policy(
    pki: LocalPki,
    ca_bundle: Path,
    routes: dict[str, Route],
    monkeypatch: pytest.MonkeyPatch,
    answers: list[str],
    status: FetchStatus,
) -> None:
    fake_dns(monkeypatch, {TEST_HOST: answers})
    with serve(pki, routes) as server, client(server, ca_bundle, allow_private=False) as src:
        got = src.fetch(server.url("/sp.pem", host=TEST_HOST))
    assert got.status is status, got.detail
    assert server.connections == 0


def test_caching_over_http(pki: LocalPki, ca_bundle: Path, routes: dict[str, Route]) -> None:
    now = [1_700_000_000.0]
    with serve(pki, routes) as server:
        source = CachingSource(
            client(server, ca_bundle), clock=lambda: now[0], ttl_cap=None, negative_ttl=30.0
        )
        try:
            assert source.fetch(server.url("/sp.pem")).ok
            assert source.fetch(server.url("/sp.pem")).from_cache
            assert source.fetch(server.url("/missing.pem")).status is FetchStatus.NOT_FOUND
            assert source.fetch(server.url("/missing.pem")).from_cache
            now[0] += 31
            assert not source.fetch(server.url("/missing.pem")).from_cache
        finally:
            source.close()
    assert [r.path for r in server.requests] == ["/sp.pem", "/missing.pem", "/missing.pem"]


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in the environment must not change anything (trust_env=False)."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
