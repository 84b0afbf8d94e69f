"""CallTracker: Call-ID + tags, transactions, legs, completion, idle timeouts in capture time."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from analyzer.anomaly import AnomalyKind
from analyzer.calls import (
    ANSWERED_IDLE_NS,
    LINGER_NS,
    NS_PER_S,
    PENDING_IDLE_NS,
    Call,
    CallEnd,
    CallState,
    CallTracker,
)
from analyzer.capture import ObservedMessage
from sip import Request, Response, response_to

A, B, P = "192.0.2.1", "198.51.100.2", "203.0.113.3"
T0 = 1_768_478_400 * NS_PER_S
MS = 1_000_000


def invite(
    call_id: str = "c1",
    *,
    branch: str = "b1",
    cseq: int = 1,
    to_tag: str | None = None,
    identity: str | None = None,
    extra_via: str | None = None,
) -> Request:
    headers = []
    if extra_via:
        headers.append(("Via", extra_via))
    headers += [
        ("Via", f"SIP/2.0/UDP {A}:5060;branch=z9hG4bK{branch}"),
        ("Max-Forwards", "70"),
        ("From", "<sip:+12025550101@a.example>;tag=from1"),
        ("To", "<sip:+12025550199@b.example>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} INVITE"),
    ]
    if identity:
        headers.append(("Identity", identity))
    return Request.build("INVITE", "sip:+12025550199@b.example", headers)


def request(method: str, call_id: str = "c1", *, cseq: int = 2, branch: str = "x") -> Request:
    headers = [
        ("Via", f"SIP/2.0/UDP {A}:5060;branch=z9hG4bK{branch}"),
        ("Max-Forwards", "70"),
        ("From", "<sip:+12025550101@a.example>;tag=from1"),
        ("To", "<sip:+12025550199@b.example>;tag=to1"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    return Request.build(method, "sip:+12025550199@b.example", headers)


def ok(req: Request, status: int = 200) -> Response:
    return response_to(req, status, "X", to_tag="to1")


_frames = itertools.count(1)


def seen(msg: Request | Response, at_ms: int, *, src: str = A, dst: str = B) -> ObservedMessage:
    if isinstance(msg, Response):
        src, dst = dst, src
    return ObservedMessage(msg, T0 + at_ms * MS, next(_frames), (), src, 5060, dst, 5060, "udp")


def run(steps: list[ObservedMessage], tracker: CallTracker | None = None) -> list[Call]:
    tracker = tracker or CallTracker()
    out: list[Call] = []
    for step in steps:
        out.extend(tracker.feed(step))
    out.extend(tracker.flush())
    return out


@dataclass(frozen=True)
class Expect:
    state: CallState
    end: CallEnd
    final: int | None
    legs: int = 1
    retransmissions: int = 0
    provisional: tuple[int, ...] = ()
    reinvites: int = 0
    attempts: int = 1


def answered_bye() -> list[ObservedMessage]:
    inv = invite()
    bye = request("BYE")
    return [
        seen(inv, 0), seen(response_to(inv, 100, "Trying"), 5), seen(ok(inv, 180), 100),
        seen(ok(inv), 900), seen(request("ACK", cseq=1), 910), seen(bye, 3000),
        seen(ok(bye), 3010),
    ]  # fmt: skip


def retransmitted() -> list[ObservedMessage]:
    inv = invite()
    return [seen(inv, 0), seen(inv, 500), seen(inv, 1500), seen(ok(inv), 2000)]


def rejected() -> list[ObservedMessage]:
    inv = invite()
    return [seen(inv, 0), seen(ok(inv, 486), 200), seen(request("ACK", cseq=1, branch="b1"), 210)]


def cancelled() -> list[ObservedMessage]:
    inv = invite()
    cancel = request("CANCEL", cseq=1, branch="b1")
    return [
        seen(inv, 0), seen(ok(inv, 180), 100), seen(cancel, 2000), seen(ok(cancel), 2005),
        seen(ok(inv, 487), 2006), seen(request("ACK", cseq=1, branch="b1"), 2010),
    ]  # fmt: skip


def auth_retry() -> list[ObservedMessage]:
    first = invite()
    second = invite(branch="b2", cseq=2, identity="tok;info=<https://x.example/c.pem>")
    bye = request("BYE", cseq=3)
    return [
        seen(first, 0), seen(ok(first, 407), 50), seen(request("ACK", cseq=1, branch="b1"), 60),
        seen(second, 100), seen(ok(second), 900), seen(bye, 5000), seen(ok(bye), 5005),
    ]  # fmt: skip


def two_hops() -> list[ObservedMessage]:
    inv = invite()
    hop2 = invite(extra_via=f"SIP/2.0/UDP {P}:5060;branch=z9hG4bKproxy")
    bye = request("BYE")
    return [
        seen(inv, 0, src=A, dst=P), seen(hop2, 2, src=P, dst=B),
        seen(ok(hop2), 900, src=P, dst=B), seen(ok(inv), 902, src=A, dst=P),
        seen(bye, 3000, src=A, dst=P), seen(ok(bye), 3005, src=A, dst=P),
    ]  # fmt: skip


def reinvite() -> list[ObservedMessage]:
    inv = invite()
    re = invite(branch="b9", cseq=3, to_tag="to1")
    return [seen(inv, 0), seen(ok(inv), 900), seen(re, 60_000), seen(ok(re, 491), 60_010)]


def never_answered() -> list[ObservedMessage]:
    return [seen(invite(), 0), seen(ok(invite(), 180), 100)]


SCENARIOS: dict[str, tuple[Callable[[], list[ObservedMessage]], Expect]] = {
    "answered_then_bye": (
        answered_bye, Expect(CallState.ANSWERED, CallEnd.BYE, 200, provisional=(100, 180))
    ),
    "udp_retransmissions_are_one_leg": (
        retransmitted, Expect(CallState.ANSWERED, CallEnd.END_OF_INPUT, 200, retransmissions=2)
    ),
    "rejected_486": (rejected, Expect(CallState.REJECTED, CallEnd.FINAL_RESPONSE, 486)),
    "cancelled_487": (
        cancelled, Expect(CallState.CANCELLED, CallEnd.CANCEL, 487, provisional=(180,))
    ),
    "407_then_authenticated_retry": (
        auth_retry, Expect(CallState.ANSWERED, CallEnd.BYE, 200, attempts=2)
    ),
    "same_call_at_two_hops": (two_hops, Expect(CallState.ANSWERED, CallEnd.BYE, 200, legs=2)),
    "reinvite_not_a_new_leg": (
        reinvite, Expect(CallState.ANSWERED, CallEnd.END_OF_INPUT, 200, reinvites=1)
    ),
    "unanswered_at_end_of_input": (
        never_answered, Expect(CallState.PROCEEDING, CallEnd.END_OF_INPUT, None, provisional=(180,))
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios(name: str) -> None:
    build, expect = SCENARIOS[name]
    steps = build()
    calls = run(steps)
    assert len(calls) == 1
    call = calls[0]
    assert call.call_id == "c1"
    assert call.state is expect.state
    assert call.end is expect.end
    assert call.final_status == expect.final
    assert len(call.legs) == expect.legs
    assert sum(leg.retransmissions for leg in call.legs) == expect.retransmissions
    assert call.provisional == expect.provisional
    assert call.reinvites == expect.reinvites
    assert call.legs[0].attempts == expect.attempts
    assert call.messages == len(steps)
    assert call.frames == tuple(s.frame for s in steps)
    assert call.start_ns == T0


def test_authenticated_retry_is_the_invite_verified() -> None:
    call = run(auth_retry())[0]
    assert call.legs[0].invite.message.headers.get("identity") is not None
    assert call.primary is call.legs[0]


def test_two_hops_keep_each_legs_final_status() -> None:
    call = run(two_hops())[0]
    assert [(leg.src, leg.dst) for leg in call.legs] == [(A, P), (P, B)]
    assert [leg.final_status for leg in call.legs] == [200, 200]


def test_completed_call_emitted_after_linger_in_capture_time() -> None:
    tracker = CallTracker()
    emitted = [c for s in answered_bye() for c in tracker.feed(s)]
    assert emitted == []
    later = seen(invite("c2"), 3000 + LINGER_NS // MS + 1000)
    emitted = tracker.feed(later)
    assert [c.call_id for c in emitted] == ["c1"]
    assert emitted[0].end is CallEnd.BYE
    assert tracker.open_calls == 1


@pytest.mark.parametrize(
    ("steps", "idle_ns"),
    [
        pytest.param([seen(invite(), 0)], PENDING_IDLE_NS, id="pending"),
        pytest.param([seen(invite(), 0), seen(ok(invite()), 10)], ANSWERED_IDLE_NS, id="answered"),
    ],
)
def test_idle_timeout_in_capture_time(steps: list[ObservedMessage], idle_ns: int) -> None:
    tracker = CallTracker()
    for step in steps:
        assert tracker.feed(step) == []
    last = steps[-1].ts_ns
    just_before = seen(invite("other-1"), (last - T0 + idle_ns) // MS - 1000)
    assert tracker.feed(just_before) == []
    after = seen(invite("other-2"), (last - T0 + idle_ns) // MS + 2000)
    emitted = tracker.feed(after)
    assert [(c.call_id, c.end) for c in emitted] == [("c1", CallEnd.IDLE_TIMEOUT)]


def test_late_and_unmatched_messages_are_counted_not_tracked() -> None:
    tracker = CallTracker()
    inv = invite()
    calls = run([seen(inv, 0), seen(ok(inv, 486), 10)], tracker)
    assert len(calls) == 1
    tracker.feed(seen(ok(inv, 486), 100_000))  # a retransmitted final after the call ended
    tracker.feed(seen(request("BYE", "unknown-call"), 100_001))
    tracker.feed(seen(request("OPTIONS", "ping"), 100_002))
    assert tracker.stats.late_messages == 1
    assert dict(tracker.stats.unmatched) == {"BYE": 1, "OPTIONS": 1}
    assert tracker.flush() == []


def test_call_id_reused_after_emission_is_a_new_call() -> None:
    inv = invite()
    calls = run([seen(inv, 0), seen(ok(inv, 486), 10), seen(invite(branch="b7"), 200_000)])
    assert [c.final_status for c in calls] == [486, None]


def test_message_without_call_id_is_an_anomaly() -> None:
    tracker = CallTracker()
    broken = Request.build("INVITE", "sip:x@b.example", [("Via", "SIP/2.0/UDP a;branch=z9")])
    assert tracker.feed(seen(broken, 0)) == []
    (anomaly,) = tracker.take_anomalies()
    assert anomaly.kind is AnomalyKind.SIP_MISSING_CALL_ID
    assert tracker.take_anomalies() == []


def test_eviction_keeps_memory_bounded_and_says_so() -> None:
    tracker = CallTracker(max_open_calls=2)
    out = []
    for i in range(3):
        out.extend(tracker.feed(seen(invite(f"c{i}"), i)))
    assert [(c.call_id, c.end) for c in out] == [("c0", CallEnd.EVICTED)]
    assert out[0].anomalies[0].kind is AnomalyKind.CALL_EVICTED
    assert tracker.open_calls == 2
    assert tracker.stats.evicted == 1


def test_in_dialog_invite_of_a_call_started_before_the_capture() -> None:
    calls = run([seen(invite(to_tag="to1"), 0)])
    assert len(calls) == 1
    assert len(calls[0].legs) == 1
    assert calls[0].reinvites == 0


def test_flush_order_is_deterministic() -> None:
    inv1, inv2 = invite("a"), invite("b")
    steps = [seen(inv2, 0), seen(inv1, 1), seen(ok(inv1, 486), 2)]
    assert [c.call_id for c in run(steps)] == ["a", "b"]
