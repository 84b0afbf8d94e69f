"""RFC 4475 torture messages (fixtures/sip/rfc4475): valid ones parse with the right values,
invalid ones give the expected defect or error."""

from __future__ import annotations

import pytest

from sip import Request, Response, SipParseError, SipReason, parse_message
from tests.sip.conftest import SIP_FIXTURES

R = SipReason


def load(name: str) -> bytes:
    return (SIP_FIXTURES / "rfc4475" / f"{name}.sip").read_bytes()


def violations(name: str) -> set[SipReason]:
    return {d.code for d in parse_message(load(name)).defects if d.violation}


# name -> the violations expected in lenient mode (empty: well-formed per RFC 4475).
EXPECTED: dict[str, set[SipReason]] = {
    # 3.1.1 valid messages
    "wsinv": set(),
    "intmeth": set(),
    "esc01": set(),
    "escnull": set(),
    "esc02": set(),
    "lwsdisp": set(),
    "longreq": set(),
    "dblreq": set(),
    "semiuri": set(),
    "transports": set(),
    "unreason": set(),
    "noreason": set(),
    # 3.1.2 invalid messages
    "badinv01": {R.MALFORMED_VIA, R.EMPTY_PARAMETER},
    "clerr": {R.CONTENT_LENGTH_EXCEEDS_DATA},
    "ncl": {R.INVALID_CONTENT_LENGTH},
    "scalar02": {R.INVALID_CSEQ, R.INVALID_MAX_FORWARDS},
    "scalarlg": {R.INVALID_CSEQ},
    "quotbal": {R.MALFORMED_NAME_ADDR},
    "ltgtruri": {R.MALFORMED_REQUEST_URI},
    "lwsruri": {R.MALFORMED_REQUEST_URI},
    "lwsstart": {R.START_LINE_WHITESPACE},
    "trws": {R.START_LINE_WHITESPACE},
    "escruri": {R.URI_HEADERS_NOT_ALLOWED},
    "baddate": {R.INVALID_DATE},
    "regbadct": {R.MALFORMED_NAME_ADDR},
    "badaspec": {R.MALFORMED_NAME_ADDR},
    "baddn": {R.MALFORMED_NAME_ADDR},
    "badvers": {R.UNSUPPORTED_VERSION},
    "mismatch01": {R.CSEQ_METHOD_MISMATCH},
    "mismatch02": {R.CSEQ_METHOD_MISMATCH},
    # 3.2 / 3.3 / 3.4: syntactically valid, semantically odd
    "badbranch": set(),
    "insuf": {R.MISSING_REQUIRED_HEADER},
    "unkscm": set(),
    "novelsc": set(),
    "unksm2": set(),
    "bext01": set(),
    "invut": set(),
    "multi01": {R.DUPLICATE_SINGLE_HEADER},
    "mcl01": {R.CONFLICTING_CONTENT_LENGTH},
    "zeromf": set(),
    "cparam01": set(),
    "cparam02": set(),
    "regescrt": set(),
    "inv2543": {R.MISSING_REQUIRED_HEADER},
}


@pytest.mark.parametrize(("name", "expected"), EXPECTED.items(), ids=list(EXPECTED))
def test_lenient_parse_reports_expected_violations(name: str, expected: set[SipReason]) -> None:
    assert violations(name) == expected


@pytest.mark.parametrize(
    "name", [n for n, e in EXPECTED.items() if e], ids=[n for n, e in EXPECTED.items() if e]
)
def test_strict_mode_rejects_invalid_messages(name: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(load(name), strict=True)
    assert info.value.reason in EXPECTED[name]


@pytest.mark.parametrize(
    "name", [n for n, e in EXPECTED.items() if not e], ids=[n for n, e in EXPECTED.items() if not e]
)
def test_strict_mode_accepts_valid_messages(name: str) -> None:
    parse_message(load(name), strict=True)


def test_bigcode_is_an_error() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(load("bigcode"))
    assert info.value.reason is SipReason.INVALID_STATUS_LINE


def test_wsinv_values() -> None:
    msg = parse_message(load("wsinv"))
    assert isinstance(msg, Request)
    assert msg.uri is not None
    assert msg.uri.param("unknownparam") == ""
    assert msg.to is not None
    assert msg.to.tag == "1918181833n"
    assert msg.from_ is not None
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.cseq is not None
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in msg.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = msg.contact
    assert contact.display_name == 'Quoted string ""'
    assert contact.param("newparam") == "newvalue"
    assert contact.param("secondparam") == ""
    assert contact.param("q") == "0.33"
    assert len(msg.body) == 150


def test_intmeth_values() -> None:
    msg = parse_message(load("intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.uri is not None
    assert msg.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.uri.host == "example.com"
    assert msg.to is not None
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_ is not None
    assert msg.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert (
        msg.from_.param("fromParam''~+*_!.-%")
        == '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"'
    )
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.via[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


def test_escapes_are_kept_as_written() -> None:
    esc01 = parse_message(load("esc01"))
    assert isinstance(esc01, Request)
    assert esc01.uri is not None
    assert esc01.uri.user == "sips%3Auser%40example.com"
    assert esc01.uri.unescaped_user == "sips:user@example.com"
    assert esc01.to is not None
    assert esc01.to.uri.unescaped_user == "user"
    (contact,) = esc01.contact
    assert contact.uri.param("n%61me") == "v%61lue%25%34%31"
    esc02 = parse_message(load("esc02"))
    assert isinstance(esc02, Request)
    assert esc02.method == "RE%47IST%45R"
    assert [c.uri.user for c in esc02.contact] == ["alias1", "alias3"]
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    escnull = parse_message(load("escnull"))
    assert [c.uri.user for c in escnull.contact] == ["%00", "%00%00"]


def test_longreq_values() -> None:
    msg = parse_message(load("longreq"))
    assert len(msg.via) == 34
    assert [v.host for v in msg.via[:33]] == [f"sip{i}.example.com" for i in range(33, 0, -1)]
    assert msg.via[33].param("received") == "192.0.2.5"
    assert msg.to is not None
    assert msg.to.uri.port == 6000
    assert msg.from_ is not None
    assert msg.from_.tag == "12" + "982" * 50 + "424"


def test_other_valid_values() -> None:
    dbl = parse_message(load("dblreq"))
    assert isinstance(dbl, Request)
    assert dbl.method == "REGISTER"
    assert dbl.body == b""
    assert SipReason.TRAILING_DATA in {d.code for d in dbl.defects}
    semi = parse_message(load("semiuri"))
    assert isinstance(semi, Request)
    assert semi.uri is not None
    assert semi.uri.user == "user;par=u%40example.net"
    assert semi.uri.host == "example.com"
    assert len(semi.headers.values("accept")) == 6
    transports = parse_message(load("transports"))
    assert [v.transport for v in transports.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    lws = parse_message(load("lwsdisp"))
    assert lws.from_ is not None
    assert lws.from_.display_name == "caller"
    unreason = parse_message(load("unreason"))
    assert isinstance(unreason, Response)
    assert unreason.status == 200
    assert unreason.reason.startswith("= 2**3 * 5**2 \u043d\u043e")
    noreason = parse_message(load("noreason"))
    assert isinstance(noreason, Response)
    assert (noreason.status, noreason.reason) == (100, "")


def test_unknown_schemes_are_kept_opaque() -> None:
    msg = parse_message(load("unksm2"))
    assert msg.to is not None
    assert (msg.to.uri.scheme, msg.to.uri.opaque) == ("isbn", "2983792873")
    assert msg.from_ is not None
    assert msg.from_.uri.scheme == "http"
    novel = parse_message(load("novelsc"))
    assert isinstance(novel, Request)
    assert novel.uri is not None
    assert novel.uri.scheme == "soap.beep"
