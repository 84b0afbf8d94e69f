"""URIs, name-addrs, typed accessors, TN canonicalisation, verstat placement, building."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip import (
    IdentityKind,
    Request,
    Response,
    SipReason,
    TnRule,
    add_uri_param,
    canonicalize_tn,
    derive_to_tag,
    originating_identity,
    parse_message,
    parse_name_addr,
    parse_uri,
    response_bytes,
    response_to,
)
from tests.sip.conftest import crlf

URIS = [
    ("plain", "sip:alice@example.com", ("sip", "alice", None, "example.com", None)),
    (
        "port-pass",
        "sips:bob:secret@[2001:db8::1]:5061;transport=tls",
        ("sips", "bob", "secret", "[2001:db8::1]", 5061),
    ),
    ("no-user", "sip:example.com;lr", ("sip", None, None, "example.com", None)),
    (
        "tel",
        "tel:+1-215-555-1212;verstat=TN-Validation-Passed",
        ("tel", "+1-215-555-1212", None, None, None),
    ),
    (
        "tel-in-user",
        "sip:+15715550001;verstat=TN-Validation-Passed@example.com;user=phone",
        ("sip", "+15715550001;verstat=TN-Validation-Passed", None, "example.com", None),
    ),
]


@pytest.mark.parametrize(("text", "expected"), [u[1:] for u in URIS], ids=[u[0] for u in URIS])
def test_uri_parts(text: str, expected: tuple[object, ...]) -> None:
    uri = parse_uri(text)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == expected
    assert str(uri) == text


VERSTAT = [
    (
        "user-part",
        "<sip:+15715550001;verstat=TN-Validation-Passed@example.com;user=phone>",
        "TN-Validation-Passed",
    ),
    (
        "uri-param",
        "<sip:+15715550001@sip.telnyx.com;verstat=TN-Validation-Passed>",
        "TN-Validation-Passed",
    ),
    ("tel", "<tel:+15715550001;verstat=No-TN-Validation>", "No-TN-Validation"),
    ("absent", "<sip:+15715550001@example.com>", None),
]


@pytest.mark.parametrize(("text", "verstat"), [v[1:] for v in VERSTAT], ids=[v[0] for v in VERSTAT])
def test_verstat_is_found_wherever_it_was_put(text: str, verstat: str | None) -> None:
    addr = parse_name_addr(text)
    assert addr is not None
    assert addr.uri.verstat == verstat


def test_user_phone_params() -> None:
    uri = parse_uri("sip:+15715550001;verstat=TN-Validation-Passed@example.com;user=PHONE")
    assert uri.is_user_phone
    assert uri.user_number == "+15715550001"
    assert uri.user_params == (("verstat", "TN-Validation-Passed"),)


NAME_ADDRS = [
    ("quoted", '"Alice \\"A\\"" <sip:a@x>;tag=1', 'Alice "A"', "sip:a@x", "1"),
    ("token-name", "Bob Smith <sip:b@x>", "Bob Smith", "sip:b@x", None),
    ("addr-spec", "sip:c@x;tag=9", None, "sip:c@x", "9"),
    ("no-name", "<sip:d@x;user=phone>;tag=z", None, "sip:d@x;user=phone", "z"),
]


@pytest.mark.parametrize(
    ("text", "name", "uri", "tag"), [n[1:] for n in NAME_ADDRS], ids=[n[0] for n in NAME_ADDRS]
)
def test_name_addr(text: str, name: str | None, uri: str, tag: str | None) -> None:
    addr = parse_name_addr(text)
    assert addr is not None
    assert (addr.display_name, addr.uri.raw, addr.tag) == (name, uri, tag)


def test_unterminated_quote_gives_none() -> None:
    assert parse_name_addr('"Mr. J. User <sip:j.user@example.com>') is None


TNS = [
    (
        "separators",
        "sip:+1-215-555-1212@example.com;user=phone",
        "12155551212",
        {TnRule.STRIPPED_PLUS, TnRule.STRIPPED_VISUAL_SEPARATORS},
    ),
    (
        "parens",
        "tel:+1(215)555-1212",
        "12155551212",
        {TnRule.STRIPPED_PLUS, TnRule.STRIPPED_VISUAL_SEPARATORS},
    ),
    ("nanp", "sip:2155551212@example.com;user=phone", "12155551212", {TnRule.ADDED_COUNTRY_CODE}),
    (
        "tel-params",
        "tel:+12155551212;verstat=TN-Validation-Passed",
        "12155551212",
        {TnRule.STRIPPED_PLUS, TnRule.STRIPPED_PARAMETERS},
    ),
    (
        "user-params",
        "sip:+15715550001;verstat=TN-Validation-Passed@example.com;user=phone",
        "15715550001",
        {TnRule.STRIPPED_PLUS, TnRule.STRIPPED_PARAMETERS},
    ),
    ("star", "sip:*67@example.com;user=phone", "*67", {TnRule.NATIONAL_SPECIAL_NUMBER}),
    (
        "special",
        "tel:911;phone-context=+1",
        "911",
        {TnRule.NATIONAL_SPECIAL_NUMBER, TnRule.STRIPPED_PARAMETERS},
    ),
    (
        "policy-plus",
        "sip:+918850510969@44.229.228.186:5060",
        "918850510969",
        {TnRule.TN_BY_LOCAL_POLICY, TnRule.STRIPPED_PLUS},
    ),
    (
        "policy-digits",
        "sip:8587542200@54.177.185.224;otg=000200",
        "18587542200",
        {TnRule.TN_BY_LOCAL_POLICY, TnRule.ADDED_COUNTRY_CODE},
    ),
]


@pytest.mark.parametrize(("uri", "tn", "rules"), [t[1:] for t in TNS], ids=[t[0] for t in TNS])
def test_originating_identity_tn(uri: str, tn: str, rules: set[TnRule]) -> None:
    identity = originating_identity(uri)
    assert identity.kind is IdentityKind.TN
    assert identity.value == tn
    assert set(identity.rules) == rules


URI_IDS = [
    ("normalised", "sip:alice@Example.COM:5060;transport=tls", "sip:alice@example.com"),
    ("password-dropped", "sips:Bob:pw@EXAMPLE.org", "sips:bob@example.org"),
    ("escaped-unreserved", "sip:%61lice@x.com", "sip:alice@x.com"),
    ("short-digits", "sip:12345@x.com", "sip:12345@x.com"),
    ("phone-not-a-number", "sip:alice@x.com;user=phone", "sip:alice@x.com"),
]


@pytest.mark.parametrize(("uri", "value"), [u[1:] for u in URI_IDS], ids=[u[0] for u in URI_IDS])
def test_originating_identity_uri(uri: str, value: str) -> None:
    identity = originating_identity(uri)
    assert (identity.kind, identity.value) == (IdentityKind.URI, value)
    assert TnRule.URI_NORMALISED in identity.rules


@pytest.mark.parametrize(
    "value",
    ["", "+", "abc", "12a45", "+1 (215) ext 5"],
    ids=["empty", "plus", "letters", "mixed", "ext"],
)
def test_canonicalize_rejects_non_numbers(value: str) -> None:
    assert canonicalize_tn(value) is None


def test_canonicalize_without_default_country_code() -> None:
    result = canonicalize_tn("2155551212", default_country_code=None)
    assert result is not None
    assert result.tn == "2155551212"
    assert result.rules == ()


ADD = [
    (
        "user-phone",
        "<sip:+15715550001@example.com;user=phone>;tag=a",
        "<sip:+15715550001;verstat=TN-Validation-Passed@example.com;user=phone>;tag=a",
    ),
    (
        "replace-in-user",
        "sip:+1555;verstat=old@h;user=phone",
        "sip:+1555;verstat=TN-Validation-Passed@h;user=phone",
    ),
    (
        "move-from-params",
        "sip:+1555@h;user=phone;verstat=old",
        "sip:+1555;verstat=TN-Validation-Passed@h;user=phone",
    ),
    (
        "plain-sip",
        '"A" <sip:alice@example.com>',
        '"A" <sip:alice@example.com;verstat=TN-Validation-Passed>',
    ),
    (
        "tel",
        "<tel:+15715550001;verstat=No-TN-Validation>",
        "<tel:+15715550001;verstat=TN-Validation-Passed>",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [a[1:] for a in ADD], ids=[a[0] for a in ADD])
def test_add_uri_param_verstat(text: str, expected: str) -> None:
    out = add_uri_param(text, "verstat", "TN-Validation-Passed")
    assert out == expected
    addr = parse_name_addr(out)
    uri = addr.uri if addr is not None and "<" in out else parse_uri(out)
    assert uri.verstat == "TN-Validation-Passed"


def test_add_uri_param_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="cannot add"):
        add_uri_param("<http://x>", "verstat", "x")


ACCESSOR_MSG = """INVITE sip:+12125551212@example.net;user=phone SIP/2.0
Via: SIP/2.0/TLS a.example.com:5061;branch=z9hG4bKa;received=192.0.2.1, SIP/2.0/UDP b.example.com
Via: SIP/2.0/TCP [2001:db8::9]:5060;branch=z9hG4bKc
Max-Forwards: 70
To: <sip:+12125551212@example.net;user=phone>
From: "Alice" <sip:+12155551212@example.com;user=phone>;tag=t1
P-Asserted-Identity: <sip:+12155551212@example.com;user=phone>, <tel:+12155551212>
Call-ID: abc@x
CSeq: 7 INVITE
Date: Tue, 16 Aug 2016 19:23:38 GMT
Diversion: <sip:+12125550000@example.net>;reason=unconditional;counter=1
History-Info: <sip:a@example.net>;index=1, <sip:b@example.net?Reason=SIP%3Bcause%3D302>;index=1.1
Identity: aaa.bbb.ccc;info=<https://c.example/1>;ppt=shaken
identity: ddd.eee.fff;info=<https://c.example/2>, ggg.hhh.iii;info=<https://c.example/3>
y: ..sig;info=<https://c.example/4>
Content-Type: application/sdp;charset=utf-8
Content-Length: 0

"""


def test_typed_accessors() -> None:
    msg = parse_message(crlf(ACCESSOR_MSG))
    assert isinstance(msg, Request)
    assert [(v.transport, v.sent_by, v.branch) for v in msg.via] == [
        ("TLS", "a.example.com:5061", "z9hG4bKa"),
        ("UDP", "b.example.com", None),
        ("TCP", "[2001:db8::9]:5060", "z9hG4bKc"),
    ]
    assert msg.via[0].param("received") == "192.0.2.1"
    assert [p.uri.scheme for p in msg.p_asserted_identity] == ["sip", "tel"]
    assert msg.date == datetime(2016, 8, 16, 19, 23, 38, tzinfo=UTC)
    (div,) = msg.diversion
    assert (div.reason, div.counter, div.address.uri.user) == ("unconditional", 1, "+12125550000")
    assert [h.index for h in msg.history_info] == ["1", "1.1"]
    assert msg.identity_values == (
        "aaa.bbb.ccc;info=<https://c.example/1>;ppt=shaken",
        "ddd.eee.fff;info=<https://c.example/2>",
        "ggg.hhh.iii;info=<https://c.example/3>",
        "..sig;info=<https://c.example/4>",
    )
    assert [h.header_index for h in msg.identity_headers] == [0, 1, 1, 2]
    assert [h.split_from_comma for h in msg.identity_headers] == [False, True, True, False]
    assert SipReason.IDENTITY_COMMA_JOINED in {d.code for d in msg.defects}
    assert msg.media_type == "application/sdp"
    assert msg.content_length == 0
    assert msg.call_id == "abc@x"


DATES = [
    ("ok", "Sun, 06 Nov 1994 08:49:37 GMT", datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)),
    ("est", "Fri, 01 Jan 2010 16:00:00 EST", None),
    ("utc", "Fri, 01 Jan 2010 16:00:00 UTC", None),
    ("no-comma", "Fri 01 Jan 2010 16:00:00 GMT", None),
    ("bad-day", "Fri, 32 Jan 2010 16:00:00 GMT", None),
    ("garbage", "yesterday", None),
]


@pytest.mark.parametrize(("value", "expected"), [d[1:] for d in DATES], ids=[d[0] for d in DATES])
def test_date_header(value: str, expected: datetime | None) -> None:
    msg = parse_message(crlf(f"OPTIONS sip:x@y SIP/2.0\nDate: {value}\nl: 0\n\n"))
    assert msg.date == expected
    assert (SipReason.INVALID_DATE in {d.code for d in msg.defects}) is (expected is None)


def test_request_build_sets_content_length() -> None:
    req = Request.build(
        "INVITE",
        "sip:bob@example.com",
        [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("Content-Length", "999")],
        b"v=0\r\n",
    )
    assert req.content_length == 5
    assert req.body == b"v=0\r\n"
    assert req.to_bytes().endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    assert parse_message(req.to_bytes()) == req


def test_build_rejects_header_injection() -> None:
    with pytest.raises(ValueError, match="line break"):
        Request.build("OPTIONS", "sip:x", [("Subject", "a\r\nVia: evil")])


def test_response_to_copies_dialog_headers() -> None:
    req = parse_message(crlf(ACCESSOR_MSG))
    assert isinstance(req, Request)
    resp = response_to(req, 302, "Moved Temporarily", [("Contact", "<sip:x@y>")])
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (302, "Moved Temporarily")
    assert resp.headers.get_all("via") == req.headers.get_all("via")
    assert resp.headers.get("from") == req.headers.get("from")
    assert resp.call_id == req.call_id
    assert resp.headers.get("cseq") == "7 INVITE"
    assert resp.to is not None
    assert resp.to.tag == derive_to_tag(req)
    assert response_to(req, 302, "x").to == resp.to  # deterministic
    trying = response_to(req, 100, "Trying")
    assert trying.to is not None
    assert trying.to.tag is None
    assert response_to(req, 200, "OK", to_tag="abc").to.tag == "abc"  # type: ignore[union-attr]
    assert resp.defects == ()


@pytest.mark.parametrize("status", [100, 302, 438])
def test_response_bytes_are_response_to_without_the_parse(status: int) -> None:
    req = parse_message(crlf(ACCESSOR_MSG))
    assert isinstance(req, Request)
    extra = [("Reason", 'STIR;cause=438;text="Invalid Identity Header"')]
    built = response_to(req, status, "Phrase", extra).to_bytes()
    assert response_bytes(req, status, "Phrase", extra) == built
    with pytest.raises(ValueError, match="line break"):
        response_bytes(req, status, "Phrase", [("Reason", "a\r\nVia: evil")])
    with pytest.raises(ValueError, match="out of range"):
        response_bytes(req, 99, "Phrase")


def _reference_strip_and_check(text: str) -> tuple[str, bool, bool]:
    """The separator strip and character check of ``canonicalize_tn`` one character at a time
    (how it was written before its set operations): (text, stripped, acceptable)."""
    separators = "-.() "
    stripped = any(ch in separators for ch in text)
    if stripped:
        text = "".join(ch for ch in text if ch not in separators)
    return text, stripped, bool(text) and all(ch in "0123456789#*" for ch in text)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789#*-.() +;%ab\u0661\u00a0", max_size=24))
def test_canonicalize_separator_rules_match_the_character_loop(value: str) -> None:
    result = canonicalize_tn(value)
    text = value.strip()
    if "%" in text or ";" in text:
        return  # decoding and parameters come first; covered by the examples above
    text = text[1:] if text.startswith("+") else text
    expected, stripped, acceptable = _reference_strip_and_check(text)
    if not acceptable:
        assert result is None
        return
    assert result is not None
    assert (TnRule.STRIPPED_VISUAL_SEPARATORS in result.rules) == stripped
    assert result.tn.endswith(expected)
