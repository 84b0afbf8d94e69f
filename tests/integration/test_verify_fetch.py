"""Fetching end to end: x5u chains and CRLs over real HTTPS (127.0.0.1), library and CLI.

The server is tests/analyzer/https_server.py with a TLS certificate made here for the fixture
host names; getaddrinfo answers 127.0.0.1 for those names and connections to port 443 are
sent to the server's random port, so the committed fixture calls (x5u
``https://certs.alpha.example/alpha.pem``, CRLs on ``crl.stirscope.example``) are verified
unchanged through the whole HTTP client: address policy, TLS with SNI and name check, HTTP,
content type, cache. A library-level test also uses an x5u naming ``127.0.0.1:PORT`` with the
policy's allowed ports widened. RFC 8224 section 6.2.2 (436 for an unobtainable credential);
STANDARDS.md section 6.2 (fetch rules, SSRF refusal).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpcore
import pytest

from analyzer.certhttp import HttpSource
from analyzer.certsource import build_source
from analyzer.extract import request_from_headers, request_from_sip_bytes
from analyzer.trustload import load_trust_store
from service.cli import main
from shaken.errors import Reason
from shaken.policy import CrlMode, Policy
from shaken.result import Revocation, VerificationResult, Verstat
from shaken.source import CachingSource, CertificateSource
from shaken.verifier import Verifier
from tests.analyzer.https_server import LocalHttpsServer, LocalPki, Route
from tests.conftest import FIXTURES
from tests.integration.test_verifier_policy import (
    ALPHA_X5U,
    http_date,
    mirror_file,
    signed_identity,
    tn_header,
)

CALLS = FIXTURES / "calls"
TRUST_DIR = FIXTURES / "pki" / "trust"
AT_TEXT = "2026-01-15T12:00:05Z"
AT = datetime(2026, 1, 15, 12, 0, 5, tzinfo=UTC)
# Names the fixture certificates and calls use (fixtures/pki/manifest.json).
HOSTS = (
    "certs.alpha.example",
    "certs.bravo.example",
    "certs.charlie.example",
    "cr.stirscope.example",
    "crl.stirscope.example",
)
PEM_CHAIN = {"Content-Type": "application/pem-certificate-chain"}
PKIX_CRL = {"Content-Type": "application/pkix-crl"}
ROUTES = {
    "/alpha.pem": Route(body=mirror_file(ALPHA_X5U), headers=PEM_CHAIN),
    "/bravo.pem": Route(
        body=mirror_file("https://certs.bravo.example/bravo.pem"), headers=PEM_CHAIN
    ),
    "/revoked.pem": Route(
        body=mirror_file("https://cr.stirscope.example/revoked.pem"), headers=PEM_CHAIN
    ),
    "/wrong-ca.pem": Route(
        body=mirror_file("https://cr.stirscope.example/wrong-ca.pem"), headers=PEM_CHAIN
    ),
    "/intermediate.crl": Route(
        body=mirror_file("https://crl.stirscope.example/intermediate.crl"), headers=PKIX_CRL
    ),
    "/root.crl": Route(
        body=mirror_file("https://crl.stirscope.example/root.crl"), headers=PKIX_CRL
    ),
    "/login.pem": Route(body=b"<html>log in</html>", headers={"Content-Type": "text/html"}),
}


def tls_pki(hosts: tuple[str, ...] = HOSTS) -> LocalPki:
    """A throw-away TLS CA and a server certificate for ``hosts`` and 127.0.0.1."""
    return LocalPki.generate(extra_hosts=hosts)


@pytest.fixture(scope="module")
def pki() -> LocalPki:
    return tls_pki()


@pytest.fixture
def ca_bundle(pki: LocalPki, tmp_path: Path) -> Path:
    return pki.write_ca(tmp_path)


@pytest.fixture
def server(pki: LocalPki) -> Iterator[LocalHttpsServer]:
    with LocalHttpsServer(pki, ROUTES) as running:
        yield running


@pytest.fixture
def redirected(server: LocalHttpsServer, monkeypatch: pytest.MonkeyPatch) -> LocalHttpsServer:
    """The fixture host names resolve to 127.0.0.1 and port 443 reaches the test server.

    Only name resolution and the port number are bent: the client still checks the resolved
    address against the private-address policy, sends SNI and checks the TLS name.
    """
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in HOSTS:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        if isinstance(host, str) and host.endswith(".example"):
            raise socket.gaierror(socket.EAI_NONAME, "no such test host")
        return real_getaddrinfo(host, port, *args, **kwargs)

    real_connect = httpcore.SyncBackend.connect_tcp

    def connect_tcp(self: httpcore.SyncBackend, host: str, port: int, *args: Any, **kw: Any) -> Any:
        if host == "127.0.0.1" and port == 443:
            port = server.port
        return real_connect(self, host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", connect_tcp)
    return server


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in the environment must not matter (the HTTP client ignores it)."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")


def verify_call(
    name: str, source: CertificateSource, policy: Policy | None = None
) -> VerificationResult:
    verifier = Verifier(trust=load_trust_store([TRUST_DIR]), source=source, policy=policy)
    request = request_from_sip_bytes((CALLS / name).read_bytes())
    return verifier.verify(request, at=AT)


def paths(server: LocalHttpsServer) -> list[str]:
    return [r.path for r in server.requests]


# -- library level -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "status", "reason", "revocation", "fetched"),
    [
        (
            "invite_alpha_a.sip",
            None,
            None,
            Revocation.GOOD,
            ["/alpha.pem", "/intermediate.crl", "/root.crl"],
        ),
        (
            "invite_revoked.sip",
            437,
            Reason.CERT_REVOKED,
            Revocation.REVOKED,
            ["/revoked.pem", "/intermediate.crl", "/root.crl"],
        ),
        (
            "invite_untrusted.sip",
            437,
            Reason.CHAIN_UNTRUSTED,
            Revocation.UNKNOWN_SOFT_FAIL,
            ["/wrong-ca.pem"],
        ),
    ],
    ids=["alpha-passes", "revoked-by-fetched-crl", "untrusted-chain"],
)
def test_fixture_calls_over_https(
    redirected: LocalHttpsServer,
    ca_bundle: Path,
    call: str,
    status: int | None,
    reason: Reason | None,
    revocation: Revocation,
    fetched: list[str],
) -> None:
    source = build_source(fetch=True, ca_bundle=ca_bundle, allow_private=True)
    try:
        result = verify_call(call, source)
        again = verify_call(call, source)  # a second call: served by the cache
    finally:
        source.close()
    assert (result.status_code, result.reason) == (status, reason), result.to_json()
    passport = result.passports[0]
    assert passport.signer is not None
    assert passport.signer.revocation is revocation
    assert again.to_json() == result.to_json()
    assert sorted(paths(redirected)) == sorted(fetched)  # once each, never again
    assert set(redirected.server_names) <= set(HOSTS)  # SNI carried the x5u host names


def test_x5u_on_loopback_port(server: LocalHttpsServer, ca_bundle: Path) -> None:
    """A token whose x5u names https://127.0.0.1:PORT: widened ports, CRLs not reachable."""
    x5u = server.url("/alpha.pem")
    identity = signed_identity(x5u=x5u, iat=int(AT.timestamp()))
    request = request_from_headers(
        identities=[identity],
        from_=tn_header("12025550101"),
        to=tn_header("12025550199"),
        date=http_date(int(AT.timestamp())),
    )
    ports = frozenset({server.port})
    results = {}
    for mode in (CrlMode.OFF, CrlMode.SOFT, CrlMode.HARD):
        http = HttpSource(ca_bundle=ca_bundle, allow_private=True, allowed_ports=ports, timeout=2)
        source = CachingSource(http, clock=lambda: 1_800_000_000.0)
        policy = Policy(allowed_ports=ports, crl=mode)
        try:
            verifier = Verifier(trust=load_trust_store([TRUST_DIR]), source=source, policy=policy)
            results[mode] = verifier.verify(request, at=AT)
        finally:
            source.close()
    off, soft, hard = results[CrlMode.OFF], results[CrlMode.SOFT], results[CrlMode.HARD]
    assert off.passed
    assert soft.passed
    assert off.passports[0].signer is not None
    assert off.passports[0].signer.revocation is Revocation.NOT_CHECKED
    assert soft.passports[0].signer is not None
    assert soft.passports[0].signer.revocation is Revocation.UNKNOWN_SOFT_FAIL
    assert (hard.status_code, hard.reason) == (437, Reason.CRL_UNAVAILABLE)
    # The CRL URLs (port 443) are refused by the URL policy before any connection.
    assert paths(server) == ["/alpha.pem"] * 3
    # The default policy refuses the same x5u before fetching (port not allowed): 436.
    strict = Verifier(
        trust=load_trust_store([TRUST_DIR]),
        source=HttpSource(ca_bundle=ca_bundle, allow_private=True, allowed_ports=ports),
    ).verify(request, at=AT)
    assert (strict.status_code, strict.reason) == (436, Reason.BAD_INFO_URL)
    assert paths(server) == ["/alpha.pem"] * 3


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/missing.pem", Reason.FETCH_NOT_FOUND),
        ("/login.pem", Reason.FETCH_BAD_CONTENT_TYPE),
    ],
    ids=["404", "html-login-page"],
)
def test_unobtainable_credential_is_436(
    server: LocalHttpsServer, ca_bundle: Path, path: str, reason: Reason
) -> None:
    x5u = server.url(path)
    identity = signed_identity(x5u=x5u, iat=int(AT.timestamp()))
    request = request_from_headers(
        identities=[identity],
        from_=tn_header("12025550101"),
        to=tn_header("12025550199"),
        date=http_date(int(AT.timestamp())),
    )
    ports = frozenset({server.port})
    with HttpSource(ca_bundle=ca_bundle, allow_private=True, allowed_ports=ports) as source:
        result = Verifier(
            trust=load_trust_store([TRUST_DIR]),
            source=source,
            policy=replace(Policy(), allowed_ports=ports),
        ).verify(request, at=AT)
    assert (result.verstat, result.status_code, result.reason) == (Verstat.FAILED, 436, reason)
    assert result.passports[0].signer is None


def test_untrusted_tls_server_is_436(redirected: LocalHttpsServer, tmp_path: Path) -> None:
    other = tls_pki().write_ca(tmp_path)  # a CA that did not issue the server certificate
    source = build_source(fetch=True, ca_bundle=other, allow_private=True)
    try:
        result = verify_call("invite_alpha_a.sip", source)
    finally:
        source.close()
    assert (result.status_code, result.reason) == (436, Reason.FETCH_FAILED)
    assert paths(redirected) == []


# -- CLI level -----------------------------------------------------------------------------


def cli(*extra: str, call: str = "invite_alpha_a.sip") -> list[str]:
    return [
        "verify",
        "--sip",
        str(CALLS / call),
        "--trust",
        str(TRUST_DIR),
        "--at",
        AT_TEXT,
        "--json",
        *extra,
    ]


def test_cli_fetch(
    redirected: LocalHttpsServer, ca_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(cli("--fetch", "--ca-bundle", str(ca_bundle), "--unsafe-allow-private"))
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["verstat"] == Verstat.PASSED.value
    signer = out["passports"][0]["signer"]
    assert (signer["spc"], signer["chain_trusted"], signer["revocation"]) == ("1234A", True, "good")
    assert sorted(paths(redirected)) == ["/alpha.pem", "/intermediate.crl", "/root.crl"]


def test_cli_fetch_revoked(
    redirected: LocalHttpsServer, ca_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli("--fetch", "--ca-bundle", str(ca_bundle), "--unsafe-allow-private")
    code = main([*args[:2], str(CALLS / "invite_revoked.sip"), *args[3:]])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (out["status_code"], out["reason"]) == (437, Reason.CERT_REVOKED.value)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (("--fetch", "--ca-bundle", "CA"), Reason.FETCH_REFUSED),
        ((), Reason.FETCH_OFFLINE),
        (("--ca-bundle", "CA", "--unsafe-allow-private"), Reason.FETCH_OFFLINE),
    ],
    ids=["private-address-refused", "offline", "allow-private-without-fetch"],
)
def test_cli_no_fetch(
    redirected: LocalHttpsServer,
    ca_bundle: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    reason: Reason,
) -> None:
    args = [str(ca_bundle) if a == "CA" else a for a in extra]
    code = main(cli(*args))
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (out["verstat"], out["status_code"], out["reason"]) == (
        Verstat.FAILED.value,
        436,
        reason.value,
    )
    assert redirected.connections == 0  # refused before connecting, or never tried


def test_cli_batch_fetch(
    redirected: LocalHttpsServer,
    ca_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`verify --batch` with fetching: one fetch per URL for the whole batch, then closed."""
    lines = (FIXTURES / "calls" / "batch.jsonl").read_text(encoding="utf-8").splitlines()
    batch = tmp_path / "alpha.jsonl"
    batch.write_text("\n".join([lines[0]] * 5) + "\n", encoding="utf-8")
    code = main(
        [
            "verify",
            "--batch",
            str(batch),
            "--trust",
            str(TRUST_DIR),
            "--fetch",
            "--ca-bundle",
            str(ca_bundle),
            "--unsafe-allow-private",
        ]
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [r["verstat"] for r in records] == [Verstat.PASSED.value] * 5
    assert sorted(paths(redirected)) == ["/alpha.pem", "/intermediate.crl", "/root.crl"]
