"""The parser's one promise: any input gives a message or SipParseError, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from sip import Request, Response, SipParseError, parse_message
from sip.build import plain_head, response_fields
from sip.message import _ACCESSORS
from tests.sip.conftest import SIP_FIXTURES

SEEDS = [
    (SIP_FIXTURES / "invite_identity.sip").read_bytes(),
    (SIP_FIXTURES / "rfc4475" / "wsinv.sip").read_bytes(),
    (SIP_FIXTURES / "rfc4475" / "intmeth.sip").read_bytes(),
    (SIP_FIXTURES / "rfc4475" / "unreason.sip").read_bytes(),
]
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b":",
    b";",
    b",",
    b'"',
    b"<",
    b">",
    b"\\",
    b"@",
    b"%",
    b"\xff",
    b"\x00",
    b"SIP/2.0",
    b"sip:",
    b"tel:",
    b"=",
    b"/",
    b"?",
    b"[",
    b"]",
    b"9" * 30,
]


def check(data: bytes, strict: bool) -> None:
    try:
        msg = parse_message(data, strict=strict)
    except SipParseError:
        return
    assert isinstance(msg, Request | Response)
    # Every lazy accessor must also hold the promise.
    for _key, accessor in _ACCESSORS:
        accessor(msg)
    if isinstance(msg, Request):
        _ = msg.uri
    _ = (msg.defects, msg.start_line, msg.identity_values, msg.media_type, msg.content_length)
    assert msg.to_bytes() == data


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000), st.booleans())
@example(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h:\xb2\r\n\r\n", False)
@example(b"OPTIONS sip:x SIP/2.0\r\nCSeq: \xd9\xa3 OPTIONS\r\n\r\n", False)
def test_arbitrary_bytes(data: bytes, strict: bool) -> None:
    check(data, strict)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.integers(min_value=0, max_value=3))
        if action == 0:
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif action == 1:
            del data[pos : pos + draw(st.integers(min_value=1, max_value=40))]
        elif action == 2 and pos < len(data):
            data[pos] = draw(st.integers(min_value=0, max_value=255))
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=20))
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(mutated(), st.booleans())
def test_mutated_messages(data: bytes, strict: bool) -> None:
    check(data, strict)


def check_plain_head(data: bytes) -> bool:
    """``plain_head`` (the shedding server's read of a head without the parse) never raises,
    and where it reads a head the parse succeeds and reads the same fields."""
    head = plain_head(data)
    if head is None:
        return False
    message = parse_message(data)
    assert isinstance(message, Request)
    assert (head.method, head.uri_text) == (message.method, message.start_line.split(" ")[1])
    assert head.fields == response_fields(message)
    assert head.require == ("require" in message.headers)
    return True


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_plain_head_on_arbitrary_bytes(data: bytes) -> None:
    check_plain_head(data)


@settings(max_examples=600, deadline=None)
@given(mutated())
def test_plain_head_on_mutated_messages(data: bytes) -> None:
    event(f"plain head: {check_plain_head(data)}")


# Every SIP fixture (calls, RFC 4475 torture messages): dozens have a plain head.
EVERY_FIXTURE = sorted((SIP_FIXTURES.parent).rglob("*.sip"))


@pytest.mark.parametrize("path", EVERY_FIXTURE, ids=lambda p: p.name)
def test_plain_head_on_every_fixture(path: Path) -> None:
    check_plain_head(path.read_bytes())  # dozens read as plain (the count is checked below)


def test_many_fixtures_have_a_plain_head() -> None:
    assert sum(check_plain_head(path.read_bytes()) for path in EVERY_FIXTURE) >= 30


@st.composite
def lightly_mutated(draw: st.DrawFn) -> bytes:
    """A fixture changed in one or two places: most keep a plain head, the edits land in it."""
    data = bytearray(draw(st.sampled_from(EVERY_FIXTURE)).read_bytes())
    head_end = max(1, data.find(b"\r\n\r\n"))
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        pos = draw(st.integers(min_value=0, max_value=head_end))
        if draw(st.booleans()):
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        else:
            del data[pos : pos + draw(st.integers(min_value=1, max_value=6))]
    return bytes(data)


@settings(max_examples=1500, deadline=None)
@given(lightly_mutated())
def test_plain_head_on_lightly_mutated_fixtures(data: bytes) -> None:
    event(f"plain head: {check_plain_head(data)}")
