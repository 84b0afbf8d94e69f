"""The SIP verification server's answers: response bytes, Reason: STIR headers, verstat.

Pure functions over a parsed request and a verification result, used by `SipServerCore`:
``encode_response`` serialises a body-less response (RFC 3261 section 8.2.6.2),
``stir_reasons`` builds the RFC 9410 ``Reason: STIR`` headers, ``with_verstat`` and
``without_tag`` shape the identities a 302 hands back (3GPP TS 24.229 section 7.2A.20),
``record_of`` is what ``stirscope listen -o`` writes per call, and ``call_record_of`` is the
same answer as a call of the results store (``stirscope listen --db``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from analyzer.calls import CallEnd, CallState
from analyzer.records import CallRecord, Identity, LegRecord, iso_datetime
from analyzer.traceback_replay import ReplayFlag, merge_flags, signature_digest, stale_flag
from analyzer.version import __version__
from shaken.errors import phrase_for
from shaken.party import Party, PartyKind
from shaken.result import PassportResult, VerificationResult, Verstat
from shaken.verifier import VerificationRequest
from sip import Request, add_uri_param, response_bytes

SERVER_HEADER = f"stirscope/{__version__}"
_TAG_PARAM = re.compile(r";\s*tag\s*=[^;]*", re.IGNORECASE)
# RFC 3261 section 25.1: hnv-unreserved and unreserved characters stay as they are in a URI
# header value; everything else is %-escaped.
_HNV_SAFE = "[]/?:+$-_.!~*'()"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_US = 1000
# RFC 3261 section 21.4.26 (via RFC 3261 section 9.2): the answer to a CANCELled INVITE.
_REQUEST_TERMINATED = 487


@dataclass(frozen=True, slots=True)
class VerificationRecord:
    """One verified call as written to JSONL by ``stirscope listen -o``."""

    at: datetime
    call_id: str | None
    from_: str | None
    to: str | None
    verstat: Verstat
    status: int  # the SIP status answered
    status_code: int | None  # the verifier's RFC 8224 code (None when passed)
    reason: str | None
    attest: str | None
    origid: str | None
    signer_spc: str | None
    signer_org: str | None
    x5u: str | None
    identities: int

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "call_id": self.call_id,
            "from": self.from_,
            "to": self.to,
            "verstat": self.verstat.value,
            "status": self.status,
            "status_code": self.status_code,
            "reason": self.reason,
            "attest": self.attest,
            "origid": self.origid,
            "signer_spc": self.signer_spc,
            "signer_org": self.signer_org,
            "x5u": self.x5u,
            "identities": self.identities,
        }


def encode_response(
    request: Request, status: int, phrase: str, extra: Sequence[tuple[str, str]]
) -> bytes:
    """The bytes of a body-less response to ``request`` (``sip.response_bytes``: the server's
    hot path cannot afford parsing its own answer back). RFC 3261 section 8.2.6.2."""
    return response_bytes(request, status, phrase, extra)


def _reason_header(code: int, phrase: str, ppi: str | None = None) -> tuple[str, str]:
    """``Reason: STIR;cause=<code>;text="<phrase>"[;ppi="<compact>"]`` (RFC 9410 sections 3, 5)."""
    text = phrase.replace("\\", "\\\\").replace('"', '\\"')
    value = f'STIR;cause={code};text="{text}"'
    if ppi is not None:
        value += f';ppi="{ppi}"'
    return ("Reason", value)


def _compact(token: str) -> str | None:
    """The compact form ``header..signature`` of a full-form token (RFC 8225 section 7)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(p.replace("-", "").replace("_", "").isalnum() for p in parts):
        return None
    return f"{parts[0]}..{parts[2]}"


def _token_of(identity: str) -> str:
    return identity.split(";", 1)[0].strip()


def _failed(passports: Sequence[PassportResult]) -> list[PassportResult]:
    return [p for p in passports if not p.ignored and not p.valid and p.status_code]


def stir_reasons(result: VerificationResult) -> list[tuple[str, str]]:
    """The ``Reason: STIR`` headers for ``result``: one per failed PASSporT (with ``ppi`` when
    several Identity headers arrived, to say which), or the request-level code when no single
    PASSporT carries one (e.g. 428, no Identity header). RFC 9410 sections 4-6."""
    failed = _failed(result.passports)
    several = len(result.passports) > 1
    headers = []
    for p in failed:
        assert p.status_code is not None
        text = phrase_of(p.status_code)
        ppi = _compact(_token_of(p.identity)) if several else None
        headers.append(_reason_header(p.status_code, text, ppi))
    if not headers and result.status_code is not None:
        headers.append(_reason_header(result.status_code, result.reason_phrase or "Unknown"))
    return headers


def phrase_of(code: int) -> str:
    return phrase_for(code) or "Unknown"


def with_verstat(value: str, verstat: Verstat) -> str:
    """A name-addr value with ``verstat`` on its URI; unchanged for URIs that take no
    parameters (TS 24.229 section 7.2A.20 places it on tel and SIP URIs only)."""
    try:
        return add_uri_param(value, "verstat", verstat.value)
    except ValueError:
        return value


def without_tag(value: str) -> str:
    """A From value as a new request would carry it: in name-addr form and without the tag
    (the redirected request gets a tag of its own; RFC 3261 section 8.1.1.3 and 20.10)."""
    gt = value.rfind(">")
    if value.lstrip().startswith(("<", '"')) or ("<" in value and gt > 0):
        params = value[gt + 1 :]
        if params.startswith(";tag=") and ";" not in params[5:]:
            return value[: gt + 1]  # the tag alone (the common From): all the regex removes
        return value[: gt + 1] + _TAG_PARAM.sub("", params)
    uri, _, params = value.strip().partition(";")  # addr-spec: every ';' param is a header param
    rest = _TAG_PARAM.sub("", f";{params}") if params else ""
    return f"<{uri}>{rest}"


def uri_header(name: str, value: str) -> str:
    """``name=value`` as a header of a SIP URI, the value %-escaped (RFC 3261 section 19.1.1,
    25.1 ``hname``/``hvalue``); several are joined with ``&``."""
    return f"{name}={quote(value, safe=_HNV_SAFE)}"


def uri_headers(pairs: Sequence[tuple[str, str]]) -> str:
    """The URI headers part (after ``?``) of a SIP URI carrying ``pairs``."""
    return "&".join(uri_header(name, value) for name, value in pairs)


def _summary_party(message: Request, name: str) -> str | None:
    value = message.headers.get(name)
    return value.strip() if value is not None else None


def record_of(
    request: Request, at: datetime, result: VerificationResult, status: int
) -> VerificationRecord:
    """The JSONL record of one answered INVITE (the deciding PASSporT's claims and signer)."""
    best = result.best
    signer = best.signer if best else None
    return VerificationRecord(
        at=at,
        call_id=request.call_id,
        from_=_summary_party(request, "from"),
        to=_summary_party(request, "to"),
        verstat=result.verstat,
        status=status,
        status_code=result.status_code,
        reason=result.reason.value if result.reason else None,
        attest=best.attest if best else None,
        origid=best.origid if best else None,
        signer_spc=signer.spc if signer else None,
        signer_org=signer.organization if signer else None,
        x5u=best.x5u if best else None,
        identities=len(result.passports),
    )


def _tn(party: Party | None) -> str | None:
    return party.value if party is not None and party.kind is PartyKind.TN else None


def _party_identity(raw: str | None, party: Party | None) -> Identity:
    return Identity(raw, _tn(party)) if raw is not None else Identity(None)


def _observed_verstat(request: Request) -> str | None:
    """A verstat an upstream verifier already put on P-Asserted-Identity or From (TS 24.229
    section 7.2A.20)."""
    for name_addr in (*request.p_asserted_identity, request.from_):
        if name_addr is not None and name_addr.uri.verstat:
            return name_addr.uri.verstat
    return None


def ns_of(at: datetime) -> int:
    """An aware datetime as integer nanoseconds since the epoch (microsecond precision, like
    capture times; ``analyzer.records.datetime_ns`` is the inverse)."""
    return (at - _EPOCH) // timedelta(microseconds=1) * _NS_PER_US


def call_record_of(
    request: Request,
    extracted: VerificationRequest,
    at: datetime,
    result: VerificationResult,
    status: int,
    *,
    transport: str,
    src: str,
    dst: str,
    freshness_s: int,
    replay: ReplayFlag | None = None,
) -> CallRecord:
    """One INVITE answered by the SIP verification server as a call of the results store: the
    ``stirscope analyze`` record of a one-message call (one leg, ``src`` -> ``dst``; no frames:
    nothing was captured) whose final response is the server's answer (``state`` rejected, or
    cancelled for 487). ``extracted`` is the verifier's input (the canonical numbers);
    ``replay`` the session's cross-call flag, merged with the call's own (a valid PASSporT
    outside its freshness window). RFC 8224 sections 6.2 and 12.1; STANDARDS.md section 9."""
    at_text = iso_datetime(at)
    start_ns = ns_of(at)
    call_id = request.call_id or ""
    digests = tuple(signature_digest(p.identity) for p in result.passports)
    own = None
    for passport, digest in zip(result.passports, digests, strict=True):
        if passport.signature_valid:
            own = stale_flag(call_id, start_ns, digest, passport.iat, freshness_s)
            if own is not None:
                break
    verstat = result.verstat.value
    reason = result.reason.value if result.reason else None
    cancelled = status == _REQUEST_TERMINATED
    leg = LegRecord(
        src=src, dst=dst, transport=transport, encapsulation="", frame=0, at=at_text,
        retransmissions=0, attempts=1, final_status=status, verstat=verstat,
        status_code=result.status_code, reason=reason,
    )  # fmt: skip
    headers = request.headers
    pai_lines = headers.get_all("p-asserted-identity")
    best = result.best
    signer = best.signer if best else None
    return CallRecord(
        call_id=call_id,
        start_ns=start_ns,
        src=src,
        dst=dst,
        transport=transport,
        encapsulation="",
        frames=(),
        frame_sources=(),
        request_uri=request.uri_text,
        from_=_party_identity(headers.get("from"), extracted.from_party),
        to=_party_identity(headers.get("to"), extracted.dest[0] if extracted.dest else None),
        pai=_party_identity(", ".join(pai_lines) if pai_lines else None, extracted.pai_party),
        date=headers.get("date"),
        final_status=status,
        state=(CallState.CANCELLED if cancelled else CallState.REJECTED).value,
        end=(CallEnd.CANCEL if cancelled else CallEnd.FINAL_RESPONSE).value,
        verstat=verstat,
        status_code=result.status_code,
        reason=reason,
        at=at_text,
        passports=tuple(p.to_json() for p in result.passports),
        anomalies=(),
        legs=(leg,),
        attest=best.attest if best else None,
        origid=best.origid if best else None,
        signer_spc=signer.spc if signer else None,
        signer_org=signer.organization if signer else None,
        x5u=best.x5u if best else None,
        observed_verstat=_observed_verstat(request),
        messages=1,
        signatures=digests,
        replay=merge_flags(replay, own),
    )
