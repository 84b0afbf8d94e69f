"""The verification route's shortcuts give what the general path gives:

* ``plain_atis_request`` (the common ATIS request without the pydantic model): for any request,
  generated valid and invalid, ``verification_input`` returns the same mapped request, or raises
  the same ``ApiError``, as the model alone does;
* ``_flat_json`` (the ATIS response without the generic encoder) writes what the encoder writes,
  or declines.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.atis import MAX_DESTINATIONS, MAX_NUMERIC_DATE, AtisError, verification_request
from service.api import stir
from service.api.errors import ApiError, ErrorCode
from service.api.models import (
    MAX_IDENTITY_CHARS,
    MAX_TN_CHARS,
    AtisVerificationRequest,
    Flavour,
    plain_atis_request,
)
from shaken.verifier import VerificationRequest

IDENTITY = "eyJhbGciOiJFUzI1NiJ9.eyJpYXQiOjF9.c2ln;info=<https://cert.example/a.pem>;ppt=shaken"


def _by_model(body: dict[str, Any]) -> tuple[VerificationRequest, Flavour, str | None]:
    """``verification_input`` of an ATIS body through the model only (the general path)."""
    prefix = "verificationRequest"
    inner = stir._member(body, prefix)
    try:
        atis = stir.validate(AtisVerificationRequest, inner, prefix)
        core = verification_request(
            identities=[atis.identity],
            orig=atis.from_.to_core(),
            to=atis.to.to_core(),
            time=atis.time,
        )
    except AtisError as exc:
        raise ApiError(
            ErrorCode.INVALID_PARAMETER, exc.parameter, stir._short(exc.detail)
        ) from None
    return core, Flavour.ATIS, None


def _outcome(function: Any, body: dict[str, Any]) -> object:
    try:
        return function(body)
    except ApiError as exc:
        return (exc.code, exc.variables, exc.headers)


# Text around the bounds and the characters the model treats apart (surrogates, non-ASCII).
_TEXT = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "+12025550101",
            "12025550199",
            "1-202-555-0101",
            "911",
            "tel:+12025550101",
            "sip:+12025550101@example.com;user=phone",
            "sip:alice@example.com",
            "not a number",
            "caf\u00e9",
            "\ud800",
            "1" * MAX_TN_CHARS,
            "1" * (MAX_TN_CHARS + 1),
            "+1202555010\u0661",
        ]
    ),
    st.text(max_size=20),
    st.text(alphabet="0123456789+-;=", max_size=MAX_TN_CHARS + 2),
)
_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(0, 2), _TEXT)
_STRINGS = st.one_of(
    _TEXT,
    st.lists(_TEXT, max_size=3),
    st.lists(st.just("12025550199"), min_size=MAX_DESTINATIONS, max_size=MAX_DESTINATIONS + 1),
    st.lists(_SCALAR, max_size=2),
    _SCALAR,
)
_IDENTITY_OBJECT = st.one_of(
    st.fixed_dictionaries({"tn": _STRINGS}),
    st.fixed_dictionaries({"uri": _STRINGS}),
    st.fixed_dictionaries(
        {},
        optional={"tn": _STRINGS, "uri": _STRINGS, "other": _SCALAR},
    ),
    _SCALAR,
    st.lists(_SCALAR, max_size=1),
)
_TIME = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 1_768_478_400, MAX_NUMERIC_DATE, MAX_NUMERIC_DATE + 1, 1.5]),
    st.integers(),
    st.floats(allow_nan=False),
    _TEXT,
)
_IDENTITY_VALUE = st.one_of(
    st.just(IDENTITY),
    st.just(IDENTITY + "," + IDENTITY),
    st.just("x" * MAX_IDENTITY_CHARS),
    st.just("x" * (MAX_IDENTITY_CHARS + 1)),
    _SCALAR,
)
_INNER = st.fixed_dictionaries(
    {},
    optional={
        "from": _IDENTITY_OBJECT,
        "from_": _IDENTITY_OBJECT,
        "to": _IDENTITY_OBJECT,
        "time": _TIME,
        "identity": _IDENTITY_VALUE,
        "vendorExtension": _SCALAR,
    },
)
# Mostly well-formed requests: each member valid, then one at a time replaced by anything.
_VALID_INNER = st.fixed_dictionaries(
    {
        "from": st.sampled_from([{"tn": "+12025550101"}, {"uri": "tel:+12025550101"}]),
        "to": st.sampled_from(
            [{"tn": ["12025550199"]}, {"tn": "12025550199"}, {"uri": ["sip:+1202@x", "tel:1"]}]
        ),
        "identity": st.just(IDENTITY),
    },
    optional={"time": st.integers(0, MAX_NUMERIC_DATE)},
)


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        inner = draw(_VALID_INNER)
        if draw(st.booleans()):
            name = draw(st.sampled_from(["from", "to", "time", "identity", "from_"]))
            inner[name] = draw(
                {
                    "from": _IDENTITY_OBJECT,
                    "to": _IDENTITY_OBJECT,
                    "time": _TIME,
                    "identity": _IDENTITY_VALUE,
                    "from_": _IDENTITY_OBJECT,
                }[name]
            )
    else:
        inner = draw(_INNER)
    return {"verificationRequest": inner}


@settings(max_examples=2000, deadline=None)
@given(_bodies())
def test_plain_request_maps_as_the_model(body: dict[str, Any]) -> None:
    assert _outcome(stir.verification_input, body) == _outcome(_by_model, body)
    inner = body["verificationRequest"]
    plain = plain_atis_request(inner)
    if plain is not None:  # only what the model accepts, mapped as the model maps it
        model = AtisVerificationRequest.model_validate(inner)
        assert plain == (model.from_.to_core(), model.to.to_core(), model.time, model.identity)


def test_the_common_request_takes_the_plain_path() -> None:
    inner = {
        "from": {"tn": "+12025550101"},
        "to": {"tn": ["12025550199"]},
        "time": 1_768_478_400,
        "identity": IDENTITY,
    }
    assert plain_atis_request(inner) is not None
    for declined in (
        {**inner, "time": True},
        {**inner, "from_": inner["from"]},
        {**inner, "identity": IDENTITY + "\u00e9"},
        {**inner, "to": {"tn": "1", "uri": None, "x": 1}, "from": {"tn": "1", "uri": "x"}},
    ):
        assert plain_atis_request(declined) is None


_JSON_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=500, deadline=None)
@given(
    st.text(max_size=8),
    st.one_of(st.dictionaries(st.text(max_size=8), _JSON_VALUE, max_size=6), _JSON_VALUE),
)
def test_flat_json_is_the_encoder_or_declines(name: str, members: object) -> None:
    body = {name: members}
    text = stir._flat_json(body)
    if text is not None:
        assert text == stir._JSON.encode(body)
        assert json.loads(text) == body
    else:
        assert not isinstance(members, dict) or any(
            type(v) not in (str, int) for v in members.values()
        )
