"""The SIP verification server's one-pass answer building against the lookups it replaces.

``sip.build.response_fields`` reads the Via, From, To, Call-ID and CSeq values a response
copies in one pass over the request's headers; ``sip.message.serialise_message`` checks a
head for line breaks once instead of per header. Each must give exactly what the lookups and
the per-header check give: the same values, the same bytes, the same error. RFC 3261
sections 7, 8.1.1, 8.2.6.2 and 20.14.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sip import Request, parse_message
from sip.build import response_fields
from sip.message import serialise_message

# Names in every spelling a lookup must treat alike (long, compact, odd case), and others.
_NAMES = st.sampled_from(
    ["Via", "v", "VIA", "From", "f", "from", "To", "t", "TO", "Call-ID", "i", "call-id",
     "CSeq", "cseq", "Contact", "m", "Max-Forwards", "Identity", "y", "X-Via"]
)  # fmt: skip
_VALUES = st.sampled_from(
    ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1", "SIP/2.0/UDP a;branch=x, SIP/2.0/TCP b",
     "<sip:a@b>;tag=1", '"A" <sip:+12025550101@a.example>', "1 INVITE", "abc@host", "70", "x"]
)  # fmt: skip


def _request(headers: list[tuple[str, str]]) -> Request:
    lines = ["INVITE sip:+12025550199@b.example SIP/2.0", *(f"{n}: {v}" for n, v in headers)]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=10))
@example([("Via", "a"), ("v", "b"), ("f", "1"), ("From", "2"), ("i", "c"), ("CSeq", "1 X")])
@example([])
def test_response_fields_are_the_header_lookups(headers: list[tuple[str, str]]) -> None:
    request = _request(headers)
    h = request.headers
    fields = response_fields(request)
    assert fields.via == tuple(h.get_all("via"))
    assert fields.from_ == h.get("from")
    assert fields.to == h.get("to")
    assert fields.call_id == h.get("call-id") == request.call_id
    assert fields.cseq == h.get("cseq")
    assert fields.complete == all(n in h for n in ("via", "from", "to", "call-id", "cseq"))
    assert response_fields(request) is fields  # remembered with the parsed fields


_HEAD_TEXT = st.text(st.sampled_from(list("aB: ;=\r\n\t\u00e9")), max_size=6)
_HEAD_NAMES = st.one_of(
    st.sampled_from(["Via", "From", "To", "Call-ID", "CSeq", "Content-Length", "l", "L",
                     "content-LENGTH", "Contact", "Reason"]),
    _HEAD_TEXT,
)  # fmt: skip


def _per_header(start_line: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """The definition: every header checked on its own (``serialise_message`` as it was)."""
    lines = [start_line]
    for name, value in headers:
        if name.lower() in ("content-length", "l"):
            continue
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"line break in header {name!r}")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + body


def _outcome(start: str, headers: list[tuple[str, str]], body: bytes, fast: bool) -> object:
    try:
        return (serialise_message if fast else _per_header)(start, headers, body)
    except ValueError as exc:
        return ("ValueError", str(exc))


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.just("SIP/2.0 302 Moved Temporarily"), _HEAD_TEXT),
    st.lists(st.tuples(_HEAD_NAMES, st.one_of(_VALUES, _HEAD_TEXT)), max_size=8),
    st.sampled_from([b"", b"v=0\r\n"]),
)
@example("SIP/2.0 200 OK", [("Content-Length", "a\rb"), ("To", "x")], b"")
@example("SIP/2.0 200\r OK", [("To", "x")], b"")
@example("SIP/2.0 200 OK", [("Reason", "a\nb")], b"")
def test_serialise_checks_as_each_header_would(
    start: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    assert _outcome(start, headers, body, True) == _outcome(start, headers, body, False)


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nb"], ids=["cr", "lf", "crlf"])
def test_line_break_in_a_header_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        serialise_message("SIP/2.0 200 OK", [("To", "x"), ("Reason", value)], b"")
