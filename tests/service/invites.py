"""Signed test INVITEs for the SIP verification server: the committed fixture calls, and fresh
ones signed now with the fixture keys (for servers that read the wall clock).

RFC 8224 section 4 (Identity header), RFC 3261 section 7.1 (requests).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email.utils import format_datetime

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from analyzer.verifying import VerifierConfig
from shaken.signing import identity_header_value, shaken_payload, sign_passport
from tests.conftest import FIXTURES

CALLS = FIXTURES / "calls"
TRUST = FIXTURES / "pki" / "trust"
CERTS = FIXTURES / "certs"
KEYS = FIXTURES / "pki" / "keys"
# The fixture calls were signed for this moment (fixtures/gen_vectors.py).
FIXTURE_AT = datetime(2026, 1, 15, 12, 0, 5, tzinfo=UTC)
ALPHA_X5U = "https://certs.alpha.example/alpha.pem"
ORIG = "12025550101"
DEST = "12025550199"
ORIGID = "2f0b7c4e-6b1a-4f53-9d2e-6a5e1c3b9a01"


def fixture_config() -> VerifierConfig:
    """Verifier options over the fixture trust anchor and certificate mirror."""
    return VerifierConfig(trust=(TRUST,), certs_dirs=(CERTS,))


def fixture_call(name: str) -> bytes:
    """One committed signed INVITE, e.g. ``alpha_a`` for ``fixtures/calls/invite_alpha_a.sip``."""
    return (CALLS / f"invite_{name}.sip").read_bytes()


def with_branch(data: bytes, branch: str) -> bytes:
    """The same request as a new transaction (a different top Via branch)."""
    head, sep, rest = data.partition(b";branch=")
    end = min(i for i in (rest.find(b"\r"), rest.find(b";"), rest.find(b",")) if i >= 0)
    return head + sep + branch.encode() + rest[end:]


def _key(name: str) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key((KEYS / f"{name}.key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def sign_identity(
    at: datetime, *, key: str = "alpha", x5u: str = ALPHA_X5U, orig: str = ORIG
) -> str:
    """An Identity header value signed with a fixture key, ``iat`` = ``at``."""
    payload = shaken_payload(
        attest="A", orig_tn=orig, dest_tns=[DEST], iat=int(at.timestamp()), origid=ORIGID
    )
    token = sign_passport(_key(key), x5u=x5u, payload=payload)
    return identity_header_value(token, x5u=x5u)


def sip_date(at: datetime) -> str:
    """An RFC 1123 Date header value (RFC 3261 section 20.17)."""
    return format_datetime(at.astimezone(UTC), usegmt=True)


def build_invite(
    *,
    identities: list[str],
    date: str | None,
    transport: str = "UDP",
    branch: str | None = None,
    call_id: str | None = None,
    pai: str | None = None,
    extra: list[str] | None = None,
) -> bytes:
    """A complete INVITE from alpha (+1 202 555 0101) to +1 202 555 0199 with an SDP body."""
    body = (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
        b"m=audio 40000 RTP/AVP 0\r\n"
    )
    lines = [
        f"INVITE sip:+{DEST}@bravo.example;user=phone SIP/2.0",
        f"Via: SIP/2.0/{transport} 192.0.2.10:5060;branch={branch or 'z9hG4bK' + uuid.uuid4().hex}",
        "Max-Forwards: 70",
        f'From: "Alpha Caller" <sip:+{ORIG}@alpha.example;user=phone>;tag=f{uuid.uuid4().hex[:8]}',
        f"To: <sip:+{DEST}@bravo.example;user=phone>",
        f"Call-ID: {call_id or uuid.uuid4().hex}",
        "CSeq: 1 INVITE",
        "Contact: <sip:192.0.2.10:5060>",
    ]
    if pai is not None:
        lines.append(f"P-Asserted-Identity: {pai}")
    if date is not None:
        lines.append(f"Date: {date}")
    lines.extend(f"Identity: {value}" for value in identities)
    lines.extend(extra or [])
    lines += ["Content-Type: application/sdp", f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def fresh_invite(at: datetime, *, transport: str = "UDP", branch: str | None = None) -> bytes:
    """A valid signed INVITE for a server whose clock reads about ``at``."""
    return build_invite(
        identities=[sign_identity(at)], date=sip_date(at), transport=transport, branch=branch
    )
