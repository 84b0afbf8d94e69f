"""Calls out of SIP messages: Call-ID and tags, transactions, legs, completion and timeouts.

Theory of operation. A call is keyed by its Call-ID (globally unique per RFC 3261 section
8.1.1.4; proxies keep it, so one Call-ID seen at several hops is one call). An INVITE with an
unknown Call-ID opens a call. Within a call:

* A *leg* is one hop the INVITE was seen on: (src, sport, dst, dport, transport). The same
  INVITE again on the same hop with the same top Via branch is a retransmission (RFC 3261
  section 17.1.1.2); a new branch on the same hop without a To tag is a new attempt (after a
  401/407 challenge, section 22.2) on that leg; an INVITE with a To tag is a re-INVITE
  (section 14), counted but never verified. Each leg keeps its first INVITE (or the first
  signed one) for verification.
* Responses are matched to a leg by the top Via branch (section 17.1.3), else by the reversed
  address pair. 1xx are collected; the final status of the initial INVITE transaction (CSeq
  numbers of INVITEs without a To tag) is the call's; once a 2xx is seen it stays.
* The call then lives in one of three places: *pending* (no final response yet), *answered*
  (2xx, waiting for BYE) or *closing* (BYE, a non-2xx final or CANCEL seen). A closing call
  lingers ``LINGER_NS`` of capture time to absorb the ACK, the response to BYE and
  retransmissions (and an authenticated retry reopens it), then it is emitted.
* Pending and answered calls are kept in activity order and emitted after ``PENDING_IDLE_NS``
  or ``ANSWERED_IDLE_NS`` of capture-time silence; at most ``MAX_OPEN_CALLS`` are open (the
  least recently active is evicted, and says so). ``flush()`` emits the rest at end of input.
* Messages of a Call-ID just emitted are counted as late; other messages for an unknown
  Call-ID (a capture that starts mid-call, REGISTER, OPTIONS...) are counted, not tracked.

The tracker reads only each message's correlation keys (``ObservedMessage.keys``, see
sip/keys.py: method or status, Call-ID, CSeq, To tag, top Via branch, Identity presence), so
most messages are never parsed in full. Time is the capture time of the messages (never the
clock), so a run is deterministic.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, fields
from enum import StrEnum
from operator import attrgetter

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.capture import ObservedMessage
from sip.keys import MessageKeys

NS_PER_S = 1_000_000_000
# How long a closing call absorbs stragglers: 64*T1 = 32 s, the lifetime of an INVITE client
# transaction over UDP (Timer B) and how long a UAS retransmits a final response (Timer H/J)
# (RFC 3261 section 17.1.1.2 and section 17.2.1).
LINGER_NS = 32 * NS_PER_S
# An INVITE without a final response: proxies give up after Timer C, which "MUST be set to
# be greater than 3 minutes" (RFC 3261 section 16.6 step 11); one minute of margin.
PENDING_IDLE_NS = 240 * NS_PER_S
# An answered call silent this long is emitted without its BYE: RFC 4028 section 4 recommends
# a session interval of 1800 s, so a dialog with session timers would have refreshed by then.
ANSWERED_IDLE_NS = 1800 * NS_PER_S
# Open calls held at once (bounded memory: a call holds its INVITE, ~2 kB); beyond this the
# least recently active is evicted. 100k calls is ~10 minutes of a 150 cps trunk.
MAX_OPEN_CALLS = 100_000
# Call-IDs remembered after emission, to count late messages instead of opening new calls.
MAX_CLOSED_CALL_IDS = 65_536
# Frames recorded per call (evidence); a pathological call keeps its first ones.
MAX_FRAMES_PER_CALL = 512
# Expiry scans run at most this often in capture time (cheap per message).
EXPIRY_STEP_NS = NS_PER_S


class CallState(StrEnum):
    """Where the initial INVITE transaction got to (RFC 3261 section 13.3.1)."""

    TRYING = "trying"  # INVITE seen, no response
    PROCEEDING = "proceeding"  # provisional responses only
    ANSWERED = "answered"  # a 2xx was seen
    REJECTED = "rejected"  # a 3xx-6xx final response, no CANCEL
    CANCELLED = "cancelled"  # CANCEL seen (with 487 or nothing)


class CallEnd(StrEnum):
    """Why the call was emitted."""

    BYE = "bye"
    FINAL_RESPONSE = "final_response"
    CANCEL = "cancel"
    IDLE_TIMEOUT = "idle_timeout"
    END_OF_INPUT = "end_of_input"
    EVICTED = "evicted"


@dataclass(frozen=True, slots=True)
class Leg:
    """One hop the call's INVITE was seen on, with the INVITE kept for verification.

    RFC 3261 section 16 (proxies forward the request, one hop per leg).
    """

    src: str
    sport: int
    dst: str
    dport: int
    transport: str
    encapsulation: str
    invite: ObservedMessage
    retransmissions: int = 0
    attempts: int = 1
    final_status: int | None = None

    def __reduce__(self) -> tuple[type[Leg], tuple[object, ...]]:
        return Leg, _leg_values(self)  # see Call.__reduce__


@dataclass(frozen=True, slots=True)
class Call:
    """A finished (or abandoned) call: its legs, status, frames and how it ended.

    ``frames`` and ``frame_sources`` are parallel: frame number and input index of every
    message of the call in capture order. RFC 3261 section 12 (dialogs), section 13 (INVITE).
    """

    call_id: str
    legs: tuple[Leg, ...]
    start_ns: int
    last_ns: int
    state: CallState
    end: CallEnd
    final_status: int | None
    provisional: tuple[int, ...]
    messages: int
    invites: int
    reinvites: int
    frames: tuple[int, ...]
    frame_sources: tuple[int, ...]
    frames_truncated: bool = False
    bye_ns: int | None = None
    anomalies: tuple[Anomaly, ...] = ()

    def __reduce__(self) -> tuple[type[Call], tuple[object, ...]]:
        # Calls travel to worker processes by the chunk: the field values as constructor
        # arguments pickle and load several times faster than the dataclass default (a
        # ``fields()`` walk to save, an ``object.__setattr__`` per field to load).
        return Call, _call_values(self)

    @property
    def primary(self) -> Leg:
        """The leg whose INVITE speaks for the call: the first signed one, else the first."""
        for leg in self.legs:
            if leg.invite.keys.identity:
                return leg
        return self.legs[0]


# Every field's value, in constructor order, in one C-level call (for ``__reduce__``).
_leg_values = attrgetter(*(f.name for f in fields(Leg)))
_call_values = attrgetter(*(f.name for f in fields(Call)))


@dataclass(slots=True)
class _Leg:
    src: str
    sport: int
    dst: str
    dport: int
    transport: str
    encapsulation: str
    invite: ObservedMessage
    branches: set[str]
    retransmissions: int = 0
    attempts: int = 1
    final_status: int | None = None

    def freeze(self) -> Leg:
        return Leg(
            self.src, self.sport, self.dst, self.dport, self.transport, self.encapsulation,
            self.invite, self.retransmissions, self.attempts, self.final_status,
        )  # fmt: skip


@dataclass(slots=True)
class _OpenCall:
    call_id: str
    start_ns: int
    last_ns: int
    legs: list[_Leg] = field(default_factory=list)
    initial_cseqs: set[int] = field(default_factory=set)
    provisional: list[int] = field(default_factory=list)
    final_status: int | None = None
    cancelled: bool = False
    answered: bool = False
    messages: int = 0
    invites: int = 0
    reinvites: int = 0
    frames: list[int] = field(default_factory=list)
    frame_sources: list[int] = field(default_factory=list)
    frames_truncated: bool = False
    bye_ns: int | None = None
    closing: CallEnd | None = None
    generation: int = 0

    @property
    def state(self) -> CallState:
        if self.answered:
            return CallState.ANSWERED
        if self.cancelled:
            return CallState.CANCELLED
        if self.final_status is not None:
            return CallState.REJECTED
        return CallState.PROCEEDING if self.provisional else CallState.TRYING

    def freeze(self, end: CallEnd, anomalies: tuple[Anomaly, ...] = ()) -> Call:
        return Call(
            call_id=self.call_id,
            legs=tuple(leg.freeze() for leg in self.legs),
            start_ns=self.start_ns,
            last_ns=self.last_ns,
            state=self.state,
            end=end,
            final_status=self.final_status,
            provisional=tuple(self.provisional),
            messages=self.messages,
            invites=self.invites,
            reinvites=self.reinvites,
            frames=tuple(self.frames),
            frame_sources=tuple(self.frame_sources),
            frames_truncated=self.frames_truncated,
            bye_ns=self.bye_ns,
            anomalies=anomalies,
        )


@dataclass(slots=True)
class TrackerStats:
    """Counts for the run summary."""

    messages: int = 0
    invites: int = 0
    retransmissions: int = 0
    late_messages: int = 0
    unmatched: Counter[str] = field(default_factory=Counter)  # method or "response"
    no_call_id: int = 0
    calls_opened: int = 0
    calls_emitted: int = 0
    evicted: int = 0


class CallTracker:
    """The call state machine (see the module docstring); feed messages in capture order.

    RFC 3261 sections 12, 13, 16, 17.
    """

    def __init__(
        self,
        *,
        linger_ns: int = LINGER_NS,
        pending_idle_ns: int = PENDING_IDLE_NS,
        answered_idle_ns: int = ANSWERED_IDLE_NS,
        max_open_calls: int = MAX_OPEN_CALLS,
    ) -> None:
        self.linger_ns = linger_ns
        self.pending_idle_ns = pending_idle_ns
        self.answered_idle_ns = answered_idle_ns
        self.max_open_calls = max_open_calls
        self.stats = TrackerStats()
        self.anomalies: list[Anomaly] = []  # drained by the caller (take_anomalies)
        self._calls: dict[str, _OpenCall] = {}
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._closing: list[tuple[int, int, str, int]] = []  # (deadline, seq, call_id, gen)
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._seq = 0
        self._now = 0
        self._next_expiry = 0

    def take_anomalies(self) -> list[Anomaly]:
        """Anomalies found since the last call (messages that cannot belong to a call)."""
        out, self.anomalies = self.anomalies, []
        return out

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    def feed(self, obs: ObservedMessage) -> list[Call]:
        """Account one message; returns the calls that completed as capture time advanced."""
        out: list[Call] = []
        ts_ns = obs.ts_ns
        if ts_ns > self._now:
            self._now = ts_ns
            if ts_ns >= self._next_expiry:
                self._expire(out)
                self._next_expiry = ts_ns + EXPIRY_STEP_NS
        stats = self.stats
        stats.messages += 1
        keys = obs.keys
        call_id = keys.call_id
        method = keys.method
        if not call_id:
            if method == "INVITE":
                stats.invites += 1
            stats.no_call_id += 1
            self.anomalies.append(
                Anomaly(
                    AnomalyKind.SIP_MISSING_CALL_ID, obs.frame, ts_ns,
                    f"{obs.message.start_line[:80]!r} has no Call-ID (RFC 3261 section 8.1.1.4)",
                    obs.source_file,
                )
            )  # fmt: skip
            return out
        call = self._calls.get(call_id)
        if method is None:
            if call is None:
                self._unmatched(call_id, "response")
                return out
            self._response(call, obs, keys)
        elif method == "INVITE":
            stats.invites += 1
            if call is None:
                self._closed.pop(call_id, None)
                call = self._open(call_id, obs, out)
            self._invite(call, obs, keys)
        elif call is None:
            self._unmatched(call_id, method)
            return out
        elif method == "BYE" or method == "CANCEL":
            self._request(call, obs, method)
        # What every message of a call updates: counts, time, frames, activity order.
        call.messages += 1
        if ts_ns > call.last_ns:
            call.last_ns = ts_ns
        frames = obs.frames or (obs.frame,)
        kept = call.frames
        if len(kept) + len(frames) <= MAX_FRAMES_PER_CALL:
            kept.extend(frames)
            if len(frames) == 1:
                call.frame_sources.append(obs.source_file)
            else:
                # A TCP message straddling two capture files lists each frame's input.
                call.frame_sources.extend(obs.frame_sources or [obs.source_file] * len(frames))
        else:
            self._truncate_frames(call, obs)
        if call.closing is None:
            (self._answered if call.answered else self._pending).move_to_end(call_id)
        return out

    def advance(self, now_ns: int) -> list[Call]:
        """Move capture time on to ``now_ns`` with no message (a live source gone quiet) and
        return the calls whose linger or idle timeout passed; time never goes back (an earlier
        ``now_ns`` does nothing). RFC 3261 section 17.1.1.2 (timer B, see the module docstring).
        """
        out: list[Call] = []
        if now_ns <= self._now:
            return out
        self._now = now_ns
        self._expire(out)
        self._next_expiry = now_ns + EXPIRY_STEP_NS
        return out

    def flush(self) -> list[Call]:
        """End of input: every open call, closing ones first by deadline, then by activity."""
        out: list[Call] = []
        for _deadline, _seq, call_id, gen in sorted(self._closing):
            call = self._calls.get(call_id)
            if call is not None and call.generation == gen and call.closing is not None:
                out.append(self._emit(call, call.closing))
        self._closing.clear()
        rest = sorted(self._calls.values(), key=lambda c: (c.last_ns, c.start_ns, c.call_id))
        for call in rest:
            out.append(self._emit(call, CallEnd.END_OF_INPUT))
        return out

    # -- message handling -------------------------------------------------------------------

    def _unmatched(self, call_id: str, what: str) -> None:
        if call_id in self._closed:
            self.stats.late_messages += 1
        else:
            self.stats.unmatched[what] += 1

    def _open(self, call_id: str, obs: ObservedMessage, out: list[Call]) -> _OpenCall:
        if len(self._calls) >= self.max_open_calls:
            self._evict(out)
        call = _OpenCall(call_id, obs.ts_ns, obs.ts_ns)
        self._calls[call_id] = call
        self._pending[call_id] = None
        self.stats.calls_opened += 1
        return call

    @staticmethod
    def _truncate_frames(call: _OpenCall, obs: ObservedMessage) -> None:
        """Keep the frames of ``obs`` that fit under ``MAX_FRAMES_PER_CALL``, mark the rest."""
        room = max(0, MAX_FRAMES_PER_CALL - len(call.frames))
        frames = (obs.frames or (obs.frame,))[:room]
        call.frames.extend(frames)
        call.frame_sources.extend(obs.frame_source_list[:room] or [obs.source_file] * len(frames))
        call.frames_truncated = True

    def _invite(self, call: _OpenCall, obs: ObservedMessage, keys: MessageKeys) -> None:
        call.invites += 1
        if keys.to_tag and call.legs:
            call.reinvites += 1
            return
        cseq = keys.cseq
        if cseq is not None:
            call.initial_cseqs.add(cseq[0])
        branch = keys.branch
        hop = (obs.src, obs.sport, obs.dst, obs.dport, obs.transport)
        for leg in call.legs:
            if (leg.src, leg.sport, leg.dst, leg.dport, leg.transport) != hop:
                continue
            if branch in leg.branches:
                leg.retransmissions += 1
                self.stats.retransmissions += 1
                return
            leg.branches.add(branch)
            leg.attempts += 1
            if not leg.invite.keys.identity and keys.identity:
                leg.invite = obs
            self._reopen(call)
            return
        call.legs.append(
            _Leg(obs.src, obs.sport, obs.dst, obs.dport, obs.transport, obs.encapsulation, obs,
                 {branch})
        )  # fmt: skip
        self._reopen(call)

    def _reopen(self, call: _OpenCall) -> None:
        """A new INVITE attempt on a call that was closing (e.g. after a 407): pending again."""
        if call.closing is None or call.answered:
            return
        call.closing = None
        call.generation += 1
        call.final_status = None
        call.cancelled = False
        self._pending[call.call_id] = None

    def _request(self, call: _OpenCall, obs: ObservedMessage, method: str) -> None:
        if method == "CANCEL":
            call.cancelled = True
        elif method == "BYE":
            if call.bye_ns is None:
                call.bye_ns = obs.ts_ns
            self._close(call, CallEnd.BYE, obs.ts_ns)

    def _response(self, call: _OpenCall, obs: ObservedMessage, keys: MessageKeys) -> None:
        cseq = keys.cseq
        if cseq is None or cseq[1] != "INVITE" or cseq[0] not in call.initial_cseqs:
            return
        status = keys.status
        assert status is not None  # a response (keys.method is None)
        leg = self._leg_for(call, obs, keys.branch)
        if status < 200:
            if status not in call.provisional:
                call.provisional.append(status)
            return
        if leg is not None and (leg.final_status is None or status < 300):
            leg.final_status = status
        if status < 300:
            call.final_status = status
            if not call.answered:
                call.answered = True
                if call.closing is None:
                    self._pending.pop(call.call_id, None)
                    self._answered[call.call_id] = None
            return
        if call.answered:
            return
        call.final_status = status
        end = CallEnd.CANCEL if call.cancelled else CallEnd.FINAL_RESPONSE
        self._close(call, end, obs.ts_ns)

    def _leg_for(self, call: _OpenCall, obs: ObservedMessage, branch: str) -> _Leg | None:
        for leg in call.legs:
            if branch and branch in leg.branches:
                return leg
        for leg in call.legs:
            if (leg.src, leg.dst) == (obs.dst, obs.src):
                return leg
        return None

    # -- emission ----------------------------------------------------------------------------

    def _close(self, call: _OpenCall, end: CallEnd, ts_ns: int) -> None:
        if call.closing is not None:
            return
        call.closing = end
        self._pending.pop(call.call_id, None)
        self._answered.pop(call.call_id, None)
        self._seq += 1
        heapq.heappush(self._closing, (ts_ns + self.linger_ns, self._seq, call.call_id,
                                       call.generation))  # fmt: skip

    def _emit(self, call: _OpenCall, end: CallEnd, anomalies: tuple[Anomaly, ...] = ()) -> Call:
        del self._calls[call.call_id]
        self._pending.pop(call.call_id, None)
        self._answered.pop(call.call_id, None)
        self._closed[call.call_id] = None
        if len(self._closed) > MAX_CLOSED_CALL_IDS:
            self._closed.popitem(last=False)
        self.stats.calls_emitted += 1
        return call.freeze(end, anomalies)

    def _expire(self, out: list[Call]) -> None:
        now = self._now
        while self._closing and self._closing[0][0] <= now:
            _deadline, _seq, call_id, gen = heapq.heappop(self._closing)
            call = self._calls.get(call_id)
            if call is not None and call.generation == gen and call.closing is not None:
                out.append(self._emit(call, call.closing))
        for order, idle in ((self._pending, self.pending_idle_ns),
                            (self._answered, self.answered_idle_ns)):  # fmt: skip
            while order:
                call_id = next(iter(order))
                call = self._calls[call_id]
                if call.last_ns + idle > now:
                    break
                out.append(self._emit(call, CallEnd.IDLE_TIMEOUT))

    def _evict(self, out: list[Call]) -> None:
        fronts = [self._calls[next(iter(o))] for o in (self._pending, self._answered) if o]
        if not fronts:  # every open call is closing: emit the earliest deadline early
            while self._closing:
                _deadline, _seq, call_id, gen = heapq.heappop(self._closing)
                call = self._calls.get(call_id)
                if call is not None and call.generation == gen and call.closing is not None:
                    out.append(self._emit(call, call.closing))
                    return
            return
        victim = min(fronts, key=lambda c: c.last_ns)
        self.stats.evicted += 1
        note = Anomaly(
            AnomalyKind.CALL_EVICTED, victim.legs[0].invite.frame if victim.legs else None,
            victim.last_ns, f"more than {self.max_open_calls} open calls",
            victim.legs[0].invite.source_file if victim.legs else 0,
        )  # fmt: skip
        out.append(self._emit(victim, CallEnd.EVICTED, (note,)))
