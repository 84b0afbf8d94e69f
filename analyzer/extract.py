"""From SIP to verification input: the identities, Date and Identity values a verifier needs.

This is where `sip` meets `shaken` (which knows nothing of SIP objects): the originating
identity from P-Asserted-Identity and From, the destination from To, the current target from
the Request-URI, each canonicalised once by ``sip.originating_identity`` (RFC 8224 section 8.1,
8.3, 8.5), and the Identity values each on its own (RFC 8224 section 4).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shaken.errors import Finding, Reason, warning
from shaken.party import Party, PartyKind
from shaken.verifier import VerificationRequest
from sip import (
    IdentityKind,
    NameAddr,
    Request,
    Response,
    SipParseError,
    Uri,
    originating_identity,
    parse_message,
    parse_name_addr,
    parse_sip_date,
    parse_uri,
    split_commas,
)
from sip.fields import split_identity_line


class ExtractError(Exception):
    """The SIP input cannot give verification input (not SIP, or a header that is not a URI)."""


def party_from_uri(uri: Uri) -> Party:
    """The PASSporT identity for a SIP/tel URI (RFC 8224 section 8.1)."""
    identity = originating_identity(uri)
    kind = PartyKind.TN if identity.kind is IdentityKind.TN else PartyKind.URI
    return Party(kind, identity.value)


def _party(name_addr: NameAddr | None) -> Party | None:
    return party_from_uri(name_addr.uri) if name_addr is not None else None


def _pai_party(values: Sequence[NameAddr]) -> Party | None:
    """P-Asserted-Identity may carry a sip and a tel URI (RFC 3325 section 9.1): prefer a TN."""
    parties = [party_from_uri(v.uri) for v in values]
    for party in parties:
        if party.kind is PartyKind.TN:
            return party
    return parties[0] if parties else None


def request_from_message(message: Request | Response) -> VerificationRequest:
    """Verification input from a parsed SIP request (or a 3xx carrying Identity, RFC 8946 7).

    From, To, a single P-Asserted-Identity and the Request-URI of the common E.164 shape
    (``_E164_NAME_ADDR_RE``, ``_E164_URI_RE``) are read without parsing them: the typed
    accessors' parse (and its defects, which ``message.defects`` still reports on demand)
    could only give the same TN (`request_from_message_general` is the reference the
    shortcut is tested against).
    """
    headers = message.headers
    from_party = _common_party(headers.get("from"))
    if from_party is None:
        from_party = _party(message.from_)
    to_party = _common_party(headers.get("to"))
    if to_party is None:
        to_party = _party(message.to)
    pai_lines = headers.get_all("p-asserted-identity")
    pai_party = _common_party(pai_lines[0]) if len(pai_lines) == 1 else None
    if pai_party is None:
        pai_party = _pai_party(message.p_asserted_identity)
    request_uri = None
    if isinstance(message, Request):
        common = _E164_URI_RE.fullmatch(message.uri_text)
        if common is not None:
            request_uri = Party(PartyKind.TN, common.group(1) or common.group(2))
        elif message.uri is not None:
            request_uri = party_from_uri(message.uri)
    return _request(message, from_party, to_party, pai_party, request_uri)


def request_from_message_general(message: Request | Response) -> VerificationRequest:
    """`request_from_message` through the typed accessors only (the reference of its tests)."""
    request_uri = None
    if isinstance(message, Request) and message.uri is not None:
        request_uri = party_from_uri(message.uri)
    return _request(
        message,
        _party(message.from_),
        _party(message.to),
        _pai_party(message.p_asserted_identity),
        request_uri,
    )


def _request(
    message: Request | Response,
    from_party: Party | None,
    to_party: Party | None,
    pai_party: Party | None,
    request_uri: Party | None,
) -> VerificationRequest:
    findings: list[Finding] = []
    identities = message.identity_headers
    if any(h.split_from_comma for h in identities):
        findings.append(
            warning(Reason.COMMA_JOINED_IDENTITY, "Identity values joined by a comma were split")
        )
    return VerificationRequest(
        identities=tuple(h.value for h in identities),
        from_party=from_party,
        pai_party=pai_party,
        dest=(to_party,) if to_party is not None else (),
        request_uri=request_uri,
        date=message.date,
        date_present="date" in message.headers,
        findings=tuple(findings),
    )


def _common_party(value: str | None) -> Party | None:
    """The TN of a header value of the common shape, else None (take the general path)."""
    if value is None:
        return None
    common = _E164_NAME_ADDR_RE.fullmatch(value)
    if common is None:
        return None
    return Party(PartyKind.TN, common.group(1) or common.group(2))


def request_from_sip_bytes(data: bytes) -> VerificationRequest:
    """Parse (leniently) and extract; a message that is not SIP raises ``ExtractError``."""
    try:
        message = parse_message(data)
    except SipParseError as exc:
        raise ExtractError(f"not a SIP message: {exc}") from exc
    return request_from_message(message)


# The shape nearly every From/To/P-Asserted-Identity value takes in SHAKEN traffic: a
# name-addr whose URI is ``sip:``/``sips:`` with a ``+``-prefixed all-digit user part, or
# ``tel:`` with such a number (RFC 3261 section 20.10, RFC 3966 section 3). For it the general
# path (``sip.originating_identity``, with or without ``user=phone``) can only give the TN
# without its ``+`` (RFC 8224 section 8.3: nothing else to canonicalise), and header
# parameters after ``>`` play no part; anything else takes the general path, which the
# shortcut is tested against.
_E164_URI = (
    r"(?:sips?:\+([0-9]+)@[A-Za-z0-9.\-]+(?::[0-9]+)?(?:;[A-Za-z0-9_=.\-~]*)*"
    r"|tel:\+([0-9]+)(?:;[A-Za-z0-9_=.\-~]*)*)"
)
# An optional quoted display name first (``"Alpha Caller" <sip:...>``, what most user agents
# send), without escapes: anything else in a display name takes the general path.
_E164_NAME_ADDR_RE = re.compile(r'\s*(?:"[^"\\\r\n]*"\s*)?<' + _E164_URI + r">.*", re.DOTALL)
# The same URI shape as a Request-URI (written bare, RFC 3261 section 7.1).
_E164_URI_RE = re.compile(_E164_URI)


def _header_party(text: str, what: str) -> Party:
    """The PASSporT identity of a From/To/P-Asserted-Identity value (RFC 8224 section 8)."""
    common = _common_party(text)
    return common if common is not None else _header_party_general(text, what)


def _header_party_general(text: str, what: str) -> Party:
    """The general path: parse the name-addr (or a bare URI), then ``party_from_uri``."""
    name_addr = parse_name_addr(text)
    if name_addr is None:
        try:
            return party_from_uri(parse_uri(text.strip()))
        except (SipParseError, ValueError) as exc:
            raise ExtractError(f"{what} header value is not a name-addr: {text!r}") from exc
    return party_from_uri(name_addr.uri)


def request_from_headers(
    *,
    identities: Sequence[str],
    from_: str,
    to: str,
    pai: str | None = None,
    date: str | None = None,
    request_uri: str | None = None,
) -> VerificationRequest:
    """Verification input from header values as they appear on the wire."""
    values: list[str] = []
    findings: list[Finding] = []
    for index, raw in enumerate(identities):
        if "," not in raw:  # what split_identity_line gives a value with nothing to split
            values.append(raw.strip())
            continue
        split, _ = split_identity_line(raw, index, 0)
        if len(split) > 1:
            findings.append(
                warning(
                    Reason.COMMA_JOINED_IDENTITY, f"--identity {index} held {len(split)} values"
                )
            )
        values.extend(h.value for h in split)
    pai_party = None
    if pai is not None:
        parts = [_header_party(p, "P-Asserted-Identity") for p in split_commas(pai) if p.strip()]
        tns = [p for p in parts if p.kind is PartyKind.TN]
        pai_party = (tns or parts)[0] if parts else None
    target = None
    if request_uri is not None:
        try:
            target = party_from_uri(parse_uri(request_uri.strip()))
        except (SipParseError, ValueError) as exc:
            raise ExtractError(f"Request-URI is not a URI: {request_uri!r}") from exc
    return VerificationRequest(
        identities=tuple(values),
        from_party=_header_party(from_, "From"),
        pai_party=pai_party,
        dest=(_header_party(to, "To"),),
        request_uri=target,
        date=parse_sip_date(date) if date is not None else None,
        date_present=date is not None,
        findings=tuple(findings),
    )
