"""ECDSA AlgorithmIdentifiers with NULL parameters: read, and signatures checked as issued."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shaken.asn1 import encode_tlv, iter_children, read_single
from shaken.certfix import normalize_ecdsa_null_params
from shaken.certs import parse_certificates
from shaken.chain import validate_chain
from shaken.errors import Reason
from shaken.trust import TrustStore

AT = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)
ECDSA_SHA256_WITH_NULL = bytes.fromhex("300c06082a8648ce3d0403020500")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.derive_private_key(0xC0FFEE, ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("NULL-params test root"))
        .issuer_name(_name("NULL-params test root"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return key, cert


def _child_with_null_params(ca_key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CA-signed certificate whose issued TBS carries ecdsa-with-SHA256 + NULL (as T-Mobile's
    STI-CA certificates do), validly signed over those exact bytes."""
    leaf_key = ec.derive_private_key(0xBEEF, ec.SECP256R1())
    template = (
        x509.CertificateBuilder()
        .subject_name(_name("NULL-params leaf"))
        .issuer_name(_name("NULL-params test root"))
        .public_key(leaf_key.public_key())
        .serial_number(2)
        .not_valid_before(dt.datetime(2025, 6, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2029, 1, 1, tzinfo=dt.UTC))
        .sign(ca_key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    tbs_fields = iter_children(read_single(template.tbs_certificate_bytes, 0x30).value)
    rebuilt = [
        ECDSA_SHA256_WITH_NULL if index == 2 else encode_tlv(f.tag, f.value)
        for index, f in enumerate(tbs_fields)
    ]
    tbs = encode_tlv(0x30, b"".join(rebuilt))
    signature = ca_key.sign(tbs, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    bit_string = encode_tlv(0x03, b"\x00" + signature)
    return encode_tlv(0x30, tbs + ECDSA_SHA256_WITH_NULL + bit_string)


def test_cryptography_refuses_the_certificate_as_issued() -> None:
    ca_key, _ = _ca()
    with pytest.raises(ValueError, match="ExtraData"):
        x509.load_der_x509_certificate(_child_with_null_params(ca_key))


def test_read_with_original_evidence_and_a_profile_finding() -> None:
    ca_key, _ = _ca()
    der = _child_with_null_params(ca_key)
    (cert,) = parse_certificates(der).certs
    assert cert.der == der
    assert cert.fingerprint_sha256 == hashlib.sha256(der).hexdigest()
    assert cert.issued_tbs is not None
    assert cert.subject == "CN=NULL-params leaf"
    assert any("NULL parameters" in f.detail for f in cert.profile_findings)


def test_signature_is_checked_over_the_tbs_as_issued() -> None:
    ca_key, ca = _ca()
    trust = TrustStore.from_pem(ca.public_bytes(serialization.Encoding.PEM), name="test")
    (cert,) = parse_certificates(_child_with_null_params(ca_key)).certs
    assert validate_chain(cert, [], trust, at=AT).trusted


def test_a_tampered_certificate_fails() -> None:
    ca_key, ca = _ca()
    trust = TrustStore.from_pem(ca.public_bytes(serialization.Encoding.PEM), name="test")
    der = bytearray(_child_with_null_params(ca_key))
    at = der.find(b"NULL-params leaf")
    der[at] ^= 0x01  # change one byte of the subject name inside the signed TBS
    (cert,) = parse_certificates(bytes(der)).certs
    result = validate_chain(cert, [], trust, at=AT)
    assert not result.trusted
    assert Reason.CHAIN_UNTRUSTED in {f.reason for f in result.findings}


@pytest.mark.parametrize(
    "data",
    [b"", b"\x30\x00", b"not DER", bytes.fromhex("3003020101")],
    ids=["empty", "empty-seq", "text", "one-integer"],
)
def test_other_input_is_not_normalised(data: bytes) -> None:
    assert normalize_ecdsa_null_params(data) is None


def test_a_clean_certificate_is_not_normalised() -> None:
    _, ca = _ca()
    assert normalize_ecdsa_null_params(ca.public_bytes(serialization.Encoding.DER)) is None
