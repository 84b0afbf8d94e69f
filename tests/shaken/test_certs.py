"""Certificate view, bundle parsing, claim constraints and the leaf checks of step 20."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from shaken.certs import StirCertificate, parse_certificates
from shaken.constraints import check_claim_constraints, parse_claim_constraints
from shaken.errors import Reason, Severity, ShakenError
from shaken.profile import ProfileIssue, check_leaf_for_verification
from tests.conftest import FIXTURES

# RFC 9118 section 5 sample certificate (STANDARDS-VECTORS.md V11).
RFC9118_PEM = b"""-----BEGIN CERTIFICATE-----
MIICpzCCAk2gAwIBAgIUH7Zd3rQ5AsvOlzLnzUHhrVhDSlswCgYIKoZIzj0EAwIw
KTELMAkGA1UEBhMCVVMxGjAYBgNVBAMMEUJPR1VTIFNIQUtFTiBST09UMB4XDTIx
MDcxNTIxNTIxNVoXDTIyMDcxNTIxNTIxNVowbDELMAkGA1UEBhMCVVMxCzAJBgNV
BAgMAlZBMRAwDgYDVQQHDAdIZXJuZG9uMR4wHAYDVQQKDBVCb2d1cyBFeGFtcGxl
IFRlbGVjb20xDTALBgNVBAsMBFZvSVAxDzANBgNVBAMMBlNIQUtFTjBZMBMGByqG
SM49AgEGCCqGSM49AwEHA0IABNR6C6nBWRA/fXTglV03aXkXy8hx9oBttVLhsTZ1
IYVRBao4OZhVf/Xv1a3xLsZ6KfdhuylSeAKuCoSbVGojYDGjggEOMIIBCjAMBgNV
HRMBAf8EAjAAMA4GA1UdDwEB/wQEAwIHgDAdBgNVHQ4EFgQUDlG3dxHyzKL/FZfS
PI7rpuueRbswHwYDVR0jBBgwFoAUlToKtrQeFrwwyXpMj1qu3TQEeoEwQgYJYIZI
AYb4QgENBDUWM1RoaXMgY2VydGlmaWNhdGUgY2Fubm90IGJlIHRydXN0ZWQgZm9y
IGFueSBwdXJwb3NlLjAWBggrBgEFBQcBGgQKMAigBhYEMTIzNDBOBggrBgEFBQcB
IQRCMECgDjAMFgpjb25maWRlbmNloSAwHjAcFgpjb25maWRlbmNlMA4MBGhpZ2gM
Bm1lZGl1baIMMAoWCHByaW9yaXR5MAoGCCqGSM49BAMCA0gAMEUCIQCbNR4QK1um
+0vq2CE1B1/W3avYeREsPi/7RKHffL+5eQIgarHot+X9Rl7SOyNBq5X5JyEMx0SQ
hRLkCY3Zoz2OCNQ=
-----END CERTIFICATE-----
"""
RFC9118_EJCC = bytes.fromhex(
    "3040a00e300c160a636f6e666964656e6365a120301e301c160a636f6e666964656e6365300e0c04686967"
    "680c066d656469756da20c300a16087072696f72697479"
)
ALPHA_CHAIN = (FIXTURES / "certs" / "certs.alpha.example" / "alpha.pem").read_bytes()


def test_rfc9118_sample_certificate() -> None:
    cert = StirCertificate.from_pem(RFC9118_PEM)
    assert cert.subject == "CN=SHAKEN,OU=VoIP,O=Bogus Example Telecom,L=Herndon,ST=VA,C=US"
    assert cert.serial == "1fb65ddeb43902cbce9732e7cd41e1ad58434a5b"
    assert cert.not_before == datetime(2021, 7, 15, 21, 52, 15, tzinfo=UTC)
    assert cert.spc == "1234"
    assert cert.tnauthlist_critical is False
    assert cert.is_ca is False
    assert cert.key_type == "EC P-256"
    assert cert.ski == "0e51b77711f2cca2ff1597d23c8eeba6eb9e45bb"
    assert cert.aki == "953a0ab6b41e16bc30c97a4c8f5aaedd34047a81"
    assert cert.claim_constraints is not None
    assert cert.claim_constraints.enhanced
    assert cert.claim_constraints.must_include == ("confidence",)
    assert dict(cert.claim_constraints.permitted_values) == {"confidence": ("high", "medium")}
    assert cert.claim_constraints.must_exclude == ("priority",)
    codes = {f.code for f in cert.profile_findings}
    assert ProfileIssue.EXTENSION_NOT_ALLOWED in codes  # the Netscape comment
    assert check_leaf_for_verification(cert) == []


@pytest.mark.parametrize(
    ("payload", "violations"),
    [
        pytest.param({"confidence": "high"}, 0, id="high"),
        pytest.param({"confidence": "medium", "other": 1}, 0, id="medium-plus-other"),
        pytest.param({"confidence": "low"}, 1, id="low"),
        pytest.param({}, 1, id="missing-confidence"),
        pytest.param({"confidence": "high", "priority": "x"}, 1, id="priority-present"),
        pytest.param({"priority": 1}, 2, id="missing-and-excluded"),
        pytest.param({"confidence": ["high"]}, 1, id="json-array-is-not-string"),
    ],
)
def test_rfc9118_constraints(payload: dict[str, object], violations: int) -> None:
    constraints = parse_claim_constraints(RFC9118_EJCC, enhanced=True)
    findings = check_claim_constraints(constraints, payload)
    assert len(findings) == violations
    assert all(f.reason is Reason.CLAIM_CONSTRAINTS_VIOLATED for f in findings)


def test_json_valued_claim_uses_canonical_serialisation() -> None:
    from shaken.asn1 import encode_tlv as tlv

    value = '{"/nam":"sha256-x","/apn":"sha256-y"}'
    canonical = '{"/apn":"sha256-y","/nam":"sha256-x"}'
    assert value != canonical
    entry = tlv(0x30, tlv(0x16, b"rcdi") + tlv(0x30, tlv(0x0C, canonical.encode())))
    der = tlv(0x30, tlv(0xA0, tlv(0x30, tlv(0x16, b"rcdi"))) + tlv(0xA1, tlv(0x30, entry)))
    constraints = parse_claim_constraints(der, enhanced=False)
    good = {"rcdi": {"/nam": "sha256-x", "/apn": "sha256-y"}}
    bad = {"rcdi": {"/nam": "sha256-x", "/apn": "sha256-z"}}
    assert check_claim_constraints(constraints, good) == []
    assert [f.reason for f in check_claim_constraints(constraints, bad)] == [
        Reason.CLAIM_CONSTRAINTS_VIOLATED
    ]


@pytest.mark.parametrize("base_claim", ["iat", "orig", "dest"])
def test_must_exclude_base_claim_means_absent(base_claim: str) -> None:
    from shaken.asn1 import encode_tlv as tlv

    names = tlv(0x30, tlv(0x16, b"x") + tlv(0x16, base_claim.encode()))
    der = tlv(0x30, tlv(0xA0, tlv(0x30, tlv(0x16, b"must"))) + tlv(0xA2, names))
    constraints = parse_claim_constraints(der, enhanced=True)
    assert constraints.is_ignored
    assert check_claim_constraints(constraints, {"x": 1, base_claim: 1}) == []


@pytest.mark.parametrize(
    ("der", "enhanced"),
    [
        pytest.param(b"", True, id="empty"),
        pytest.param(b"\x30\x00", True, id="no-field"),
        pytest.param(RFC9118_EJCC, False, id="mustExclude-in-plain-extension"),
        pytest.param(RFC9118_EJCC + b"\x00", True, id="trailing-byte"),
        pytest.param(bytes.fromhex("3006a0043002300a"), True, id="claim-name-not-ia5"),
    ],
)
def test_malformed_constraints(der: bytes, enhanced: bool) -> None:
    with pytest.raises(ShakenError) as info:
        parse_claim_constraints(der, enhanced=enhanced)
    assert info.value.reason is Reason.CERT_PARSE_ERROR


def test_bundle_with_junk_and_other_blocks() -> None:
    key_block = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    bad = b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n"
    data = b"hello\n" + ALPHA_CHAIN + key_block + bad + b"trailing junk"
    bundle = parse_certificates(data)
    assert [c.spc for c in bundle.certs] == ["1234A", None]
    assert len(bundle.entries) == 3
    assert bundle.entries[2].cert is None
    assert bundle.entries[2].error is not None
    assert "certificate 2" in bundle.entries[2].error
    assert len(bundle.problems) == 4  # junk before, key block, bad cert, junk after


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x30\x82\x01", id="truncated-der"),
        pytest.param(b"not a certificate", id="text"),
        pytest.param(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----", id="bad-b64"),
    ],
)
def test_unloadable_inputs_never_raise(data: bytes) -> None:
    bundle = parse_certificates(data)
    assert bundle.certs == ()
    assert bundle.problems


def test_der_certificate_and_json_record() -> None:
    pem_leaf = parse_certificates(ALPHA_CHAIN).certs[0]
    bundle = parse_certificates(pem_leaf.der)
    assert bundle.problems == ()
    cert = bundle.certs[0]
    assert cert == pem_leaf
    record = cert.to_json()
    assert record["spc"] == "1234A"
    assert record["tnauthlist"] == {
        "spcs": ["1234A"],
        "ranges": [],
        "tns": [],
        "other": [],
        "critical": False,
    }
    assert record["crl_urls"] == ["https://crl.stirscope.example/intermediate.crl"]
    assert record["profile_findings"] == []
    assert record["not_before"] == "2025-06-01T00:00:00+00:00"


def _self_signed(*extensions: tuple[x509.ExtensionType, bool]) -> x509.Certificate:
    key = ec.derive_private_key(12345, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SHAKEN TEST")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2**70)
        .not_valid_before(datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2026, 1, 1, tzinfo=UTC))
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    signed = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    return x509.load_der_x509_certificate(signed.public_bytes(serialization.Encoding.DER))


TNAL = x509.UnrecognizedExtension(
    x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26"), bytes.fromhex("3008a006160431323334")
)


def test_malformed_standard_extension_falls_back_to_raw_walk() -> None:
    broken_ku = x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, b"\x05\x00")
    bc = x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x00")
    cert = StirCertificate.from_x509(_self_signed((broken_ku, True), (bc, True), (TNAL, False)))
    assert cert.spc == "1234"
    assert cert.is_ca is False
    assert cert.key_usage is None
    assert cert.key_usage_error is not None
    assert ProfileIssue.EXTENSION_MALFORMED in {f.code for f in cert.profile_findings}
    findings = check_leaf_for_verification(cert)
    assert [(f.reason, f.severity) for f in findings] == [
        (Reason.KEY_USAGE_INVALID, Severity.WARNING)
    ]


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        pytest.param([(TNAL, False)], [], id="minimal-leaf-passes"),
        pytest.param([], [Reason.TNAUTHLIST_MISSING], id="no-tnauthlist"),
        pytest.param(
            [(TNAL, False), (x509.BasicConstraints(ca=True, path_length=None), True)],
            [Reason.BASIC_CONSTRAINTS_INVALID],
            id="ca-true",
        ),
        pytest.param(
            [
                (TNAL, False),
                (
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                    True,
                ),
            ],
            [Reason.KEY_USAGE_INVALID],
            id="no-digital-signature",
        ),
        pytest.param(
            [
                (
                    x509.UnrecognizedExtension(
                        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26"), b"\x04\x00"
                    ),
                    False,
                )
            ],
            [Reason.TNAUTHLIST_INVALID],
            id="undecodable-tnauthlist",
        ),
    ],
)
def test_leaf_checks(
    extensions: list[tuple[x509.ExtensionType, bool]], expected: list[Reason]
) -> None:
    cert = StirCertificate.from_x509(_self_signed(*extensions))
    errors = [f.reason for f in check_leaf_for_verification(cert) if f.is_error]
    assert errors == expected


def test_tn_range_leaf_accepted_when_spc_not_required() -> None:
    leaf = parse_certificates(
        (FIXTURES / "certs" / "cr.stirscope.example" / "tn-range.pem").read_bytes()
    ).certs[0]
    assert leaf.tn_auth_list is not None
    assert leaf.tn_auth_list.covers("12025550150")
    assert [f.reason for f in check_leaf_for_verification(leaf)] == [Reason.TNAUTHLIST_MISSING]
    assert check_leaf_for_verification(leaf, require_spc=False) == []
