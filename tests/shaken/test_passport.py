"""PASSporT decoding, header and claim checks, compact rebuild, div chains (RFC 8225/8588/8946).

RFC vectors come from STANDARDS-VECTORS.md (V1-V8, V13), with their documented quirks.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from hypothesis import given, settings
from hypothesis import strategies as st

from shaken.errors import Reason, Severity
from shaken.es256 import verify_es256
from shaken.identity import parse_identity_header
from shaken.party import Party
from shaken.passport import (
    SUPPORTED_PPTS,
    DecodedPassport,
    check_claims,
    check_header,
    decode_passport,
    link_div_chains,
    rebuild_compact_signing_input,
)
from shaken.signing import div_payload, shaken_payload, sign_passport

# --- RFC keys (STANDARDS-VECTORS.md V3, V4, V7) -------------------------------------------

# RFC 8225 A.1 private key's real public key (LOCAL derivation in V3).
RFC8225_A1_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFn2o9R1BE6aDQqzrafSgPKNFe/SL
lgESrfQtXBT5MndxQT+EnojWcUIQ6w9LXQR5bN/8BXvPvithaz8kBfb7oQ==
-----END PUBLIC KEY-----
"""
# RFC 8225 A.2 public key as printed = public half of the old draft key (V4).
RFC8225_A2_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8HNbQd/TmvCKwPKHkMF9fScavGeH
78YTU8qLS8I5HLHSSmlATLcslQMhNC/OhlWBYC626nIlo7XeebYS7Sb37g==
-----END PUBLIC KEY-----
"""
RFC8946_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEmzGM1VsO+3IqbMF54rQMaYKQftO4
hUYm9wv5wutLgEd9FsiTy3+4+Wa2O7pffOXPC0QzO+yD8hGEXGP/2mZo6w==
-----END PUBLIC KEY-----
"""
RFC8946_PRIVATE = b"""-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIFKCsFZ4Wsw3ZpBxgc4Z0sOjaXDdMk07Ny1fKg6OntAkoAoGCCqGSM49
AwEHoUQDQgAEmzGM1VsO+3IqbMF54rQMaYKQftO4hUYm9wv5wutLgEd9FsiTy3+4
+Wa2O7pffOXPC0QzO+yD8hGEXGP/2mZo6w==
-----END EC PRIVATE KEY-----
"""

# --- RFC tokens ---------------------------------------------------------------------------

# V2: RFC 8224 section 4.1.1 / RFC 8225 section 7.1 token (string iat; x5u != info).
V2_TOKEN = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0LmV4YW1wbGUub3JnL3Bhc3Nwb3J0"
    "LmNlciJ9.eyJkZXN0Ijp7InVyaSI6WyJzaXA6YWxpY2VAZXhhbXBsZS5jb20iXX0sImlhdCI6IjE0NDMyMDgzNDUiLCJvcmln"
    "Ijp7InRuIjoiMTIxNTU1NTEyMTIifX0.rq3pjT1hoRwakEGjHCnWSwUnshd0-zJ6F1VOgFWSjHBr8Qjpjlk-cpFYpFYsojNCp"
    "TzO3QfPOlckGaS6hEck7w"
)
V2_INFO = "https://biloxi.example.org/biloxi.cert"
V1_SIGNATURE = (
    "rq3pjT1hoRwakEGjHCnWSwUnshd0-zJ6F1VOgFWSjHBr8Qjpjlk-cpFYpFYsojNCpTzO3QfPOlckGaS6hEck7w"
)
RFC_X5U = "https://cert.example.org/passport.cer"
# V3: RFC 8225 Appendix A; the signature verifies with neither printed key.
V3_TOKEN = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0LmV4YW1wbGUub3JnL3Bhc3Nwb3J0"
    "LmNlciJ9.eyJkZXN0Ijp7InVyaSI6WyJzaXA6YWxpY2VAZXhhbXBsZS5jb20iXX0sImlhdCI6MTQ3MTM3NTQxOCwib3JpZyI6"
    "eyJ0biI6IjEyMTU1NTUxMjEyIn19.VLBCIVDCaeK6M4hLJb6SHQvacAQVvoiiEOWQ_iUkqk79UD81fHQ0E1b3_GluIkba7UWYR"
    "M47ZbNFdOJquE35cw"
)
# V5a/V5b: LOCAL deterministic re-signs with the A.1 key.
V5A_SIGNATURE = (
    "2c_SAul3BxIuvMR3G8VfbFwj6ZoOHBQF-qVaR-Mef0V2ipEhTe0ZYBaLrnhuSRVNwy1Tu-tr334XUBdnPYi3tA"
)
V5A_TOKEN = V3_TOKEN.rsplit(".", 1)[0] + "." + V5A_SIGNATURE
V5B_TOKEN = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0LmV4YW1w"
    "bGUub3JnL3Bhc3Nwb3J0LmNlciJ9.eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyIxMjEyNTU1MTIxMiJdfSwiaWF0Ijox"
    "NDcxMzc1NDE4LCJvcmlnIjp7InRuIjoiMTIxNTU1NTEyMTIifSwib3JpZ2lkIjoiMTIzZTQ1NjctZTg5Yi0xMmQzLWE0NTYt"
    "NDI2NjU1NDQwMDAwIn0.czDg9vLNZ1pwBYU3ctFMfniftHtbuX0gxIpIL5LaARVBfkjKooUKA8WThpUY-68ppB8Aeyjw5at81Z"
    "lD2WL4gA"
)
# V7: RFC 8946 div (a), original (b) and div-o (c) PASSporTs.
V7A_TOKEN = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6ImRpdiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly93d3cuZXhhbXBsZS5j"
    "b20vY2VydC5jZXIifQ.eyJkZXN0Ijp7InRuIjpbIjEyMTU1NTUxMjE0Il19LCJkaXYiOnsidG4iOiIxMjE1NTU1NTEyMTMifS"
    "wiaWF0IjoxNDQzMjA4MzQ1LCJvcmlnIjp7InRuIjoiMTIxNTU1NTEyMTIifX0.xBHWipDEEJ8a6TsdX6xUXAnblsFiGUiAxwL"
    "iv0HLC9IICj6eG9jQd6WzeSSjHRBwxmChHhVIiMTSqIlk3yCNkg"
)
V7B_TOKEN = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly93d3cuZXhhbXBsZS5jb20vY2VydC5jZXIif"
    "Q.eyJkZXN0Ijp7InRuIjpbIjEyMTU1NTUxMjEzIl19LCJpYXQiOjE0NDMyMDgzNDUsIm9yaWciOnsidG4iOiIxMjE1NTU1MTI"
    "xMiJ9fQ.1bEzkzcNbKvgz4QoMx0_DJ2T8qFMDC1sPqHPXl1WvbauzRJRvYlZqQ0qgGTlS8tJ_wXjVe07Z3wvDrdApHhhYw"
)
V7C_TOKEN = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6ImRpdi1vIiwidHlwIjoicGFzc3BvcnQiLCJ4NXUiOiJodHRwczovL3d3dy5leGFtcGxl"
    "LmNvbS9jZXJ0LmNlciJ9.eyJkZXN0Ijp7InRuIjoiMTIxNTU1NTEyMTQifSwiZGl2Ijp7InRuIjoiMTIxNTU1NTUxMjEzIn0s"
    "ImlhdCI6MTQ0MzIwODM0NSwib3B0IjoiZXlKaGJHY2lPaUpGVXpJMU5pSXNJblI1Y0NJNkluQmhjM053YjNKMElpd2llRFYx"
    "SWpvaWFIUjBjSE02THk5M2QzY3VaWGhoYlhCc1pTNWpiMjB2WTJWeWRDNWpaWElpZlEuZXlKa1pYTjBJanA3SW5SdUlqcGJJ"
    "akV5TVRVMU5UVXhNakV6SWwxOUxDSnBZWFFpT2pFME5ETXlNRGd6TkRVc0ltOXlhV2NpT25zaWRHNGlPaUl4TWpFMU5UVTFN"
    "VEl4TWlKOWZRLjFiRXpremNOYkt2Z3o0UW9NeDBfREoyVDhxRk1EQzFzUHFIUFhsMVd2YmF1elJKUnZZbFpxUTBxZ0dUbFM4"
    "dEpfd1hqVmUwN1ozd3ZEcmRBcEhoaFl3Iiwib3JpZyI6eyJ0biI6IjEyMTU1NTUxMjEyIn19.CHeA9wRnthl7paMe6rP0TARp"
    "mFCXjmi_vF_HRz2O_oulB_R-G9xZNiLVvmvHv4gk6LILaDV2y2VtHTLIEgmHig"
)
# V8: RFC 8443 section 4.1 rph token as printed (newline bytes, invalid payload JSON).
V8_TOKEN = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InJwaCIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly93d3cuZXhhbXBsZS5j"
    "b20vY2VydC5jZXIifQo.eyJkZXN0Ijp7WyJ0biI6IjEyMTI1NTUwMTEzIl19LCJpYXQiOiIxNDQzMjA4MzQ1Iiwib3JpZyI6"
    "eyJ0biI6IjEyMTU1NTUwMTEyIn0sInJwaCI6eyJhdXRoIjpbImV0cy4wIiwid3BzLjAiXX19Cg.s37S6VC8HM6Dl6YzJeQDs"
    "rZcwJ0lizxhUrA7f_98oWBHvo-cl-n8MIhoCr18vYYFy3blXvs3fslM_oos2P2Dyw"
)
# V13: TILTX help-page example (x5u host != info host).
V13_VALUE = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jci5zYW5zYXku"
    "Y29tL1RlY2hub2xvZ3lfSW5ub3ZhdGlvbl9MYWJfNTk5SiJ9.eyJhdHRlc3QiOiJCIiwiZGVzdCI6eyJ0biI6WyIxMzE1MjQ1"
    "ODk3OCJdfSwiaWF0IjoxNjM3MTc5ODExLCJvcmlnIjp7InRuIjoiMTgwMDM4MTYzMTEifSwib3JpZ2lkIjoiNWU0ZDMyNzgt"
    "NDdlMi0xMWVjLTg3ZTAtYmRjMWMxZDI4ODg4In0.wfBg-TLuEllPXKis8h5DTPa8G7OkdFUxMwCQcTycz9005swKyHunRL7iV"
    "tECCV_q_gI3Uk0ujOXD-7BPMdJNCQ;info=<https://ca.tiltx.com/599J>;alg=ES256;ppt=shaken"
)


def pub(pem: bytes) -> ec.EllipticCurvePublicKey:
    key = load_pem_public_key(pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_of(header: object, payload: object, sig: bytes = bytes(64)) -> str:
    """An unsigned token with exactly these JSON values (syntax tests only)."""
    h = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    p = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return f"{b64(h)}.{b64(p)}.{b64(sig)}"


SHAKEN_HEADER = {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": RFC_X5U}
SHAKEN_PAYLOAD = {
    "attest": "A",
    "dest": {"tn": ["12125551212"]},
    "iat": 1471375418,
    "orig": {"tn": "12155551212"},
    "origid": "123e4567-e89b-12d3-a456-426655440000",
}


def reasons(findings: object) -> set[Reason]:
    return {f.reason for f in findings}  # type: ignore[attr-defined]


def error_reasons(findings: object) -> set[Reason]:
    return {f.reason for f in findings if f.severity is Severity.ERROR}  # type: ignore[attr-defined]


# --- RFC vectors --------------------------------------------------------------------------


def test_v2_rfc8224_token_verifies_but_has_string_iat_and_x5u_mismatch() -> None:
    decoded = decode_passport(V2_TOKEN)
    assert decoded.findings == ()
    assert decoded.signature is not None
    assert decoded.signing_input is not None
    assert verify_es256(pub(RFC8225_A2_PUBLIC), decoded.signing_input, decoded.signature)
    assert not verify_es256(pub(RFC8225_A1_PUBLIC), decoded.signing_input, decoded.signature)
    assert Reason.INVALID_IAT in error_reasons(check_claims(decoded))
    identity = parse_identity_header(f"{V2_TOKEN};info=<{V2_INFO}>")
    assert Reason.X5U_INFO_MISMATCH in error_reasons(check_header(decoded, identity))


def test_v1_compact_rebuild_with_integer_iat_does_not_verify() -> None:
    # The RFC's compact signature was made over the string-iat payload (STANDARDS-VECTORS V1).
    identity = parse_identity_header(f"..{V1_SIGNATURE};info=<{RFC_X5U}>")
    assert identity.form == "compact"
    decoded = decode_passport(identity.token)
    assert decoded.form == "compact"
    assert decoded.signature is not None
    rebuilt = rebuild_compact_signing_input(
        orig=Party.tn("12155551212"), dest=[Party.uri("sip:alice@example.com")],
        iat=1443208345, x5u=RFC_X5U,
    )  # fmt: skip
    assert not verify_es256(pub(RFC8225_A2_PUBLIC), rebuilt, decoded.signature)


@pytest.mark.parametrize(
    "pem", [pytest.param(RFC8225_A1_PUBLIC, id="a1-real"), pytest.param(RFC8225_A2_PUBLIC, id="a2")]
)
def test_v3_appendix_a_signature_verifies_with_neither_key(pem: bytes) -> None:
    decoded = decode_passport(V3_TOKEN)
    assert decoded.findings == ()  # JSON and base64url are canonical
    assert decoded.signing_input is not None
    assert decoded.signature is not None
    assert not verify_es256(pub(pem), decoded.signing_input, decoded.signature)


def test_v5a_full_and_compact_verify() -> None:
    decoded = decode_passport(V5A_TOKEN)
    assert decoded.signing_input is not None
    assert decoded.signature is not None
    assert verify_es256(pub(RFC8225_A1_PUBLIC), decoded.signing_input, decoded.signature)
    rebuilt = rebuild_compact_signing_input(
        orig=Party.tn("12155551212"), dest=[Party.uri("sip:alice@example.com")],
        iat=1471375418, x5u=RFC_X5U,
    )  # fmt: skip
    assert rebuilt == decoded.signing_input
    compact = decode_passport(f"..{V5A_SIGNATURE}")
    assert compact.signature is not None
    assert verify_es256(pub(RFC8225_A1_PUBLIC), rebuilt, compact.signature)


def test_v5b_shaken_vector_is_clean_and_verifies() -> None:
    identity = parse_identity_header(f'{V5B_TOKEN};info=<{RFC_X5U}>;alg=ES256;ppt="shaken"')
    decoded = decode_passport(identity.token)
    assert decoded.header == SHAKEN_HEADER
    assert decoded.payload == SHAKEN_PAYLOAD
    assert check_header(decoded, identity) == []
    assert check_claims(decoded) == []
    assert decoded.signing_input is not None
    assert decoded.signature is not None
    assert verify_es256(pub(RFC8225_A1_PUBLIC), decoded.signing_input, decoded.signature)
    claims = decoded.claims
    assert claims is not None
    assert (claims.attest, claims.origid, claims.iat) == ("A", SHAKEN_PAYLOAD["origid"], 1471375418)
    assert claims.orig == Party.tn("12155551212")
    assert claims.dest == (Party.tn("12125551212"),)
    assert (claims.ppt, claims.x5u, claims.typ, claims.alg) == (
        "shaken",
        RFC_X5U,
        "passport",
        "ES256",
    )


def test_v5b_mutated_payload_fails_signature() -> None:
    h, p, s = V5B_TOKEN.split(".")
    payload = base64.urlsafe_b64decode(p + "==").replace(b'"A"', b'"B"')
    decoded = decode_passport(f"{h}.{b64(payload)}.{s}")
    assert decoded.signing_input is not None
    assert decoded.signature is not None
    assert not verify_es256(pub(RFC8225_A1_PUBLIC), decoded.signing_input, decoded.signature)


def test_v6_rfc8588_example_is_invalid_json() -> None:
    printed = b'{"attest":"A"\n"dest":{"tn":["12155550131"]}\n"iat":"1443208345","orig":{"tn":"1"}}'
    decoded = decode_passport(
        f"{b64(json.dumps(SHAKEN_HEADER).encode())}.{b64(printed)}.{b64(bytes(64))}"
    )
    assert Reason.INVALID_JSON in error_reasons(decoded.findings)
    assert decoded.payload is None
    assert decoded.claims is None


@pytest.mark.parametrize(
    ("token", "ppt"),
    [
        pytest.param(V7A_TOKEN, "div", id="v7a-div"),
        pytest.param(V7B_TOKEN, None, id="v7b-original"),
        pytest.param(V7C_TOKEN, "div-o", id="v7c-div-o"),
    ],
)
def test_v7_rfc8946_tokens_verify(token: str, ppt: str | None) -> None:
    decoded = decode_passport(token)
    assert decoded.ppt == ppt
    assert decoded.signing_input is not None
    assert decoded.signature is not None
    assert verify_es256(pub(RFC8946_PUBLIC), decoded.signing_input, decoded.signature)


def test_v7c_div_o_has_string_dest() -> None:
    decoded = decode_passport(V7C_TOKEN)
    assert Reason.INVALID_DEST in error_reasons(check_claims(decoded))
    claims = decoded.claims
    assert claims is not None
    assert claims.opt == V7B_TOKEN
    assert claims.dest == (Party.tn("12155551214"),)  # lenient view still extracts it


def test_v7_rfc_typo_leaves_div_passport_orphaned() -> None:
    chains = link_div_chains([decode_passport(V7B_TOKEN), decode_passport(V7A_TOKEN)])
    assert reasons(chains.findings) == {Reason.DIV_ORPHAN}
    assert chains.parents == {}


def test_v8_rph_example_is_malformed() -> None:
    decoded = decode_passport(V8_TOKEN)
    assert Reason.INVALID_JSON in error_reasons(decoded.findings)
    assert Reason.NON_CANONICAL_JSON in reasons(decoded.findings)  # header ends with "\n"
    assert decoded.header is not None
    assert decoded.header["ppt"] == "rph"
    identity = parse_identity_header(
        f'{V8_TOKEN};info=<https://www.example.org/cert.cer>;ppt="rph"'
    )
    assert Reason.X5U_INFO_MISMATCH in error_reasons(check_header(decoded, identity))


def test_v13_tiltx_example_extracts_claims_and_flags_x5u() -> None:
    identity = parse_identity_header(V13_VALUE)
    decoded = decode_passport(identity.token)
    assert decoded.findings == ()
    claims = decoded.claims
    assert claims is not None
    assert (claims.attest, claims.origid, claims.iat) == (
        "B", "5e4d3278-47e2-11ec-87e0-bdc1c1d28888", 1637179811,
    )  # fmt: skip
    assert claims.orig == Party.tn("18003816311")
    assert reasons(check_header(decoded, identity)) == {Reason.X5U_INFO_MISMATCH}
    assert check_claims(decoded) == []


# --- decode reasons -----------------------------------------------------------------------

H = b64(json.dumps(SHAKEN_HEADER, separators=(",", ":"), sort_keys=True).encode())
P = b64(json.dumps(SHAKEN_PAYLOAD, separators=(",", ":"), sort_keys=True).encode())
S = b64(bytes(64))


def with_payload(raw: bytes) -> str:
    return f"{H}.{b64(raw)}.{S}"


def with_header(raw: bytes) -> str:
    return f"{b64(raw)}.{P}.{S}"


DER_SIG = bytes.fromhex("3044" + "0220" + "11" * 32 + "0220" + "22" * 32)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param(f"{H}.{P}", Reason.MALFORMED_TOKEN, id="two-parts"),
        pytest.param(f"{H}.{P}.{S}.{S}", Reason.MALFORMED_TOKEN, id="four-parts"),
        pytest.param("", Reason.MALFORMED_TOKEN, id="empty"),
        pytest.param(f"{H}..{S}", Reason.MALFORMED_TOKEN, id="empty-payload"),
        pytest.param(f".{P}.{S}", Reason.MALFORMED_TOKEN, id="empty-header"),
        pytest.param(f"{H}.{P}.", Reason.MALFORMED_TOKEN, id="empty-signature"),
        pytest.param("..", Reason.MALFORMED_TOKEN, id="compact-empty-signature"),
        pytest.param(f"{H}=.{P}.{S}", Reason.INVALID_BASE64, id="padded-header"),
        pytest.param(f"{H}.{P}.{S}==", Reason.INVALID_BASE64, id="padded-signature"),
        pytest.param(f"{H}.{P}+.{S}", Reason.INVALID_BASE64, id="plus-in-payload"),
        pytest.param(f"{H}.{P[:10]} {P[10:]}.{S}", Reason.INVALID_BASE64, id="space-in-payload"),
        pytest.param(f"{H}.AAAAA.{S}", Reason.INVALID_BASE64, id="impossible-length"),
        pytest.param(with_payload(b'[1,2]'), Reason.INVALID_JSON, id="payload-array"),
        pytest.param(with_payload(b'{not json'), Reason.INVALID_JSON, id="payload-garbage"),
        pytest.param(with_payload(b'{}x'), Reason.INVALID_JSON, id="trailing-data"),
        pytest.param(f"{H}.{b64(bytes([0xFF, 0xFE]))}.{S}", Reason.INVALID_JSON, id="not-utf8"),
        pytest.param(with_payload(b'{"iat":NaN}'), Reason.INVALID_JSON, id="nan"),
        pytest.param(with_payload(b'{"iat":Infinity}'), Reason.INVALID_JSON, id="infinity"),
        pytest.param(with_payload(b'{"iat":1,"iat":2}'), Reason.DUPLICATE_JSON_KEY,
                     id="duplicate-claim"),
        pytest.param(with_header(b'{"alg":"ES256","alg":"none"}'),
                     Reason.DUPLICATE_JSON_KEY, id="duplicate-header-key"),
        pytest.param(with_payload(b'{"o":{"a":1,"a":1}}'), Reason.DUPLICATE_JSON_KEY,
                     id="duplicate-nested-key"),
        pytest.param(f"{H}.{P}.{b64(DER_SIG)}", Reason.INVALID_SIGNATURE_ENCODING, id="der-sig"),
        pytest.param(f"{H}.{P}.{b64(bytes(63))}", Reason.INVALID_SIGNATURE_ENCODING,
                     id="63-byte-sig"),
        pytest.param(f"{H}.{P}.{b64(bytes(65))}", Reason.INVALID_SIGNATURE_ENCODING,
                     id="65-byte-sig"),
        pytest.param(with_payload(b'{ "iat": 1 }'), Reason.NON_CANONICAL_JSON,
                     id="whitespace-json"),
        pytest.param(with_payload(b'{"orig":{},"iat":1}'), Reason.NON_CANONICAL_JSON,
                     id="unsorted-json"),
        pytest.param(with_payload(b'{"iat":1.0}'), Reason.NON_CANONICAL_JSON,
                     id="float-json"),
    ],
)  # fmt: skip
def test_decode_reasons(token: str, expected: Reason) -> None:
    assert expected in reasons(decode_passport(token).findings)


def test_decode_keeps_received_bytes_and_splits_forms() -> None:
    decoded = decode_passport(f"{H}.{P}.{S}")
    assert decoded.form == "full"
    assert decoded.findings == ()
    assert decoded.signing_input == f"{H}.{P}".encode()
    assert decoded.signature == bytes(64)
    compact = decode_passport(f"..{S}")
    assert (compact.form, compact.header, compact.payload, compact.signing_input) == (
        "compact", None, None, None,
    )  # fmt: skip
    assert decode_passport(f"{H}.{P}").form == "invalid"


def test_legacy_padded_token_is_decoded_for_forensics_but_flagged() -> None:
    header = base64.b64encode(json.dumps(SHAKEN_HEADER).encode()).decode()
    sig = base64.b64encode(DER_SIG).decode()
    decoded = decode_passport(f"{header}.{P}.{sig}")
    assert decoded.header == SHAKEN_HEADER  # still visible to an investigator
    assert {Reason.INVALID_BASE64, Reason.INVALID_SIGNATURE_ENCODING} <= error_reasons(
        decoded.findings
    )
    assert decoded.signature is None
    assert not decoded.is_valid


# --- check_header -------------------------------------------------------------------------

INFO_PARAMS = f";info=<{RFC_X5U}>;alg=ES256;ppt=shaken"


@pytest.mark.parametrize(
    ("header", "params", "expected"),
    [
        pytest.param({**SHAKEN_HEADER, "typ": "JWT"}, INFO_PARAMS, {Reason.INVALID_TYP},
                     id="typ-jwt"),
        pytest.param({k: v for k, v in SHAKEN_HEADER.items() if k != "typ"}, INFO_PARAMS,
                     {Reason.INVALID_TYP}, id="typ-missing"),
        pytest.param({**SHAKEN_HEADER, "alg": "none"}, INFO_PARAMS,
                     {Reason.UNSUPPORTED_ALG, Reason.ALG_MISMATCH}, id="alg-none"),
        pytest.param({**SHAKEN_HEADER, "alg": "HS256"}, INFO_PARAMS,
                     {Reason.UNSUPPORTED_ALG, Reason.ALG_MISMATCH}, id="alg-hs256"),
        pytest.param({**SHAKEN_HEADER, "alg": "RS256"}, INFO_PARAMS,
                     {Reason.UNSUPPORTED_ALG, Reason.ALG_MISMATCH}, id="alg-rs256"),
        pytest.param({**SHAKEN_HEADER, "alg": "HS256"}, f";info=<{RFC_X5U}>;alg=HS256;ppt=shaken",
                     {Reason.UNSUPPORTED_ALG}, id="alg-hs256-both-sides"),
        pytest.param(SHAKEN_HEADER, f";info=<{RFC_X5U}>;alg=ES384;ppt=shaken",
                     {Reason.UNSUPPORTED_ALG, Reason.ALG_MISMATCH}, id="identity-alg-es384"),
        pytest.param(SHAKEN_HEADER, f";info=<{RFC_X5U}>;ppt=shaken", set(), id="alg-default"),
        pytest.param({**SHAKEN_HEADER, "ppt": "div"}, INFO_PARAMS, {Reason.PPT_MISMATCH},
                     id="ppt-differs"),
        pytest.param(SHAKEN_HEADER, f";info=<{RFC_X5U}>;alg=ES256", {Reason.PPT_MISMATCH},
                     id="ppt-only-in-token"),
        pytest.param({k: v for k, v in SHAKEN_HEADER.items() if k != "ppt"}, INFO_PARAMS,
                     {Reason.PPT_MISMATCH}, id="ppt-only-in-identity"),
        pytest.param({**SHAKEN_HEADER, "ppt": 1}, INFO_PARAMS, {Reason.PPT_MISMATCH},
                     id="ppt-not-string"),
        pytest.param({k: v for k, v in SHAKEN_HEADER.items() if k != "x5u"}, INFO_PARAMS,
                     {Reason.MISSING_X5U}, id="x5u-missing"),
        pytest.param({**SHAKEN_HEADER, "x5u": RFC_X5U + "/"}, INFO_PARAMS,
                     {Reason.X5U_INFO_MISMATCH}, id="x5u-trailing-slash"),
        pytest.param({**SHAKEN_HEADER, "x5u": RFC_X5U.upper()}, INFO_PARAMS,
                     {Reason.X5U_INFO_MISMATCH}, id="x5u-case"),
        pytest.param(SHAKEN_HEADER, INFO_PARAMS, set(), id="clean"),
        pytest.param(SHAKEN_HEADER, f';info=<{RFC_X5U}>;alg=ES256;ppt="shaken"', set(),
                     id="clean-quoted-ppt"),
    ],
)  # fmt: skip
def test_check_header(header: dict[str, object], params: str, expected: set[Reason]) -> None:
    token = token_of(header, SHAKEN_PAYLOAD)
    identity = parse_identity_header(token + params)
    assert error_reasons(check_header(decode_passport(token), identity)) == expected


def test_check_header_typ_case_is_a_warning() -> None:
    token = token_of({**SHAKEN_HEADER, "typ": "PASSporT"}, SHAKEN_PAYLOAD)
    found = check_header(decode_passport(token), parse_identity_header(token + INFO_PARAMS))
    assert [(f.reason, f.severity) for f in found] == [(Reason.INVALID_TYP, Severity.WARNING)]


def test_check_header_without_decoded_header_is_empty() -> None:
    assert check_header(decode_passport("garbage"), parse_identity_header("garbage")) == []


# --- check_claims -------------------------------------------------------------------------


def drop(key: str) -> dict[str, object]:
    return {k: v for k, v in SHAKEN_PAYLOAD.items() if k != key}


BASE_PAYLOAD = {"dest": {"tn": ["12125551212"]}, "iat": 1, "orig": {"tn": "12155551212"}}
DIV_PAYLOAD = {**BASE_PAYLOAD, "div": {"tn": "12125550000"}}
RCD_PAYLOAD = {**BASE_PAYLOAD, "rcd": {"nam": "Q Branch"}}


@pytest.mark.parametrize(
    ("ppt", "payload", "expected"),
    [
        pytest.param("shaken", SHAKEN_PAYLOAD, set(), id="shaken-clean"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "iat": "1471375418"}, {Reason.INVALID_IAT},
                     id="iat-string"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "iat": 1.5}, {Reason.INVALID_IAT},
                     id="iat-float"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "iat": True}, {Reason.INVALID_IAT},
                     id="iat-bool"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "iat": -1}, {Reason.INVALID_IAT},
                     id="iat-negative"),
        pytest.param("shaken", drop("iat"), {Reason.INVALID_IAT}, id="iat-missing"),
        pytest.param("shaken", drop("orig"), {Reason.INVALID_ORIG}, id="orig-missing"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "orig": {"tn": "1", "uri": "sip:a@b"}},
                     {Reason.INVALID_ORIG}, id="orig-both"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "orig": {}}, {Reason.INVALID_ORIG},
                     id="orig-empty"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "orig": {"tn": ["1"]}}, {Reason.INVALID_ORIG},
                     id="orig-tn-array"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "orig": '{"tn":"1"}'}, {Reason.INVALID_ORIG},
                     id="orig-json-string"),
        pytest.param("shaken", drop("dest"), {Reason.INVALID_DEST}, id="dest-missing"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "dest": {"tn": "12125551212"}},
                     {Reason.INVALID_DEST}, id="dest-tn-string"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "dest": {"tn": []}}, {Reason.INVALID_DEST},
                     id="dest-empty-array"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "dest": {}}, {Reason.INVALID_DEST},
                     id="dest-empty-object"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "dest": {"tn": [1]}}, {Reason.INVALID_DEST},
                     id="dest-number"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "dest": ["12125551212"]}, {Reason.INVALID_DEST},
                     id="dest-array"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "attest": "D"}, {Reason.INVALID_ATTEST},
                     id="attest-d"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "attest": "a"}, {Reason.INVALID_ATTEST},
                     id="attest-lowercase"),
        pytest.param("shaken", drop("attest"), {Reason.INVALID_ATTEST}, id="attest-missing"),
        pytest.param("shaken", drop("origid"), {Reason.INVALID_ORIGID}, id="origid-missing"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "origid": ""}, {Reason.INVALID_ORIGID},
                     id="origid-empty"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "origid": 7}, {Reason.INVALID_ORIGID},
                     id="origid-number"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "origid": "toto"}, set(), id="origid-not-uuid"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "orig": {"tn": "+12155551212"}}, set(),
                     id="orig-plus-is-warning"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "foo": [1, {"x": None}]}, set(),
                     id="unknown-claims-fine"),
        pytest.param(None, BASE_PAYLOAD, set(), id="baseline-clean"),
        pytest.param(None, {**BASE_PAYLOAD, "dest": {"uri": ["sip:a@example.com"]}}, set(),
                     id="baseline-uri-dest"),
        pytest.param("div", DIV_PAYLOAD, set(), id="div-clean"),
        pytest.param("div", {**DIV_PAYLOAD, "div": {"tn": "1", "hi": "1.1"}}, set(),
                     id="div-with-hi"),
        pytest.param("div", BASE_PAYLOAD, {Reason.INVALID_DIV}, id="div-missing"),
        pytest.param("div", {**DIV_PAYLOAD, "div": "12125550000"}, {Reason.INVALID_DIV},
                     id="div-not-object"),
        pytest.param("div", {**DIV_PAYLOAD, "opt": "x.y.z"}, {Reason.INVALID_DIV},
                     id="div-with-opt"),
        pytest.param("div-o", DIV_PAYLOAD, {Reason.INVALID_DIV}, id="div-o-without-opt"),
        pytest.param("div-o", {**DIV_PAYLOAD, "opt": "x.y.z"}, set(), id="div-o-clean"),
        pytest.param("rph", {**BASE_PAYLOAD, "rph": {"auth": ["ets.0", "wps.0"]}}, set(),
                     id="rph-clean"),
        pytest.param("rph", BASE_PAYLOAD, {Reason.INVALID_RPH}, id="rph-missing"),
        pytest.param("rph", {**BASE_PAYLOAD, "rph": {"auth": "ets.0"}}, {Reason.INVALID_RPH},
                     id="rph-auth-string"),
        pytest.param("rph", {**BASE_PAYLOAD, "rph": {"auth": ["esnet.1"]}, "sph": "other"},
                     {Reason.INVALID_RPH}, id="rph-bad-sph"),
        pytest.param("rcd", RCD_PAYLOAD, set(), id="rcd-clean"),
        pytest.param("rcd", {**BASE_PAYLOAD, "crn": "For your ears only"}, set(),
                     id="rcd-crn-only"),
        pytest.param("rcd", BASE_PAYLOAD, {Reason.INVALID_RCD}, id="rcd-neither"),
        pytest.param("rcd", {**BASE_PAYLOAD, "rcd": "James"}, {Reason.INVALID_RCD},
                     id="rcd-not-object"),
        pytest.param("rcd", {**BASE_PAYLOAD, "rcd": {"apn": "1"}}, {Reason.INVALID_RCD},
                     id="rcd-no-nam"),
        pytest.param("rcd", {**BASE_PAYLOAD, "rcd": {"nam": "x", "jcd": [], "jcl": "https://a"}},
                     {Reason.INVALID_RCD}, id="rcd-jcd-and-jcl"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "rcdi": {"/nam": "sha256-x"}},
                     {Reason.INVALID_RCD}, id="rcdi-without-rcd"),
        pytest.param("shaken", {**SHAKEN_PAYLOAD, "rcd": {"nam": "x"}, "crn": 5},
                     {Reason.INVALID_RCD}, id="crn-not-string"),
        pytest.param("unknown-ppt", {"weird": True}, {Reason.INVALID_IAT, Reason.INVALID_ORIG,
                     Reason.INVALID_DEST}, id="unknown-ppt-no-crash"),
    ],
)  # fmt: skip
def test_check_claims(ppt: str | None, payload: dict[str, object], expected: set[Reason]) -> None:
    header = {**SHAKEN_HEADER, "ppt": ppt} if ppt else {"alg": "ES256", "typ": "passport"}
    assert error_reasons(check_claims(decode_passport(token_of(header, payload)))) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param({**SHAKEN_PAYLOAD, "origid": "toto"}, Reason.INVALID_ORIGID, id="origid"),
        pytest.param({**SHAKEN_PAYLOAD, "orig": {"tn": "Bob"}}, Reason.INVALID_ORIG, id="orig-tn"),
        pytest.param({**SHAKEN_PAYLOAD, "dest": {"tn": ["+1"]}}, Reason.INVALID_DEST, id="dest-tn"),
    ],
)
def test_check_claims_warnings(payload: dict[str, object], expected: Reason) -> None:
    found = check_claims(decode_passport(token_of(SHAKEN_HEADER, payload)))
    assert [(f.reason, f.severity) for f in found] == [(expected, Severity.WARNING)]


def test_claims_view_unwraps_json_string_identities_and_keeps_extras() -> None:
    payload = {**SHAKEN_PAYLOAD, "orig": '{"tn":"01256789999"}', "dest": '{"tn":"1"}', "x": 1}
    claims = decode_passport(token_of(SHAKEN_HEADER, payload)).claims
    assert claims is not None
    assert claims.orig == Party.tn("01256789999")
    assert claims.dest == (Party.tn("1"),)
    assert claims.extra_claims == {"x": 1}


def test_supported_ppts() -> None:
    assert {None, "shaken", "div", "rcd"} <= SUPPORTED_PPTS
    assert "foo" not in SUPPORTED_PPTS


# --- compact rebuild ----------------------------------------------------------------------


def test_rebuild_sorts_dest_and_includes_ppt_and_extra() -> None:
    rebuilt = rebuild_compact_signing_input(
        orig=Party.tn("1"), dest=[Party.uri("sip:b@x"), Party.tn("3"), Party.tn("2")],
        iat=5, x5u="https://x/c", ppt="rcd", extra={"crn": "why"},
    )  # fmt: skip
    h, p = rebuilt.decode().split(".")
    assert base64.urlsafe_b64decode(h + "==") == (
        b'{"alg":"ES256","ppt":"rcd","typ":"passport","x5u":"https://x/c"}'
    )
    assert base64.urlsafe_b64decode(p + "==") == (
        b'{"crn":"why","dest":{"tn":["2","3"],"uri":["sip:b@x"]},"iat":5,"orig":{"tn":"1"}}'
    )


# --- div chains ---------------------------------------------------------------------------


def _signed(payload: dict[str, object], ppt: str | None) -> DecodedPassport:
    key = load_pem_private_key(RFC8946_PRIVATE, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return decode_passport(sign_passport(key, x5u="https://a.example/c", payload=payload, ppt=ppt))


ORIGINAL = shaken_payload(attest="A", orig_tn="1", dest_tns=["2"], iat=10, origid="x")
DIV1 = div_payload(orig_tn="1", dest_tns=["3"], div_tn="2", iat=10)
DIV2 = div_payload(orig_tn="1", dest_tns=["4"], div_tn="3", iat=10)


def test_div_chain_links_outward() -> None:
    passports = [_signed(ORIGINAL, "shaken"), _signed(DIV1, "div"), _signed(DIV2, "div")]
    chains = link_div_chains(passports)
    assert chains.findings == ()
    assert chains.parents == {1: 0, 2: 1}
    assert [c.indices for c in chains.chains] == [(0, 1, 2)]
    assert chains.outermost == (2,)
    assert (chains.chains[0].innermost, chains.chains[0].broken) == (0, False)


def test_div_chain_out_of_order_headers_still_link() -> None:
    chains = link_div_chains([_signed(DIV1, "div"), _signed(ORIGINAL, "shaken")])
    assert chains.parents == {0: 1}
    assert chains.outermost == (0,)


def test_div_chain_orig_change_is_broken() -> None:
    changed = div_payload(orig_tn="9", dest_tns=["3"], div_tn="2", iat=10)
    chains = link_div_chains([_signed(ORIGINAL, "shaken"), _signed(changed, "div")])
    assert reasons(chains.findings) == {Reason.DIV_CHAIN_BROKEN}
    assert chains.chains[0].broken


def test_div_chain_cycle_is_cut() -> None:
    a = div_payload(orig_tn="1", dest_tns=["3"], div_tn="2", iat=10)
    b = div_payload(orig_tn="1", dest_tns=["2"], div_tn="3", iat=10)
    chains = link_div_chains([_signed(a, "div"), _signed(b, "div")])
    assert Reason.DIV_CHAIN_BROKEN in reasons(chains.findings)
    assert len(chains.chains) >= 1


def test_div_chain_fork_gives_two_chains() -> None:
    fork = div_payload(orig_tn="1", dest_tns=["5"], div_tn="2", iat=10)
    passports = [_signed(ORIGINAL, "shaken"), _signed(DIV1, "div"), _signed(fork, "div")]
    chains = link_div_chains(passports)
    assert sorted(c.indices for c in chains.chains) == [(0, 1), (0, 2)]


def test_div_chain_tolerates_undecodable_passports() -> None:
    chains = link_div_chains([decode_passport("junk"), _signed(ORIGINAL, "shaken")])
    assert chains.findings == ()
    assert len(chains.chains) == 2


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_decode_and_checks_never_raise(token: str) -> None:
    decoded = decode_passport(token)
    check_claims(decoded)
    check_header(decoded, parse_identity_header(token))
    assert decoded.claims is None or decoded.payload is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
claim_names = st.sampled_from(
    ["iat", "orig", "dest", "attest", "origid", "div", "opt", "rph", "rcd", "rcdi", "crn", "sph"]
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(claim_names | st.text(max_size=5), json_values, max_size=8),
    st.sampled_from([None, "shaken", "div", "div-o", "rph", "rcd", "other"]),
)
def test_check_claims_never_raises_on_arbitrary_json(
    payload: dict[str, object], ppt: str | None
) -> None:
    header = {**SHAKEN_HEADER, "ppt": ppt}
    decoded = decode_passport(token_of(header, payload))
    check_claims(decoded)
    assert decoded.claims is not None
    link_div_chains([decoded, decoded])


def test_canonical_lint_can_be_skipped_on_hot_paths() -> None:
    token = with_payload(b'{"orig":{},"iat":1}')
    assert Reason.NON_CANONICAL_JSON in reasons(decode_passport(token).findings)
    assert decode_passport(token, check_canonical=False).findings == ()
