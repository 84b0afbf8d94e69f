"""Stable reason codes, findings and the one exception tree of the verification core.

Every problem the core can detect has a ``Reason``: a stable snake_case value used in JSON
output, test assertions and metrics. Each reason maps to the SIP status code an RFC 8224
verification service would send for it (RFC 8224 section 6.2.2 and section 13.2; the
SHAKEN consensus mapping is in STANDARDS.md section 6.4), or to no code when the problem is
informational and does not by itself make a PASSporT invalid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    """How much a finding weighs.

    ``error`` makes the PASSporT (or the request) invalid; ``warning`` is a deviation the
    verifier tolerated (recorded for the investigator); ``info`` is context.
    """

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


# SIP status codes and reason phrases a verification service uses (RFC 8224 section 6.2.2,
# section 13.2; 433 is Asterisk practice for a missing caller identity, STANDARDS.md 6.4).
STATUS_PHRASES: dict[int, str] = {
    403: "Stale Date",
    428: "Use Identity Header",
    433: "Anonymity Disallowed",
    436: "Bad Identity Info",
    437: "Unsupported Credential",
    438: "Invalid Identity Header",
}


class Reason(StrEnum):
    """Stable reason codes. The value is the wire/JSON form; never rename one."""

    # Step 1-3: collecting headers (RFC 8224 section 6.2, step 1).
    NO_IDENTITY_HEADER = "no_identity_header"
    UNSUPPORTED_PPT = "unsupported_ppt"
    COMMA_JOINED_IDENTITY = "comma_joined_identity"
    # Step 2: header syntax (RFC 8224 section 4).
    MALFORMED_IDENTITY_HEADER = "malformed_identity_header"
    MISSING_INFO_PARAM = "missing_info_param"
    DUPLICATE_PARAM = "duplicate_param"
    INFO_NOT_IN_ANGLE_BRACKETS = "info_not_in_angle_brackets"
    # Step 4: alg parameter.
    UNSUPPORTED_ALG = "unsupported_alg"
    # Step 5-6: token form and encoding (RFC 8225 section 6/7, RFC 7515).
    COMPACT_FORM_NOT_ALLOWED = "compact_form_not_allowed"
    MALFORMED_TOKEN = "malformed_token"
    INVALID_BASE64 = "invalid_base64"
    INVALID_JSON = "invalid_json"
    DUPLICATE_JSON_KEY = "duplicate_json_key"
    INVALID_SIGNATURE_ENCODING = "invalid_signature_encoding"
    # Step 7-8: JOSE header (RFC 8225 section 4, RFC 8224 section 4.1).
    INVALID_TYP = "invalid_typ"
    ALG_MISMATCH = "alg_mismatch"
    PPT_MISMATCH = "ppt_mismatch"
    MISSING_X5U = "missing_x5u"
    X5U_INFO_MISMATCH = "x5u_info_mismatch"
    # Step 9: claims (RFC 8225 section 5, RFC 8588, RFC 8946, RFC 8443, RFC 9795).
    INVALID_IAT = "invalid_iat"
    INVALID_ORIG = "invalid_orig"
    INVALID_DEST = "invalid_dest"
    INVALID_ATTEST = "invalid_attest"
    INVALID_ORIGID = "invalid_origid"
    INVALID_DIV = "invalid_div"
    INVALID_RPH = "invalid_rph"
    INVALID_RCD = "invalid_rcd"
    NON_CANONICAL_JSON = "non_canonical_json"
    # Step 10-12: freshness (RFC 8224 section 6.2 step 4).
    MISSING_DATE = "missing_date"
    INVALID_DATE = "invalid_date"
    STALE_DATE = "stale_date"
    FUTURE_DATE = "future_date"
    STALE_IAT = "stale_iat"
    FUTURE_IAT = "future_iat"
    IAT_DATE_MISMATCH = "iat_date_mismatch"
    # Step 13-15: identities (RFC 8224 section 6.2 step 2, section 6.2.4, section 8).
    NO_ORIGINATING_IDENTITY = "no_originating_identity"
    ORIG_MISMATCH = "orig_mismatch"
    DEST_MISMATCH = "dest_mismatch"
    # Step 16-17: credential retrieval (RFC 8224 section 7.2; ATIS-1000074 URL rules).
    BAD_INFO_URL = "bad_info_url"
    FETCH_REFUSED = "fetch_refused"
    FETCH_FAILED = "fetch_failed"
    FETCH_NOT_FOUND = "fetch_not_found"
    FETCH_TIMEOUT = "fetch_timeout"
    FETCH_TOO_LARGE = "fetch_too_large"
    FETCH_BAD_CONTENT_TYPE = "fetch_bad_content_type"
    FETCH_OFFLINE = "fetch_offline"
    # Step 18-20: credential (RFC 8226, ATIS-1000080).
    CERT_PARSE_ERROR = "cert_parse_error"
    CHAIN_UNTRUSTED = "chain_untrusted"
    CERT_EXPIRED = "cert_expired"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    CERT_REVOKED = "cert_revoked"
    CRL_UNAVAILABLE = "crl_unavailable"
    CRL_INVALID = "crl_invalid"
    UNSUPPORTED_KEY = "unsupported_key"
    UNSUPPORTED_CERT_SIGNATURE = "unsupported_cert_signature"
    TNAUTHLIST_MISSING = "tnauthlist_missing"
    TNAUTHLIST_INVALID = "tnauthlist_invalid"
    KEY_USAGE_INVALID = "key_usage_invalid"
    BASIC_CONSTRAINTS_INVALID = "basic_constraints_invalid"
    # Step 21-23: authority, signature, constraints.
    SIGNER_NOT_AUTHORIZED = "signer_not_authorized"
    SIGNATURE_INVALID = "signature_invalid"
    CLAIM_CONSTRAINTS_VIOLATED = "claim_constraints_violated"
    RCDI_MISMATCH = "rcdi_mismatch"
    RCD_NOT_VERIFIED = "rcd_not_verified"
    # Step 25: diversion chains (RFC 8946 section 4.2).
    DIV_CHAIN_BROKEN = "div_chain_broken"
    DIV_ORPHAN = "div_orphan"


# The SIP status each reason maps to when it is fatal (None: informational only).
REASON_STATUS: dict[Reason, int | None] = {
    Reason.NO_IDENTITY_HEADER: 428,
    Reason.UNSUPPORTED_PPT: 428,
    Reason.COMMA_JOINED_IDENTITY: None,
    Reason.MALFORMED_IDENTITY_HEADER: 438,
    Reason.MISSING_INFO_PARAM: 438,
    Reason.DUPLICATE_PARAM: 438,
    Reason.INFO_NOT_IN_ANGLE_BRACKETS: 438,
    Reason.UNSUPPORTED_ALG: 438,
    Reason.COMPACT_FORM_NOT_ALLOWED: 438,
    Reason.MALFORMED_TOKEN: 438,
    Reason.INVALID_BASE64: 438,
    Reason.INVALID_JSON: 438,
    Reason.DUPLICATE_JSON_KEY: 438,
    Reason.INVALID_SIGNATURE_ENCODING: 438,
    Reason.INVALID_TYP: 438,
    Reason.ALG_MISMATCH: 438,
    Reason.PPT_MISMATCH: 438,
    Reason.MISSING_X5U: 438,
    Reason.X5U_INFO_MISMATCH: 438,
    Reason.INVALID_IAT: 438,
    Reason.INVALID_ORIG: 438,
    Reason.INVALID_DEST: 438,
    Reason.INVALID_ATTEST: 438,
    Reason.INVALID_ORIGID: 438,
    Reason.INVALID_DIV: 438,
    Reason.INVALID_RPH: 438,
    Reason.INVALID_RCD: 438,
    Reason.NON_CANONICAL_JSON: None,
    Reason.MISSING_DATE: 403,
    Reason.INVALID_DATE: 403,
    Reason.STALE_DATE: 403,
    Reason.FUTURE_DATE: 403,
    Reason.STALE_IAT: 403,
    Reason.FUTURE_IAT: 403,
    Reason.IAT_DATE_MISMATCH: None,
    Reason.NO_ORIGINATING_IDENTITY: 433,
    Reason.ORIG_MISMATCH: 438,
    Reason.DEST_MISMATCH: 438,
    Reason.BAD_INFO_URL: 436,
    Reason.FETCH_REFUSED: 436,
    Reason.FETCH_FAILED: 436,
    Reason.FETCH_NOT_FOUND: 436,
    Reason.FETCH_TIMEOUT: 436,
    Reason.FETCH_TOO_LARGE: 436,
    Reason.FETCH_BAD_CONTENT_TYPE: 436,
    Reason.FETCH_OFFLINE: 436,
    Reason.CERT_PARSE_ERROR: 437,
    Reason.CHAIN_UNTRUSTED: 437,
    Reason.CERT_EXPIRED: 437,
    Reason.CERT_NOT_YET_VALID: 437,
    Reason.CERT_REVOKED: 437,
    Reason.CRL_UNAVAILABLE: 437,
    Reason.CRL_INVALID: 437,
    Reason.UNSUPPORTED_KEY: 437,
    Reason.UNSUPPORTED_CERT_SIGNATURE: 437,
    Reason.TNAUTHLIST_MISSING: 437,
    Reason.TNAUTHLIST_INVALID: 437,
    Reason.KEY_USAGE_INVALID: 437,
    Reason.BASIC_CONSTRAINTS_INVALID: 437,
    Reason.SIGNER_NOT_AUTHORIZED: 438,
    Reason.SIGNATURE_INVALID: 438,
    Reason.CLAIM_CONSTRAINTS_VIOLATED: 438,
    Reason.RCDI_MISMATCH: None,
    Reason.RCD_NOT_VERIFIED: None,
    Reason.DIV_CHAIN_BROKEN: 438,
    Reason.DIV_ORPHAN: 438,
}


def status_for(reason: Reason) -> int | None:
    """The SIP status code a fatal ``reason`` maps to (RFC 8224 section 6.2.2)."""
    return REASON_STATUS[reason]


def phrase_for(status: int | None) -> str | None:
    """The reason phrase for a verifier status code (RFC 8224 section 13.2)."""
    if status is None:
        return None
    return STATUS_PHRASES.get(status)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the core noticed, with its stable reason and the status it maps to."""

    reason: Reason
    detail: str
    severity: Severity = Severity.ERROR

    @property
    def status_code(self) -> int | None:
        """SIP status for an error finding; None for warnings and info."""
        if self.severity is not Severity.ERROR:
            return None
        return REASON_STATUS[self.reason]

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def to_json(self) -> dict[str, object]:
        """JSON shape used by ``stirscope verify --json``: reason, status_code, detail."""
        return {
            "reason": self.reason.value,
            "status_code": self.status_code,
            "detail": self.detail,
            "severity": self.severity.value,
        }


def error(reason: Reason, detail: str) -> Finding:
    """A fatal finding."""
    return Finding(reason, detail, Severity.ERROR)


def warning(reason: Reason, detail: str) -> Finding:
    """A tolerated deviation."""
    return Finding(reason, detail, Severity.WARNING)


def unique_findings(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """``findings`` in order without repeats (one problem found by two steps is one finding)."""
    if len(findings) < 2:
        return tuple(findings)
    seen: set[Finding] = set()
    out: list[Finding] = []
    for f in findings:
        if f not in seen:
            seen.add(f)
            out.append(f)
    return tuple(out)


class ShakenError(Exception):
    """Root of the verification core's exceptions. Carries a stable reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def status_code(self) -> int | None:
        return REASON_STATUS[self.reason]

    def to_finding(self) -> Finding:
        return error(self.reason, self.detail)
