"""``scan_keys``: the call tracker's fast read of a message, checked against the full parser.

The contract: ``scan_keys`` returns None (the caller then parses in full) or exactly the keys
``keys_of(parse_message(data))`` gives, and ``parse_message`` does not raise on that input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sip import SipParseError, parse_message
from sip.keys import MessageKeys, keys_of, scan_keys
from sip.limits import MAX_HEADER_COUNT
from tests.sip.conftest import SIP_FIXTURES, crlf

INVITE = crlf(
    "INVITE sip:+12025550199@bravo.example;user=phone SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-0\n"
    "Via: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK-7\n"
    "From: <sip:+12025550101@alpha.example;user=phone>;tag=f1\n"
    "To: <sip:+12025550199@bravo.example;tag=inuri>\n"
    "Call-ID: abc@alpha.example\n"
    "CSeq: 1 INVITE\n"
    "Identity: aaa.bbb.ccc;info=<https://cert.example/a.pem>;ppt=shaken\n"
    "Identity: ddd.eee.fff;info=<https://cert.example/b.pem>;ppt=div\n"
    "Content-Length: 0\n\n"
)
RESPONSE = crlf(
    "SIP/2.0 180 Ringing\n"
    "v: SIP/2.0/UDP 192.0.2.1:5060 ; BRANCH = z9hG4bK-1\n"
    "f: <sip:a@alpha.example>;tag=f1\n"
    "t: <sip:b@bravo.example>;tag=t9\n"
    "i: abc@alpha.example\n"
    "CSeq: 1 INVITE\n"
    "l: 0\n\n"
)


def _agrees(data: bytes) -> MessageKeys | None:
    """scan_keys(data), after checking it against the full parser (the module contract)."""
    keys = scan_keys(data)
    if keys is not None:
        assert keys == keys_of(parse_message(data)), data
    return keys


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            INVITE,
            MessageKeys(
                "INVITE",
                None,
                "abc@alpha.example",
                (1, "INVITE"),
                None,
                "z9hG4bK-1",
                (
                    "aaa.bbb.ccc;info=<https://cert.example/a.pem>;ppt=shaken",
                    "ddd.eee.fff;info=<https://cert.example/b.pem>;ppt=div",
                ),
            ),
            id="invite-two-identities-tag-inside-uri",
        ),
        pytest.param(
            RESPONSE,
            MessageKeys(None, 180, "abc@alpha.example", (1, "INVITE"), "t9", "z9hG4bK-1", ()),
            id="response-compact-forms-spaced-params",
        ),
        pytest.param(
            crlf("BYE sip:b@x SIP/2.0\nCALL-ID : one\ncall-id: two\nCseq:  2   BYE \n\n"),
            MessageKeys("BYE", None, "one", (2, "BYE"), None, "", ()),
            id="first-call-id-wins-any-case-space-before-colon",
        ),
        pytest.param(
            crlf("OPTIONS sip:b@x SIP/2.0\nX-Call-ID: no\nCSeq: x OPTIONS\ny:\n\n"),
            MessageKeys("OPTIONS", None, None, None, None, "", ("",)),
            id="lookalike-name-bad-cseq-empty-identity",
        ),
        pytest.param(
            crlf("SIP/2.0 200\nCall-ID: c\n\n"),
            MessageKeys(None, 200, "c", None, None, "", ()),
            id="status-line-without-reason",
        ),
    ],
)
def test_keys_of_plain_messages(data: bytes, expected: MessageKeys) -> None:
    assert _agrees(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            INVITE.replace(b"Content-Length", b"X-Note: a\rb\r\nContent-Length"),
            id="bare-cr-in-another-header",
        ),
        pytest.param(INVITE.replace(b"sip:+1202", b"sip:+1\r202", 1), id="bare-cr-in-uri"),
    ],
)
def test_bare_cr_outside_the_keys_is_scanned(data: bytes) -> None:
    assert _agrees(data) is not None  # no effect on the keys: the fast path takes it


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(INVITE.replace(b"\r\n", b"\n"), id="lf-only"),
        pytest.param(INVITE.replace(b"CSeq: 1", b"CSeq:\r\n 1"), id="folded-cseq"),
        pytest.param(INVITE.replace(b"Call-ID: abc", b"Call-ID: a\rbc"), id="bare-cr"),
        pytest.param(INVITE.replace(b"tag=inuri>", b"tag=inuri>\r"), id="bare-cr-ending-to"),
        pytest.param(INVITE.replace(b"z9hG4bK-7", b"z9hG4bK-7\r "), id="bare-cr-in-via"),
        pytest.param(INVITE.replace(b"\r\nCSeq", b"\nCSeq"), id="one-bare-lf"),
        pytest.param(INVITE.replace(b"To: <", b"To: \xc3\xa9 <"), id="non-ascii"),
        pytest.param(b"\r\n" + INVITE, id="leading-crlf"),
        pytest.param(INVITE[: INVITE.index(b"\r\n\r\n")], id="no-blank-line"),
        pytest.param(INVITE.replace(b"INVITE sip", b"INV(TE sip", 1), id="method-not-token"),
        pytest.param(INVITE.replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1), id="other-version"),
        pytest.param(INVITE.replace(b"INVITE sip:", b"INVITE  sip:", 1), id="double-space"),
        pytest.param(RESPONSE.replace(b"180", b"099", 1), id="status-below-100"),
        pytest.param(RESPONSE.replace(b"180", b"18x", 1), id="status-not-digits"),
        pytest.param(b"", id="empty"),
        pytest.param(b"garbage", id="garbage"),
        pytest.param(
            INVITE.replace(b"Content-Length", b"X: " + b"a" * 9000 + b"\r\nContent-Length"),
            id="longer-than-any-line-limit",
        ),
        pytest.param(
            INVITE.replace(b"Content-Length", b"X: 1\r\n" * 300 + b"Content-Length"),
            id="too-many-headers",
        ),
    ],
)
def test_unusual_messages_are_left_to_the_parser(data: bytes) -> None:
    assert scan_keys(data) is None


@pytest.mark.parametrize("extra", [0, 1], ids=["at-the-limit", "one-over"])
def test_header_count_limit_of_short_lines(extra: int) -> None:
    data = crlf("OPTIONS sip:b@x SIP/2.0\n" + "i:1\n" * (MAX_HEADER_COUNT + extra) + "\n")
    if extra:
        with pytest.raises(SipParseError):
            parse_message(data)
        assert scan_keys(data) is None
    else:
        assert _agrees(data) == MessageKeys("OPTIONS", None, "1", None, None, "", ())


def test_keys_of_parsed_message_equal_the_scan_on_fixtures() -> None:
    scanned = 0
    for path in sorted(SIP_FIXTURES.rglob("*.sip")):
        scanned += _agrees(path.read_bytes()) is not None
    assert scanned > 0  # the common shape is actually taken by the fast path


def test_identity_values_split_like_the_parser() -> None:
    data = INVITE.replace(
        b"Identity: aaa.bbb.ccc", b"Identity: x.y.z;info=<https://a/b>, aaa.bbb.ccc"
    )
    keys = _agrees(data)
    assert keys is not None
    assert keys.identity_values == parse_message(data).identity_values
    assert len(keys.identity_values) == 3


_LINES = st.sampled_from(
    [
        b"Via: SIP/2.0/UDP h;branch=z9hG4bK-a",
        b"v:SIP/2.0/TCP h;branch=b2,SIP/2.0/UDP g;branch=b3",
        b"VIA :  SIP/2.0/UDP h ;Branch= c1 ",
        b"To: <sip:b@x;tag=u>;tag=t1",
        b"t: sip:b@x",
        b"TO:\t<sip:b@x>; TAG = t2",
        b"Call-ID: c1@x",
        b"i:c2",
        b"call-id :  c3  ",
        b"CSeq: 1 INVITE",
        b"cseq:2 BYE",
        b"CSeq: 3",
        b"Identity: a.b.c;info=<https://x/y>",
        b"y: d.e.f, g.h.i",
        b"Identity:  j.k.l ",
        b"y:",
        b"From: <sip:a@x>;tag=f",
        b"Content-Length: 0",
        b"no colon here",
        b": empty name",
        b" folded continuation",
        b"\tfolded",
        b"X-\xff: non-ascii",
        b"Bad\rCR: x",
        b"Call-ID: c4\rx",
        b"t: <sip:b@x>;tag=t3\r",
        b"X-Note: \r",
    ]
)
_STARTS = st.sampled_from(
    [
        b"INVITE sip:b@x SIP/2.0",
        b"ACK sip:b@x SIP/2.0",
        b"SIP/2.0 200 OK",
        b"SIP/2.0 183 Session Progress",
        b"SIP/2.0 487",
        b"X-METHOD sip:b@x SIP/2.0",
        b"SIP/2.0 20 OK",
        b"GET / HTTP/1.1",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    start=_STARTS,
    lines=st.lists(_LINES, max_size=12),
    ends=st.sampled_from([b"\r\n", b"\n"]),
    tail=st.sampled_from([b"\r\n\r\n", b"\r\n", b"\n\n", b"\r\n\r\nbody", b""]),
)
def test_scan_agrees_with_parser_on_generated_messages(
    start: bytes, lines: list[bytes], ends: bytes, tail: bytes
) -> None:
    data = ends.join([start, *lines]) + tail
    try:
        parsed = parse_message(data)
    except SipParseError:
        assert scan_keys(data) is None
        return
    keys = scan_keys(data)
    assert keys is None or keys == keys_of(parsed)
    assert keys_of(parsed).identity_values == parsed.identity_values


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
@example(INVITE)
@example(RESPONSE)
def test_scan_never_raises_and_agrees_on_any_bytes(data: bytes) -> None:
    _agrees(data)


@pytest.mark.realworld
def test_scan_agrees_with_parser_on_real_messages(realworld: Path) -> None:
    for path in sorted((realworld / "sip").iterdir()):
        _agrees(path.read_bytes())
