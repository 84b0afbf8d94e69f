"""`stirscope listen --db URL`: a live session recorded as one job of the results store.

Theory of operation. ``open`` opens and migrates the store before anything is bound (a bad
URL is a usage error); the session is one job, begun (``begin``) ``running`` once the
listeners are bound,
leased to this process (``host/pid``) and kept alive by a heartbeat thread while the listener
runs (a quiet trunk writes nothing but must not look like a dead run). Its inputs are the
listeners (``hep:udp:127.0.0.1:9060``, ``iface:eth0``, ``sip:udp:...``). The live feeds hand
over each call record as its verification finishes and each anomaly they write (after the
feed's rate limit); a flusher thread writes them every ``FLUSH_S`` (or as soon as a batch is
full) through the store's ``RunWriter``, so `stirscope serve` on the same store shows the
calls about a second after they end. When the database falls behind, ``add_call`` waits once
``MAX_PENDING_CALLS`` are queued: the feed's verification threads wait, its queue fills and
inputs are shed and counted (the feed's backpressure), memory stays bounded.

The end. ``complete`` (graceful shutdown, after every feed drained: every call finished or
still open has been verified and handed over) writes what is queued and marks the job done
with the summary of the stored calls and a manifest (listeners, trust store, configuration,
counts). ``fail`` marks it failed (an error) or interrupted (the process is going down
otherwise). A store error during the session (``LeaseLost``, the database gone) is kept in
``error``: later records are counted in ``dropped``, and ``listen`` stops and exits 1.

SIP verification server answers (``--sip``) are stored as calls too: each answered INVITE is
a one-leg call whose final response is the server's answer (``analyzer.sipanswer.
call_record_of``). The event loop must never wait, so the server hands over a recipe
(``add_deferred_call``) and the flusher thread builds the record (PASSporT details, replay
flag) before writing it; while ``full`` the server sheds new INVITEs with 503 instead, so an
answered INVITE is never missing from the store (the feeds' backpressure, for a server).

ARCHITECTURE.md section 2 (storage); issue 7 (``listen --db``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from analyzer.anomaly import Anomaly
from analyzer.capture import anomaly_to_json
from analyzer.manifest import MANIFEST_VERSION, time_policy
from analyzer.records import CallRecord, Summary, iso_ns
from analyzer.storage import (
    DatabaseError,
    Heartbeat,
    InputSpec,
    JobOrigin,
    JobState,
    Lease,
    LeaseLost,
    RunWriter,
    Store,
    StoreError,
)
from analyzer.storage.writer import BATCH_CALLS
from analyzer.verifying import VerifierConfig
from analyzer.version import __version__
from service.cmd_verify import UsageError
from service.live_feed import LiveFeed
from shaken.trust import TrustStore

# How often queued records are written (seconds): a finished call shows in the web UI about
# this long after it ends; each flush is one transaction, cheap at one per second.
FLUSH_S = 1.0
# Call records queued for the flusher before producers wait: a few batches (the writer's
# batch is sized for commit cost, see analyzer/storage/writer.py), about 10 MB of records.
MAX_PENDING_CALLS = 4 * BATCH_CALLS
# Anomalies stored per session (all are counted): the same bound as `stirscope analyze`'s
# run-level anomalies (analyzer/run.py MAX_ANOMALIES_KEPT), so a garbage flood on a
# long-running listener cannot fill the database.
MAX_STORED_ANOMALIES = 1000
# A session's lease owner is the process: a second `listen` on the same host is another job.
OWNER = f"{socket.gethostname()}/{os.getpid()}"


class LiveStore:
    """The ``--db`` output of ``listen`` (see the module docstring); thread-safe."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lease: Lease | None = None
        self._writer: RunWriter | None = None  # used by the flusher thread only
        self._beat: Heartbeat | None = None
        self.summary = Summary()
        self.error: str | None = None
        self.dropped = 0  # records not stored after an error
        self.anomalies_stored = 0
        self.anomalies_over_cap = 0
        self.finished = False
        self._calls: list[dict[str, Any]] = []
        self._deferred: list[tuple[Callable[[], CallRecord], str]] = []
        self._anomalies: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="stirscope-live-db", daemon=True)

    @classmethod
    def open(cls, url: str) -> LiveStore:
        """Open and migrate the store at ``url`` (``UsageError`` when it cannot be)."""
        try:
            store = Store.open(url)
        except StoreError as exc:
            raise UsageError(f"--db: {exc}") from exc
        try:
            store.migrate()
        except (StoreError, DatabaseError) as exc:
            store.close()
            raise UsageError(f"--db: {exc}") from exc
        return cls(store)

    def begin(self, inputs: Sequence[str], options: Mapping[str, Any]) -> str:
        """Begin the session's job (inputs: the listeners as bound), start the heartbeat and
        the flusher; returns the job id. Records queued before are written with the first
        batch."""
        lease = self.store.begin_job(
            [InputSpec(name) for name in inputs], options, owner=OWNER, origin=JobOrigin.CLI
        )
        self.lease, self._writer = lease, self.store.writer(lease)
        self._beat = self.store.keep_alive(lease)
        self._beat.start()
        self._thread.start()
        return lease.job_id

    # -- producers (verification and pipeline threads) ---------------------------------------

    def add_call(self, record: CallRecord, source: str) -> None:
        """Queue one call record (the ``analyze`` JSONL object plus ``source``); waits while
        ``MAX_PENDING_CALLS`` are queued."""
        doc = record.to_json()
        doc["source"] = source
        with self._cond:
            while (
                len(self._calls) >= MAX_PENDING_CALLS and self.error is None and not self._stopping
            ):
                self._cond.wait()
            if self.error is not None or self._stopping:
                self.dropped += 1
                return
            self._calls.append(doc)
            self.summary.add(record)
            if len(self._calls) >= BATCH_CALLS:
                self._cond.notify_all()

    def add_deferred_call(self, make: Callable[[], CallRecord], source: str) -> None:
        """Queue one call whose record ``make`` builds on the flusher thread, in queue order
        (the SIP server's answers); never waits: producers that cannot wait check ``full``
        first."""
        with self._cond:
            if self.error is not None or self._stopping:
                self.dropped += 1
                return
            self._deferred.append((make, source))
            if len(self._calls) + len(self._deferred) >= BATCH_CALLS:
                self._cond.notify_all()

    def full(self) -> bool:
        """Whether ``MAX_PENDING_CALLS`` records wait for the database (a snapshot)."""
        return len(self._calls) + len(self._deferred) >= MAX_PENDING_CALLS

    def add_anomaly(self, item: Anomaly, source: str) -> None:
        """Queue one run-level anomaly (at most ``MAX_STORED_ANOMALIES`` per session)."""
        doc: dict[str, Any] = anomaly_to_json(item)
        doc["at"] = iso_ns(item.ts_ns) if item.ts_ns is not None else None
        doc["source"] = source
        with self._cond:
            if self.error is not None or self._stopping:
                self.dropped += 1
            elif self.anomalies_stored + len(self._anomalies) >= MAX_STORED_ANOMALIES:
                self.anomalies_over_cap += 1
            else:
                self._anomalies.append(doc)

    # -- flusher thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stopping or len(self._calls) + len(self._deferred) >= BATCH_CALLS,
                    FLUSH_S,
                )
                calls, self._calls = self._calls, []
                deferred, self._deferred = self._deferred, []
                anomalies, self._anomalies = self._anomalies, []
                stopping = self._stopping
                self._cond.notify_all()  # room for producers
            calls.extend(self._build(deferred))
            self._write(calls, anomalies)
            if stopping:
                return

    def _build(self, deferred: list[tuple[Callable[[], CallRecord], str]]) -> list[dict[str, Any]]:
        """The records of deferred calls, counted in the summary (a recipe that fails is a
        bug: counted as dropped, never the flusher's end)."""
        docs = []
        for make, source in deferred:
            try:
                record = make()
            except Exception:
                with self._cond:
                    self.dropped += 1
                continue
            doc = record.to_json()
            doc["source"] = source
            docs.append(doc)
            with self._cond:
                self.summary.add(record)
        return docs

    def _write(self, calls: list[dict[str, Any]], anomalies: list[dict[str, Any]]) -> None:
        if self.error is not None:
            with self._cond:
                self.dropped += len(calls) + len(anomalies)
            return
        writer, beat = self._writer, self._beat
        assert writer is not None  # the thread starts in begin()
        assert beat is not None
        try:
            if beat.lost is not None:
                raise beat.lost
            for doc in calls:
                writer.add_json(doc)
            writer.flush()
            if anomalies:
                writer.add_anomalies(anomalies)
                self.anomalies_stored += len(anomalies)
        except (StoreError, DatabaseError) as exc:
            with self._cond:
                self.error = f"{type(exc).__name__}: {exc}"
                self.dropped += len(calls) + len(anomalies)
                self._cond.notify_all()

    def _stop_thread(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        if self._beat is not None:
            self._beat.stop()

    # -- the end -----------------------------------------------------------------------------

    def complete(self, manifest: Mapping[str, Any]) -> None:
        """Write everything queued and mark the job done (call after every feed stopped);
        raises ``StoreError``/``DatabaseError`` when that fails (the job is then failed)."""
        self._stop_thread()
        assert self.lease is not None, "complete() before begin()"
        if self.error is not None:
            raise StoreError(self.error)
        self.store.complete(self.lease, summary=self.summary_json(), manifest=manifest)
        self.finished = True

    def fail(self, error: str, *, interrupted: bool = False) -> None:
        """Mark the job failed (or interrupted); never raises (the store may be the cause)."""
        self._stop_thread()
        if self.lease is None or self.finished:
            return
        state = JobState.INTERRUPTED if interrupted else JobState.FAILED
        with contextlib.suppress(LeaseLost, StoreError, DatabaseError):
            self.store.fail(self.lease, error, state=state)

    def close(self) -> None:
        self.store.close()

    def summary_json(self) -> dict[str, object]:
        """The summary of the calls stored so far (``Summary.to_json``)."""
        with self._cond:
            return self.summary.to_json()

    def counts(self) -> dict[str, int]:
        """What the store received: calls, anomalies stored and over the cap, dropped."""
        with self._cond:
            return {
                "calls": self.summary.calls,
                "anomalies_stored": self.anomalies_stored,
                "anomalies_over_cap": self.anomalies_over_cap,
                "dropped": self.dropped,
            }


def session_options(
    args: argparse.Namespace, configuration: Mapping[str, Any], listeners: Sequence[str]
) -> dict[str, Any]:
    """The job's options: the command, verifier configuration, listeners and policies."""
    return {
        "command": "listen",
        "configuration": dict(configuration),
        "listeners": list(listeners),
        "reject": bool(args.reject),
        "filter": args.bpf,
    }


def live_manifest(
    *,
    listeners: Sequence[str],
    trust: TrustStore,
    config: VerifierConfig,
    feeds: Sequence[LiveFeed],
    statuses: Sequence[str],
    store: LiveStore,
) -> dict[str, object]:
    """The evidence manifest of a live session, in the shape of ``analyzer.manifest``: the
    inputs are the listeners (live traffic has no file to hash), each call verified as of
    its packet or HEP time (the SIP server: its arrival), the counts of every feed, listener
    status lines and what the store received. ARCHITECTURE.md section 2 (evidence)."""
    counts: dict[str, object] = {
        "feeds": {
            feed.source: {
                **feed.pipeline.stats.to_json(),
                "shed": feed.stats.shed,
                "calls_written": feed.stats.calls_written,
                "anomalies_suppressed": feed.stats.anomalies_suppressed,
                "internal_errors": feed.stats.internal_errors,
                "abandoned": feed.stats.abandoned,
            }
            for feed in feeds
        },
        "listeners": list(statuses),
        "store": store.counts(),
    }
    return {
        "manifest_version": MANIFEST_VERSION,
        "tool": {"name": "stirscope", "version": __version__},
        "inputs": [{"name": name, "size": None, "sha256": None} for name in listeners],
        "trust_store": {
            "fingerprint_sha256": trust.fingerprint,
            "anchors": len(trust),
            "subjects": sorted(a.x509.subject.rfc4514_string() for a in trust.anchors),
        },
        "configuration": config.to_json(),
        "verification_time": time_policy(None),
        "output_format": "listen",
        "counts": {**counts, "summary": store.summary_json()},
    }
