"""Bytes in, frozen SIP messages out (sans-IO): ``parse_message`` and the message values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar, cast

from sip.address import NameAddr, parse_name_addr_checked
from sip.defects import Defect, SipParseError, SipReason
from sip.fields import (
    CSeq,
    Diversion,
    HistoryInfoEntry,
    IdentityHeader,
    Via,
    parse_cseq_checked,
    parse_name_addrs,
    parse_sip_date,
    parse_vias,
    split_identity_line,
)
from sip.headers import CANONICAL_NAMES, Headers, is_token
from sip.limits import (
    MAX_MAX_FORWARDS,
)
from sip.uri import Uri, parse_uri_checked

T = TypeVar("T")
_Cache = dict[str, tuple[Any, list[Defect]]]

SIP_VERSION = "SIP/2.0"

# Name -> (lookup key, is a valid token, had whitespace before the colon). Header names repeat
# across messages, so this saves work per line; bounded so hostile input cannot grow it.
_NAME_INFO: dict[str, tuple[str, bool, bool]] = {}
_NAME_INFO_MAX = 2048

# Headers that occur at most once (RFC 3261 section 20, "the header field appears once").
_SINGLE_HEADERS = ("to", "from", "call-id", "cseq", "max-forwards", "content-type", "date")
_REQUIRED_REQUEST = ("to", "from", "cseq", "call-id", "max-forwards", "via")  # section 8.1.1
_REQUIRED_RESPONSE = ("to", "from", "cseq", "call-id", "via")  # section 8.2.6.2


def _name_info(name: str) -> tuple[str, bool, bool]:
    info = _NAME_INFO.get(name)
    if info is None:
        stripped = name.rstrip(" \t")
        lowered = stripped.lower()
        key = CANONICAL_NAMES.get(lowered, lowered).lower()
        info = (key, is_token(stripped), stripped != name)
        if len(_NAME_INFO) < _NAME_INFO_MAX:
            _NAME_INFO[name] = info
    return info


def _is_version(text: str) -> bool:
    if not text.startswith("SIP/"):
        return False
    major, dot, minor = text[4:].partition(".")
    return bool(dot) and major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()


def _digits(text: str, max_len: int = 10) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= max_len else None


class _MessageView:
    """Typed accessors shared by requests and responses; parsed on first use and cached."""

    __slots__ = ()
    raw: bytes
    headers: Headers
    body: bytes
    body_offset: int
    parse_defects: tuple[Defect, ...]
    _cache: _Cache

    def _memo(self, key: str, compute: Callable[[], tuple[T, list[Defect]]]) -> T:
        hit = self._cache.get(key)
        if hit is None:
            hit = compute()
            self._cache[key] = hit
        return cast(T, hit[0])

    def to_bytes(self) -> bytes:
        """The message bytes: as received for parsed messages, as built for built ones."""
        return self.raw

    @property
    def start_line(self) -> str:
        """The first line as received (RFC 3261 section 7.1 / 7.2)."""
        text = self.raw.lstrip(b"\r\n")
        return text.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "surrogateescape")

    def _single_name_addr(self, name: str) -> tuple[NameAddr | None, list[Defect]]:
        value = self.headers.get(name)
        if value is None:
            return None, []
        return parse_name_addr_checked(value)

    @property
    def from_(self) -> NameAddr | None:
        """The From header as a name-addr (RFC 3261 section 20.20)."""
        return self._memo("from", lambda: self._single_name_addr("from"))

    @property
    def to(self) -> NameAddr | None:
        """The To header as a name-addr (RFC 3261 section 20.39)."""
        return self._memo("to", lambda: self._single_name_addr("to"))

    @property
    def contact(self) -> tuple[NameAddr, ...]:
        """Contact values; ``*`` is not a name-addr and is skipped (RFC 3261 section 20.10)."""
        return self._memo(
            "contact",
            lambda: parse_name_addrs([v for v in self.headers.values("contact") if v != "*"]),
        )

    @property
    def p_asserted_identity(self) -> tuple[NameAddr, ...]:
        """P-Asserted-Identity values (RFC 3325 section 9.1)."""
        return self._memo(
            "pai", lambda: parse_name_addrs(self.headers.values("p-asserted-identity"))
        )

    @property
    def p_preferred_identity(self) -> tuple[NameAddr, ...]:
        """P-Preferred-Identity values (RFC 3325 section 9.2)."""
        return self._memo(
            "ppi", lambda: parse_name_addrs(self.headers.values("p-preferred-identity"))
        )

    @property
    def via(self) -> tuple[Via, ...]:
        """Via entries, topmost first (RFC 3261 section 20.42)."""
        return self._memo("via", lambda: parse_vias(self.headers.values("via")))

    @property
    def call_id(self) -> str | None:
        """Call-ID (RFC 3261 section 20.8)."""
        return self.headers.get("call-id")

    @property
    def cseq(self) -> CSeq | None:
        """CSeq number and method (RFC 3261 section 20.16)."""

        def compute() -> tuple[CSeq | None, list[Defect]]:
            value = self.headers.get("cseq")
            return (None, []) if value is None else parse_cseq_checked(value)

        return self._memo("cseq", compute)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0-255; RFC 3261 section 20.22); None if absent or invalid."""

        def compute() -> tuple[int | None, list[Defect]]:
            value = self.headers.get("max-forwards")
            if value is None:
                return None, []
            number = _digits(value)
            if number is None or number > MAX_MAX_FORWARDS:
                return None, [Defect.of(SipReason.INVALID_MAX_FORWARDS, repr(value))]
            return number, []

        return self._memo("max_forwards", compute)

    @property
    def date(self) -> datetime | None:
        """Date as an aware UTC datetime; None if absent or not an RFC 1123 GMT date
        (reported as ``invalid_date``). RFC 3261 section 20.17."""

        def compute() -> tuple[datetime | None, list[Defect]]:
            value = self.headers.get("date")
            if value is None:
                return None, []
            parsed = parse_sip_date(value)
            found = [] if parsed else [Defect.of(SipReason.INVALID_DATE, repr(value))]
            return parsed, found

        return self._memo("date", compute)

    @property
    def identity_headers(self) -> tuple[IdentityHeader, ...]:
        """Each Identity value separately, in order (RFC 8224 section 4)."""

        def compute() -> tuple[tuple[IdentityHeader, ...], list[Defect]]:
            out: list[IdentityHeader] = []
            defects: list[Defect] = []
            for index, header in enumerate(self.headers.fields("identity")):
                values, found = split_identity_line(header.value, index, header.offset)
                out.extend(values)
                defects.extend(found)
            return tuple(out), defects

        return self._memo("identity", compute)

    @property
    def identity_values(self) -> tuple[str, ...]:
        """Just the Identity value strings (RFC 8224 section 4)."""
        return tuple(h.value for h in self.identity_headers)

    @property
    def diversion(self) -> tuple[Diversion, ...]:
        """Diversion entries, most recent first (RFC 5806 section 3)."""

        def compute() -> tuple[tuple[Diversion, ...], list[Defect]]:
            addrs, defects = parse_name_addrs(self.headers.values("diversion"))
            return tuple(Diversion(a) for a in addrs), defects

        return self._memo("diversion", compute)

    @property
    def history_info(self) -> tuple[HistoryInfoEntry, ...]:
        """History-Info entries in header order (RFC 7044 section 4)."""

        def compute() -> tuple[tuple[HistoryInfoEntry, ...], list[Defect]]:
            addrs, defects = parse_name_addrs(self.headers.values("history-info"))
            return tuple(HistoryInfoEntry(a) for a in addrs), defects

        return self._memo("history_info", compute)

    @property
    def content_length(self) -> int | None:
        """Content-Length when present and numeric (RFC 3261 section 20.14)."""
        value = self.headers.get("content-length")
        return None if value is None else _digits(value)

    @property
    def content_type(self) -> str | None:
        """Content-Type value as written (RFC 3261 section 20.15)."""
        return self.headers.get("content-type")

    @property
    def media_type(self) -> str | None:
        """``type/subtype`` of Content-Type, lower-cased, without parameters."""
        value = self.content_type
        return None if value is None else value.partition(";")[0].strip().lower()

    def _uri_defects(self) -> list[Defect]:
        return []

    def _cross_checks(self) -> list[Defect]:
        keys = self.headers._keys
        defects: list[Defect] = []
        required = _REQUIRED_REQUEST if isinstance(self, Request) else _REQUIRED_RESPONSE
        for key in required:
            if key not in keys:
                defects.append(Defect.of(SipReason.MISSING_REQUIRED_HEADER, key))
        for key in _SINGLE_HEADERS:
            if keys.count(key) > 1:
                defects.append(Defect.of(SipReason.DUPLICATE_SINGLE_HEADER, key))
        cseq = self.cseq
        if isinstance(self, Request) and cseq is not None and cseq.method != self.method:
            defects.append(
                Defect.of(SipReason.CSEQ_METHOD_MISMATCH, f"{cseq.method} != {self.method}")
            )
        return defects

    @property
    def defects(self) -> tuple[Defect, ...]:
        """Every defect: framing/line problems found while parsing, then what each typed
        accessor found (all accessors are run, in a fixed order), then cross-header checks.

        RFC 3261 section 7 and section 8.1.1; RFC 4475 section 3.
        """

        def compute() -> tuple[tuple[Defect, ...], list[Defect]]:
            found: list[Defect] = list(self.parse_defects)
            found.extend(self._uri_defects())
            for key, accessor in _ACCESSORS:
                accessor(self)
                found.extend(self._cache[key][1])
            found.extend(self._cross_checks())
            return tuple(found), []

        return self._memo("defects", compute)

    @property
    def violations(self) -> tuple[Defect, ...]:
        """Defects that are real deviations (not notes)."""
        return tuple(d for d in self.defects if d.violation)


_ACCESSORS: tuple[tuple[str, Callable[[_MessageView], object]], ...] = (
    ("via", lambda m: m.via),
    ("from", lambda m: m.from_),
    ("to", lambda m: m.to),
    ("cseq", lambda m: m.cseq),
    ("max_forwards", lambda m: m.max_forwards),
    ("contact", lambda m: m.contact),
    ("pai", lambda m: m.p_asserted_identity),
    ("ppi", lambda m: m.p_preferred_identity),
    ("diversion", lambda m: m.diversion),
    ("history_info", lambda m: m.history_info),
    ("date", lambda m: m.date),
    ("identity", lambda m: m.identity_headers),
)


@dataclass(frozen=True, slots=True)
class Request(_MessageView):
    """A SIP request: the raw bytes, the request line, headers and body.

    ``uri_text`` is the Request-URI as written; ``uri`` parses it. RFC 3261 section 7.1.
    """

    raw: bytes
    method: str
    uri_text: str
    version: str
    headers: Headers
    body: bytes
    body_offset: int
    parse_defects: tuple[Defect, ...] = ()
    _cache: _Cache = field(default_factory=dict, repr=False, compare=False)

    @property
    def uri(self) -> Uri | None:
        """The Request-URI; ``<>`` around it (RFC 4475 "ltgtruri") is stripped and reported.

        RFC 3261 section 7.1 and section 19.1.1.
        """

        def compute() -> tuple[Uri | None, list[Defect]]:
            text = self.uri_text
            defects: list[Defect] = []
            if text.startswith("<") and text.endswith(">"):
                defects.append(Defect.of(SipReason.MALFORMED_REQUEST_URI, "enclosed in <>"))
                text = text[1:-1]
            if " " in text or "\t" in text:
                defects.append(Defect.of(SipReason.MALFORMED_REQUEST_URI, "whitespace in URI"))
            uri, found = parse_uri_checked(text)
            defects.extend(
                Defect.of(SipReason.MALFORMED_REQUEST_URI, d.detail)
                if d.code is SipReason.MALFORMED_URI
                else d
                for d in found
            )
            if uri.headers:
                defects.append(Defect.of(SipReason.URI_HEADERS_NOT_ALLOWED, text))
            return uri, defects

        return self._memo("uri", compute)

    def _uri_defects(self) -> list[Defect]:
        self.uri  # noqa: B018 - fills the cache
        return self._cache["uri"][1]

    @classmethod
    def build(
        cls,
        method: str,
        uri: str,
        headers: Sequence[tuple[str, str]],
        body: bytes = b"",
    ) -> Request:
        """Serialise a request (Content-Length set from the body) and parse it back.

        RFC 3261 section 7.1 and section 20.14.
        """
        from sip.parser import parse_message

        message = parse_message(serialise_message(f"{method} {uri} {SIP_VERSION}", headers, body))
        if not isinstance(message, Request):  # pragma: no cover - start line is ours
            raise SipParseError(SipReason.INVALID_START_LINE, "built message is not a request")
        return message


@dataclass(frozen=True, slots=True)
class Response(_MessageView):
    """A SIP response: the raw bytes, the status line, headers and body.

    RFC 3261 section 7.2.
    """

    raw: bytes
    version: str
    status: int
    reason: str
    headers: Headers
    body: bytes
    body_offset: int
    parse_defects: tuple[Defect, ...] = ()
    _cache: _Cache = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        status: int,
        reason: str,
        headers: Sequence[tuple[str, str]],
        body: bytes = b"",
    ) -> Response:
        """Serialise a response (Content-Length set from the body) and parse it back.

        RFC 3261 section 7.2 and section 20.14.
        """
        if not 100 <= status <= 699:
            raise ValueError(f"status code out of range: {status}")
        from sip.parser import parse_message

        message = parse_message(
            serialise_message(f"{SIP_VERSION} {status} {reason}", headers, body)
        )
        if not isinstance(message, Response):  # pragma: no cover - start line is ours
            raise SipParseError(SipReason.INVALID_STATUS_LINE, "built message is not a response")
        return message


Message = Request | Response


# Header names (lower case) ``serialise_message`` drops: it sets Content-Length itself.
LENGTH_NAMES = ("content-length", "l")


def serialise_message(start_line: str, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """Start line, headers (Content-Length set from ``body``) and body as wire bytes; a line
    break inside a header is a ``ValueError``. RFC 3261 section 7 and section 20.14.

    The head is checked for line breaks once, not per header: its lines are joined with CRLF,
    so it holds exactly one CR and one LF per joint unless a line carries one of its own; only
    then are the headers looked at one by one (a break in the start line, the caller's own
    text, is written as given)."""
    lines = [start_line]
    for name, value in headers:
        if name.lower() not in LENGTH_NAMES:
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines)
    joints = len(lines) - 1
    if head.count("\n") != joints or head.count("\r") != joints:
        for name, value in headers:
            if name.lower() in LENGTH_NAMES:
                continue
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"line break in header {name!r}")
    return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def with_defects(message: Message, extra: Sequence[Defect]) -> Message:
    """A copy of ``message`` with more parse-time defects (used by the stream framer)."""
    return replace(message, parse_defects=message.parse_defects + tuple(extra), _cache={})
