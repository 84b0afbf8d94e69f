"""ES256 verification hot path and signer; alg-confusion attacks are rejected (RFC 7518 §3.4)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from shaken.errors import Reason
from shaken.es256 import der_to_raw, sign_es256, verify_es256
from shaken.identity import parse_identity_header
from shaken.jose import b64url_encode
from shaken.passport import check_header, decode_passport

# A fixed P-256 scalar so the tests are deterministic (any value in [1, n-1] is a key).
KEY = ec.derive_private_key(
    0x1F2E3D4C5B6A79880123456789ABCDEF0123456789ABCDEF0123456789ABCDEF, ec.SECP256R1()
)
PUBLIC = KEY.public_key()
OTHER = ec.derive_private_key(12345, ec.SECP256R1()).public_key()
X5U = "https://cert.example.org/passport.cer"
PAYLOAD = {"attest": "A", "dest": {"tn": ["2"]}, "iat": 1, "orig": {"tn": "1"}, "origid": "x"}


def jws_input(header: Mapping[str, object]) -> bytes:
    h = b64url_encode(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    p = b64url_encode(json.dumps(PAYLOAD, separators=(",", ":"), sort_keys=True).encode())
    return f"{h}.{p}".encode()


def test_sign_and_verify_round_trip() -> None:
    message = b"header.payload"
    sig = sign_es256(KEY, message)
    assert len(sig) == 64
    assert verify_es256(PUBLIC, message, sig)
    assert not verify_es256(OTHER, message, sig)
    assert not verify_es256(PUBLIC, message + b"x", sig)


def test_deterministic_signing_is_repeatable_and_random_is_not() -> None:
    assert sign_es256(KEY, b"m") == sign_es256(KEY, b"m")
    first, second = (
        sign_es256(KEY, b"m", deterministic=False),
        sign_es256(KEY, b"m", deterministic=False),
    )
    assert first != second
    assert verify_es256(PUBLIC, b"m", first)
    assert verify_es256(PUBLIC, b"m", second)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda s: s[:-1], id="63-bytes"),
        pytest.param(lambda s: s + b"\x00", id="65-bytes"),
        pytest.param(lambda s: b"", id="empty"),
        pytest.param(lambda s: bytes(64), id="zeros"),
        pytest.param(lambda s: s[32:] + s[:32], id="r-s-swapped"),
        pytest.param(lambda s: bytes([s[0] ^ 1]) + s[1:], id="bit-flip"),
        pytest.param(lambda s: b"\xff" * 64, id="out-of-range"),
    ],
)
def test_bad_signatures_are_false_not_exceptions(mutate: object) -> None:
    sig = sign_es256(KEY, b"m")
    assert verify_es256(PUBLIC, b"m", mutate(sig)) is False  # type: ignore[operator]


def test_der_signature_must_be_converted() -> None:
    der = KEY.sign(b"m", ec.ECDSA(hashes.SHA256()))
    assert not verify_es256(PUBLIC, b"m", der)  # DER is not the JWS form
    assert verify_es256(PUBLIC, b"m", der_to_raw(der))


def test_high_s_signature_still_verifies() -> None:
    # ECDSA is malleable (r, n-s); JWS does not forbid it, and the library accepts it.
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    sig = sign_es256(KEY, b"m")
    s = int.from_bytes(sig[32:], "big")
    flipped = sig[:32] + (n - s).to_bytes(32, "big")
    assert verify_es256(PUBLIC, b"m", flipped)


def test_sign_rejects_non_p256_key() -> None:
    with pytest.raises(ValueError, match="P-256"):
        sign_es256(ec.generate_private_key(ec.SECP384R1()), b"m")


# --- alg confusion: none, HS256 keyed with the public key, RS256 --------------------------


def _public_pem() -> bytes:
    return PUBLIC.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _forge(alg: str) -> str:
    header = {"alg": alg, "ppt": "shaken", "typ": "passport", "x5u": X5U}
    signing_input = jws_input(header)
    if alg == "none":
        sig = b""
    elif alg == "HS256":  # the classic: HMAC keyed with the verifier's public key
        sig = hmac.new(_public_pem(), signing_input, hashlib.sha256).digest()
    else:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        sig = rsa_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64url_encode(sig)}"


@pytest.mark.parametrize(
    ("alg", "params"),
    [
        pytest.param("none", ";alg=none", id="none"),
        pytest.param("HS256", ";alg=HS256", id="hs256-public-key-as-secret"),
        pytest.param("HS256", "", id="hs256-param-absent"),
        pytest.param("RS256", ";alg=RS256", id="rs256"),
    ],
)
def test_alg_confusion_is_rejected(alg: str, params: str) -> None:
    token = _forge(alg)
    identity = parse_identity_header(f"{token};info=<{X5U}>{params};ppt=shaken")
    decoded = decode_passport(identity.token)
    header_reasons = {f.reason for f in check_header(decoded, identity)}
    assert Reason.UNSUPPORTED_ALG in header_reasons
    # The forged signature is not a 64-byte R||S, so it never reaches the verifier...
    assert decoded.signature is None
    assert {f.reason for f in decoded.findings} & {
        Reason.INVALID_SIGNATURE_ENCODING,
        Reason.MALFORMED_TOKEN,
    }
    # ...and even a caller that skipped every check gets False, not an exception.
    raw = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    assert not verify_es256(PUBLIC, token.rsplit(".", 1)[0].encode(), raw)


def test_verify_overhead_is_small() -> None:
    # ARCHITECTURE.md section 5: Python overhead per PASSporT should stay far below the verify.
    message = jws_input({"alg": "ES256", "typ": "passport", "x5u": X5U})
    sig = sign_es256(KEY, message)
    rounds = 200
    start = time.perf_counter()
    for _ in range(rounds):
        assert verify_es256(PUBLIC, message, sig)
    per_call = (time.perf_counter() - start) / rounds
    assert per_call < 0.005  # generous bound for slow CI; ~0.1 ms on a normal core
