"""What a verifier is asked about, and how a PASSporT's values compare with the SIP ones.

``VerificationRequest`` carries the SIP-derived values as plain data (``shaken`` knows nothing
of SIP objects). The comparison rules of checklist steps 10-15 (STANDARDS.md section 10) live
here once, for the full checklist (``shaken.verifier``) and the common-case path
(``shaken.fastpath``) alike: freshness of Date and iat, which SIP identity is the originator,
where ``dest`` must point, and when two identities are the same. RFC 8224 section 6.2 steps 2
and 4, section 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shaken.errors import Finding, Reason, Severity, error
from shaken.party import Party, PartyKind
from shaken.policy import Originator, Policy, TnMatch


@dataclass(frozen=True, slots=True)
class VerificationRequest:
    """What the verifier needs from a SIP request, already extracted and canonicalised.

    ``from_party``/``pai_party``: the From and P-Asserted-Identity identities (canonical TN per
    RFC 8224 section 8.3 or normalised URI per section 8.5); ``dest``: the To identity (and
    any other target the caller deems equivalent); ``request_uri``: the current target, for
    diversion chains; ``date``: the parsed Date header, ``date_present`` whether a Date header
    was there at all (present but unparseable is a distinct finding).
    """

    identities: tuple[str, ...]
    from_party: Party | None = None
    pai_party: Party | None = None
    dest: tuple[Party, ...] = ()
    request_uri: Party | None = None
    date: datetime | None = None
    date_present: bool = False
    findings: tuple[Finding, ...] = field(default=())

    @property
    def originator(self) -> Party | None:
        return self.pai_party or self.from_party


def originator_of(request: VerificationRequest, policy: Policy) -> Party | None:
    """The SIP identity ``orig`` must match: P-Asserted-Identity, else From (or From only).

    RFC 8224 section 8 (From); STANDARDS.md 1.2 (SHAKEN practice prefers P-Asserted-Identity).
    """
    if policy.originator is Originator.FROM:
        return request.from_party
    return request.originator


def targets_of(request: VerificationRequest, ppt: str | None) -> tuple[Party, ...]:
    """Where dest must point: a div PASSporT's dest is the current target (RFC 8946 4.2)."""
    if ppt == "div" and request.request_uri is not None:
        return (request.request_uri,)
    if request.request_uri is not None and request.request_uri not in request.dest:
        return (*request.dest, request.request_uri)
    return request.dest


def same_identity(a: Party, b: Party, tn_match: TnMatch) -> bool:
    """Whether a PASSporT identity and a SIP identity are the same (RFC 8224 section 8.3).

    URIs compare case-insensitively; TNs exactly, or with the NANP country code 1 on one side
    only when ``tn_match`` is ``TnMatch.NANP``.
    """
    if a.kind is not b.kind:
        return False
    if a.value == b.value:
        return True
    if a.kind is PartyKind.URI:
        return a.value.lower() == b.value.lower()
    if tn_match is TnMatch.NANP:
        return a.value == "1" + b.value or b.value == "1" + a.value
    return False


def check_freshness(
    request: VerificationRequest, iat: int | None, now: float, policy: Policy, *, compact: bool
) -> list[Finding]:
    """Steps 10-12: Date and iat at most ``freshness_s`` old and ``clock_skew_s`` ahead.

    RFC 8224 section 6.2 step 4; ATIS-1000074 iat check. A Date that differs from iat is
    recorded (iat is what counts).
    """
    found: list[Finding] = []
    if policy.check_date:
        if request.date is None:
            if request.date_present:
                found.append(error(Reason.INVALID_DATE, "Date header is not RFC 1123"))
            else:
                found.append(error(Reason.MISSING_DATE, "no Date header"))
        else:
            found.extend(_window(request.date.timestamp(), now, policy, "Date"))
    if policy.check_iat and iat is not None and not compact:
        found.extend(_window(_numeric_date(iat), now, policy, "iat"))
        if request.date is not None and int(request.date.timestamp()) != iat:
            found.append(iat_date_note(int(request.date.timestamp()) - iat))
    return found


def iat_date_note(delta: int) -> Finding:
    """The Date - iat difference, for the record (RFC 8224 section 6.2 step 4: iat is used)."""
    return Finding(
        Reason.IAT_DATE_MISMATCH,
        f"Date - iat = {delta} s (iat used, RFC 8224 section 6.2 step 4)",
        Severity.INFO,
    )


def _window(moment: float, now: float, policy: Policy, what: str) -> list[Finding]:
    """Freshness of a Date or iat: at most ``freshness_s`` old, ``clock_skew_s`` ahead."""
    age = now - moment
    if age > policy.freshness_s:
        reason = Reason.STALE_DATE if what == "Date" else Reason.STALE_IAT
        return [error(reason, f"{what} is {age:.0f} s old (window {policy.freshness_s} s)")]
    if -age > policy.clock_skew_s:
        reason = Reason.FUTURE_DATE if what == "Date" else Reason.FUTURE_IAT
        return [
            error(reason, f"{what} is {-age:.0f} s in the future (skew {policy.clock_skew_s} s)")
        ]
    return []


def _numeric_date(iat: int) -> float:
    """iat as a float; a JSON integer too large for one is infinitely far in the future."""
    try:
        return float(iat)
    except OverflowError:
        return float("inf")
