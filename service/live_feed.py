"""The engine room of the live listeners (HEP collector, interface capture): bounded queue ->
pipeline thread -> verification pool -> JSONL sink, with counters and Prometheus export.

Theory of operation. A listener's socket handler does the least it can: it wraps each input
(a datagram, TCP bytes, a captured frame) into a ``Work`` closure over the feed's
``LivePipeline`` and ``offer``s it. The queue is bounded in items and bytes; an input that
does not fit is shed and counted (``shed``), never dropped unseen. Stream inputs (HEP over
TCP) cannot be shed without corrupting the stream, so they are ``force``d in and the listener
pauses reading while ``over_limit`` (TCP backpressure); ``on_room`` fires (on the pipeline
thread) once the queue is back under half, to resume them.

One pipeline thread runs the work in order (the pipeline is a single-threaded state machine),
ticks it every ``tick_s`` so idle calls complete, writes anomalies (at most
``anomaly_lines_per_s`` per second; the rest counted as suppressed) and submits finished calls
to a thread pool that verifies them (``assess``: each INVITE as of its packet or HEP
timestamp) and writes the records (to the JSONL ``sink`` and the results ``store``). Calls
verifying or waiting are bounded by ``inflight``: when the pool is behind, the pipeline
thread waits, the queue fills and inputs are shed or paused: backpressure runs from the
verifier (and the store) to the socket.

Replay. Before a call goes to the pool, the pipeline thread shows its Identity values to the
session's ``ReplayWatch`` (one ``ReplayDetector`` shared by every feed of the process), in
emission order, as ``stirscope analyze`` does; the flag is merged into the record exactly as
``assess_call(..., replay=flag)`` merges it (``merge_flags(flag, own stale flag)``), so live
call records carry ``replay`` like ``analyze`` records (RFC 8224 section 12.1).

``stop()`` is graceful: new inputs are shed, the queue is drained, the pipeline flushed
(every call still open is emitted, ``end_of_input``), every verification finished and written.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from analyzer.anomaly import Anomaly
from analyzer.calls import Call
from analyzer.capture import anomaly_to_json
from analyzer.live import LiveItem, LivePipeline
from analyzer.records import CallRecord, iso_ns
from analyzer.traceback_replay import ReplayDetector, ReplayFlag, merge_flags

# Inputs queued for the pipeline thread. A HEP datagram or captured SIP frame is ~1-2 kB and
# the pipeline handles ~20k of them per second, so 10,000 items is about half a second of work
# (the order of SIP's T1 = 500 ms, RFC 3261 section 17.1.1.1: older signalling is stale).
DEFAULT_QUEUE_ITEMS = 10_000
# Bytes queued: bounds memory when inputs are large (64 KiB datagrams, TCP reads of 256 KiB).
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
# Verification threads: warm-cache verification is CPU work that releases the GIL
# (ARCHITECTURE.md section 5: two threads give about 1.8x); more only helps cold fetches.
DEFAULT_WORKERS = 2
# Calls verifying or waiting for a verification thread, per worker.
INFLIGHT_PER_WORKER = 32
# How often idle calls are expired and the queue polled while quiet (seconds).
TICK_S = 1.0
# Graceful stop waits this long for the backlog; anything left is reported, not hidden.
DRAIN_TIMEOUT_S = 30.0
# Anomaly lines written per second: a flood of garbage must not fill the disk; every anomaly
# is still counted (metrics) and the suppressed lines are counted too.
ANOMALY_LINES_PER_S = 100
# Inputs taken from the queue per lock round trip (the pipeline thread holds at most this many
# beyond the queue's bound).
BATCH_ITEMS = 256

Work = Callable[[], list[LiveItem]]
"""One input, bound to the pipeline (runs on the pipeline thread)."""
Assess = Callable[[Call], CallRecord]
"""Verify a finished call and build its record (runs on a verification thread)."""


class JsonSink(Protocol):
    """Where the lines go (``cmd_listen.JsonlSink``); must be thread-safe."""

    def write_json(self, obj: dict[str, object]) -> None: ...


class RecordStore(Protocol):
    """Where call records and anomalies are stored (``listen_store.LiveStore``, ``--db``);
    must be thread-safe and may block (backpressure) while the database catches up."""

    def add_call(self, record: CallRecord, source: str) -> None: ...

    def add_anomaly(self, item: Anomaly, source: str) -> None: ...


class ReplayWatch:
    """One ``ReplayDetector`` shared by the feeds of a process (thread-safe): a PASSporT
    captured on the interface and replayed through a HEP agent is still one PASSporT.

    RFC 8224 section 12.1.
    """

    def __init__(self, freshness_s: int) -> None:
        self._detector = ReplayDetector(freshness_s)
        self._lock = threading.Lock()

    def observe(self, call: Call) -> ReplayFlag | None:
        """The call's cross-call replay flag; call it in emission order."""
        invite = call.primary.invite
        values = invite.keys.identity_values  # no full parse here (sip/keys.py)
        return self.observe_values(call.call_id, invite.ts_ns, values)

    def observe_values(
        self, call_id: str, start_ns: int, identities: Sequence[str]
    ) -> ReplayFlag | None:
        """``observe`` for a call known by its Call-ID, start and Identity values (the SIP
        verification server's INVITEs, which are not tracked into calls)."""
        if not identities:
            return None
        with self._lock:
            return self._detector.observe(call_id, start_ns, identities)


def flag_record(record: CallRecord, flag: ReplayFlag | None) -> CallRecord:
    """``record`` (assessed without a cross-call flag) with ``flag`` merged in: the record
    ``assess_call(call, verifier, replay=flag)`` builds. RFC 8224 section 12.1."""
    if flag is None:
        return record
    return replace(record, replay=merge_flags(flag, record.replay))


def call_line(record: CallRecord, source: str) -> dict[str, object]:
    """A call record as written by ``listen``: the ``analyze`` JSONL object plus its source."""
    obj = record.to_json()
    obj["record"] = "call"
    obj["source"] = source
    return obj


def anomaly_line(item: Anomaly, source: str) -> dict[str, object]:
    """An anomaly as written by ``listen`` (``analyze``'s anomaly object plus time and source)."""
    obj: dict[str, object] = {"record": "anomaly", "source": source}
    obj["at"] = iso_ns(item.ts_ns) if item.ts_ns is not None else None
    obj.update(anomaly_to_json(item))
    return obj


@dataclass(frozen=True, slots=True)
class FeedLimits:
    """Bounds of one live feed (each default's source is at its constant)."""

    queue_items: int = DEFAULT_QUEUE_ITEMS
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    workers: int = DEFAULT_WORKERS
    inflight: int = DEFAULT_WORKERS * INFLIGHT_PER_WORKER
    tick_s: float = TICK_S
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    anomaly_lines_per_s: int = ANOMALY_LINES_PER_S

    def __post_init__(self) -> None:
        if min(self.queue_items, self.queue_bytes, self.workers, self.inflight) < 1:
            raise ValueError("queue_items, queue_bytes, workers and inflight must be >= 1")


@dataclass(slots=True)
class FeedStats:
    """What happened to the inputs of one feed (read by metrics and the summary line)."""

    accepted: int = 0
    shed: int = 0
    shed_bytes: int = 0
    calls_written: int = 0
    verstat: Counter[str] = field(default_factory=Counter)
    anomalies_written: int = 0
    anomalies_suppressed: int = 0
    internal_errors: int = 0
    abandoned: int = 0  # inputs or calls left when a stop timed out


class LiveFeed:
    """Bounded queue, pipeline thread and verification pool of one live listener.

    See the module docstring. ARCHITECTURE.md section 2 (live sources).
    """

    def __init__(
        self,
        source: str,
        pipeline: LivePipeline,
        assess: Assess,
        *,
        sink: JsonSink | None = None,
        store: RecordStore | None = None,
        replay: ReplayWatch | None = None,
        limits: FeedLimits | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.limits = limits or FeedLimits()
        self.stats = FeedStats()
        self.on_room: Callable[[], None] | None = None
        self._assess = assess
        self._sink = sink
        self._store = store
        self._replay = replay
        self._wall_ns = wall_ns
        self._queue: deque[tuple[Work, int]] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._full = False
        self._slots = threading.BoundedSemaphore(self.limits.inflight)
        self._inflight = 0
        self._lock = threading.Lock()  # stats touched by verification threads
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix=f"{source}-verify")
        self._thread = threading.Thread(target=self._run, name=f"{source}-pipeline", daemon=True)
        self._window = 0
        self._window_lines = 0

    # -- producer side (any thread) ----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def offer(self, work: Work, size: int) -> bool:
        """Queue one input; ``False`` (and counted as shed) when the queue is full or closing."""
        with self._cond:
            if (
                self._stopping
                or len(self._queue) >= self.limits.queue_items
                or self._queued_bytes + size > self.limits.queue_bytes
            ):
                self.stats.shed += 1
                self.stats.shed_bytes += size
                return False
            self._push(work, size)
        return True

    def force(self, work: Work, size: int) -> bool:
        """Queue a stream input whatever the queue holds; returns ``over_limit`` (the caller
        should pause reading until ``on_room``)."""
        with self._cond:
            self._push(work, size)
            return self._over()

    def _push(self, work: Work, size: int) -> None:
        self._queue.append((work, size))
        self._queued_bytes += size
        self.stats.accepted += 1
        if len(self._queue) == 1:
            self._cond.notify()

    def _over(self) -> bool:
        over = (
            len(self._queue) >= self.limits.queue_items
            or self._queued_bytes >= self.limits.queue_bytes
        )
        self._full = self._full or over
        return over

    @property
    def over_limit(self) -> bool:
        with self._cond:
            return self._over()

    @property
    def depth(self) -> tuple[int, int]:
        """Inputs and bytes queued now."""
        return len(self._queue), self._queued_bytes

    @property
    def inflight(self) -> int:
        return self._inflight

    def stop(self) -> None:
        """Drain the queue, flush the pipeline, finish and write every verification (blocks up
        to ``drain_timeout_s``; what is left then is counted in ``abandoned``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(self.limits.drain_timeout_s)
        if self._thread.is_alive():
            with self._cond:
                self.stats.abandoned += len(self._queue) + self._inflight
                self._queue.clear()
                self._queued_bytes = 0
        self._pool.shutdown(wait=not self._thread.is_alive(), cancel_futures=True)

    # -- pipeline thread ---------------------------------------------------------------------

    def _run(self) -> None:
        limits = self.limits
        next_tick = time.monotonic() + limits.tick_s
        while True:
            batch: list[tuple[Work, int]] = []
            with self._cond:
                while not self._queue and not self._stopping:
                    remaining = next_tick - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                while self._queue and len(batch) < BATCH_ITEMS:
                    batch.append(self._queue.popleft())
                for _work, size in batch:
                    self._queued_bytes -= size
                done = self._stopping and not self._queue
                room = self._full and not self._over_half()
                if room:
                    self._full = False
            if room and self.on_room is not None:
                self._guard(self.on_room)
            for work, _size in batch:
                self._dispatch(work)
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + limits.tick_s
                self._dispatch(lambda: self.pipeline.tick(self._wall_ns()))
            if done and not batch:
                break
        self._dispatch(self.pipeline.flush)
        self._pool.shutdown(wait=True)

    def _over_half(self) -> bool:
        return (
            len(self._queue) > self.limits.queue_items // 2
            or self._queued_bytes > self.limits.queue_bytes // 2
        )

    def _guard(self, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:  # a bug must not stop the listener: counted, visible in metrics
            self.stats.internal_errors += 1

    def _dispatch(self, work: Work) -> None:
        try:
            items = work()
        except Exception:
            self.stats.internal_errors += 1
            return
        for item in items:
            if isinstance(item, Anomaly):
                self._anomaly(item)
            else:
                self._submit(item)

    def _anomaly(self, item: Anomaly) -> None:
        second = int(time.monotonic())
        if second != self._window:
            self._window, self._window_lines = second, 0
        if self._window_lines >= self.limits.anomaly_lines_per_s:
            self.stats.anomalies_suppressed += 1
            return
        self._window_lines += 1
        sink, store = self._sink, self._store
        if sink is not None:
            self._guard(lambda: sink.write_json(anomaly_line(item, self.source)))
        if store is not None:
            self._guard(lambda: store.add_anomaly(item, self.source))
        self.stats.anomalies_written += 1

    def _submit(self, call: Call) -> None:
        flag = None
        if self._replay is not None:
            try:
                flag = self._replay.observe(call)
            except Exception:  # a bug must not lose the call: counted, visible in metrics
                self.stats.internal_errors += 1
        self._slots.acquire()  # the pool is behind: wait here, the queue fills, inputs shed
        with self._lock:
            self._inflight += 1
        try:
            self._pool.submit(self._verify, call, flag)
        except RuntimeError:  # pool shut down by a stop that timed out
            self._release()
            with self._lock:
                self.stats.abandoned += 1

    def _release(self) -> None:
        with self._lock:
            self._inflight -= 1
        self._slots.release()

    def _verify(self, call: Call, flag: ReplayFlag | None = None) -> None:
        try:
            record = flag_record(self._assess(call), flag)
            if self._sink is not None:
                self._sink.write_json(call_line(record, self.source))
            if self._store is not None:
                self._store.add_call(record, self.source)
            with self._lock:
                self.stats.calls_written += 1
                self.stats.verstat[record.verstat or "none"] += 1
        except Exception:
            with self._lock:
                self.stats.internal_errors += 1
        finally:
            self._release()

    # -- reporting ---------------------------------------------------------------------------

    def summary(self) -> str:
        """A short status line: inputs, shed, calls, anomalies, queue."""
        stats, pipe = self.stats, self.pipeline.stats
        items, _ = self.depth
        return (
            f"{pipe.packets} pkts, {stats.shed} shed, {stats.calls_written} calls, "
            f"{sum(pipe.anomalies.values())} anomalies, queue {items}, "
            f"{self.pipeline.tracker.open_calls} open"
        )


class LiveCollector(Collector):
    """Prometheus export of every live feed's counters, read at scrape time (the hot path
    only bumps plain integers). Register once per registry; ``add`` each feed."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._feeds: list[LiveFeed] = []
        self._drops: list[tuple[str, Callable[[], int]]] = []
        if registry is not None:
            registry.register(self)

    def add(self, feed: LiveFeed) -> None:
        self._feeds.append(feed)

    def watch_kernel_drops(self, interface: str, read: Callable[[], int]) -> None:
        """Export packets the kernel dropped before a capture socket read them."""
        self._drops.append((interface, read))

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels)

        packets = counter("stirscope_live_packets", "Live inputs processed", ["source"])
        shed = counter("stirscope_live_shed", "Inputs shed: queue full or closing", ["source"])
        calls = counter("stirscope_live_calls", "Call records written", ["source", "verstat"])
        anomalies = counter("stirscope_live_anomalies", "Anomalies by kind", ["source", "kind"])
        suppressed = counter(
            "stirscope_live_anomaly_lines_suppressed",
            "Anomalies counted but not written (rate limit)",
            ["source"],
        )
        errors = counter(
            "stirscope_live_internal_errors", "Contained exceptions (a bug if non-zero)", ["source"]
        )
        queue = GaugeMetricFamily("stirscope_live_queue", "Inputs queued", labels=["source"])
        verifying = GaugeMetricFamily(
            "stirscope_live_verifying", "Calls verifying or waiting", labels=["source"]
        )
        open_calls = GaugeMetricFamily("stirscope_live_open_calls", "Calls open", labels=["source"])
        hep_versions = counter("stirscope_hep_packets", "HEP packets by version", ["version"])
        hep_payloads = counter(
            "stirscope_hep_payloads", "HEP packets by payload (sip, heartbeat, type)", ["kind"]
        )
        hep_chunks = counter("stirscope_hep_chunks_skipped", "HEP chunks not used", ["chunk"])
        hep_errors = counter("stirscope_hep_errors", "Undecodable HEP packets", ["reason"])
        hep: tuple[Counter[str], ...] = (Counter(), Counter(), Counter(), Counter())
        for feed in self._feeds:
            src, stats, pipe = feed.source, feed.stats, feed.pipeline.stats
            packets.add_metric([src], pipe.packets)
            shed.add_metric([src], stats.shed)
            for verstat, n in dict(stats.verstat).items():
                calls.add_metric([src, verstat], n)
            for kind, n in dict(pipe.anomalies).items():
                anomalies.add_metric([src, kind], n)
            suppressed.add_metric([src], stats.anomalies_suppressed)
            errors.add_metric([src], stats.internal_errors)
            queue.add_metric([src], feed.depth[0])
            verifying.add_metric([src], feed.inflight)
            open_calls.add_metric([src], feed.pipeline.tracker.open_calls)
            hep[0].update(dict(pipe.hep_versions))
            hep[1].update(dict(pipe.hep_payloads))
            hep[2].update(dict(pipe.hep_chunks))
            hep[3].update(dict(pipe.hep_errors))
        for family, values in zip(
            (hep_versions, hep_payloads, hep_chunks, hep_errors), hep, strict=True
        ):
            for label, n in sorted(values.items()):
                family.add_metric([label], n)
        yield from (packets, shed, calls, anomalies, suppressed, errors, queue, verifying)
        yield from (open_calls, hep_versions, hep_payloads, hep_chunks, hep_errors)
        if self._drops:
            drops = counter(
                "stirscope_capture_kernel_drops",
                "Packets the kernel dropped before the capture socket read them",
                ["interface"],
            )
            for interface, read in self._drops:
                drops.add_metric([interface], read())
            yield drops


def encode_line(obj: dict[str, object]) -> str:
    """One compact JSON line with its newline (the listen JSONL format)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"
