"""parse_message: start lines, headers, line endings, folding, encodings, body framing, limits."""

from __future__ import annotations

import pytest

from sip import Request, Response, SipParseError, SipReason, parse_message
from sip.limits import MAX_HEADER_COUNT, MAX_HEADER_LINE_BYTES, MAX_MESSAGE_BYTES
from tests.sip.conftest import crlf

BASIC = """INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds
Max-Forwards: 70
To: Bob <sip:bob@example.com>
From: Alice <sip:alice@example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.example.com>
Content-Type: application/sdp
Content-Length: 5

v=0
"""


# The mandatory request headers (RFC 3261 section 8.1.1), so strict mode sees only the oddity.
FULL = (
    "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\nMax-Forwards: 70\nTo: <sip:x@y>\n"
    "From: <sip:a@b>;tag=1\nCall-ID: c1\nCSeq: 1 OPTIONS\n"
)


def codes(message: Request | Response) -> set[SipReason]:
    return {d.code for d in message.defects}


def test_basic_request_fields() -> None:
    msg = parse_message(crlf(BASIC))
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri_text, msg.version) == ("INVITE", "sip:bob@example.com", "SIP/2.0")
    assert msg.body == b"v=0\r\n"
    assert msg.defects == ()
    assert msg.to_bytes() == crlf(BASIC)
    assert msg.start_line == "INVITE sip:bob@example.com SIP/2.0"


def test_header_offsets_point_at_the_raw_line() -> None:
    raw = crlf(BASIC)
    msg = parse_message(raw)
    for header in msg.headers:
        line = raw[header.offset : header.offset + header.length]
        assert line.decode().startswith(header.name + ":")


def test_status_line() -> None:
    msg = parse_message(crlf("SIP/2.0 180 Ringing\nContent-Length: 0\n\n"))
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason, msg.version) == (180, "Ringing", "SIP/2.0")


COMPACT = [
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("u", "Allow-Events"),
    ("x", "Session-Expires"),
    ("b", "Referred-By"),
    ("a", "Accept-Contact"),
    ("j", "Reject-Contact"),
    ("d", "Request-Disposition"),
    ("y", "Identity"),
]


@pytest.mark.parametrize(("short", "long"), COMPACT, ids=[c[0] for c in COMPACT])
def test_compact_forms_are_looked_up_by_either_name(short: str, long: str) -> None:
    raw = crlf(f"OPTIONS sip:x@example.com SIP/2.0\n{short}: value-{short}\nContent-Length: 0\n\n")
    msg = parse_message(raw)
    assert msg.headers.get(long) == f"value-{short}"
    assert msg.headers.get(long.upper()) == f"value-{short}"
    assert long.lower() in msg.headers
    assert msg.headers[0].canonical_name == long
    assert msg.headers[0].name == short


def test_repeated_headers_keep_order_and_spelling() -> None:
    raw = crlf(
        "OPTIONS sip:x@example.com SIP/2.0\nRoute: <sip:a>\nroute: <sip:b>, <sip:c>\n"
        "ROUTE: <sip:d>\nContent-Length: 0\n\n"
    )
    msg = parse_message(raw)
    assert [h.name for h in msg.headers][:3] == ["Route", "route", "ROUTE"]
    assert msg.headers.get_all("Route") == ["<sip:a>", "<sip:b>, <sip:c>", "<sip:d>"]
    assert msg.headers.values("route") == ["<sip:a>", "<sip:b>", "<sip:c>", "<sip:d>"]


SPLITS = [
    ("quoted-comma", '"Doe, John" <sip:j@x>, <sip:k@x>', ['"Doe, John" <sip:j@x>', "<sip:k@x>"]),
    ("escaped-quote", r'"a \", b" <sip:j@x>, <sip:k@x>', [r'"a \", b" <sip:j@x>', "<sip:k@x>"]),
    ("comma-in-angle", "<sip:j@x;p=a,b>, <sip:k@x>", ["<sip:j@x;p=a,b>", "<sip:k@x>"]),
    ("empty-elements", "<sip:a@x>,,<sip:b@x>", ["<sip:a@x>", "", "<sip:b@x>"]),
]


@pytest.mark.parametrize(("value", "expected"), [s[1:] for s in SPLITS], ids=[s[0] for s in SPLITS])
def test_comma_split_respects_quotes_and_brackets(value: str, expected: list[str]) -> None:
    raw = crlf(f"OPTIONS sip:x@example.com SIP/2.0\nContact: {value}\nl: 0\n\n")
    assert parse_message(raw).headers.values("m") == expected


def test_non_list_headers_keep_commas() -> None:
    raw = crlf('OPTIONS sip:x@example.com SIP/2.0\nFrom: "Doe, J" <sip:a@x>;tag=1\nl: 0\n\n')
    assert parse_message(raw).headers.values("from") == ['"Doe, J" <sip:a@x>;tag=1']


ODD = [
    (
        "lf-only",
        b"OPTIONS sip:x@y SIP/2.0\nTo: <sip:x@y>\nContent-Length: 0\n\n",
        SipReason.LF_LINE_ENDINGS,
        True,
    ),
    (
        "folded",
        crlf("OPTIONS sip:x@y SIP/2.0\n" + FULL + "Subject: a\n  b\nl: 0\n\n"),
        SipReason.HEADER_FOLDING,
        False,
    ),
    (
        "no-space",
        crlf("OPTIONS sip:x@y SIP/2.0\n" + FULL + "Subject:a\nl: 0\n\n"),
        SipReason.NO_SPACE_AFTER_COLON,
        False,
    ),
    (
        "space-before",
        crlf("OPTIONS sip:x@y SIP/2.0\n" + FULL + "Subject  : a\nl: 0\n\n"),
        SipReason.WHITESPACE_BEFORE_COLON,
        False,
    ),
    (
        "non-utf8",
        b"OPTIONS sip:x@y SIP/2.0\r\nSubject: caf\xe9\r\nl: 0\r\n\r\n",
        SipReason.NON_UTF8,
        True,
    ),
    (
        "leading-crlf",
        crlf("\n\nOPTIONS sip:x@y SIP/2.0\n" + FULL + "l: 0\n\n"),
        SipReason.LEADING_CRLF,
        False,
    ),
    (
        "no-terminator",
        crlf("OPTIONS sip:x@y SIP/2.0\nSubject: a\n"),
        SipReason.MISSING_HEADER_TERMINATOR,
        True,
    ),
    (
        "garbage-line",
        crlf("OPTIONS sip:x@y SIP/2.0\nno colon here\nl: 0\n\n"),
        SipReason.MALFORMED_HEADER_LINE,
        True,
    ),
    (
        "bad-name",
        crlf("OPTIONS sip:x@y SIP/2.0\nSub ject: a\nl: 0\n\n"),
        SipReason.INVALID_HEADER_NAME,
        True,
    ),
]


@pytest.mark.parametrize(
    ("raw", "code", "violation"), [o[1:] for o in ODD], ids=[o[0] for o in ODD]
)
def test_odd_input_is_accepted_and_recorded(raw: bytes, code: SipReason, violation: bool) -> None:
    msg = parse_message(raw)
    found = [d for d in msg.defects if d.code is code]
    assert found, msg.defects
    assert found[0].violation is violation
    if violation:
        with pytest.raises(SipParseError) as info:
            parse_message(raw, strict=True)
        assert info.value.reason is code
    else:
        assert parse_message(raw, strict=True).headers == msg.headers


def test_folded_value_is_unfolded_to_single_spaces() -> None:
    msg = parse_message(crlf("OPTIONS sip:x@y SIP/2.0\nSubject: one\n   two\n\tthree\nl: 0\n\n"))
    assert msg.headers.get("subject") == "one two three"


def test_non_utf8_round_trips_through_surrogateescape() -> None:
    raw = b"OPTIONS sip:x@y SIP/2.0\r\nSubject: caf\xe9\r\nl: 0\r\n\r\n"
    value = parse_message(raw).headers.get("subject")
    assert value is not None
    assert value.encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_utf8_keeps_byte_offsets() -> None:
    raw = "OPTIONS sip:x@y SIP/2.0\r\nSubject: caf\u00e9\r\nTo: <sip:a@b>\r\nl: 0\r\n\r\n".encode()
    msg = parse_message(raw)
    to = msg.headers.fields("to")[0]
    assert raw[to.offset : to.offset + 3] == b"To:"


BODY = [
    ("exact", "Content-Length: 3", b"abc", b"abc", None),
    ("trailing", "Content-Length: 1", b"abc", b"a", SipReason.TRAILING_DATA),
    ("short", "Content-Length: 9", b"abc", b"abc", SipReason.CONTENT_LENGTH_EXCEEDS_DATA),
    ("missing", "X: y", b"abc", b"abc", SipReason.MISSING_CONTENT_LENGTH),
    ("negative", "Content-Length: -1", b"abc", b"abc", SipReason.INVALID_CONTENT_LENGTH),
    ("words", "Content-Length: five", b"abc", b"abc", SipReason.INVALID_CONTENT_LENGTH),
    ("unicode-digit", "Content-Length: \u00b2", b"abc", b"abc", SipReason.INVALID_CONTENT_LENGTH),
]


@pytest.mark.parametrize(
    ("header", "body", "expected", "code"), [b[1:] for b in BODY], ids=[b[0] for b in BODY]
)
def test_body_framing(header: str, body: bytes, expected: bytes, code: SipReason | None) -> None:
    raw = crlf(f"OPTIONS sip:x@y SIP/2.0\n{header}\n\n") + body
    msg = parse_message(raw)
    assert msg.body == expected
    assert msg.body_offset == len(raw) - len(body)
    if code is not None:
        assert code in codes(msg)


FATAL = [
    ("empty", b"", SipReason.EMPTY),
    ("only-crlf", b"\r\n\r\n", SipReason.EMPTY),
    ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", SipReason.INVALID_START_LINE),
    ("two-words", b"INVITE sip:x\r\n\r\n", SipReason.INVALID_START_LINE),
    ("bad-method", b"INV(TE sip:x SIP/2.0\r\n\r\n", SipReason.INVALID_START_LINE),
    ("status-2-digits", b"SIP/2.0 20 OK\r\n\r\n", SipReason.INVALID_STATUS_LINE),
    ("status-099", b"SIP/2.0 099 Hm\r\n\r\n", SipReason.INVALID_STATUS_LINE),
    ("status-letters", b"SIP/2.0 2OO OK\r\n\r\n", SipReason.INVALID_STATUS_LINE),
    (
        "too-large",
        b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * (MAX_MESSAGE_BYTES // 6),
        SipReason.MESSAGE_TOO_LARGE,
    ),
    (
        "too-many",
        b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * (MAX_HEADER_COUNT + 1) + b"\r\n",
        SipReason.TOO_MANY_HEADERS,
    ),
    (
        "long-line",
        b"OPTIONS sip:x SIP/2.0\r\nX: " + b"y" * MAX_HEADER_LINE_BYTES + b"\r\n\r\n",
        SipReason.HEADER_LINE_TOO_LONG,
    ),
    (
        "long-start",
        b"OPTIONS sip:" + b"x" * 9000 + b" SIP/2.0\r\n\r\n",
        SipReason.START_LINE_TOO_LONG,
    ),
]


@pytest.mark.parametrize(("raw", "reason"), [f[1:] for f in FATAL], ids=[f[0] for f in FATAL])
def test_fatal_inputs_raise_with_reason(raw: bytes, reason: SipReason) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(raw)
    assert info.value.reason is reason


def test_limits_allow_exactly_the_maximum_header_count() -> None:
    raw = b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * MAX_HEADER_COUNT + b"\r\n"
    assert len(parse_message(raw).headers) == MAX_HEADER_COUNT


def test_bytearray_and_memoryview_input() -> None:
    raw = crlf(BASIC)
    assert parse_message(bytearray(raw)).raw == raw
    assert parse_message(memoryview(raw)).raw == raw


def test_strict_rejects_violation_but_accepts_clean_message() -> None:
    assert parse_message(crlf(BASIC), strict=True).defects == ()
    bad = crlf(BASIC.replace("CSeq: 314159 INVITE", "CSeq: 314159 BYE"))
    with pytest.raises(SipParseError) as info:
        parse_message(bad, strict=True)
    assert info.value.reason is SipReason.CSEQ_METHOD_MISMATCH


def test_messages_are_frozen_values() -> None:
    msg = parse_message(crlf(BASIC))
    assert isinstance(msg, Request)
    with pytest.raises(AttributeError):
        msg.method = "BYE"  # type: ignore[misc]
    assert msg == parse_message(crlf(BASIC))


def test_parse_error_text_shows_bytes_that_are_not_utf8_as_escapes() -> None:
    """A status line with a byte that is not UTF-8 (a fuzzed capture's): the error text names
    it as ``\\x85``, and can be encoded strictly (printed, put in JSON) without a traceback."""
    with pytest.raises(SipParseError) as caught:
        parse_message(b"SIP/2.0 \x8500 Trying\r\nVia: SIP/2.0/UDP h\r\n\r\n")
    assert "\\x85" in caught.value.detail
    caught.value.detail.encode("utf-8")
    str(caught.value).encode("utf-8")
