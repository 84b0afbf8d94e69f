"""CRL checks with the generated test PKI: good, revoked, revoked later, bad signature, stale."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shaken.certs import StirCertificate, parse_certificates
from shaken.crl import RevocationStatus, check_crl
from shaken.errors import Reason, Severity
from tests.conftest import FIXTURES

PKI = FIXTURES / "pki"
MANIFEST = json.loads((PKI / "manifest.json").read_text())
LEAVES = {leaf["name"]: leaf for leaf in MANIFEST["leaves"]}
REVOKED_AT = datetime.fromisoformat(MANIFEST["revocation_date"])
INTERMEDIATE_CRL = (FIXTURES / "certs" / "crl.stirscope.example" / "intermediate.crl").read_bytes()
ROOT_CRL = (FIXTURES / "certs" / "crl.stirscope.example" / "root.crl").read_bytes()
AT = datetime(2026, 6, 1, tzinfo=UTC)


def chain_of(name: str) -> tuple[StirCertificate, ...]:
    host, path = LEAVES[name]["x5u"].removeprefix("https://").split("/", 1)
    return parse_certificates((FIXTURES / "certs" / host / path).read_bytes()).certs


def key(name: str) -> ec.EllipticCurvePrivateKey:
    loaded = serialization.load_pem_private_key(
        (PKI / "keys" / f"{name}.key.pem").read_bytes(), None
    )
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return loaded


def build_crl(
    issuer: StirCertificate,
    signer: ec.EllipticCurvePrivateKey,
    *,
    this_update: datetime,
    next_update: datetime,
    revoked: tuple[int, ...] = (),
    pem: bool = False,
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.x509.subject)
        .last_update(this_update)
        .next_update(next_update)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    crl = builder.sign(signer, hashes.SHA256(), ecdsa_deterministic=True)
    return crl.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("name", "at", "status", "reasons"),
    [
        pytest.param("alpha", AT, RevocationStatus.GOOD, [], id="good"),
        pytest.param("revoked", AT, RevocationStatus.REVOKED, [Reason.CERT_REVOKED], id="revoked"),
        pytest.param(
            "revoked",
            REVOKED_AT,
            RevocationStatus.REVOKED,
            [Reason.CERT_REVOKED],
            id="revoked-at-exact-revocation-time",
        ),
        pytest.param(
            "revoked",
            REVOKED_AT - timedelta(seconds=1),
            RevocationStatus.GOOD,
            [Reason.CERT_REVOKED],
            id="revoked-after-at",
        ),
    ],
)
def test_fixture_crl(
    name: str, at: datetime, status: RevocationStatus, reasons: list[Reason]
) -> None:
    leaf, intermediate = chain_of(name)
    check = check_crl(leaf, intermediate, INTERMEDIATE_CRL, at=at)
    assert check.status is status
    assert [f.reason for f in check.findings] == reasons
    if status is RevocationStatus.GOOD and reasons:
        assert check.findings[0].severity is Severity.INFO
    assert check.this_update is not None
    assert check.next_update is not None


def test_root_crl_for_intermediate() -> None:
    _, intermediate = chain_of("alpha")
    root = parse_certificates((PKI / "ca" / "root.pem").read_bytes()).certs[0]
    check = check_crl(intermediate, root, ROOT_CRL, at=AT)
    assert check.status is RevocationStatus.GOOD
    assert check.findings == ()


def test_pem_crl_accepted() -> None:
    leaf, intermediate = chain_of("revoked")
    crl = build_crl(
        intermediate,
        key("intermediate"),
        this_update=AT - timedelta(days=1),
        next_update=AT + timedelta(days=1),
        revoked=(leaf.x509.serial_number,),
        pem=True,
    )
    assert check_crl(leaf, intermediate, crl, at=AT).status is RevocationStatus.REVOKED


def test_bad_signature() -> None:
    leaf, intermediate = chain_of("alpha")
    forged = build_crl(
        intermediate,
        key("wrong-root"),
        this_update=AT - timedelta(days=1),
        next_update=AT + timedelta(days=1),
    )
    check = check_crl(leaf, intermediate, forged, at=AT)
    assert check.status is RevocationStatus.UNKNOWN
    assert [f.reason for f in check.findings] == [Reason.CRL_INVALID]


def test_wrong_issuer_name() -> None:
    leaf, _ = chain_of("alpha")
    root = parse_certificates((PKI / "ca" / "root.pem").read_bytes()).certs[0]
    check = check_crl(leaf, root, ROOT_CRL, at=AT)
    assert check.status is RevocationStatus.UNKNOWN
    assert [f.reason for f in check.findings] == [Reason.CRL_INVALID]


@pytest.mark.parametrize(
    ("offset", "status", "severities"),
    [
        pytest.param(timedelta(0), RevocationStatus.GOOD, [], id="at-nextUpdate"),
        pytest.param(
            timedelta(seconds=1), RevocationStatus.UNKNOWN, [Severity.WARNING], id="stale-by-1s"
        ),
    ],
)
def test_stale_crl(offset: timedelta, status: RevocationStatus, severities: list[Severity]) -> None:
    leaf, intermediate = chain_of("alpha")
    next_update = AT - timedelta(days=1)
    crl = build_crl(
        intermediate,
        key("intermediate"),
        this_update=next_update - timedelta(days=7),
        next_update=next_update,
    )
    check = check_crl(leaf, intermediate, crl, at=next_update + offset)
    assert check.status is status
    assert [f.severity for f in check.findings] == severities
    assert all(f.reason is Reason.CRL_INVALID for f in check.findings)


def test_stale_crl_still_proves_revocation() -> None:
    leaf, intermediate = chain_of("revoked")
    crl = build_crl(
        intermediate,
        key("intermediate"),
        this_update=AT - timedelta(days=10),
        next_update=AT - timedelta(days=3),
        revoked=(leaf.x509.serial_number,),
    )
    check = check_crl(leaf, intermediate, crl, at=AT)
    assert check.status is RevocationStatus.REVOKED
    assert {f.reason for f in check.findings} == {Reason.CRL_INVALID, Reason.CERT_REVOKED}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x30\x03\x02\x01\x01", id="not-a-crl"),
        pytest.param(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", id="bad-pem"),
    ],
)
def test_unparseable_crl(data: bytes) -> None:
    leaf, intermediate = chain_of("alpha")
    check = check_crl(leaf, intermediate, data, at=AT)
    assert check.status is RevocationStatus.UNKNOWN
    assert [f.reason for f in check.findings] == [Reason.CRL_INVALID]
