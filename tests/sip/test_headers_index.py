"""Header lookups by scans in C against their definitions: a pass over every line in order.

``Headers.get``, ``get_all``, ``values``, ``fields`` and ``in`` find lines with the list's own
membership, count and position scans, and ``header_key`` remembers the keys it computed. Each
must give exactly what a pass over the lines gives, for any mix of spellings, compact forms,
repeats and unknown names. RFC 3261 sections 7.3.1 and 7.3.3.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sip import Request, parse_message
from sip.headers import (
    _KEY_MEMO,
    _MAX_KEY_MEMO,
    CANONICAL_NAMES,
    LIST_HEADERS,
    Headers,
    _header_key,
    header_key,
    split_commas,
)

# Names in every spelling a lookup must treat alike (long, compact, odd case), and others.
_NAMES = st.one_of(
    st.sampled_from(
        ["Via", "v", "VIA", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m",
         "P-Asserted-Identity", "p-asserted-identity", "Identity", "y", "Require", "Date",
         "X-Custom", "x-custom", "Content-Length", "l"]
    ),
    st.text(st.sampled_from(list("aVfXy-İK\u212a")), min_size=1, max_size=4),
)  # fmt: skip
_VALUES = st.sampled_from(["a", "b, c", '"x, y" <sip:a@b>, <sip:c@d>', "", "1 INVITE", "z"])


def _scan_get(headers: Headers, name: str) -> str | None:
    key = _header_key(name)
    for line_name, value in headers.items():
        if _header_key(line_name) == key:
            return value
    return None


def _scan_get_all(headers: Headers, name: str) -> list[str]:
    key = _header_key(name)
    return [value for line_name, value in headers.items() if _header_key(line_name) == key]


def _scan_values(headers: Headers, name: str) -> list[str]:
    lines = _scan_get_all(headers, name)
    if _header_key(name) not in LIST_HEADERS:
        return lines
    return [part for line in lines for part in split_commas(line)]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12), st.lists(_NAMES, max_size=6))
@example([("Via", "a"), ("v", "b"), ("VIA", "c")], ["via", "v"])
@example([("f", "1"), ("From", "2")], ["from"])
@example([], ["via"])
def test_lookups_are_the_scan(pairs: list[tuple[str, str]], asked: list[str]) -> None:
    headers = Headers.from_pairs(pairs)
    for name in [*asked, *(n for n, _ in pairs)]:
        found = _scan_get(headers, name)
        assert headers.get(name) == found
        assert headers.get(name, "absent") == ("absent" if found is None else found)
        assert headers.get_all(name) == _scan_get_all(headers, name)
        assert headers.values(name) == _scan_values(headers, name)
        assert [h.value for h in headers.fields(name)] == _scan_get_all(headers, name)
        assert (name in headers) is bool(_scan_get_all(headers, name))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=10))
def test_parsed_headers_look_up_as_the_scan(pairs: list[tuple[str, str]]) -> None:
    """The parser's headers (their keys come from its own table) give the same."""
    lines = ["OPTIONS sip:a@b SIP/2.0", *(f"{n}: {v}" for n, v in pairs)]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    headers = message.headers
    for name in ("via", "from", "to", "call-id", "cseq", "identity", *(n for n, _ in pairs)):
        assert headers.get(name) == _scan_get(headers, name)
        assert headers.get_all(name) == _scan_get_all(headers, name)
        assert headers.values(name) == _scan_values(headers, name)
        positions = [i for i, h in enumerate(headers) if _header_key(h.name) == _header_key(name)]
        assert headers.fields(name) == [headers[i] for i in positions]


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_NAMES, st.text(max_size=8)))
def test_header_key_is_its_definition(name: str) -> None:
    assert header_key(name) == _header_key(name)
    assert header_key(name) == _header_key(name)  # remembered


def test_header_key_memo_stays_bounded_and_right() -> None:
    names = [f"X-Name-{n}" for n in range(_MAX_KEY_MEMO * 2 + 5)]
    names += list(CANONICAL_NAMES) + [n.upper() for n in CANONICAL_NAMES]
    for name in names:
        assert header_key(name) == _header_key(name)
    assert len(_KEY_MEMO) <= _MAX_KEY_MEMO
