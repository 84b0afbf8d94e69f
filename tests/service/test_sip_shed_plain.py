"""The 503 of an INVITE the server has no room for, read from its bytes, against the parse.

``sip.build.plain_head`` reads the request line and the fields a response copies from a
request's bytes when its head has the plain shape, and ``SipServerCore.receive(...,
shed=True)`` answers such an INVITE 503 from them (``_shed_plain``) instead of parsing it.
Every datagram must get exactly what the parse gives: the same decision, the same bytes, the
same transaction stored and the same counters; whatever the scan cannot read exactly (compact
or odd spellings, folded lines, several Via values, bare LF or CR, non-ASCII, Require, a
tagged To, an RFC 2543 branch, a bad Content-Length...) is left to the parse. RFC 3261
sections 7, 8.2, 17.2.3, 18.3 and 21.5.4.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import cast

from hypothesis import example, given, settings
from hypothesis import strategies as st

from analyzer.sipserver import Action, Decision, SipServerCore
from sip import Request, SipReason, parse_message
from sip.build import fields_response_bytes, plain_head, response_bytes, response_fields
from tests.service.invites import FIXTURE_AT, build_invite, fixture_call, with_branch
from tests.service.test_sip_fastpaths import name_addrs, via_values
from tests.sip.test_fuzz import lightly_mutated

# Parse defects that turn a request into a 400 or 505 before the server sheds it.
_CHECKED_DEFECTS = frozenset(
    {
        SipReason.UNSUPPORTED_VERSION,
        SipReason.MISSING_HEADER_TERMINATOR,
        SipReason.CONTENT_LENGTH_EXCEEDS_DATA,
        SipReason.INVALID_CONTENT_LENGTH,
        SipReason.CONFLICTING_CONTENT_LENGTH,
    }
)
BODY = "v=0\r\ns=-\r\n"


class ParsedCore(SipServerCore):
    """The reference: every datagram parsed, as before the scan."""

    def _shed_plain(self, data: bytes, at: datetime) -> Decision | None:
        return None


_REQUEST_LINES = st.sampled_from(
    [
        "INVITE sip:+12025550199@bravo.example;user=phone SIP/2.0",
        "INVITE tel:+12025550199 SIP/2.0",
        "INVITE SIPS:a@b SIP/2.0",
        "INVITE  sip:a@b SIP/2.0",
        "INVITE sip:a@b  SIP/2.0",
        "INVITE <sip:a@b> SIP/2.0",
        "INVITE http://a.example/ SIP/2.0",
        "INVITE sip:a b SIP/2.0",
        "INVITE\tsip:a@b SIP/2.0",
        "INVITE sip:a@b SIP/2.1",
        "INVITE sip:a@b sip/2.0",
        "INVITE sip:a@b",
        "INVITEX sip:a@b SIP/2.0",
        "INVITE sip:a@b SIP/2.0 ",
    ]
)
_SPELLINGS = {
    "Via": ["Via", "via", "VIA", "v", "V", "Via ", "Via\t", "Vias"],
    "From": ["From", "FROM", "f", "From ", "Fromx"],
    "To": ["To", "to", "t", "T", "To\t"],
    "Call-ID": ["Call-ID", "call-id", "i", "CALL-ID ", "Call-Id"],
    "CSeq": ["CSeq", "cseq", "CSEQ", "CSeq  "],
    "Content-Length": ["Content-Length", "content-length", "l", "L", "Content-Length "],
}
_CALL_IDS = st.sampled_from(["a1b2c3d4@alpha.example", "x", "", "a b", "a\x00b", "a,b;c=d"])
_CSEQS = st.sampled_from(["1 INVITE", "1 invite", "2 ACK", "x INVITE", "1  INVITE", "", "1"])
_BLANKS = st.sampled_from(["", " ", "\t", "  ", " \t"])
_PLAIN_LINE = "INVITE sip:+12025550199@bravo.example;user=phone SIP/2.0"
_EXTRAS = st.sampled_from(
    [
        "Require: 100rel",
        "require:timer",
        "Supported: timer",
        "Via: SIP/2.0/UDP second;branch=z9hG4bK2",
        "v: SIP/2.0/UDP second;branch=z9hG4bK2",
        "To: <sip:b@c>;tag=x",
        "X-Odd : yes",
        "NoColonLine",
        ": empty name",
        "l: 0",
        "Content-Length: 99999",
        "X-Folded: a\r\n b",
    ]
)


# What `invites` may change in the plain INVITE, a few at a time: each one alone can decide
# between the scan and the parse, or between 503 and another answer.
_CHANGES = (
    "request_line", "via", "from", "to", "call_id", "cseq", "spelling", "blanks", "copies",
    "extras", "body", "length", "lengths", "damage",
)  # fmt: skip
_DAMAGES = ["lf", "fold", "tabfold", "cr", "lf1", "utf8", "latin1", "nohead", "crlf0"]


@st.composite
def invites(draw: st.DrawFn) -> bytes:
    """INVITEs of the sipp/SBC shape with up to three of `_CHANGES` that matter to the scan or
    the parse (none: the plain INVITE the scan must read)."""
    changes = draw(st.sets(st.sampled_from(_CHANGES), max_size=3))

    def pick(change: str, plain: object, other: st.SearchStrategy[object]) -> object:
        return draw(other) if change in changes else plain

    vias = st.one_of(
        via_values(),
        st.sampled_from(["old-style", "Z9HG4BK-1", "z9hG4bK"]).map(
            lambda branch: f"SIP/2.0/UDP 127.0.0.1:5061;branch={branch}"
        ),
    )
    values = {
        "Via": pick("via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1", vias),
        "From": pick(
            "from",
            '"Alpha Caller" <sip:+12025550101@alpha.example;user=phone>;tag=1SIPpTag01',
            name_addrs(),
        ),
        "To": pick("to", "<sip:+12025550199@bravo.example;user=phone>", name_addrs()),
        "Call-ID": pick("call_id", "1-4242@127.0.0.1", _CALL_IDS),
        "CSeq": pick("cseq", "1 INVITE", _CSEQS),
    }
    lines = []
    for name in ("Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Contact"):
        if name == "Max-Forwards":
            lines.append("Max-Forwards: 70")
            continue
        if name == "Contact":
            lines.append("Contact: <sip:sipp@127.0.0.1:5061;transport=UDP>")
            continue
        for _ in range(cast(int, pick("copies", 1, st.sampled_from([1, 1, 0, 2])))):
            spelling = pick("spelling", name, st.sampled_from([name, *_SPELLINGS[name]]))
            before, after = (pick("blanks", " ", _BLANKS), pick("blanks", "", _BLANKS))
            lines.append(f"{spelling}:{before}{values[name]}{after}")
    lines.append("Identity: eyJh.eyJi.c2ln;info=<https://a.example/x.pem>;alg=ES256")
    for extra in cast(list[str], pick("extras", [], st.lists(_EXTRAS, min_size=1, max_size=2))):
        lines.insert(draw(st.integers(0, len(lines))), extra)
    body = cast(str, pick("body", BODY, st.sampled_from(["", BODY + "trailing"])))
    length = pick("length", str(len(BODY)), st.sampled_from(["0", "abc", "9999", "", "1234567890"]))
    for _ in range(cast(int, pick("lengths", 1, st.sampled_from([0, 2])))):
        spelling = pick("spelling", "Content-Length", st.sampled_from(_SPELLINGS["Content-Length"]))
        lines.append(f"{spelling}: {length}")
    text = "\r\n".join([cast(str, pick("request_line", _PLAIN_LINE, _REQUEST_LINES)), *lines])
    text += "\r\n\r\n" + body
    damage = pick("damage", "", st.sampled_from(_DAMAGES))
    if damage == "lf":
        text = text.replace("\r\n", "\n")
    elif damage == "fold":
        text = text.replace("\r\nCall-ID:", "\r\n Call-ID:", 1).replace(";user", "\r\n ;user", 1)
    elif damage == "tabfold":
        text = text.replace("CSeq: ", "CSeq:\r\n\t", 1)
    elif damage == "cr":
        text = text.replace("Max-Forwards: 70", "Max-Forwards: 7\r0", 1)
    elif damage == "lf1":
        text = text.replace("Max-Forwards: 70\r\n", "Max-Forwards: 70\n", 1)
    elif damage == "utf8":
        text = text.replace("Alpha", "\u00c5lpha", 1)
    elif damage == "nohead":
        text = text.split("\r\n\r\n", 1)[0]
    elif damage == "crlf0":
        text = text.replace("\r\n\r\n", "\r\n\r\n\r\n", 1)
    data = text.encode("utf-8", "surrogateescape")
    if damage == "latin1":
        data = data.replace(b"Alpha", b"\xc5lpha", 1)
    return data


@settings(max_examples=3000, deadline=None)
@given(invites())
@example(fixture_call("alpha_a"))
@example(fixture_call("charlie_c"))
def test_shed_from_bytes_is_the_shed_of_the_parse(data: bytes) -> None:
    """Same decision, bytes, stored transaction and counters as the parse, for a new INVITE,
    its retransmission and the retransmission after the transaction expired."""
    fast, slow = SipServerCore(retry_after_s=7), ParsedCore(retry_after_s=7)
    later = FIXTURE_AT + timedelta(seconds=40)
    for at, shed in ((FIXTURE_AT, True), (FIXTURE_AT, True), (FIXTURE_AT, False), (later, True)):
        assert fast.receive(data, at=at, shed=shed) == slow.receive(data, at=at, shed=shed)
        assert fast.stats == slow.stats
        assert fast.transactions == slow.transactions


@settings(max_examples=3000, deadline=None)
@given(invites())
def test_plain_head_reads_what_the_parse_reads(data: bytes) -> None:
    """Where ``plain_head`` reads a head, the parse succeeds with the same request line,
    `response_fields`, Require presence, and none of the defects the server checks; and
    ``fields_response_bytes`` over them is ``response_bytes`` over the parse."""
    head = plain_head(data)
    if head is None:
        return
    message = parse_message(data)
    assert isinstance(message, Request)
    assert (head.method, head.uri_text) == (message.method, message.uri_text)
    assert head.fields == response_fields(message)
    assert head.require == ("require" in message.headers)
    assert not {defect.code for defect in message.parse_defects} & _CHECKED_DEFECTS
    extra = [("Server", "x"), ("Content-Length", "9")]
    assert fields_response_bytes(head.fields, head.fields.to, 100, "Trying", extra) == (
        response_bytes(message, 100, "Trying", extra)
    )


def test_the_scan_reads_the_usual_invites() -> None:
    """The INVITEs an SBC or sipp sends take the scan, not the parse: the 503 costs a
    fraction of a verification (module docstring of ``service.listen_sip``)."""
    sipp_like = (
        b"INVITE sip:+12025550199@bravo.example;user=phone SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-4242-1-0\r\n"
        b'From: "Alpha Caller" <sip:+12025550101@alpha.example;user=phone>;tag=4242SIPpTag001\r\n'
        b"To: <sip:+12025550199@bravo.example;user=phone>\r\n"
        b"Call-ID: 1-4242@127.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    datagrams = [
        fixture_call("alpha_a"),
        with_branch(fixture_call("charlie_c"), "z9hG4bK-x"),
        build_invite(identities=[], date=None),
        sipp_like,
    ]
    for data in datagrams:
        core = SipServerCore()
        decision = core._shed_plain(data, FIXTURE_AT)
        assert decision is not None
        assert (decision.action, decision.status) == (Action.SHED, 503)
        again = core.receive(data, at=FIXTURE_AT, shed=True)
        assert (again.action, again.response) == (Action.RETRANSMIT, decision.response)


@settings(max_examples=1500, deadline=None)
@given(lightly_mutated())
def test_shed_of_lightly_mutated_fixtures_is_the_shed_of_the_parse(data: bytes) -> None:
    """The same comparison over SIP fixtures (calls, RFC 4475 torture messages) changed in
    one or two places of their heads: shapes the INVITE builder above does not make."""
    fast, slow = SipServerCore(retry_after_s=7), ParsedCore(retry_after_s=7)
    for shed in (True, True, False):
        assert fast.receive(data, at=FIXTURE_AT, shed=shed) == slow.receive(
            data, at=FIXTURE_AT, shed=shed
        )
        assert fast.stats == slow.stats
        assert fast.transactions == slow.transactions
