"""The parser's one promise: any input gives a message or SipParseError, nothing else."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sip import Request, Response, SipParseError, parse_message
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
