"""The SIP verification server's shortcuts against the parses they stand in for.

``sip.build.plain_tag`` reads the tag of a plain From/To value without a name-addr parse,
``to_is_tagged`` and ``derive_to_tag`` use it, the core checks the Request-URI scheme from its
first characters and the CSeq method without the CSeq parse, searches each Identity value for
its ``info`` URL from the first ``;``, ``without_tag`` drops a lone tag without the regex, only
a datagram opening with a blank is stripped to tell a keep-alive, and an INVITE the server has
no room for is answered 503 by the core without becoming a job (``receive(..., shed=True)``).
Each must give exactly what the reference gives: the same tag, the same decision, the same
bytes. RFC 3261 sections 8.2.2.1, 12.2, 17.2.3, 19.3, 20.10, 20.16 and 21.5.4; RFC 8224
section 4.1.
"""

from __future__ import annotations

import hashlib

from hypothesis import example, given, settings
from hypothesis import strategies as st

from analyzer.sipanswer import _TAG_PARAM, without_tag
from analyzer.sipserver import (
    _INFO_URL,
    _URI_SCHEME_PREFIX,
    _URI_SCHEMES,
    Action,
    DropReason,
    SipServerCore,
    _cseq_method,
    _info_urls,
)
from sip import Request, derive_to_tag, parse_message, parse_name_addr, response_bytes
from sip.build import plain_tag, plain_top_via, response_fields, to_is_tagged
from tests.service.invites import FIXTURE_AT, build_invite, fixture_call, with_branch

# Characters that matter to a name-addr parse (quotes, escapes, brackets, separators, blanks)
# and a few ordinary ones, so that generated values hit every branch of the grammar.
_TRICKY = st.sampled_from(list('"\\<>;=,: \t@+aAtTgG1.-_%~\x7f\u00e9\u2028'))
_PARAMS = st.lists(
    st.tuples(
        st.sampled_from(["tag", "TAG", "Tag", "user", "x", "", "tag ", " tag"]),
        st.one_of(st.none(), st.sampled_from(["", "abc", "1234SIPpTag001", "a b", '"q"', "x=y"])),
    ),
    max_size=3,
)


@st.composite
def name_addrs(draw: st.DrawFn) -> str:
    """From/To values: the shapes seen on the wire, with tricky characters mixed in."""
    display = draw(
        st.sampled_from(["", '"Alpha Caller" ', '"Al\\"pha" ', "Alpha ", '"a<b>" ', '"x"'])
    )
    uri = draw(
        st.sampled_from(
            [
                "sip:+12025550101@alpha.example;user=phone",
                "tel:+12025550101",
                "sip:a@b",
                "sip:a b@c",
                "sip:a@b?x=y",
                "sip:a@b>",
                "",
            ]
        )
    )
    bracket = draw(st.booleans())
    params = "".join(
        f";{name}" if value is None else f";{name}={value}" for name, value in draw(_PARAMS)
    )
    junk = draw(st.text(_TRICKY, max_size=3))
    where = draw(st.integers(0, 3))
    value = f"{display}<{uri}>{params}" if bracket else f"{uri}{params}"
    return [value, junk + value, value + junk, value.replace(";", junk, 1)][where]


def reference_tag(value: str) -> tuple[bool, str | None]:
    """(parses, tag) through ``parse_name_addr``."""
    parsed = parse_name_addr(value)
    return (parsed is not None, parsed.tag if parsed is not None else None)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(name_addrs(), st.text(_TRICKY, max_size=40)))
@example('"Alpha Caller" <sip:+12025550101@alpha.example;user=phone>;tag=1234SIPpTag001')
@example("<sip:+12025550199@bravo.example;user=phone>")
@example("<sip:a@b>;TAG=x;tag=y")
@example("<sip:a@b>;tag")
@example("<sip:a@b>;tag=")
@example("<sip:a@b>;;tag=x")
@example("  <sip:a@b>;tag=x\t")
@example("Bob <sip:a@b>;tag=x")
def test_plain_tag_is_the_parsed_tag(value: str) -> None:
    plain, tag = plain_tag(value)
    if plain:
        assert reference_tag(value) == (True, tag)


def test_plain_tag_covers_the_common_shapes() -> None:
    """The shortcut is taken for what SBCs and sipp send (or it would save nothing)."""
    sipp_from = '"Alpha Caller" <sip:+12025550101@alpha.example;user=phone>;tag=1234SIPpTag001'
    for value, tag in [
        (sipp_from, "1234SIPpTag001"),
        ("<sip:+12025550199@bravo.example;user=phone>", None),
        ("<tel:+12025550199>;tag=a1b2", "a1b2"),
        ("Bob <sip:bob@example.com>;tag=x;foo", "x"),
        ("<sip:a@b>;Tag=", ""),
    ]:  # fmt: skip
        assert plain_tag(value) == (True, tag)
        assert reference_tag(value) == (True, tag)
    for value in ("sip:a@b;tag=x", '"a\\"b" <sip:a@b>', "<sip:a@b> ;tag=x", "<sip:é@b>"):
        assert plain_tag(value) == (False, None)


def _request(to: str, from_: str) -> Request:
    data = build_invite(identities=[], date=None, branch="z9hG4bK-f", call_id="c1").decode()
    replaced = {"To": f"To: {to}", "From": f"From: {from_}"}
    lines = [replaced.get(line.partition(":")[0], line) for line in data.split("\r\n")]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def reference_to_tag(request: Request) -> str:
    """``derive_to_tag`` as written before the shortcut: through the parsed From."""
    from_tag = request.from_.tag if request.from_ else ""
    branch = request.via[0].branch if request.via else ""
    seed = f"{request.call_id}\x00{from_tag}\x00{branch}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(seed).hexdigest()[:16]


@settings(max_examples=600, deadline=None)
@given(name_addrs(), name_addrs())
def test_to_tag_and_derived_tag_match_the_parse(to: str, from_: str) -> None:
    if "\t" in to + from_ or to.strip() != to or from_.strip() != from_:
        return  # header values are stripped by the parser: those are other values
    request = _request(to, from_)
    to_value = request.headers.get("to")
    parsed = request.to
    expected = None if parsed is None else parsed.tag is not None
    assert to_is_tagged(_request(to, from_)) is expected  # a fresh request: nothing memoised
    assert derive_to_tag(_request(to, from_)) == reference_to_tag(request)
    answer = response_bytes(_request(to, from_), 302, "Moved Temporarily")
    tagged = parse_message(answer).headers.get("to")
    if to_value is not None:
        untagged = parsed is not None and parsed.tag is None
        suffix = f";tag={reference_to_tag(request)}"
        assert tagged == (to_value + suffix if untagged else to_value)


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.text(st.sampled_from(list("sSiIpPtTeElL:<>+1@ ;x")), max_size=12),
        st.sampled_from(
            ["sip:+1@b", "SIPS:a@b", "tel:+1", "Tel:+1;x=y", "<sip:a@b>", "sip:", "tel:"]
        ),
    )
)
def test_uri_scheme_prefix_only_accepts_what_the_parse_accepts(uri: str) -> None:
    if not uri or any(ch in uri for ch in " \t"):
        return  # not a Request-URI token
    data = f"OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\r\n".encode()
    message = parse_message(data)
    assert isinstance(message, Request)
    if _URI_SCHEME_PREFIX.match(message.uri_text):
        assert message.uri is not None
        assert message.uri.scheme in _URI_SCHEMES


def test_shed_invites_get_the_bytes_of_a_shed_job() -> None:
    """``receive(shed=True)`` answers a new INVITE exactly as ``receive`` then ``shed(job)``
    did, stores it for retransmissions, and leaves everything but INVITE as it was."""
    fast, slow = SipServerCore(retry_after_s=7), SipServerCore(retry_after_s=7)
    for name in ("alpha_a", "charlie_c"):
        for n in range(3):
            data = with_branch(fixture_call(name), f"z9hG4bK-shed-{name}-{n}")
            shed = fast.receive(data, at=FIXTURE_AT, shed=True)
            verify = slow.receive(data, at=FIXTURE_AT)
            assert verify.job is not None
            assert (shed.action, shed.status, shed.method) == (Action.SHED, 503, "INVITE")
            assert shed.response == slow.shed(verify.job)
            again = fast.receive(data, at=FIXTURE_AT, shed=True)
            assert (again.action, again.response) == (Action.RETRANSMIT, shed.response)
    options = fixture_call("alpha_a").replace(b"INVITE", b"OPTIONS")
    assert fast.receive(options, at=FIXTURE_AT, shed=True) == slow.receive(options, at=FIXTURE_AT)
    assert fast.transactions == slow.transactions
    assert fast.stats.responses[503] == slow.stats.responses[503] == 6


# Pieces of a Via value that matter to its parse: the sent-protocol, host and port shapes
# (IPv6, leading zeros, blanks, empty or odd ports), and parameters with case, flags, empty
# values, quotes, commas (a second via-parm) and empty items.
_VIA_PROTOCOLS = st.sampled_from(["SIP/2.0/UDP", "SIP/2.0/tcp", "sip/2.0/UDP", "SIP / 2.0 / UDP"])
_VIA_HOSTS = st.sampled_from(
    ["127.0.0.1", "Host.Example", "h", "[::1]", "[2001:db8::1]", "a_b", "", "h h"]
)
_VIA_PORTS = st.sampled_from(["", ":5060", ":05060", ":0", ":99999", ":123456", ":", ":x"])
_VIA_PARAMS = st.lists(
    st.tuples(
        st.sampled_from(["branch", "BRANCH", "Branch", "rport", "received", "", " branch", "x"]),
        st.one_of(
            st.none(),
            st.sampled_from(["", "z9hG4bK-1", "z9hG4bKabc", "old", '"q"', "a,b", "1.2.3.4", "a b"]),
        ),
    ),
    max_size=3,
)


@st.composite
def via_values(draw: st.DrawFn) -> str:
    params = "".join(
        f";{name}" if value is None else f";{name}={value}" for name, value in draw(_VIA_PARAMS)
    )
    value = f"{draw(_VIA_PROTOCOLS)} {draw(_VIA_HOSTS)}{draw(_VIA_PORTS)}{params}"
    return value + draw(st.sampled_from(["", ", SIP/2.0/UDP second;branch=z9hG4bK2"]))


@settings(max_examples=800, deadline=None)
@given(via_values())
@example("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0")
@example("SIP/2.0/UDP h:05060;branch=z9hG4bKx")
@example("SIP/2.0/UDP h;BRANCH;branch=z9hG4bKx")
def test_plain_top_via_is_the_parsed_top_via(value: str) -> None:
    """``plain_top_via`` gives the branch and sent-by of ``request.via[0]`` or declines, and
    the core's transaction key and 302 bytes are those the full Via parse gives."""
    data = build_invite(identities=[], date=None, call_id="c1").decode()
    lines = [f"Via: {value}" if line.startswith("Via:") else line for line in data.split("\r\n")]
    raw = "\r\n".join(lines).encode()
    message = parse_message(raw)
    assert isinstance(message, Request)
    top = plain_top_via(message)
    reference = parse_message(raw)
    assert isinstance(reference, Request)
    if top is not None:
        assert reference.via
        assert top == (reference.via[0].branch, reference.via[0].sent_by)
    if reference.via:
        via = reference.via[0]
        branch = via.branch or ""
        if branch.startswith("z9hG4bK"):
            assert SipServerCore._key(message, "INVITE") == (branch, via.sent_by.lower(), "INVITE")
        assert derive_to_tag(parse_message(raw)) == reference_to_tag(reference)  # type: ignore[arg-type]
    cseq = _cseq_method(response_fields(message).cseq)
    assert SipServerCore._answerable(message, cseq) is (
        bool(reference.via) and reference.cseq is not None
    )


def test_plain_top_via_declines_what_it_cannot_read() -> None:
    declined = [
        "SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1",
        "SIP/2.0/UDP h:05060;branch=x",
        "SIP/2.0/UDP h;branch=a, SIP/2.0/UDP g",
        "SIP / 2.0 / UDP h;branch=x",
    ]
    for value in declined:
        message = parse_message(
            f"OPTIONS sip:a@b SIP/2.0\r\nVia: {value}\r\nCSeq: 1 OPTIONS\r\n\r\n".encode()
        )
        assert isinstance(message, Request)
        assert plain_top_via(message) is None
        assert message.via  # the parse reads them: the server falls back to it


# CSeq values: the plain shape, blanks, numbers too large, non-ASCII digits, missing or extra
# parts, and a method that differs from the request's.
_CSEQS = st.one_of(
    st.sampled_from(
        ["1 INVITE", "  1\tINVITE ", "1 invite", "1 OPTIONS", "4294967296 INVITE",
         "99999999999999999999999 INVITE", "\u0661 INVITE", "x INVITE", "1", "1 INVITE x", ""]
    ),
    st.text(st.sampled_from(list("0129 \tINVITE\u0661\u00b2")), max_size=12),
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(_CSEQS, max_size=2))
def test_cseq_method_is_the_parsed_method(values: list[str]) -> None:
    """``_cseq_method`` gives ``request.cseq.method`` (None where that is None) without the
    CSeq parse, and the core's checks decide as they did with it."""
    lines = ["INVITE sip:a@b SIP/2.0", "Via: SIP/2.0/UDP h;branch=z9hG4bKx"]
    lines += [f"CSeq: {value}" for value in values]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    reference = message.cseq
    method = _cseq_method(response_fields(message).cseq)
    assert method == (None if reference is None else reference.method)


def _reference_urls(request: Request) -> list[str]:
    """Every ``info`` URL, each Identity value searched from its first character."""
    return [m.group(1).strip() for v in request.identity_values for m in _INFO_URL.finditer(v)]


_IDENTITY_PARTS = st.sampled_from(
    ["eyJh.eyJi.c2ln", ";info=<https://a.example/x.pem>", "; INFO = < https://b/y.pem >",
     ";alg=ES256", ';ppt="shaken"', ";info=<>", ";info=https://c/z", ",", ";", "<", ">", " "]
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.lists(_IDENTITY_PARTS, max_size=6).map("".join), max_size=3))
@example(["eyJh.eyJi.c2ln;info=<https://a.example/x.pem>;alg=ES256"])
@example(["<x>;info=<https://a/1>, t2;info=<https://a/2>"])
def test_info_urls_are_those_of_a_search_from_the_start(values: list[str]) -> None:
    lines = ["INVITE sip:a@b SIP/2.0", *(f"Identity: {value}" for value in values)]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    assert _info_urls(message) == _reference_urls(message)


def _reference_without_tag(value: str) -> str:
    """``without_tag`` with the regex applied to every name-addr's parameters."""
    gt = value.rfind(">")
    if value.lstrip().startswith(("<", '"')) or ("<" in value and gt > 0):
        return value[: gt + 1] + _TAG_PARAM.sub("", value[gt + 1 :])
    uri, _, params = value.strip().partition(";")
    rest = _TAG_PARAM.sub("", f";{params}") if params else ""
    return f"<{uri}>{rest}"


@settings(max_examples=1000, deadline=None)
@given(st.one_of(name_addrs(), st.text(_TRICKY, max_size=40)))
@example('"Alpha Caller" <sip:+12025550101@alpha.example;user=phone>;tag=f1')
@example("<sip:a@b>;tag=x;tag=y")
@example("<sip:a@b>;tag=")
@example("<sip:a@b>;tag=x>")
def test_without_tag_is_the_regex(value: str) -> None:
    assert without_tag(value) == _reference_without_tag(value)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\t", b" ", b"\x00", b"\x0b", b"x"]), max_size=6))
@example([])
@example([b"\r\n", b"\r\n"])
@example([b"\x00", b" ", b"\t"])
@example([b" ", b"x"])
def test_keepalive_is_a_datagram_of_blanks(parts: list[bytes]) -> None:
    """A datagram is a keep-alive exactly when nothing but blanks is left after a strip."""
    data = b"".join(parts)
    decision = SipServerCore().receive(data, at=FIXTURE_AT)
    blank = not data.strip(b"\r\n\t \x00")
    assert (decision.drop is DropReason.KEEPALIVE) is blank
