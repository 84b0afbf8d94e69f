"""The From/To shortcut of ``analyzer.extract`` gives exactly what the general SIP path gives.

``_header_party`` recognises ``<sip:+TN@host...>``/``<tel:+TN...>`` without parsing; every
generated header value around that shape (display names, schemes, separators, parameters,
brackets, junk) must give the same ``Party`` as ``_header_party_general`` (the name-addr parse
and ``sip.originating_identity``), or the same error. Part of the verify fast path's
equality (tests/shaken/test_verify_fastpath.py builds its requests through this code).
RFC 3261 section 20.10; RFC 8224 section 8.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.extract import (
    ExtractError,
    _header_party,
    _header_party_general,
    request_from_message,
    request_from_message_general,
)
from shaken.party import Party, PartyKind
from sip import SipParseError, parse_message

PIECES = {
    "lead": [
        *("", "", " ", "\t", "\u00a0", '"Alice" ', "Alice ", '"a>b" ', '"Alpha Caller" '),
        *(
            '"Alpha Caller"',
            '"" ',
            ' "x"\t',
            '"a\\"b" ',
            '"a\\\\" ',
            '"a"b" ',
            '"a<b" ',
            '"\u00e9" ',
        ),
        *('"a\r\n b" ', '"a', '"a" "b" ', "'a' "),
    ],
    "open": ["<", "<", "<", "", " <"],
    "scheme": ["sip:", "sip:", "sips:", "tel:", "SIP:", "http:", "sip"],
    "plus": ["+", "+", "+", "", "%2B"],
    "number": ["12025550101", "1", "2025550101", "1-202-555-0101", "1202555010a", "", "911"],
    "host": ["@alpha.example", "@alpha.example", "@h:5061", "@[::1]", "@a@b", "@", "", "@ex ample"],
    "params": ["", ";user=phone", ";user=phone", ";USER=PHONE", ";verstat=x", ";a>b", ';q="x"'],
    "close": [">", ">", ">", "", " >"],
    "tail": ["", ";tag=a1", ";tag=a1", " junk", ">", "\r\n", ";x=<sip:+1@h>"],
}


def _outcome(fn: object, text: str) -> Party | str:
    assert callable(fn)
    try:
        party = fn(text, "From")
    except ExtractError:
        return "ExtractError"
    assert isinstance(party, Party)
    return party


# A value of the common form, piece by piece; examples replace none, one or two pieces.
BASE = {
    "lead": "",
    "open": "<",
    "scheme": "sip:",
    "plus": "+",
    "number": "12025550101",
    "host": "@alpha.example",
    "params": ";user=phone",
    "close": ">",
    "tail": ";tag=a1",
}


@st.composite
def header_values(draw: st.DrawFn) -> str:
    pieces = dict(BASE)
    for name in draw(st.lists(st.sampled_from(sorted(PIECES)), max_size=2)):
        pieces[name] = draw(st.sampled_from(PIECES[name]))
    return "".join(pieces[k] for k in BASE)


@settings(max_examples=600, deadline=None)
@given(header_values())
def test_shortcut_equals_the_general_path(text: str) -> None:
    assert _outcome(_header_party, text) == _outcome(_header_party_general, text)


@pytest.mark.parametrize(
    ("text", "tn"),
    [
        ("<sip:+12025550101@alpha.example;user=phone>;tag=a1", "12025550101"),
        ("<sips:+12025550101@alpha.example:5061>", "12025550101"),
        ("<tel:+12025550101;verstat=TN-Validation-Passed>", "12025550101"),
    ],
)
def test_common_forms(text: str, tn: str) -> None:
    assert (
        _header_party(text, "From")
        == Party(PartyKind.TN, tn)
        == _header_party_general(text, "From")
    )


def _invite(request_uri: str, from_: str, to: str, pai: list[str]) -> bytes:
    lines = [
        f"INVITE {request_uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
        f"From: {from_}",
        f"To: {to}",
        *(f"P-Asserted-Identity: {value}" for value in pai),
        "Call-ID: c1@192.0.2.1",
        "CSeq: 1 INVITE",
        "Date: Thu, 15 Jan 2026 12:00:00 GMT",
        "Identity: a.b.c;info=<https://x.example/c.pem>;alg=ES256;ppt=shaken",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def _request_outcome(fn: object, data: bytes) -> object:
    assert callable(fn)
    message = parse_message(data)
    try:
        return fn(message)
    except (ExtractError, SipParseError, ValueError) as exc:
        return type(exc).__name__


@settings(max_examples=400, deadline=None)
@given(
    header_values(),
    header_values(),
    st.lists(header_values(), max_size=2),
    header_values(),
)
def test_message_shortcut_equals_the_typed_accessors(
    from_: str, to: str, pai: list[str], target: str
) -> None:
    """From/To/P-Asserted-Identity and a Request-URI (a header value's URI written bare) read
    by ``request_from_message``'s shortcut equal what the typed accessors give."""
    bare = target.strip().lstrip("<").split(">", 1)[0].strip() or "sip:x@h"
    for value in (from_, to, *pai, bare):
        if "\r" in value or "\n" in value:
            return  # a value with a line break is another message, not this header
    data = _invite(bare, from_, to, pai)
    assert _request_outcome(request_from_message, data) == _request_outcome(
        request_from_message_general, data
    )


def test_message_common_form() -> None:
    data = _invite(
        "sip:+12025550199@bravo.example;user=phone",
        "<sip:+12025550101@alpha.example;user=phone>;tag=a1",
        "<sip:+12025550199@bravo.example;user=phone>",
        ["<tel:+12025550102>"],
    )
    request = request_from_message(parse_message(data))
    assert request == request_from_message_general(parse_message(data))
    assert request.from_party == Party(PartyKind.TN, "12025550101")
    assert request.pai_party == Party(PartyKind.TN, "12025550102")
    assert request.request_uri == Party(PartyKind.TN, "12025550199")
    assert request.dest == (Party(PartyKind.TN, "12025550199"),)
