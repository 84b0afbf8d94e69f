"""STI-AS signing: payload builders validate, tokens are canonical and round-trip through the
verifier's own decode, check and ES256 functions (RFC 8224 §6.1, RFC 8225 §6/§9, RFC 8588)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shaken.es256 import verify_es256
from shaken.identity import parse_identity_header
from shaken.passport import check_claims, check_header, decode_passport
from shaken.signing import (
    div_payload,
    identity_header_value,
    shaken_payload,
    sign_passport,
    unsafe_sign_jws,
)

# RFC 8225 A.1 private key (STANDARDS-VECTORS.md V3): re-signing V5b must reproduce it.
RFC8225_A1_PRIVATE = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgi7q2TZvN9VDFg8Vy
qCP06bETrR2v8MRvr89rn4i+UAahRANCAAQWfaj1HUETpoNCrOtp9KA8o0V79IuW
ARKt9C1cFPkyd3FBP4SeiNZxQhDrD0tdBHls3/wFe8++K2FrPyQF9vuh
-----END PRIVATE KEY-----
"""
V5B_TOKEN = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0LmV4YW1w"
    "bGUub3JnL3Bhc3Nwb3J0LmNlciJ9.eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyIxMjEyNTU1MTIxMiJdfSwiaWF0Ijox"
    "NDcxMzc1NDE4LCJvcmlnIjp7InRuIjoiMTIxNTU1NTEyMTIifSwib3JpZ2lkIjoiMTIzZTQ1NjctZTg5Yi0xMmQzLWE0NTYt"
    "NDI2NjU1NDQwMDAwIn0.czDg9vLNZ1pwBYU3ctFMfniftHtbuX0gxIpIL5LaARVBfkjKooUKA8WThpUY-68ppB8Aeyjw5at81Z"
    "lD2WL4gA"
)
X5U = "https://cert.example.org/passport.cer"
ORIGID = "123e4567-e89b-12d3-a456-426655440000"


def a1_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(RFC8225_A1_PRIVATE, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def test_reproduces_the_v5b_vector_byte_for_byte() -> None:
    payload = shaken_payload(
        attest="A", orig_tn="12155551212", dest_tns=["12125551212"], iat=1471375418, origid=ORIGID
    )
    assert sign_passport(a1_key(), x5u=X5U, payload=payload) == V5B_TOKEN


@pytest.mark.parametrize(
    ("ppt", "payload"),
    [
        pytest.param("shaken", shaken_payload(attest="C", orig_tn="1", dest_tns=["3", "2"], iat=9,
                                              origid=ORIGID), id="shaken"),
        pytest.param("div", div_payload(orig_tn="1", dest_tns=["3"], div_tn="2", iat=9,
                                        div_hi="1.2"), id="div"),
        pytest.param(None, {"dest": {"uri": ["sip:a@example.com"]}, "iat": 9,
                            "orig": {"tn": "1"}}, id="baseline"),
        pytest.param("rcd", {"dest": {"tn": ["2"]}, "iat": 9, "orig": {"tn": "1"},
                             "rcd": {"nam": "Zoë"}}, id="rcd-non-ascii"),
    ],
)  # fmt: skip
def test_round_trip_sign_decode_verify(ppt: str | None, payload: dict[str, object]) -> None:
    key = a1_key()
    token = sign_passport(key, x5u=X5U, payload=payload, ppt=ppt, deterministic=False)
    value = identity_header_value(token, x5u=X5U, ppt=ppt)
    identity = parse_identity_header(value)
    assert identity.is_valid
    assert identity.ppt == ppt
    assert identity.info == X5U
    decoded = decode_passport(identity.token)
    assert decoded.findings == ()  # canonical JSON, 64-byte signature
    assert decoded.payload == payload
    assert check_header(decoded, identity) == []
    assert [f for f in check_claims(decoded) if f.is_error] == []
    assert decoded.signing_input is not None
    assert decoded.signature is not None
    assert verify_es256(key.public_key(), decoded.signing_input, decoded.signature)


def test_shaken_payload_sorts_dest() -> None:
    payload = shaken_payload(attest="B", orig_tn="1", dest_tns=["3", "2"], iat=0, origid="o")
    assert payload["dest"] == {"tn": ["2", "3"]}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"attest": "D"}, "attest", id="attest-d"),
        pytest.param({"attest": ["A"]}, "attest", id="attest-list"),
        pytest.param({"orig_tn": "+12155551212"}, "orig", id="orig-plus"),
        pytest.param({"orig_tn": "215-555-1212"}, "orig", id="orig-dashes"),
        pytest.param({"orig_tn": ""}, "orig", id="orig-empty"),
        pytest.param({"dest_tns": []}, "dest", id="dest-empty"),
        pytest.param({"dest_tns": "12125551212"}, "dest", id="dest-string-not-list"),
        pytest.param({"dest_tns": ["1", "x"]}, "dest", id="dest-letter"),
        pytest.param({"iat": "1"}, "iat", id="iat-string"),
        pytest.param({"iat": -1}, "iat", id="iat-negative"),
        pytest.param({"iat": True}, "iat", id="iat-bool"),
        pytest.param({"origid": ""}, "origid", id="origid-empty"),
    ],
)
def test_shaken_payload_validates(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "attest": "A", "orig_tn": "1", "dest_tns": ["2"], "iat": 1, "origid": ORIGID,
    }  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        shaken_payload(**args)  # type: ignore[arg-type]


def test_div_payload_validates_div() -> None:
    with pytest.raises(ValueError, match="div"):
        div_payload(orig_tn="1", dest_tns=["2"], div_tn="+3", iat=1)


@pytest.mark.parametrize(
    "x5u",
    [
        pytest.param("http://cert.example.org/c.pem", id="http"),
        pytest.param("/usr/share/cgrates/stir/stir_pubkey.pem", id="local-path"),
        pytest.param("https://", id="no-host"),
        pytest.param("https://a.example/c>;x=<", id="bracket-injection"),
    ],
)
def test_sign_requires_https_x5u(x5u: str) -> None:
    payload = shaken_payload(attest="A", orig_tn="1", dest_tns=["2"], iat=1, origid=ORIGID)
    with pytest.raises(ValueError, match="x5u"):
        sign_passport(a1_key(), x5u=x5u, payload=payload)
    with pytest.raises(ValueError, match="x5u"):
        identity_header_value(V5B_TOKEN, x5u=x5u)


@pytest.mark.parametrize(
    ("payload", "ppt"),
    [
        pytest.param({"dest": {"tn": ["2"]}, "iat": "1", "orig": {"tn": "1"}}, None,
                     id="string-iat"),
        pytest.param({"dest": {"tn": ["2"]}, "iat": 1, "orig": {"tn": "1"}}, "shaken",
                     id="shaken-without-attest"),
        pytest.param({"dest": {"tn": ["2"]}, "iat": 1, "orig": {"tn": "1"}}, "div",
                     id="div-without-div"),
        pytest.param({"dest": {"tn": ["2"]}, "iat": 1.5, "orig": {"tn": "1"}}, None,
                     id="float"),
    ],
)  # fmt: skip
def test_sign_refuses_payloads_our_verifier_rejects(
    payload: dict[str, object], ppt: str | None
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the reason is in the message
        sign_passport(a1_key(), x5u=X5U, payload=payload, ppt=ppt)


def test_sign_rejects_non_p256_key() -> None:
    payload = shaken_payload(attest="A", orig_tn="1", dest_tns=["2"], iat=1, origid=ORIGID)
    with pytest.raises(ValueError, match="P-256"):
        sign_passport(ec.generate_private_key(ec.SECP384R1()), x5u=X5U, payload=payload)


def test_unsafe_sign_produces_negative_vectors() -> None:
    token = unsafe_sign_jws(a1_key(), {"alg": "ES256", "typ": "passport"}, {"iat": "1"})
    assert decode_passport(token).findings == ()
    assert {f.reason.value for f in check_claims(decode_passport(token))} >= {"invalid_iat"}


@pytest.mark.parametrize(
    ("ppt", "expected_suffix"),
    [
        pytest.param("shaken", ';ppt="shaken"', id="shaken-quoted"),
        pytest.param("div", ';ppt="div"', id="div"),
        pytest.param(None, f";info=<{X5U}>;alg=ES256", id="baseline-no-ppt"),
    ],
)
def test_identity_header_value_format(ppt: str | None, expected_suffix: str) -> None:
    value = identity_header_value(V5B_TOKEN, x5u=X5U, ppt=ppt)
    assert value.startswith(f"{V5B_TOKEN};info=<{X5U}>;alg=ES256")
    assert value.endswith(expected_suffix)


@pytest.mark.parametrize(
    ("token", "kwargs"),
    [
        pytest.param("not a token", {}, id="not-jws"),
        pytest.param(V5B_TOKEN + ";", {}, id="semicolon"),
        pytest.param(V5B_TOKEN, {"alg": "ES384"}, id="alg"),
        pytest.param(V5B_TOKEN, {"ppt": 'sha"ken'}, id="ppt-quote"),
    ],
)
def test_identity_header_value_validates(token: str, kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        identity_header_value(token, x5u=X5U, **kwargs)
