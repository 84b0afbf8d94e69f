"""Fuzzing the verifier end to end: whatever arrives, a result comes back (never a crash).

Invariant (ARCHITECTURE.md section 2, "only our error escapes"): arbitrary Identity values,
mutations of a valid signed value and arbitrary From/To/PAI/Date strings go through
``analyzer.extract.request_from_headers`` (which may raise only ``ExtractError``) and
``Verifier.verify``, which always returns a ``VerificationResult`` whose ``to_json()`` is
JSON-serialisable; arbitrary bytes through ``request_from_sip_bytes`` likewise.
RFC 8224 section 6.2 (every header judged, failures are verdicts).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.extract import ExtractError, request_from_headers, request_from_sip_bytes
from analyzer.trustload import load_trust_store
from shaken.errors import Reason
from shaken.result import VerificationResult, Verstat
from shaken.source import MemorySource
from shaken.verifier import VerificationRequest, Verifier
from tests.conftest import FIXTURES

AT = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)
DATE = "Thu, 15 Jan 2026 12:00:00 GMT"
FROM = "<sip:+12025550101@alpha.example;user=phone>;tag=a1"
TO = "<sip:+12025550199@bravo.example;user=phone>"
ALPHA_CALL = (FIXTURES / "calls" / "invite_alpha_a.sip").read_bytes()


def _valid_identity() -> str:
    for line in ALPHA_CALL.decode("ascii").split("\r\n"):
        if line.startswith("Identity: "):
            return line.removeprefix("Identity: ")
    raise AssertionError("fixture call lost its Identity header")


VALID = _valid_identity()

# Modest example counts: the whole project suite must stay well under 10 minutes on 2 cores.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _verifier() -> Verifier:
    certs = FIXTURES / "certs"
    source = MemorySource(
        {
            "https://certs.alpha.example/alpha.pem": (
                certs / "certs.alpha.example" / "alpha.pem"
            ).read_bytes(),
            "https://crl.stirscope.example/intermediate.crl": (
                certs / "crl.stirscope.example" / "intermediate.crl"
            ).read_bytes(),
            "https://crl.stirscope.example/root.crl": (
                certs / "crl.stirscope.example" / "root.crl"
            ).read_bytes(),
        }
    )
    return Verifier(trust=load_trust_store([FIXTURES / "pki" / "trust"]), source=source)


VERIFIER = _verifier()


def _check(result: object) -> VerificationResult:
    assert isinstance(result, VerificationResult)
    assert isinstance(result.verstat, Verstat)
    encoded = json.dumps(result.to_json())
    assert json.loads(encoded)["verstat"] == result.verstat.value
    for passport in result.passports:
        for finding in passport.findings:
            assert isinstance(finding.reason, Reason)
    return result


def _verify_headers(identities: list[str], **headers: str | None) -> VerificationResult | None:
    """The CLI/batch path; None when extraction refused the SIP values (its only error)."""
    try:
        request = request_from_headers(
            identities=identities,
            from_=headers.get("from_") or FROM,
            to=headers.get("to") or TO,
            pai=headers.get("pai"),
            date=headers.get("date", DATE),
            request_uri=headers.get("request_uri"),
        )
    except ExtractError:
        return None
    return _check(VERIFIER.verify(request, at=AT))


def test_baseline_valid_identity_passes() -> None:
    """The mutation tests below start from a value that does verify (else they prove little)."""
    result = _verify_headers([VALID])
    assert result is not None
    assert result.verstat is Verstat.PASSED


# -- arbitrary Identity values -----------------------------------------------------------------

# Text biased towards the characters the Identity grammar cares about (RFC 8224 section 4).
GRAMMAR = st.sampled_from([*";,=<>\"'. \t\r\n\\-_:/@", "info", "alg", "ppt", "ES256"])
IDENTITY_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(GRAMMAR, st.text(max_size=8)), max_size=40).map("".join),
)


@FUZZ
@given(values=st.lists(IDENTITY_TEXT, min_size=0, max_size=3))
def test_arbitrary_identity_values(values: list[str]) -> None:
    result = _verify_headers(values)
    assert result is not None  # From/To are valid: extraction must not refuse
    if not values:
        assert result.reason is Reason.NO_IDENTITY_HEADER
    elif not result.passports:
        # Every value was blank or only separators; the request has no Identity at all.
        assert result.verstat is Verstat.NO_VALIDATION


# -- mutations of a valid signed value ---------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> str:
    value = VALID
    kind = draw(
        st.sampled_from(["flip", "truncate", "insert", "delete", "param", "huge", "splice"])
    )
    position = draw(st.integers(0, len(value)))
    if kind == "flip":
        index = min(position, len(value) - 1)
        char = draw(st.characters(codec="utf-8", exclude_characters=value[index]))
        return value[:index] + char + value[index + 1 :]
    if kind == "truncate":
        return value[:position]
    if kind == "insert":
        extra = draw(st.sampled_from([";", ",", '"', "'", "<", ">", "=", " ", "\r\n", "\x00"]))
        return value[:position] + extra * draw(st.integers(1, 3)) + value[position:]
    if kind == "delete":
        end = draw(st.integers(position, min(len(value), position + 20)))
        return value[:position] + value[end:]
    if kind == "param":
        name = draw(st.sampled_from(["info", "alg", "ppt", "x", "info*", ""]))
        raw = draw(st.text(max_size=40))
        return f"{value};{name}={raw}"
    if kind == "huge":
        size = draw(st.sampled_from([1_000, 10_000, 100_000]))
        name = draw(st.sampled_from(["x", "ppt", "info"]))
        return f"{value};{name}={'a' * size}"
    # splice: the token from the valid value with a new parameter tail
    token = value.split(";", 1)[0]
    tail = draw(st.lists(GRAMMAR, max_size=20).map("".join))
    return token + tail


@FUZZ
@given(value=mutated())
def test_mutated_valid_identity(value: str) -> None:
    result = _verify_headers([value])
    assert result is not None
    if value != VALID and result.passed:
        # A mutation may still pass only if the signed token is intact; whitespace inside it
        # (a folded header) is tolerated with a warning by the Identity parser.
        passport = result.passports[0]
        assert passport.signature_valid is True
        assert VALID.split(";", 1)[0] in "".join(value.split())


@pytest.mark.parametrize(
    "index",
    [0, 10, 100, 200, 300, len(VALID.split(";")[0]) - 5],
    ids=["header", "header-mid", "payload", "payload-late", "signature", "signature-end"],
)
def test_flipped_token_character_never_passes(index: int) -> None:
    """A token byte changed anywhere: the call must not pass (438 family, never a crash)."""
    char = "A" if VALID[index] != "A" else "B"
    result = _verify_headers([VALID[:index] + char + VALID[index + 1 :]])
    assert result is not None
    assert result.verstat is Verstat.FAILED
    assert result.status_code == 438


# -- arbitrary SIP header strings --------------------------------------------------------------

HEADER_TEXT = st.one_of(
    st.text(max_size=120),
    st.sampled_from(
        [
            FROM,
            TO,
            "<tel:+12025550101>",
            "sip:alice@example.com",
            "<sip:@>",
            "<>",
            '"x" <sip:+1;user=phone>',
            "<sip:+12025550101@a;user=phone>, <tel:+12025550101>",
            "tel:+1-202-555-0101;phone-context=+1",
        ]
    ),
)
DATE_TEXT = st.one_of(
    st.none(),
    st.text(max_size=60),
    st.sampled_from(
        [DATE, "Thu, 15 Jan 2026 12:00:00 UTC", "15 Jan 2026 12:00:00 GMT", "Thu, 99 Foo 9999"]
    ),
)


@FUZZ
@given(
    from_=HEADER_TEXT,
    to=HEADER_TEXT,
    pai=st.one_of(st.none(), HEADER_TEXT),
    date=DATE_TEXT,
    request_uri=st.one_of(st.none(), HEADER_TEXT),
)
def test_arbitrary_sip_values(
    from_: str, to: str, pai: str | None, date: str | None, request_uri: str | None
) -> None:
    _verify_headers(
        [VALID], from_=from_, to=to, pai=pai, date=date, request_uri=request_uri
    )  # only ExtractError may be raised, and _verify_headers absorbs exactly that


@FUZZ
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_as_sip(data: bytes) -> None:
    try:
        request = request_from_sip_bytes(data)
    except ExtractError:
        return
    _check(VERIFIER.verify(request, at=AT))


@st.composite
def mangled_call(draw: st.DrawFn) -> bytes:
    """The fixture INVITE with a slice replaced by random bytes (keeps most of the structure)."""
    start = draw(st.integers(0, len(ALPHA_CALL)))
    end = draw(st.integers(start, min(len(ALPHA_CALL), start + 64)))
    return ALPHA_CALL[:start] + draw(st.binary(max_size=64)) + ALPHA_CALL[end:]


@FUZZ
@given(data=mangled_call())
def test_mangled_invite(data: bytes) -> None:
    try:
        request = request_from_sip_bytes(data)
    except ExtractError:
        return
    _check(VERIFIER.verify(request, at=AT))


def test_request_without_identities_or_parties() -> None:
    """The bare minimum a caller can build by hand is judged too (428, not a crash)."""
    result = _check(VERIFIER.verify(VerificationRequest(identities=()), at=AT))
    assert result.status_code == 428
    assert result.reason is Reason.NO_IDENTITY_HEADER
    result = _check(VERIFIER.verify(VerificationRequest(identities=(VALID,)), at=AT))
    assert result.verstat is Verstat.FAILED
    reasons = {f.reason for f in result.passports[0].findings}
    assert Reason.NO_ORIGINATING_IDENTITY in reasons
