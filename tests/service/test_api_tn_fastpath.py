"""The telephone numbers of verification requests (``analyzer.atis.parties_of``): the shortcut
for plain digit strings gives what ``sip.canonicalize_tn`` gives, for any string."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.atis import AtisError, AtisIdentity, _plain_tn, parties_of
from shaken.party import Party, PartyKind
from sip import canonicalize_tn


def _slow(value: str) -> Party | None:
    canonical = canonicalize_tn(value)
    return None if canonical is None else Party(PartyKind.TN, canonical.tn)


def _fast(value: str) -> Party | None:
    try:
        (party,) = parties_of(AtisIdentity(tn=(value,)), "verificationRequest.to")
    except AtisError:
        return None
    return party


NUMBERS = [
    "+12025550101",
    "12025550199",
    "2025550199",
    "1025550199",
    "911",
    "*67",
    "",
    "+",
    "+1 202 555 0101",
    "202-555-0199",
    "+12025550101;verstat=TN-Validation-Passed",
    "%2B12025550101",
    " 2025550199 ",
    "\u0662025550199",
    "12345678901234567890",
    "0",
]


@pytest.mark.parametrize("value", NUMBERS)
def test_same_party_as_canonicalize_tn(value: str) -> None:
    assert _fast(value) == _slow(value)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="+0123456789", max_size=18),
        st.text(alphabet="+0123456789 -.()#*;%=a\u0660\u0661\u00b2", max_size=18),
        st.text(max_size=12),
    )
)
def test_any_string_maps_as_canonicalize_tn_maps_it(value: str) -> None:
    assert _fast(value) == _slow(value)
    plain = _plain_tn(value)
    if plain is not None:
        canonical = canonicalize_tn(value)
        assert canonical is not None
        assert plain == canonical.tn
