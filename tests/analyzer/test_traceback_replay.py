"""Replay detection: one PASSporT signature on several Call-IDs, or seen outside its window."""

from __future__ import annotations

import base64
import json

import pytest

from analyzer.traceback_replay import (
    NS_PER_S,
    ReplayDetector,
    ReplayFlag,
    ReplayKind,
    Sighting,
    find_replays,
    passport_iat,
    signature_digest,
)

T0 = 1_768_478_400


def token(iat: int, sig: str = "c2lnbmF0dXJl") -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"iat": iat}).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJFUzI1NiJ9.{payload}.{sig};info=<https://x.example/c.pem>;alg=ES256"


@pytest.mark.parametrize(
    ("value", "has_digest"),
    [(token(T0), True), ("..c2ln;info=<https://x>", True), ("not-a-token", False), ("a.b.", False)],
    ids=["full-form", "compact-form", "no-dots", "empty-signature"],
)
def test_signature_digest(value: str, has_digest: bool) -> None:
    digest = signature_digest(value)
    assert (digest is not None) is has_digest
    if digest is not None:
        assert len(digest) == 64


def test_digest_ignores_parameters_but_not_signature() -> None:
    assert signature_digest(token(T0)) == signature_digest(token(T0 + 5))  # same signature text
    assert signature_digest(token(T0)) != signature_digest(token(T0, sig="b3RoZXI"))
    assert passport_iat(token(T0)) == T0
    assert passport_iat("a.!!!.c") is None


def at(seconds: int) -> int:
    return (T0 + seconds) * NS_PER_S


@pytest.mark.parametrize(
    ("second", "second_call_id", "kinds"),
    [
        (10, "call-2", (ReplayKind.DIFFERENT_CALL_ID,)),
        (300, "call-2", (ReplayKind.DIFFERENT_CALL_ID, ReplayKind.OUTSIDE_FRESHNESS)),
        (300, "call-1", (ReplayKind.OUTSIDE_FRESHNESS,)),
        (10, "call-1", None),
    ],
    ids=["new-call-id-fresh", "new-call-id-late", "same-call-id-late", "same-call-id-fresh"],
)
def test_streaming_detector(
    second: int, second_call_id: str, kinds: tuple[ReplayKind, ...] | None
) -> None:
    detector = ReplayDetector(freshness_s=60)
    assert detector.observe("call-1", at(0), [token(T0)]) is None
    flag = detector.observe(second_call_id, at(second), [token(T0)])
    if kinds is None:
        assert flag is None
        return
    assert flag is not None
    assert flag.kinds == kinds
    assert flag.first_call_id == "call-1"
    assert flag.sightings == 2
    assert not flag.first


def test_streaming_detector_forgets_the_oldest() -> None:
    detector = ReplayDetector(freshness_s=60, max_remembered=2)
    for n in range(3):
        detector.observe(f"c{n}", at(n), [token(T0, sig=f"s{n}")])
    assert detector.observe("again", at(5), [token(T0, sig="s0")]) is None
    assert detector.observe("again", at(5), [token(T0, sig="s2")]) is not None


def sighting(call_id: str, second: int, sig: str = "s", valid: bool = True) -> Sighting:
    return Sighting(call_id, at(second), sig * 64, T0, valid)


def test_batch_flags_every_sighting_in_time_order() -> None:
    sightings = [
        sighting("late", 200),
        sighting("first", 0),
        None,
        sighting("other", 1, sig="t"),
        sighting("again", 20),
    ]
    flags = find_replays(sightings, freshness_s=60)
    late, first, unsigned, other, again = flags
    assert unsigned is None
    assert other is None
    assert first is not None
    assert first.first
    assert first.kinds == (ReplayKind.DIFFERENT_CALL_ID,)
    assert again is not None
    assert not again.first
    assert late is not None
    assert late.kinds == (ReplayKind.DIFFERENT_CALL_ID, ReplayKind.OUTSIDE_FRESHNESS)
    assert {f.first_call_id for f in (first, again, late)} == {"first"}
    assert late.sightings == 3
    assert late.call_ids == ("again", "first", "late")


@pytest.mark.parametrize(
    ("valid", "flagged"), [(True, True), (False, False)], ids=["valid-stale", "invalid-stale"]
)
def test_batch_single_stale_sighting(valid: bool, flagged: bool) -> None:
    (flag,) = find_replays([sighting("solo", 300, valid=valid)], freshness_s=60)
    assert (flag is not None) is flagged
    if flag is not None:
        assert flag.kinds == (ReplayKind.OUTSIDE_FRESHNESS,)


def test_near_simultaneous_sightings_are_marked() -> None:
    flags = find_replays([sighting("a", 0), sighting("b", 0)], freshness_s=60)
    assert all(f is not None and f.near_simultaneous for f in flags)


def test_flag_json_round_trip() -> None:
    flag = ReplayFlag("a" * 64, (ReplayKind.DIFFERENT_CALL_ID,), "c1", at(0) + 123_000_000, 2,
                      ("c1", "c2"), T0, False, True)  # fmt: skip
    assert ReplayFlag.from_json(flag.to_json()) == flag
