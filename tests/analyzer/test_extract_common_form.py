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

from analyzer.extract import ExtractError, _header_party, _header_party_general
from shaken.party import Party, PartyKind

PIECES = {
    "lead": ["", "", " ", "\t", "\u00a0", '"Alice" ', "Alice ", '"a>b" '],
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
