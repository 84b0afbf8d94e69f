"""JWT Claim Constraints in STIR certificates: which PASSporT claims the signer may use.

Two extensions carry them, both non-critical and for end-entity certificates only:
JWTClaimConstraints (1.3.6.1.5.5.7.1.27, RFC 8226 section 8: mustInclude, permittedValues) and
EnhancedJWTClaimConstraints (1.3.6.1.5.5.7.1.33, RFC 9118: adds mustExclude). Both use
EXPLICIT tags. The decoder is strict (a malformed constraint cannot be enforced, so the
caller must treat it as a broken credential); the checker returns findings, one per violated
constraint.

RFC 8226 section 8; RFC 9118 section 3-4.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from shaken.asn1 import (
    TAG_CONTEXT_0,
    TAG_CONTEXT_1,
    TAG_CONTEXT_2,
    TAG_IA5STRING,
    TAG_SEQUENCE,
    TAG_UTF8STRING,
    DerError,
    Tlv,
    decode_string,
    iter_children,
    read_single,
)
from shaken.errors import Finding, Reason, ShakenError, error

OID_JWT_CLAIM_CONSTRAINTS = "1.3.6.1.5.5.7.1.27"
OID_ENHANCED_JWT_CLAIM_CONSTRAINTS = "1.3.6.1.5.5.7.1.33"
# If any of these appear in mustExclude the whole extension is treated as absent, because a
# PASSporT cannot exist without them (RFC 9118 section 4).
BASE_CLAIMS = frozenset({"iat", "orig", "dest"})


@dataclass(frozen=True, slots=True)
class ClaimConstraints:
    """Decoded (Enhanced)JWTClaimConstraints. RFC 8226 section 8, RFC 9118 section 3."""

    must_include: tuple[str, ...]
    permitted_values: Mapping[str, tuple[str, ...]] = field(hash=False)
    must_exclude: tuple[str, ...]
    enhanced: bool

    @property
    def is_ignored(self) -> bool:
        """True when mustExclude names iat/orig/dest: treat as absent. RFC 9118 section 4."""
        return self.enhanced and not BASE_CLAIMS.isdisjoint(self.must_exclude)

    def to_json(self) -> dict[str, object]:
        return {
            "enhanced": self.enhanced,
            "must_include": list(self.must_include),
            "permitted_values": {k: list(v) for k, v in self.permitted_values.items()},
            "must_exclude": list(self.must_exclude),
        }


def _explicit_sequence(tlv: Tlv) -> list[Tlv]:
    inner = read_single(tlv.value, TAG_SEQUENCE)
    children = iter_children(inner.value)
    if not children:
        raise DerError(f"empty SEQUENCE under tag 0x{tlv.tag:02x} (SIZE (1..MAX))")
    return children


def _claim_names(tlv: Tlv) -> tuple[str, ...]:
    names = []
    for child in _explicit_sequence(tlv):
        if child.tag != TAG_IA5STRING:
            raise DerError("JWTClaimName is not an IA5String")
        names.append(decode_string(child))
    return tuple(names)


def _permitted_values(tlv: Tlv) -> dict[str, tuple[str, ...]]:
    result: dict[str, tuple[str, ...]] = {}
    for entry in _explicit_sequence(tlv):
        if entry.tag != TAG_SEQUENCE:
            raise DerError("JWTClaimValues is not a SEQUENCE")
        parts = iter_children(entry.value)
        if len(parts) != 2 or parts[0].tag != TAG_IA5STRING or parts[1].tag != TAG_SEQUENCE:
            raise DerError("JWTClaimValues is not SEQUENCE {IA5String, SEQUENCE OF UTF8String}")
        values = iter_children(parts[1].value)
        if not values or any(v.tag != TAG_UTF8STRING for v in values):
            raise DerError("permitted values must be 1..MAX UTF8Strings")
        claim = decode_string(parts[0])
        if claim in result:
            raise DerError(f"claim {claim!r} listed twice in permittedValues")
        result[claim] = tuple(decode_string(v) for v in values)
    return result


def parse_claim_constraints(der: bytes, *, enhanced: bool) -> ClaimConstraints:
    """Decode the extension value; ``enhanced`` selects the RFC 9118 syntax (allows [2]).

    Raises ``ShakenError(Reason.CERT_PARSE_ERROR)`` on malformed DER.
    RFC 8226 section 8; RFC 9118 section 3.
    """
    try:
        top = read_single(der, TAG_SEQUENCE)
        must_include: tuple[str, ...] = ()
        permitted: dict[str, tuple[str, ...]] = {}
        must_exclude: tuple[str, ...] = ()
        last_tag = -1
        for child in iter_children(top.value):
            if child.tag <= last_tag:
                raise DerError("constraint fields out of order or repeated")
            last_tag = child.tag
            if child.tag == TAG_CONTEXT_0:
                must_include = _claim_names(child)
            elif child.tag == TAG_CONTEXT_1:
                permitted = _permitted_values(child)
            elif child.tag == TAG_CONTEXT_2 and enhanced:
                must_exclude = _claim_names(child)
            else:
                raise DerError(f"unexpected field tag 0x{child.tag:02x}")
        if last_tag < 0:
            raise DerError("no constraint present (at least one field is required)")
    except DerError as exc:
        raise ShakenError(Reason.CERT_PARSE_ERROR, f"claim constraints: {exc}") from exc
    return ClaimConstraints(must_include, MappingProxyType(permitted), must_exclude, enhanced)


def canonical_claim_value(value: object) -> str:
    """The string a permitted value is compared with: strings as-is, anything else as RFC 8225
    section 9 canonical JSON (STANDARDS.md section 5.4, from RFC 9795 section 6.3)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def check_claim_constraints(
    constraints: ClaimConstraints, payload: Mapping[str, object]
) -> list[Finding]:
    """Every violated constraint as a CLAIM_CONSTRAINTS_VIOLATED error (empty list: satisfied).

    An absent claim only violates mustInclude; permittedValues constrain a claim when it is
    present. RFC 8226 section 8; RFC 9118 section 4.
    """
    if constraints.is_ignored:
        return []
    findings: list[Finding] = []
    for claim in constraints.must_include:
        if claim not in payload:
            findings.append(
                error(Reason.CLAIM_CONSTRAINTS_VIOLATED, f"mustInclude claim {claim!r} absent")
            )
    for claim, permitted in constraints.permitted_values.items():
        if claim in payload and canonical_claim_value(payload[claim]) not in permitted:
            findings.append(
                error(
                    Reason.CLAIM_CONSTRAINTS_VIOLATED,
                    f"claim {claim!r} value not among the permitted values",
                )
            )
    for claim in constraints.must_exclude:
        if claim in payload:
            findings.append(
                error(Reason.CLAIM_CONSTRAINTS_VIOLATED, f"mustExclude claim {claim!r} present")
            )
    return findings
