"""Calls tracked on the workers in partitioned mode: the calls that only one partition sees
come back finished (verified and rendered there), only the edge goes through the main process.

Theory of operation. A single run feeds every SIP message, in capture order, to one
``CallTracker``; what it writes, and in which order, is decided by three things:

* the messages of each Call-ID (a call's content: legs, states, frames, retransmissions);
* the tracker's clock: an expiry check runs at a message whose time passes both the latest
  time seen and the next check time (then a second later, ``EXPIRY_STEP_NS``); a check emits
  the closing calls whose linger ran out (by deadline, then by the order they began to close),
  then the pending and the answered calls idle for too long (each in activity order); the end
  of the input emits the closing calls (same order), then the rest by (last time, start time,
  Call-ID);
* the run-wide state: the open-call limit (eviction), the Call-IDs remembered after their
  call ended (late messages) and the replay detector (flags in emission order).

So the work is cut along Call-IDs. Phase one (``partition_keys``, on the workers, over the
scans they keep): each partition's Call-IDs (hashed), the time of every message, the PASSporT
signatures of its INVITEs. The main process (``plan_tracking``) finds the *shared* Call-IDs
(seen in more than one partition), replays the clock over the message times (cheap: no
message), and gives every partition its clock at its start and the later check points that
may still end its open calls. Phase two (``track_partition``): each worker tracks the calls of
its other Call-IDs with the same tracker (``KeyedTracker``), its clock driven by every message
of its partition, shared ones included; a call still open at the end of the partition is
carried through the later check points it was given, then the end of input. The main process
tracks the shared Call-IDs' messages alone, its clock set at every check point of the run.
Every emitted call carries its *emission key* (check position, then the order inside the
check: deadline and closing position, or activity position; or the end-of-input order),
comparable across trackers, so merging the streams by key is the single run's order. Calls
whose PASSporT signature appears more than once in the run come back unverified: the main
process flags replays in emission order and verifies them, with the shared calls. With an
output directory (``--output-dir``) a worker writes its finished calls to its partition's part
itself and returns only their digests (``analyzer.outputdir``).

This is exact as long as the run-wide state never binds, which the main process makes sure
of before writing anything (else it tracks every call itself from the scans, the previous
partitioned mode, and says why): message times never go backwards (else the idle order would
mix trackers), no open-call limit can be reached, no late message is counted while the run
has more calls than the tracker remembers ended, and no replay is possible while the detector
could forget a signature. A run with fewer INVITEs than those limits cannot reach them: its
output starts as soon as its first partition is tracked (the shared calls are tracked as the
partitions come, ``EdgeTracker``); a larger run has every partition tracked and checked first
(``binding_limit``). Positions are ``rank << 32 | message index`` (``rank``: the partition's
place in capture order). ARCHITECTURE.md section 2; RFC 3261 section 17.1.1.2
(the timers behind the clock).
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import pickle
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import cast

from analyzer.anomaly import Anomaly
from analyzer.calls import (
    EXPIRY_STEP_NS,
    MAX_CLOSED_CALL_IDS,
    Call,
    CallEnd,
    CallTracker,
    TrackerStats,
    _OpenCall,
)
from analyzer.capture import ObservedMessage
from analyzer.outputdir import WRITTEN, PartFile, PartOutput
from analyzer.partscan import PartitionScan, observed, placed
from analyzer.records import CallRecord
from analyzer.run import Flagged, Result
from analyzer.spill import SpillOutput
from analyzer.traceback_replay import MAX_REMEMBERED, signature_digest

EmitKey = tuple[int, int, int, int, str]
"""Where a call is emitted in the single run's order (see the module docstring)."""
Entry = tuple[EmitKey, "Result | Call"]
"""A worker's call: finished (its result) or to flag and verify in the main process."""
# Position of the end of input: after every message (ranks stay below 2**30).
END = 1 << 62
RANK_SHIFT = 32
# Order inside a check: closing calls first, then idle pending, then idle answered ones.
_CLOSING, _PENDING, _ANSWERED = 0, 1, 2


def key_of(call_id: str) -> int:
    """A Call-ID as 64 bits, the same in every process. Two Call-IDs that collide are only
    taken for one shared Call-ID (tracked in the main process: exact either way)."""
    data = call_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def signature_key(identity: str) -> int | None:
    """An Identity value's PASSporT signature as 64 bits (``signature_digest``'s first
    bytes; a collision only marks a signature repeated), None without a signature."""
    digest = signature_digest(identity)
    return None if digest is None else int(digest[:16], 16)


class KeyedTracker(CallTracker):
    """A ``CallTracker`` that notes every emitted call's ``EmitKey`` (``keys``, parallel to
    the calls it returns) and can be driven by position: ``feed_at`` a message it tracks,
    ``tick_at`` a message it does not (only the clock moves, as ``feed`` moves it),
    ``advance_at`` a check point elsewhere in the run. ``max_open`` is the most calls it held
    at once, ``evictions`` how often its open-call limit struck.

    Tied to ``CallTracker``'s internals (clock fields, ``_close``, ``_emit``, ``_evict``): a
    change there must be mirrored here, and tests/analyzer/test_parttrack.py compares the two.
    """

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[EmitKey] = []
        self.max_open = 0
        self.evictions = 0
        self._pos = 0
        self._flushing = False
        self._closed_at: dict[str, tuple[int, int]] = {}
        self._last_pos: dict[str, int] = {}

    def resume(self, now_ns: int, next_expiry_ns: int) -> None:
        """Start from the clock a single run has where this tracker's messages begin."""
        self._now = now_ns
        self._next_expiry = next_expiry_ns

    @property
    def clock(self) -> tuple[int, int]:
        return self._now, self._next_expiry

    def feed_at(self, obs: ObservedMessage, pos: int) -> list[Call]:
        self._pos = pos
        done = self.feed(obs)
        call_id = obs.keys.call_id
        if call_id in self._calls:
            self._last_pos[call_id] = pos
            if len(self._calls) > self.max_open:
                self.max_open = len(self._calls)
        return done

    def tick_at(self, ts_ns: int, pos: int) -> list[Call]:
        out: list[Call] = []
        if ts_ns > self._now:  # the clock part of CallTracker.feed
            self._now = ts_ns
            if ts_ns >= self._next_expiry:
                self._pos = pos
                self._expire(out)
                self._next_expiry = ts_ns + EXPIRY_STEP_NS
        return out

    def advance_at(self, ts_ns: int, pos: int) -> list[Call]:
        self._pos = pos
        return self.advance(ts_ns)

    def flush(self) -> list[Call]:
        self._flushing = True
        return super().flush()

    def _close(self, call: _OpenCall, end: CallEnd, ts_ns: int) -> None:
        if call.closing is None:
            self._closed_at[call.call_id] = (ts_ns + self.linger_ns, self._pos)
        super()._close(call, end, ts_ns)

    def _evict(self, out: list[Call]) -> None:
        self.evictions += 1
        super()._evict(out)

    def _emit(self, call: _OpenCall, end: CallEnd, anomalies: tuple[Anomaly, ...] = ()) -> Call:
        call_id = call.call_id
        at = END if self._flushing else self._pos
        key: EmitKey
        if end is CallEnd.END_OF_INPUT:
            key = (END, _PENDING, call.last_ns, call.start_ns, call_id)
        elif end is CallEnd.IDLE_TIMEOUT or end is CallEnd.EVICTED:
            order = _ANSWERED if call.answered else _PENDING
            key = (at, order, self._last_pos[call_id], 0, "")
        else:  # a closing call whose linger ran out
            deadline, closed_at = self._closed_at[call_id]
            key = (at, _CLOSING, deadline, closed_at, "")
        self._closed_at.pop(call_id, None)
        self._last_pos.pop(call_id, None)
        self.keys.append(key)
        return super()._emit(call, end, anomalies)


# -- phase one: what each partition holds -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartKeys:
    """A partition's Call-IDs (``key_of``; none for messages without one), the time of each
    of its messages in order, how often each INVITE signature appears (``signature_key``),
    and its INVITEs."""

    call_ids: frozenset[int]
    times: array[int]
    signatures: dict[int, int]
    invites: int


def partition_keys(scan: PartitionScan) -> bytes:
    """The worker task of phase one: the pickled ``PartKeys`` of a scan (one pickle: Dask
    frames the items of a structure one by one)."""
    call_ids: set[str] = set()
    times = array("q")
    signatures: Counter[int] = Counter()
    invites = 0
    for item in scan.items:
        if type(item) is not tuple:
            continue
        keys = item[1]
        times.append(item[2])
        if keys.call_id:
            call_ids.add(keys.call_id)
        if keys.method == "INVITE":
            invites += 1
            for value in keys.identity_values if keys.identity else ():
                signature = signature_key(value)
                if signature is not None:
                    signatures[signature] += 1
    found = PartKeys(frozenset(map(key_of, call_ids)), times, dict(signatures), invites)
    return pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass(frozen=True, slots=True)
class TrackPlan:
    """What a worker needs to track its partition's own calls as the single run does: its
    place (``rank``), frame ``offset`` and input index ``source``; its Call-IDs that other
    partitions see too (``shared``, left to the main process); its INVITE signatures seen more
    than once in the run (``repeated``: those calls are flagged in the main process); the
    clock where it starts; the later check points ``(position, time)`` that may still end the
    calls it leaves open."""

    rank: int
    offset: int
    source: int
    shared: frozenset[int]
    repeated: frozenset[int]
    now_ns: int
    next_expiry_ns: int
    after: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Tracking:
    """The plan of a run (``plans`` by partition index), the check points of the whole run in
    order, and the totals the main process checks the results against."""

    plans: dict[int, TrackPlan]
    checks: list[tuple[int, int]]
    shared: int
    invites: int


def plan_tracking(
    order: Sequence[int],
    offsets: Sequence[int],
    sources: Sequence[int],
    found: dict[int, PartKeys],
) -> Tracking | str:
    """Phase one's results put together (``order``: partition indexes in capture order;
    ``offsets``/``sources`` by index), or why the workers cannot track calls exactly."""
    seen: set[int] = set()
    shared: set[int] = set()
    signatures: Counter[int] = Counter()
    invites = 0
    for index in order:
        keys = found[index]
        shared |= keys.call_ids & seen
        seen |= keys.call_ids
        signatures.update(keys.signatures)
        invites += keys.invites
    repeated = {signature for signature, count in signatures.items() if count > 1}
    if repeated and len(signatures) > MAX_REMEMBERED:
        return "PASSporTs seen again in a run with more than the replay detector remembers"
    reference = CallTracker()
    horizon = max(reference.linger_ns, reference.pending_idle_ns, reference.answered_idle_ns)
    checks: list[tuple[int, int]] = []
    clocks: dict[int, tuple[int, int]] = {}
    ends: dict[int, int] = {}
    now = next_expiry = 0
    for rank, index in enumerate(order):
        clocks[index] = (now, next_expiry)
        base = rank << RANK_SHIFT
        for position, ts in enumerate(found[index].times):
            if ts > now:  # CallTracker.feed's clock, without the messages
                now = ts
                if ts >= next_expiry:
                    checks.append((base | position, ts))
                    next_expiry = ts + EXPIRY_STEP_NS
            elif ts < now:
                return "capture times go backwards"
        ends[index] = now
    positions = [position for position, _ts in checks]
    plans: dict[int, TrackPlan] = {}
    for rank, index in enumerate(order):
        first = bisect.bisect_left(positions, (rank + 1) << RANK_SHIFT)
        last = first
        while last < len(checks) and checks[last][1] < ends[index] + horizon:
            last += 1
        keys = found[index]
        plans[index] = TrackPlan(
            rank, offsets[index], sources[index], frozenset(keys.call_ids & shared),
            frozenset(s for s in keys.signatures if s in repeated), *clocks[index],
            tuple(checks[first : last + 1]),
        )  # fmt: skip
    return Tracking(plans, checks, len(shared), invites)


# -- phase two: the partition's own calls ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartEdge:
    """What the main process needs of a tracked partition before writing: the messages of
    shared Call-IDs ``(position, message)``, the anomalies in capture order (placed), the
    fragment anomalies its end flushed, its tracker's counts and limits; ``part`` the part
    file its worker wrote its finished calls to (``--output-dir``; None without, or when it
    had none)."""

    messages: tuple[tuple[int, ObservedMessage], ...]
    anomalies: tuple[Anomaly, ...]
    tail: tuple[Anomaly, ...]
    stats: TrackerStats
    max_open: int
    evictions: int
    part: PartFile | None = None


@dataclass(frozen=True, slots=True)
class PartTrack:
    """A tracked partition, kept on its worker: ``edge`` (pickled ``PartEdge``) and
    ``entries`` (pickled ``Entry`` list, in emission-key order), fetched one after the
    other."""

    edge: bytes
    entries: bytes


Assess = Callable[[list[Flagged]], list[Result]]


def track_partition(
    scan: PartitionScan,
    plan: TrackPlan,
    assess: Assess,
    output: PartOutput | None = None,
    spill: SpillOutput | None = None,
) -> PartTrack:
    """The worker task of phase two (see the module docstring); ``assess`` verifies and
    renders calls. A pure function of the scan and the plan. With ``output`` (``assess`` then
    returns records, unrendered) the finished calls are written to the partition's own part
    (``part-<rank>``, in emission order) and come back as their digests only
    (``analyzer.outputdir.WRITTEN``): the records never travel to the main process. With
    ``spill`` (``assess`` renders) the rendered lines go to the partition's spill file and come
    back as their places (``analyzer.spill``)."""
    collecting = gc.isenabled()
    gc.disable()  # many acyclic objects, nothing to collect (as in scan_partition)
    try:
        return _track(scan, plan, assess, output, spill)
    finally:
        if collecting:
            gc.enable()


def _track(
    scan: PartitionScan,
    plan: TrackPlan,
    assess: Assess,
    output: PartOutput | None,
    spill: SpillOutput | None,
) -> PartTrack:
    tracker = KeyedTracker()
    tracker.resume(plan.now_ns, plan.next_expiry_ns)
    offset, source, shared = plan.offset, plan.source, plan.shared
    is_shared: dict[str, bool] = {}
    calls: list[Call] = []
    anomalies: list[Anomaly] = []
    edge: list[tuple[int, ObservedMessage]] = []
    position = plan.rank << RANK_SHIFT
    for item in scan.items:
        if type(item) is not tuple:
            anomalies.append(placed(cast(Anomaly, item), offset, source))
            continue
        obs = observed(item, offset, source)
        call_id = obs.keys.call_id or ""
        mine = is_shared.get(call_id)
        if mine is None:
            mine = is_shared[call_id] = bool(call_id) and key_of(call_id) in shared
        if mine:
            edge.append((position, obs))
            done = tracker.tick_at(obs.ts_ns, position)
        else:
            done = tracker.feed_at(obs, position)
            if tracker.anomalies:
                anomalies.extend(tracker.take_anomalies())
        if done:
            calls.extend(done)
        position += 1
    for at, ts in plan.after:
        calls.extend(tracker.advance_at(ts, at))
    calls.extend(tracker.flush())
    local: list[Flagged] = []
    for call in calls:
        if not _repeated(call, plan.repeated):
            local.append((call, None))  # no earlier sighting anywhere: the detector says None
    results = iter(assess(local))
    entries: list[Entry] = [
        (key, call if _repeated(call, plan.repeated) else next(results))
        for key, call in zip(tracker.keys, calls, strict=True)
    ]
    part = _write_part(output, plan.rank, entries) if output is not None else None
    if spill is not None:
        _spill_lines(spill, plan.rank, entries)
    found = PartEdge(
        tuple(edge), tuple(anomalies), tuple(placed(a, offset, source) for a in scan.tail),
        tracker.stats, tracker.max_open, tracker.evictions, part,
    )  # fmt: skip
    dump = pickle.dumps
    return PartTrack(dump(found, pickle.HIGHEST_PROTOCOL), dump(entries, pickle.HIGHEST_PROTOCOL))


def _write_part(output: PartOutput, rank: int, entries: list[Entry]) -> PartFile | None:
    """The finished calls of ``entries`` written to partition ``rank``'s part, each entry's
    record replaced by ``WRITTEN`` (in place); None when there is no finished call."""
    records: list[CallRecord] = []
    for index, (key, value) in enumerate(entries):
        if isinstance(value, Call):
            continue  # flagged and verified in the main process, which writes it
        digest, record = value
        assert isinstance(record, CallRecord), "assess must not render when workers write"
        records.append(record)
        entries[index] = (key, (digest, WRITTEN))
    if not records:
        return None
    return output.write_part(output.part_name("part", rank), records)


def _spill_lines(spill: SpillOutput, rank: int, entries: list[Entry]) -> None:
    """The rendered lines of ``entries`` written to partition ``rank``'s spill file, each
    replaced by its place there (in place); no file when there is no line. When the file
    cannot be written (a full disk), the lines stay in ``entries`` and travel back instead."""
    at: list[int] = []
    texts: list[str] = []
    for index, (_key, value) in enumerate(entries):
        if isinstance(value, Call):
            continue  # flagged and verified in the main process, which writes it
        text = value[1]
        assert isinstance(text, str), "assess must render when workers spill"
        at.append(index)
        texts.append(text)
    if not texts:
        return
    try:
        places = spill.write(rank, texts)
    except OSError:
        return
    for index, place in zip(at, places, strict=True):
        key, (digest, _text) = cast(tuple[EmitKey, Result], entries[index])
        entries[index] = (key, (digest, place))


def _repeated(call: Call, repeated: frozenset[int]) -> bool:
    """Whether the replay detector could flag ``call`` (a signature of its primary INVITE is
    seen again somewhere in the run)."""
    if not repeated:
        return False
    keys = call.primary.invite.keys
    return bool(keys.identity) and any(
        signature_key(value) in repeated for value in keys.identity_values
    )


def edge_of(track: PartTrack) -> bytes:
    return track.edge


def entries_of(track: PartTrack) -> bytes:
    return track.entries


# -- main process ------------------------------------------------------------------------------


class EdgeTracker:
    """The main process's tracker over the shared Call-IDs' messages, fed partition after
    partition in capture order, its clock set at every check point of the run (``checks``);
    each step returns the calls it emitted with their emission keys."""

    def __init__(self, checks: Sequence[tuple[int, int]]) -> None:
        self.tracker = KeyedTracker()
        self._checks = checks
        self._at = 0

    def partition(
        self, rank: int, messages: Sequence[tuple[int, ObservedMessage]]
    ) -> list[tuple[EmitKey, Call]]:
        """Partition ``rank``'s shared messages; the calls emitted up to its end."""
        tracker, checks = self.tracker, self._checks
        emitted = len(tracker.keys)
        calls: list[Call] = []
        for position, obs in messages:
            while self._at < len(checks) and checks[self._at][0] < position:
                calls += tracker.advance_at(checks[self._at][1], checks[self._at][0])
                self._at += 1
            if self._at < len(checks) and checks[self._at][0] == position:
                self._at += 1  # the message's own check: feed runs it
            calls += tracker.feed_at(obs, position)
        limit = (rank + 1) << RANK_SHIFT
        while self._at < len(checks) and checks[self._at][0] < limit:
            calls += tracker.advance_at(checks[self._at][1], checks[self._at][0])
            self._at += 1
        return list(zip(tracker.keys[emitted:], calls, strict=True))

    def finish(self) -> list[tuple[EmitKey, Call]]:
        """The end of input: the calls still open."""
        emitted = len(self.tracker.keys)
        calls = self.tracker.flush()
        return list(zip(self.tracker.keys[emitted:], calls, strict=True))


def may_bind(tracking: Tracking, reference: CallTracker) -> bool:
    """Whether a run-wide limit could bind at all: only with as many INVITEs as a limit (else
    the output can start as soon as the first partition is tracked)."""
    return tracking.invites >= min(reference.max_open_calls, MAX_CLOSED_CALL_IDS)


def binding_limit(tracking: Tracking, edges: Sequence[PartEdge], main: KeyedTracker) -> str | None:
    """Why the trackers' results may differ from one tracker's (run-wide limits), or None."""
    if main.evictions or any(e.evictions for e in edges):
        return "the open-call limit was reached"
    # At any moment the run holds at most the sum of every tracker's largest count.
    held = sum(e.max_open for e in edges) + main.max_open
    if tracking.invites >= main.max_open_calls and held >= main.max_open_calls:
        return "the open-call limit could be reached"
    late = main.stats.late_messages or any(e.stats.late_messages for e in edges)
    if tracking.invites >= MAX_CLOSED_CALL_IDS and late:
        return "late messages in a run with more calls than the tracker remembers ended"
    return None


def sum_stats(parts: Sequence[TrackerStats]) -> TrackerStats:
    """The counts of several trackers that shared the messages of a run."""
    total = TrackerStats()
    for part in parts:
        for f in fields(TrackerStats):
            if f.name == "unmatched":
                total.unmatched.update(part.unmatched)
            else:
                setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
    return total
