"""ATIS-1000082 / 3GPP request values mapped to the core: canonical TNs, URIs, Date, claims."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from analyzer.atis import (
    MAX_IDENTITIES,
    AtisError,
    AtisIdentity,
    parties_of,
    signing_payload,
    verification_request,
)
from shaken.errors import Reason
from shaken.party import Party


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        (AtisIdentity(tn=("12025550101",)), [Party.tn("12025550101")]),
        (AtisIdentity(tn=("+1 (202) 555-0101",)), [Party.tn("12025550101")]),
        (AtisIdentity(tn=("2025550101",)), [Party.tn("12025550101")]),
        (AtisIdentity(tn=("+442079460000",)), [Party.tn("442079460000")]),
        (AtisIdentity(tn=("911",)), [Party.tn("911")]),
        (AtisIdentity(uri=("tel:+12025550101",)), [Party.tn("12025550101")]),
        (
            AtisIdentity(uri=("sip:+12025550101@alpha.example;user=phone",)),
            [Party.tn("12025550101")],
        ),
        (AtisIdentity(uri=("sip:Alice@Example.COM",)), [Party.uri("sip:alice@example.com")]),
        (
            AtisIdentity(tn=("12025550199", "12025550142")),
            [Party.tn("12025550199"), Party.tn("12025550142")],
        ),
    ],
    ids=["canonical", "e164-separators", "nanp-10-digits", "uk", "special-number", "tel-uri",
         "sip-user-phone", "sip-uri-normalised", "two-tns"],
)  # fmt: skip
def test_parties(identity: AtisIdentity, expected: list[Party]) -> None:
    assert list(parties_of(identity, "x")) == expected


@pytest.mark.parametrize(
    ("identity", "parameter"),
    [
        (AtisIdentity(tn=("alice",)), "x.tn"),
        (AtisIdentity(tn=("",)), "x.tn"),
        (AtisIdentity(uri=("no-scheme",)), "x.uri"),
        (AtisIdentity(), "x"),
    ],
    ids=["tn-letters", "tn-empty", "uri-no-scheme", "neither"],
)
def test_bad_parties(identity: AtisIdentity, parameter: str) -> None:
    with pytest.raises(AtisError) as caught:
        parties_of(identity, "x")
    assert caught.value.parameter == parameter


def test_verification_request_shape() -> None:
    request = verification_request(
        identities=["tok;info=<https://a/b>"],
        orig=AtisIdentity(tn=("+12025550101",)),
        to=AtisIdentity(tn=("2025550199",)),
        dest=AtisIdentity(tn=("12025550142",)),
        time=1_768_478_400,
    )
    assert request.identities == ("tok;info=<https://a/b>",)
    assert request.from_party == Party.tn("12025550101")
    assert request.pai_party is None
    assert request.dest == (Party.tn("12025550199"),)
    assert request.request_uri == Party.tn("12025550142")
    assert request.date == datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    assert request.date_present


def test_no_time_means_no_date_header() -> None:
    request = verification_request(
        identities=["x"], orig=AtisIdentity(tn=("1",)), to=None, time=None
    )
    assert request.date is None
    assert not request.date_present
    assert request.dest == ()


def test_comma_joined_identity_is_split_and_flagged() -> None:
    request = verification_request(
        identities=["a.b.c;info=<https://x/y>, d.e.f;info=<https://x/z>"],
        orig=AtisIdentity(tn=("12025550101",)),
        to=None,
        time=None,
    )
    assert len(request.identities) == 2
    assert [f.reason for f in request.findings] == [Reason.COMMA_JOINED_IDENTITY]


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"identities": []}, "verificationRequest.identity"),
        ({"identities": ["x"] * (MAX_IDENTITIES + 1)}, "verificationRequest.identity"),
        ({"orig": AtisIdentity(tn=("1", "2"))}, "verificationRequest.from"),
        ({"time": -1}, "verificationRequest.time"),
        ({"time": 10**12}, "verificationRequest.time"),
        ({"dest": AtisIdentity(tn=("1", "2"))}, "verificationRequest.dest"),
    ],
    ids=["no-identity", "too-many", "two-origins", "negative-time", "time-overflow", "two-dests"],
)
def test_bad_verification_requests(kwargs: dict[str, object], parameter: str) -> None:
    values: dict[str, object] = {
        "identities": ["x"],
        "orig": AtisIdentity(tn=("12025550101",)),
        "to": None,
        "time": None,
    }
    values.update(kwargs)
    with pytest.raises(AtisError) as caught:
        verification_request(**values)  # type: ignore[arg-type]
    assert caught.value.parameter == parameter


SIGN = {
    "ppt": "shaken",
    "attest": "A",
    "orig": AtisIdentity(tn=("+12025550101",)),
    "dest": AtisIdentity(tn=("2025550199",)),
    "iat": 1_768_478_400,
    "origid": "o",
}


def test_signing_payload_canonicalises() -> None:
    assert signing_payload(**SIGN) == {  # type: ignore[arg-type]
        "attest": "A",
        "dest": {"tn": ["12025550199"]},
        "iat": 1_768_478_400,
        "orig": {"tn": "12025550101"},
        "origid": "o",
    }


@pytest.mark.parametrize(
    ("changes", "parameter"),
    [
        ({"attest": None}, "signingRequest.attest"),
        ({"attest": "D"}, "signingRequest.attest"),
        ({"origid": None}, "signingRequest.origid"),
        ({"orig": AtisIdentity(uri=("sip:a@b",))}, "signingRequest.orig.uri"),
        ({"orig": AtisIdentity(tn=("1", "2"))}, "signingRequest.orig.tn"),
        ({"dest": AtisIdentity()}, "signingRequest.dest"),
        ({"iat": -1}, "signingRequest.iat"),
        ({"ppt": "rph"}, "signingRequest.ppt"),
        ({"div": AtisIdentity(tn=("1",))}, "signingRequest.div"),
        ({"ppt": "div"}, "signingRequest.div"),
    ],
    ids=["no-attest", "attest-D", "no-origid", "orig-uri", "two-origs", "no-dest",
         "negative-iat", "ppt-rph", "div-with-shaken", "div-missing"],
)  # fmt: skip
def test_bad_signing_requests(changes: dict[str, object], parameter: str) -> None:
    with pytest.raises(AtisError) as caught:
        signing_payload(**{**SIGN, **changes})  # type: ignore[arg-type]
    assert caught.value.parameter == parameter


def test_div_payload() -> None:
    payload = signing_payload(
        ppt="div",
        attest=None,
        orig=AtisIdentity(tn=("12025550101",)),
        dest=AtisIdentity(tn=("12025550142",)),
        iat=1,
        origid=None,
        div=AtisIdentity(tn=("+12025550199",)),
    )
    assert payload["div"] == {"tn": "12025550199"}
