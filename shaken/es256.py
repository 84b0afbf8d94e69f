"""ES256 (ECDSA P-256 with SHA-256) in JWS form: the verification hot path and the signer.

JWS carries the signature as the fixed-width ``R || S`` (32 + 32 octets), not DER; the
``cryptography`` library speaks DER, so we convert. The verifier is deliberately tiny: it is
called once per PASSporT with a cached key object, and everything else (JOSE ``alg`` checks,
key type, certificate) has been decided before it runs. No pyjwt here: its ``decode`` reads the
wall clock and costs more per call than the signature check itself (ARCHITECTURE.md section 5).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from shaken.errors import Reason, error

# RFC 7518 section 3.4: R and S are 32-octet big-endian integers for P-256.
ES256_COORDINATE_LENGTH = 32
ES256_SIGNATURE_LENGTH = 2 * ES256_COORDINATE_LENGTH

# What the verifier records when the check fails (one immutable value, shared).
SIGNATURE_INVALID = error(
    Reason.SIGNATURE_INVALID, "ES256 signature does not verify with the x5u key"
)

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
# RFC 6979 deterministic nonces, as RFC 8225 section 4.2 recommends for signers.
_ECDSA_SHA256_DETERMINISTIC = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_from_bytes = int.from_bytes


def verify_es256(
    public_key: ec.EllipticCurvePublicKey, signing_input: bytes, raw_sig: bytes
) -> bool:
    """True iff ``raw_sig`` (64-byte R||S) is a valid ES256 signature over ``signing_input``.

    The caller guarantees ``public_key`` is a P-256 key (the certificate checks do). A
    signature of the wrong length is simply invalid. RFC 7518 section 3.4, RFC 7515 section 5.2.
    """
    if len(raw_sig) != ES256_SIGNATURE_LENGTH:
        return False
    der = encode_dss_signature(_from_bytes(raw_sig[:32], "big"), _from_bytes(raw_sig[32:], "big"))
    try:
        public_key.verify(der, signing_input, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


def der_to_raw(der: bytes) -> bytes:
    """Convert a DER ECDSA-Sig-Value to the 64-byte JWS R||S form. RFC 7518 section 3.4."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(ES256_COORDINATE_LENGTH, "big") + s.to_bytes(ES256_COORDINATE_LENGTH, "big")


def sign_es256(
    private_key: ec.EllipticCurvePrivateKey, signing_input: bytes, *, deterministic: bool = True
) -> bytes:
    """Sign ``signing_input`` with ES256 and return the 64-byte R||S signature.

    ``deterministic`` uses RFC 6979 nonces (same input and key, same signature).
    Raises ``ValueError`` for a key that is not on P-256. RFC 7518 section 3.4,
    RFC 8225 section 4.2.
    """
    if not isinstance(private_key.curve, ec.SECP256R1):
        raise ValueError(f"ES256 needs a P-256 key, got curve {private_key.curve.name}")
    algorithm = _ECDSA_SHA256_DETERMINISTIC if deterministic else _ECDSA_SHA256
    return der_to_raw(private_key.sign(signing_input, algorithm))
