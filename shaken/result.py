"""Verification results: per PASSporT and per request, with verstat and the SIP status.

The request-level outcome follows RFC 8224 section 6.2.1 (valid if any supported Identity header
is valid) and the status-code precedence of section 6.2.2 (436 only when every credential was
unobtainable; 437 when a credential was obtained but unsupported; 438 otherwise; 403 for a stale
Date). verstat values are those of 3GPP TS 24.229 section 7.2A.20 (STANDARDS.md 6.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from shaken.errors import Finding, Reason, phrase_for
from shaken.party import Party


class Verstat(StrEnum):
    """verstat values (3GPP TS 24.229 section 7.2A.20)."""

    PASSED = "TN-Validation-Passed"
    FAILED = "TN-Validation-Failed"
    NO_VALIDATION = "No-TN-Validation"


class Revocation(StrEnum):
    """Revocation status of the signing certificate as recorded in results."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN_SOFT_FAIL = "unknown_soft_fail"
    UNKNOWN_HARD_FAIL = "unknown_hard_fail"
    NOT_CHECKED = "not_checked"
    NO_CRL_DP = "no_crl_distribution_point"


def _iso(moment: datetime | None) -> str | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC (what ``strftime`` writes, at a third of its cost)."""
    if moment is None:
        return None
    u = moment.astimezone(UTC)
    if u.year < 1000:  # strftime's own (platform) spelling of a short year
        return u.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{u.year}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}Z"


@dataclass(frozen=True, slots=True)
class SignerInfo:
    """Who signed: the end-entity certificate behind x5u (RFC 8226; SPC from TNAuthList)."""

    spc: str | None
    organization: str | None
    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    chain_trusted: bool
    revocation: Revocation
    chain: tuple[str, ...] = ()  # subjects from the leaf to the anchor
    profile_findings: tuple[dict[str, object], ...] = ()
    # The validity as written in JSON, computed once: one signer serves many results.
    _validity_iso: tuple[str | None, str | None] = field(
        init=False, compare=False, repr=False, default=(None, None)
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_validity_iso", (_iso(self.not_before), _iso(self.not_after)))

    def to_json(self) -> dict[str, object]:
        not_before, not_after = self._validity_iso
        return {
            "spc": self.spc,
            "organization": self.organization,
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "not_before": not_before,
            "not_after": not_after,
            "fingerprint_sha256": self.fingerprint_sha256,
            "chain_trusted": self.chain_trusted,
            "revocation": self.revocation.value,
            "chain": list(self.chain),
            "profile_findings": list(self.profile_findings),
        }


@dataclass(frozen=True, slots=True)
class PassportResult:
    """The outcome for one Identity header value (RFC 8224 section 6.2, applied per header)."""

    index: int
    identity: str
    ppt: str | None
    form: str
    ignored: bool
    findings: tuple[Finding, ...]
    attest: str | None = None
    origid: str | None = None
    orig: Party | None = None
    dest: tuple[Party, ...] = ()
    div: Party | None = None
    iat: int | None = None
    x5u: str | None = None
    signer: SignerInfo | None = None
    signature_valid: bool | None = None
    claims: dict[str, object] | None = None

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.is_error)

    @property
    def valid(self) -> bool:
        return not self.ignored and not self.errors

    @property
    def primary(self) -> Finding | None:
        """The first error in checklist order: what a verifier would answer for this header."""
        for finding in self.findings:
            if finding.is_error:
                return finding
        return None

    @property
    def reason(self) -> Reason | None:
        primary = self.primary
        return primary.reason if primary else None

    @property
    def status_code(self) -> int | None:
        primary = self.primary
        return primary.status_code if primary else None

    def to_json(self) -> dict[str, object]:
        """The `passports[]` element of `stirscope verify --json` (a fixed contract)."""
        primary = self.primary
        return {
            "index": self.index,
            "ppt": self.ppt,
            "form": self.form,
            "ignored": self.ignored,
            "valid": not self.ignored and primary is None,
            "reason": primary.reason.value if primary else None,
            "status_code": primary.status_code if primary else None,
            "attest": self.attest,
            "origid": self.origid,
            "orig": self.orig.value if self.orig else None,
            "dest": [d.value for d in self.dest],
            "div": self.div.value if self.div else None,
            "iat": self.iat,
            "x5u": self.x5u,
            "signature_valid": self.signature_valid,
            "findings": [f.to_json() for f in self.findings],
            "signer": self.signer.to_json() if self.signer else None,
        }


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """The request-level outcome: verstat, SIP status and every PASSporT's result."""

    verstat: Verstat
    status_code: int | None
    reason: Reason | None
    passports: tuple[PassportResult, ...]
    at: datetime
    findings: tuple[Finding, ...] = field(default=())

    @property
    def reason_phrase(self) -> str | None:
        if self.status_code == 428 and self.reason is Reason.UNSUPPORTED_PPT:
            return "Use Supported PASSporT Format"  # RFC 8224 section 6.2.2
        return phrase_for(self.status_code)

    @property
    def passed(self) -> bool:
        return self.verstat is Verstat.PASSED

    @property
    def best(self) -> PassportResult | None:
        """The PASSporT that decided the outcome: the first valid one, else the first used."""
        for p in self.passports:
            if p.valid:
                return p
        for p in self.passports:
            if not p.ignored:
                return p
        return self.passports[0] if self.passports else None

    def to_json(self) -> dict[str, object]:
        """`stirscope verify --json` (a fixed contract: extend, never rename)."""
        return {
            "verstat": self.verstat.value,
            "status_code": self.status_code,
            "reason_phrase": self.reason_phrase,
            "reason": self.reason.value if self.reason else None,
            "at": _iso(self.at),
            "findings": [f.to_json() for f in self.findings],
            "passports": [p.to_json() for p in self.passports],
        }


def aggregate(
    passports: Sequence[PassportResult],
    *,
    at: datetime,
    require_identity: bool,
    request_findings: Sequence[Finding] = (),
) -> VerificationResult:
    """Combine per-header results (RFC 8224 section 6.2.1 and section 6.2.2)."""
    found = tuple(passports)
    extra = tuple(request_findings)
    if not found:
        status = 428 if require_identity else None
        return VerificationResult(
            Verstat.NO_VALIDATION, status, Reason.NO_IDENTITY_HEADER, found, at, extra
        )
    considered = [p for p in found if not p.ignored]
    if not considered:
        status = 428 if require_identity else None
        return VerificationResult(
            Verstat.NO_VALIDATION, status, Reason.UNSUPPORTED_PPT, found, at, extra
        )
    if any(p.valid for p in considered):
        return VerificationResult(Verstat.PASSED, None, None, found, at, extra)
    primaries = [p.primary for p in considered if p.primary is not None]
    codes = [f.status_code for f in primaries]
    status = _precedence(codes)
    reason = next((f.reason for f in primaries if f.status_code == status), None)
    return VerificationResult(Verstat.FAILED, status, reason, found, at, extra)


def _precedence(codes: Sequence[int | None]) -> int:
    """RFC 8224 section 6.2.2: which single code answers a request whose headers all failed."""
    present = [c for c in codes if c is not None]
    if not present:
        return 438
    if all(c == present[0] for c in present):
        return present[0]
    # 436 only when true for every header (handled above); a credential obtained but unsupported
    # wins next; a stale Date/iat next; otherwise the PASSporT itself was invalid.
    for code in (437, 403, 433):
        if code in present:
            return code
    return 438
