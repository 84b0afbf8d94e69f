"""The analyze job: captures in, call records + anomalies + summary out, streaming.

Theory of operation. The inputs are opened through ``HashingReader`` (the evidence manifest
needs each input's SHA-256 and size, computed on the bytes as they are read, so a file is read
once). ``analyzer.capture.iter_messages`` turns them into SIP messages in capture order, the
``CallTracker`` into finished calls, ``assess_call`` into records. Memory stays bounded: the
reader holds one block, the tracker at most ``MAX_OPEN_CALLS`` calls, and verification runs
on chunks of ``CHUNK_CALLS`` calls with at most ``WINDOW_PER_WORKER`` chunks in flight per
worker.

Parallelism: the scan (records -> SIP -> calls) is one sequential stream; verification of
finished calls is independent per call. The first ``INLINE_CALLS`` calls are verified in this
process (small captures never pay for a pool); after that, chunks go to a ``ChunkPool``: with
``workers > 1`` a local process pool whose workers each build their own verifier once (like
``analyzer.batch``), or any pool given to ``AnalyzeJob`` (``analyzer.cluster``: a Dask
cluster). Results come back in submission order, so the output order (and bytes) never depend
on the pool nor the number of workers. Calls travel to workers as raw SIP bytes
(``ObservedMessage.__reduce__``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Protocol, cast

from analyzer.assess import assess_call
from analyzer.calls import Call, CallTracker, TrackerStats
from analyzer.capture import AnyAnomaly, MessageReader, ObservedMessage, messages_from_segments
from analyzer.pcapfile import Source, iter_segments
from analyzer.records import CallDigest, CallRecord, Summary
from analyzer.spill import Spilled
from analyzer.traceback_replay import ReplayDetector, ReplayFlag
from analyzer.verifying import VerifierConfig, build_verifier
from shaken.verifier import Verifier

# Calls per chunk handed to a worker: verification is ~0.3 ms per call, so 64 calls (~20 ms)
# make the inter-process cost (pickling raw INVITEs and records) small.
CHUNK_CALLS = 64
# Chunks in flight per worker: keeps the pool fed without holding the whole capture.
WINDOW_PER_WORKER = 4
# Calls verified in-process before a pool is started: starting workers costs ~0.1 s (about
# 100 calls of work), more than verifying a small capture.
INLINE_CALLS = 128
# Anomalies kept in full for reports (all are counted; a capture full of damage stays bounded).
MAX_ANOMALIES_KEPT = 1000
# Read size of the hashing reader is the capture reader's: it asks for its own block size.
_DRAIN_BLOCK = 1 << 20


class HashingReader:
    """A binary stream that hashes (SHA-256) and counts every byte read through it."""

    def __init__(self, raw: BinaryIO, name: str, *, owned: bool) -> None:
        self._raw = raw
        self.name = name
        self._owned = owned
        self._hash = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        if data:
            self._hash.update(data)
            self.bytes_read += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) whatever the capture reader left, e.g. after a damaged record."""
        while self.read(_DRAIN_BLOCK):
            pass

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._owned:
            self._raw.close()


@dataclass(frozen=True, slots=True)
class InputInfo:
    """One input as recorded in the evidence manifest."""

    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class AnalyzeOptions:
    """How to run: the verifier configuration, a fixed verification time, worker count."""

    config: VerifierConfig
    at_override: datetime | None = None
    workers: int = 1
    verify_checksums: bool = False


@dataclass(slots=True)
class RunStats:
    """Pipeline counts beyond the per-call summary (for the summary and manifest)."""

    segments: int = 0
    sip_messages: int = 0
    anomalies: int = 0
    tracker: TrackerStats = field(default_factory=TrackerStats)

    def to_json(self) -> dict[str, object]:
        t = self.tracker
        return {
            "segments": self.segments,
            "sip_messages": self.sip_messages,
            "invite_messages": t.invites,
            "invite_retransmissions": t.retransmissions,
            "calls": t.calls_emitted,
            "calls_evicted": t.evicted,
            "late_messages": t.late_messages,
            "unmatched_messages": dict(sorted(t.unmatched.items())),
            "messages_without_call_id": t.no_call_id,
            "anomalies": self.anomalies,
        }


def open_inputs(names: Sequence[str]) -> list[HashingReader]:
    """Open every input (``-`` is stdin); ``OSError`` for an unreadable path."""
    readers: list[HashingReader] = []
    try:
        for name in names:
            if name == "-":
                readers.append(HashingReader(sys.stdin.buffer, "-", owned=False))
            else:
                readers.append(HashingReader(open(name, "rb"), name, owned=True))  # noqa: SIM115
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return readers


Render = Callable[[CallRecord], str]
"""Turns a record into output text; applied where the record is made (in workers, so only
text and a small ``CallDigest`` cross the process boundary). Must be a module-level function."""
Result = tuple[CallDigest, "CallRecord | str | Spilled"]
"""A call's digest and its record, rendered text, or place in a worker's spill file
(``analyzer.spill``, partitioned cluster mode on this machine)."""
# A finished call with the run's cross-call replay flag (decided in emission order, here).
Flagged = tuple[Call, ReplayFlag | None]

# -- worker process state --------------------------------------------------------------------

_WORKER: Verifier | None = None


def _init_worker(config: VerifierConfig) -> None:
    global _WORKER
    _WORKER = build_verifier(config)


def _assess_chunk(
    calls: list[Flagged], at_override: datetime | None, render: Render | None
) -> list[Result]:
    assert _WORKER is not None
    return assess_chunk(_WORKER, calls, at_override, render)


def _result(record: CallRecord, render: Render | None) -> Result:
    return record.digest(), (render(record) if render is not None else record)


def assess_chunk(
    verifier: Verifier, calls: list[Flagged], at_override: datetime | None, render: Render | None
) -> list[Result]:
    """Verify and render one chunk of calls with ``verifier`` (what every pool runs)."""
    return [_result(assess_call(c, verifier, at_override, flag), render) for c, flag in calls]


# -- pools: where chunks are verified -------------------------------------------------------


class PendingChunk(Protocol):
    """A submitted chunk (a ``concurrent.futures.Future`` or a Dask future)."""

    def result(self) -> list[Result]: ...


class ChunkPool(Protocol):
    """Verifies chunks of calls somewhere else (processes, a cluster); ``slots`` is how many
    chunks it runs at once (``WINDOW_PER_WORKER`` times that are kept in flight),
    ``chunk_calls`` how many calls it takes per chunk."""

    @property
    def slots(self) -> int: ...

    @property
    def chunk_calls(self) -> int: ...

    def submit(
        self, chunk: list[Flagged], at_override: datetime | None, render: Render | None
    ) -> PendingChunk: ...

    def close(self) -> None: ...


PoolFactory = Callable[[VerifierConfig], ChunkPool]
"""Starts a pool for a run (called once, when the inline calls are done)."""


class ProcessChunkPool:
    """``workers`` local processes, each building its verifier once (the default pool)."""

    def __init__(self, config: VerifierConfig, workers: int) -> None:
        self.slots = workers
        self.chunk_calls = CHUNK_CALLS
        self._pool = ProcessPoolExecutor(
            max_workers=workers, initializer=_init_worker, initargs=(config,)
        )

    def submit(
        self, chunk: list[Flagged], at_override: datetime | None, render: Render | None
    ) -> Future[list[Result]]:
        return self._pool.submit(_assess_chunk, chunk, at_override, render)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class AnalyzeJob:
    """One `stirscope analyze` run over ``inputs``; iterate ``records()`` once.

    Opening raises ``OSError`` (unreadable path) or ``NotACaptureError`` (not a capture):
    usage errors, before any record. ``pool`` starts where chunks are verified after the
    first ``INLINE_CALLS`` calls (default: ``options.workers`` local processes when more than
    one, else everything in this process). ARCHITECTURE.md section 2 (analyzer pipeline).
    """

    def __init__(
        self, inputs: Sequence[str], options: AnalyzeOptions, *, pool: PoolFactory | None = None
    ) -> None:
        self.options = options
        if pool is None and options.workers > 1:
            workers = options.workers
            pool = lambda config: ProcessChunkPool(config, workers)  # noqa: E731
        self._pool_factory = pool
        self.verifier = build_verifier(options.config)
        self.readers = open_inputs(inputs)
        try:
            self.sizes = [_size(name) for name in inputs]
            streams = cast(list[Source], self.readers)  # file-like: only read() is used
            self._segments = iter_segments(streams, verify_checksums=options.verify_checksums)
        except BaseException:
            self.close()
            raise
        self.summary = Summary()
        self.stats = RunStats()
        self.anomalies: list[AnyAnomaly] = []
        self.tracker = CallTracker()
        self._reader = MessageReader()

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.readers)

    @property
    def total_bytes(self) -> int | None:
        """Sum of input sizes (None when one is a stream of unknown size)."""
        return None if any(s is None for s in self.sizes) else sum(s or 0 for s in self.sizes)

    def inputs(self) -> list[InputInfo]:
        """Name, size and SHA-256 of each input (complete once ``records()`` is exhausted)."""
        return [InputInfo(r.name, r.bytes_read, r.sha256) for r in self.readers]

    def close(self) -> None:
        for reader in self.readers:
            reader.close()

    def _anomaly(self, item: AnyAnomaly) -> None:
        self.stats.anomalies += 1
        self.summary.add_anomaly(item)
        if len(self.anomalies) < MAX_ANOMALIES_KEPT:
            self.anomalies.append(item)

    def _calls(self) -> Iterator[Call]:
        """Finished calls in emission order; anomalies are folded into the summary."""
        tracker = self.tracker
        for item in self._items():
            if type(item) is ObservedMessage:
                done = tracker.feed(item)
                if tracker.anomalies:
                    for anomaly in tracker.take_anomalies():
                        self._anomaly(anomaly)
                if done:
                    yield from done
            else:
                self._anomaly(item)  # type: ignore[arg-type]
        yield from tracker.flush()
        self.stats.tracker = tracker.stats

    def _items(self) -> Iterator[ObservedMessage | AnyAnomaly]:
        """The scan: SIP messages and anomalies in capture order, here in this process
        (``analyzer.cluster.PartitionedJob`` has workers scan); sets the scan counts of
        ``stats`` and reads every input to its end (the manifest hashes)."""
        yield from messages_from_segments(self._segments, self._reader)
        for reader in self.readers:
            reader.drain()
        self.stats.segments = self._reader.segments
        self.stats.sip_messages = self._reader.messages

    def records(self, progress: Callable[[int], None] | None = None) -> Iterator[CallRecord]:
        """Every call's record, in emission order (deterministic for the same inputs).

        ``progress`` is called with the number of calls done so far, every chunk.
        """
        for _digest, record in self.results(None, progress):
            assert isinstance(record, CallRecord)
            yield record

    def results(
        self, render: Render | None = None, progress: Callable[[int], None] | None = None
    ) -> Iterator[Result]:
        """``(digest, rendered text or record)`` per call, in emission order; the summary is
        updated as they come. With ``render``, records are rendered where they are made."""
        try:
            for result in self._results(render, progress):
                self.summary.add(result[0])
                yield result
        finally:
            self.close()

    def _results(
        self, render: Render | None, progress: Callable[[int], None] | None
    ) -> Iterator[Result]:
        at = self.options.at_override
        verifier = self.verifier
        calls = self._flagged()
        done = 0
        for call, flag in calls:
            yield _result(assess_call(call, verifier, at, flag), render)
            done += 1
            if progress is not None and done % CHUNK_CALLS == 0:
                progress(done)
            if self._pool_factory is not None and done >= INLINE_CALLS:
                break
        else:
            return
        yield from self._pooled(calls, done, render, progress)

    def _flagged(self) -> Iterator[Flagged]:
        """Finished calls with their replay flag: the same PASSporT on an earlier call of the
        run (RFC 8224 section 12.1), decided here, in emission order, whatever the workers."""
        detector = ReplayDetector(self.options.config.policy.freshness_s)
        for call in self._calls():
            invite = call.primary.invite
            values = invite.keys.identity_values  # no full parse here (sip/keys.py)
            yield call, detector.observe(call.call_id, invite.ts_ns, values) if values else None

    def _pooled(
        self,
        calls: Iterator[Flagged],
        done: int,
        render: Render | None,
        progress: Callable[[int], None] | None,
    ) -> Iterator[Result]:
        assert self._pool_factory is not None
        at = self.options.at_override
        pool = self._pool_factory(self.options.config)
        try:
            window = max(1, pool.slots) * WINDOW_PER_WORKER
            pending: deque[PendingChunk] = deque()
            for chunk in _chunks(calls, pool.chunk_calls):
                pending.append(pool.submit(chunk, at, render))
                while len(pending) >= window:
                    results = pending.popleft().result()
                    yield from results
                    done += len(results)
                    if progress is not None:
                        progress(done)
            while pending:
                results = pending.popleft().result()
                yield from results
                done += len(results)
                if progress is not None:
                    progress(done)
        finally:
            pool.close()


def _chunks(calls: Iterator[Flagged], size: int) -> Iterator[list[Flagged]]:
    chunk: list[Flagged] = []
    for call in calls:
        chunk.append(call)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _size(name: str) -> int | None:
    if name == "-":
        return None
    try:
        return os.stat(name).st_size
    except OSError:
        return None
