"""The SIP verification server's one-pass answer building against the lookups it replaces.

``sip.build.response_fields`` reads the Via, From, To, Call-ID and CSeq values a response
copies with scans in C over the request's header keys; ``sip.message.serialise_message``
checks a head for line breaks once instead of per header, and ``sip.response_bytes`` writes
the lines of a response straight from the copied values. Each must give exactly what the lookups and
the per-header check give: the same values, the same bytes, the same error. RFC 3261
sections 7, 8.1.1, 8.2.6.2 and 20.14.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sip import Request, parse_message, response_bytes
from sip.build import _response_headers, response_fields
from sip.headers import _header_key
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


def _scan_fields(request: Request) -> tuple[object, ...]:
    """The fields by their definition: one pass over the lines in order, the first of each
    (every Via), keys as ``sip.headers.header_key`` defines them."""
    via: list[str] = []
    first: dict[str, str] = {}
    for name, value in request.headers.items():
        key = _header_key(name)
        if key == "via":
            via.append(value)
        elif key in ("from", "to", "call-id", "cseq"):
            first.setdefault(key, value)
    return (tuple(via), first.get("from"), first.get("to"), first.get("call-id"), first.get("cseq"))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12))
@example([("Via", "a"), ("v", "b"), ("f", "1"), ("From", "2"), ("i", "c"), ("CSeq", "1 X")])
@example([("X-Via", "a"), ("VIA", "b")])
def test_response_fields_are_the_pass_over_the_lines(headers: list[tuple[str, str]]) -> None:
    assert tuple(response_fields(_request(headers))) == _scan_fields(_request(headers))


# From/To values with and without a tag, and Via/Call-ID/CSeq lines, for the requests a
# response is written from.
_PARTIES = st.sampled_from(
    ['"Alpha Caller" <sip:+12025550101@alpha.example;user=phone>;tag=f1', "<sip:a@b>",
     "<sip:a@b>;tag=", "sip:a@b;tag=x;y", "Bob <sip:a@b;lr>;TAG=z", '"a\\"b" <tel:+1>', "x y"]
)  # fmt: skip
_COPIED = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["Via", "v"]), _VALUES),
        st.tuples(st.sampled_from(["From", "f", "To", "t"]), _PARTIES),
        st.tuples(st.sampled_from(["Call-ID", "i", "CSeq"]), _VALUES),
        st.tuples(st.sampled_from(["Contact", "Identity", "Content-Length"]), _VALUES),
    ),
    max_size=10,
)


def _response_outcome(
    request: Request,
    status: int,
    reason: str,
    extra: list[tuple[str, str]],
    to_tag: str | None,
    body: bytes,
    fast: bool,
) -> object:
    try:
        if fast:
            return response_bytes(request, status, reason, extra, to_tag=to_tag, body=body)
        start = f"SIP/2.0 {status} {reason}"
        return serialise_message(start, _response_headers(request, status, extra, to_tag), body)
    except ValueError as exc:
        return ("ValueError", str(exc))


@settings(max_examples=600, deadline=None)
@given(
    _COPIED,
    st.sampled_from([100, 180, 302, 403, 487, 503]),
    st.one_of(st.just("Moved Temporarily"), _HEAD_TEXT),
    st.lists(st.tuples(_HEAD_NAMES, st.one_of(_VALUES, _HEAD_TEXT)), max_size=5),
    st.sampled_from([None, "abc"]),
    st.sampled_from([b"", b"v=0\r\n"]),
)
@example([("To", "<sip:a@b>")], 302, "Moved Temporarily", [("Reason", "a\nb")], None, b"")
@example([("To", "<sip:a@b>")], 302, "Moved\r\nTemporarily", [("l", "5")], None, b"")
def test_response_bytes_are_the_serialised_response_headers(
    headers: list[tuple[str, str]],
    status: int,
    reason: str,
    extra: list[tuple[str, str]],
    to_tag: str | None,
    body: bytes,
) -> None:
    """``response_bytes`` writes its lines straight from the copied values: the same bytes
    (or the same error) as serialising the list of pairs ``response_to`` builds."""
    request = _request(headers)
    args = (status, reason, extra, to_tag, body)
    assert _response_outcome(request, *args, True) == _response_outcome(request, *args, False)
