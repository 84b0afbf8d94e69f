"""Typed values of individual header fields: Via, CSeq, Date, Identity, Diversion, History-Info."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sip.address import NameAddr, parse_name_addr_checked
from sip.defects import Defect, SipReason
from sip.headers import split_commas
from sip.limits import MAX_CSEQ
from sip.uri import Params, find_param, split_params


@dataclass(frozen=True, slots=True)
class Via:
    """One via-parm: protocol, transport, sent-by host and port, and parameters.

    RFC 3261 section 20.42 and section 18.2.1 (``branch``, ``received``, ``rport``).
    """

    raw: str
    protocol: str
    version: str
    transport: str
    host: str
    port: int | None
    params: Params = ()

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def parse_via_checked(text: str) -> tuple[Via | None, list[Defect]]:
    """Parse one via-parm (LWS around ``/`` tolerated, as RFC 4475 "wsinv" requires).

    RFC 3261 section 20.42 and section 25.1.
    """
    defects: list[Defect] = []
    s = text.strip()
    sent, _, param_text = s.partition(";")
    parts = [p.strip() for p in sent.split("/", 2)]
    if len(parts) != 3 or not all(parts[:2]):
        defects.append(Defect.of(SipReason.MALFORMED_VIA, f"bad sent-protocol: {s!r}"))
        return None, defects
    protocol, version = parts[0], parts[1]
    transport, _, sent_by = parts[2].partition(" ")
    sent_by = sent_by.strip()
    if not transport or not sent_by or " " in sent_by:
        defects.append(Defect.of(SipReason.MALFORMED_VIA, f"bad sent-by: {s!r}"))
        return None, defects
    host, port = sent_by, None
    if sent_by.startswith("["):
        end = sent_by.find("]")
        host, rest = sent_by[: end + 1], sent_by[end + 1 :]
        if rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit() and len(rest) <= 6:
            port = int(rest[1:])
    elif ":" in sent_by:
        host, _, port_text = sent_by.partition(":")
        if port_text.isascii() and port_text.isdigit() and len(port_text) <= 5:
            port = int(port_text)
        else:
            defects.append(Defect.of(SipReason.MALFORMED_VIA, f"bad port: {s!r}"))
    params = split_params(param_text, defects) if param_text else ()
    for d in defects:
        if d.code is SipReason.EMPTY_PARAMETER:
            defects.append(Defect.of(SipReason.MALFORMED_VIA, f"empty parameter: {s!r}"))
            break
    return Via(s, protocol.upper(), version, transport.upper(), host, port, params), defects


def parse_vias(values: list[str]) -> tuple[tuple[Via, ...], list[Defect]]:
    """All via-parms of the (comma-split) Via values, topmost first. RFC 3261 section 20.42."""
    out: list[Via] = []
    defects: list[Defect] = []
    for value in values:
        if not value:
            defects.append(Defect.of(SipReason.MALFORMED_VIA, "empty Via element"))
            continue
        via, found = parse_via_checked(value)
        defects.extend(found)
        if via is not None:
            out.append(via)
    return tuple(out), defects


@dataclass(frozen=True, slots=True)
class CSeq:
    """Sequence number and method. RFC 3261 section 20.16."""

    number: int
    method: str


def cseq_parts(text: str) -> tuple[str, str] | None:
    """The sequence number (digits) and method of ``1*DIGIT LWS Method``, None when ``text``
    is not that grammar (the number's size is not checked here: `parse_cseq_checked`).

    RFC 3261 section 20.16.
    """
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[0].isascii():
        return None
    return parts[0], parts[1]


def parse_cseq_checked(text: str) -> tuple[CSeq | None, list[Defect]]:
    """Parse ``1*DIGIT LWS Method``; numbers of 2**31 or more are reported.

    RFC 3261 section 20.16 and section 8.1.1.5.
    """
    parts = cseq_parts(text)
    if parts is None:
        return None, [Defect.of(SipReason.INVALID_CSEQ, repr(text))]
    number = int(parts[0]) if len(parts[0]) <= 20 else MAX_CSEQ + 1
    defects = []
    if number > MAX_CSEQ:
        defects.append(Defect.of(SipReason.INVALID_CSEQ, f"sequence number too large: {parts[0]}"))
    return CSeq(number, parts[1]), defects


_MONTHS = {
    m: i
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1
    )
}
_WEEKDAYS = frozenset(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])


def parse_sip_date(text: str) -> datetime | None:
    """``Sun, 06 Nov 1994 08:49:37 GMT`` -> aware UTC datetime; None if not that grammar.

    Only ``GMT`` is accepted as zone (RFC 4475 section 3.1.2.12 "baddate").
    RFC 3261 section 20.17 (``rfc1123-date``).
    """
    parts = text.split()
    if len(parts) != 6 or parts[5] != "GMT" or parts[0].rstrip(",") not in _WEEKDAYS:
        return None
    if not parts[0].endswith(","):
        return None
    day, month, year, clock = parts[1], _MONTHS.get(parts[2]), parts[3], parts[4].split(":")
    if month is None or not (day.isascii() and day.isdigit() and len(day) <= 2):
        return None
    if not (year.isascii() and year.isdigit() and len(year) == 4):
        return None
    if len(clock) != 3 or not all(c.isascii() and c.isdigit() and len(c) == 2 for c in clock):
        return None
    try:
        return datetime(
            int(year), month, int(day), int(clock[0]), int(clock[1]), int(clock[2]), tzinfo=UTC
        )
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class IdentityHeader:
    """One Identity value: the text (token and parameters, not interpreted here), the index of
    the header line it came from, and whether it was split out of a comma-joined line.

    RFC 8224 section 4.
    """

    value: str
    header_index: int
    offset: int
    split_from_comma: bool = False


def split_identity_line(
    value: str, index: int, offset: int
) -> tuple[list[IdentityHeader], list[Defect]]:
    """Identity has no list grammar, so each line holds one value; a line with two values joined
    by a comma is split and flagged. RFC 8224 section 4, RFC 3261 section 7.3.1."""
    if not value.strip():
        return [IdentityHeader("", index, offset)], [
            Defect.of(SipReason.EMPTY_IDENTITY, "Identity header without a value", offset)
        ]
    parts = [p for p in split_commas(value) if p]
    if len(parts) <= 1:
        return [IdentityHeader(value.strip(), index, offset)], []
    return [IdentityHeader(p, index, offset, True) for p in parts], [
        Defect.of(SipReason.IDENTITY_COMMA_JOINED, f"{len(parts)} values on one line", offset)
    ]


@dataclass(frozen=True, slots=True)
class Diversion:
    """One Diversion entry: the diverting address and its parameters (``reason``,
    ``counter``, ``privacy``, ``screen``...). RFC 5806 section 3."""

    address: NameAddr

    @property
    def reason(self) -> str | None:
        return self.address.param("reason")

    @property
    def counter(self) -> int | None:
        value = self.address.param("counter")
        return (
            int(value)
            if value and value.isascii() and value.isdigit() and len(value) < 10
            else None
        )


@dataclass(frozen=True, slots=True)
class HistoryInfoEntry:
    """One hi-entry: the targeted-to URI and its ``index`` (plus ``rc``/``mp``/``np``).

    RFC 7044 section 4.
    """

    address: NameAddr

    @property
    def index(self) -> str | None:
        return self.address.param("index")

    @property
    def cause(self) -> str | None:
        """The ``cause`` URI parameter of the hi-targeted-to-uri (RFC 4458 section 4)."""
        return self.address.uri.param("cause")


def parse_name_addrs(values: list[str]) -> tuple[tuple[NameAddr, ...], list[Defect]]:
    """Parse a list of name-addr values, dropping the unreadable ones (reported)."""
    out: list[NameAddr] = []
    defects: list[Defect] = []
    for value in values:
        if not value:
            defects.append(Defect.of(SipReason.MALFORMED_NAME_ADDR, "empty list element"))
            continue
        addr, found = parse_name_addr_checked(value)
        defects.extend(found)
        if addr is not None:
            out.append(addr)
    return tuple(out), defects


def parse_params_only(text: str) -> Params:
    """``value;p=1`` -> the parameters (for Content-Type and similar)."""
    return split_params(text.partition(";")[2]) if ";" in text else ()
