"""Verification policy: every knob a verification service operator may turn, with cited defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Originator(StrEnum):
    """Which SIP header carries the originating identity (RFC 8224 section 8)."""

    # SHAKEN practice: P-Asserted-Identity when present, else From (STANDARDS.md 1.2; OpenSIPS).
    PAI_THEN_FROM = "pai_then_from"
    # RFC 8224 default: the From addr-spec.
    FROM = "from"


class TnMatch(StrEnum):
    """How a PASSporT TN is compared with the TN derived from SIP (RFC 8224 section 8.3)."""

    # Canonical strings must be equal (RFC 8224 section 6.2 step 2; RFC 8225 section 5.2.1.1).
    EXACT = "exact"
    # Also equal when one is the other with the NANP country code 1 prepended: signers that
    # skip the country code are common in North American feeds (STANDARDS.md 1.4 notes).
    NANP = "nanp"


class CrlMode(StrEnum):
    """What to do when a certificate's CRL cannot be obtained or checked (ATIS-1000080)."""

    HARD = "hard"  # unavailable CRL => 437 Unsupported Credential
    SOFT = "soft"  # unavailable CRL => warning, revocation "unknown (soft-fail)"
    OFF = "off"  # do not fetch CRLs at all


# RFC 8224 section 6.2 step 4 RECOMMENDS a 60 s freshness window; OpenSIPS and Kamailio default
# to 60 s as well (STANDARDS.md 6.3).
DEFAULT_FRESHNESS_S = 60
# Future-dated Date/iat tolerance. RFC 8224 speaks of freshness without direction; we accept the
# same 60 s ahead so that two correctly running clocks never disagree (Asterisk rejects any
# future Date; set clock_skew_s=0 for that behaviour).
DEFAULT_CLOCK_SKEW_S = 60

# ppt values this verifier supports (RFC 8224 section 6.2 step 1: others are ignored). None is the
# baseline PASSporT (RFC 8225); shaken RFC 8588; div RFC 8946; rcd RFC 9795.
DEFAULT_SUPPORTED_PPTS: frozenset[str | None] = frozenset({None, "shaken", "div", "rcd"})


@dataclass(frozen=True, slots=True)
class Policy:
    """Verification policy. Defaults follow RFC 8224, ATIS-1000074 practice and STANDARDS.md."""

    freshness_s: int = DEFAULT_FRESHNESS_S
    clock_skew_s: int = DEFAULT_CLOCK_SKEW_S
    # Check the SIP Date header (RFC 8224 section 6.2 step 4). Off for sources without Date
    # (e.g. CDR exports that only carry the token): iat freshness is still checked.
    check_date: bool = True
    check_iat: bool = True
    originator: Originator = Originator.PAI_THEN_FROM
    tn_match: TnMatch = TnMatch.EXACT
    crl: CrlMode = CrlMode.SOFT
    # Compare dest with the SIP To/Request-URI identity (RFC 8224 section 6.2 step 5).
    check_dest: bool = True
    # No Identity header at all is answered 428 when True (RFC 8224 section 6.2.2).
    require_identity: bool = True
    supported_ppts: frozenset[str | None] = field(default=DEFAULT_SUPPORTED_PPTS)
    # x5u URL rules (STANDARDS.md 6.2): https on 443/8443. Test set-ups may widen them.
    allowed_ports: frozenset[int] = frozenset({443, 8443})
    allow_http_x5u: bool = False

    def to_json(self) -> dict[str, object]:
        """The policy as recorded in evidence manifests and verify output."""
        return {
            "freshness_s": self.freshness_s,
            "clock_skew_s": self.clock_skew_s,
            "check_date": self.check_date,
            "check_iat": self.check_iat,
            "originator": self.originator.value,
            "tn_match": self.tn_match.value,
            "crl": self.crl.value,
            "check_dest": self.check_dest,
            "require_identity": self.require_identity,
            "supported_ppts": sorted(p or "" for p in self.supported_ppts),
            "allowed_ports": sorted(self.allowed_ports),
            "allow_http_x5u": self.allow_http_x5u,
        }
