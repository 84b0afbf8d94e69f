"""``assess_call``: one tracked call in, one ``CallRecord`` out -- where errors become data.

Each leg's INVITE is verified as of its own capture time (or ``at_override``), with the
verifier the run was configured with; the primary leg (the first signed one) speaks for the
call. Whatever goes wrong while extracting or verifying one call is recorded in that call's
record (``error``, anomalies), never raised: one odd packet must not stop an investigation.

RFC 8224 section 6.2 (verification), STANDARDS.md section 9 (what to extract).
"""

from __future__ import annotations

from datetime import datetime

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.calls import Call, Leg
from analyzer.capture import anomaly_to_json
from analyzer.extract import party_from_uri, request_from_message
from analyzer.records import (
    CallRecord,
    Identity,
    LegRecord,
    datetime_ns,
    endpoint,
    iso_datetime,
)
from analyzer.traceback_replay import ReplayFlag, merge_flags, signature_digest, stale_flag
from shaken.errors import Reason
from shaken.party import Party, PartyKind
from shaken.result import VerificationResult
from shaken.verifier import VerificationRequest, Verifier
from sip import NameAddr, Request, Response

# Reasons that mean the Identity header itself could not be read (RFC 8224 section 4, RFC 8225
# section 6-7): reported as a ``malformed_identity`` anomaly on top of the verdict.
MALFORMED_IDENTITY_REASONS = frozenset(
    {
        Reason.MALFORMED_IDENTITY_HEADER,
        Reason.MISSING_INFO_PARAM,
        Reason.DUPLICATE_PARAM,
        Reason.INFO_NOT_IN_ANGLE_BRACKETS,
        Reason.MALFORMED_TOKEN,
        Reason.INVALID_BASE64,
        Reason.INVALID_JSON,
        Reason.DUPLICATE_JSON_KEY,
        Reason.INVALID_SIGNATURE_ENCODING,
    }
)


def _identity(name_addr: NameAddr | None, raw: str | None) -> Identity:
    if raw is None:
        return Identity(None)
    tn = None
    if name_addr is not None:
        try:
            party = party_from_uri(name_addr.uri)
        except ValueError:
            party = None
        if party is not None and party.kind is PartyKind.TN:
            tn = party.value
    return Identity(raw, tn)


def _pai(message: Request | Response) -> Identity:
    lines = message.headers.get_all("p-asserted-identity")
    if not lines:
        return Identity(None)
    raw = ", ".join(lines)
    values = message.p_asserted_identity
    for value in values:
        found = _identity(value, raw)
        if found.tn is not None:
            return found
    return Identity(raw)


def _tn(party: Party | None) -> str | None:
    return party.value if party is not None and party.kind is PartyKind.TN else None


def _identities(
    message: Request | Response, request: VerificationRequest | None
) -> tuple[Identity, Identity, Identity]:
    """From, To and P-Asserted-Identity of the primary INVITE with their canonical TNs.

    The verification input already holds those parties (``request_from_message`` makes them
    with the same ``party_from_uri``): reuse them rather than canonicalise every URI again.
    Without it (extraction failed), each is worked out on its own. RFC 8224 section 8.3.
    """
    if request is None:
        return (
            _identity(message.from_, message.headers.get("from")),
            _identity(message.to, message.headers.get("to")),
            _pai(message),
        )
    headers = message.headers
    from_raw, to_raw = headers.get("from"), headers.get("to")
    pai_lines = headers.get_all("p-asserted-identity")
    return (
        Identity(from_raw, _tn(request.from_party)) if from_raw is not None else Identity(None),
        Identity(to_raw, _tn(request.dest[0] if request.dest else None))
        if to_raw is not None
        else Identity(None),
        Identity(", ".join(pai_lines), _tn(request.pai_party)) if pai_lines else Identity(None),
    )


def _observed_verstat(message: Request | Response) -> str | None:
    """A verstat an upstream verifier already put on P-Asserted-Identity or From (TS 24.229
    section 7.2A.20). Parameter names are matched without unescaping, so a header whose text
    does not hold ``verstat`` in any case has none: its name-addr is not parsed for it."""
    headers = message.headers
    if not any(
        "verstat" in value.lower()
        for value in (*headers.get_all("p-asserted-identity"), headers.get("from") or "")
    ):
        return None
    for name_addr in (*message.p_asserted_identity, message.from_):
        if name_addr is not None and name_addr.uri.verstat:
            return name_addr.uri.verstat
    return None


def verify_leg(
    leg: Leg, verifier: Verifier, at: datetime
) -> tuple[VerificationResult | None, str | None]:
    """The verifier's result for a leg's INVITE, or the error that prevented one."""
    result, error, _request = _verify(leg, verifier, at)
    return result, error


def _verify(
    leg: Leg, verifier: Verifier, at: datetime
) -> tuple[VerificationResult | None, str | None, VerificationRequest | None]:
    request = None
    try:
        request = request_from_message(leg.invite.message)
        return verifier.verify(request, at=at), None, request
    # Deliberately broad: this is the one place where a failure becomes data (module doc).
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}", request


def _malformed(leg: Leg, result: VerificationResult | None) -> list[Anomaly]:
    if result is None:
        return []
    out = []
    for passport in result.passports:
        reason = passport.reason
        if reason in MALFORMED_IDENTITY_REASONS:
            out.append(
                Anomaly(
                    AnomalyKind.MALFORMED_IDENTITY, leg.invite.frame, leg.invite.ts_ns,
                    f"Identity header {passport.index}: {reason}", leg.invite.source_file,
                )
            )  # fmt: skip
    return out


def _replay(
    call: Call, result: VerificationResult | None, seen: ReplayFlag | None, verifier: Verifier
) -> tuple[tuple[str | None, ...], ReplayFlag | None]:
    """Signature digests of the primary INVITE's PASSporTs and the possible-replay flag: the
    cross-call one ``seen`` by the run, merged with a validly signed PASSporT that arrived
    outside its freshness window (RFC 8224 section 12.1)."""
    if result is None:
        return (), seen
    digests = tuple(signature_digest(p.identity) for p in result.passports)
    own = None
    freshness_s = verifier.policy.freshness_s
    for passport, digest in zip(result.passports, digests, strict=True):
        if passport.signature_valid:
            ts = call.primary.invite.ts_ns
            own = stale_flag(call.call_id, ts, digest, passport.iat, freshness_s)
            if own is not None:
                break
    return digests, merge_flags(seen, own)


def assess_call(
    call: Call,
    verifier: Verifier,
    at_override: datetime | None = None,
    replay: ReplayFlag | None = None,
) -> CallRecord:
    """Verify every leg of ``call`` and build its record (never raises for call content).

    Each INVITE is judged as of its packet timestamp unless ``at_override`` is given.
    ``replay`` is the run's cross-call replay flag for this call (``ReplayDetector``).
    RFC 8224 section 6.2; ARCHITECTURE.md section 2 (assess_call).
    """
    primary = call.primary
    legs: list[LegRecord] = []
    anomalies: list[dict[str, object]] = [anomaly_to_json(a) for a in call.anomalies]
    best: tuple[VerificationResult | None, str | None, str] = (None, None, "")
    request: VerificationRequest | None = None
    for leg in call.legs:
        at = at_override or datetime_ns(leg.invite.ts_ns)
        at_text = iso_datetime(at)
        result, error, leg_request = _verify(leg, verifier, at)
        anomalies.extend(anomaly_to_json(a) for a in _malformed(leg, result))
        if leg is primary:
            best = (result, error, at_text)
            request = leg_request
        legs.append(
            LegRecord(
                src=endpoint(leg.src, leg.sport),
                dst=endpoint(leg.dst, leg.dport),
                transport=leg.transport,
                encapsulation=leg.encapsulation,
                frame=leg.invite.frame,
                at=at_text,
                retransmissions=leg.retransmissions,
                attempts=leg.attempts,
                final_status=leg.final_status,
                verstat=result.verstat.value if result else None,
                status_code=result.status_code if result else None,
                reason=result.reason.value if result and result.reason else None,
            )
        )
    result, error, at_text = best
    message = primary.invite.message
    passport = result.best if result is not None else None
    signer = passport.signer if passport is not None else None
    signatures, replay = _replay(call, result, replay, verifier)
    from_, to, pai = _identities(message, request)
    return CallRecord(
        call_id=call.call_id,
        start_ns=call.start_ns,
        src=endpoint(primary.src, primary.sport),
        dst=endpoint(primary.dst, primary.dport),
        transport=primary.transport,
        encapsulation=primary.encapsulation,
        frames=call.frames,
        frame_sources=call.frame_sources,
        request_uri=message.uri_text if isinstance(message, Request) else None,
        from_=from_,
        to=to,
        pai=pai,
        date=message.headers.get("date"),
        final_status=call.final_status,
        state=call.state.value,
        end=call.end.value,
        verstat=result.verstat.value if result else None,
        status_code=result.status_code if result else None,
        reason=result.reason.value if result and result.reason else None,
        at=at_text,
        passports=tuple(p.to_json() for p in result.passports) if result else (),
        anomalies=tuple(anomalies),
        legs=tuple(legs),
        attest=passport.attest if passport is not None else None,
        origid=passport.origid if passport is not None else None,
        signer_spc=signer.spc if signer is not None else None,
        signer_org=signer.organization if signer is not None else None,
        x5u=passport.x5u if passport is not None else None,
        observed_verstat=_observed_verstat(message),
        provisional=call.provisional,
        messages=call.messages,
        retransmissions=sum(leg.retransmissions for leg in call.legs),
        error=error,
        signatures=signatures,
        replay=replay,
    )
