"""The analysis job worker pool of `stirscope serve`: queued jobs claimed from the results store
and analysed on worker threads, never on the event loop.

Theory of operation. ``WorkerPool.start`` first sweeps the store (``recover(owner=...)``): jobs
this instance was running when its previous process died go back to the queue (or become
``interrupted`` when out of attempts). Then each of ``threads`` worker threads loops: claim the
oldest queued job under a lease (exactly one claimer wins it, whatever the number of instances
sharing the store), run it with ``run_job``, repeat; when the queue is empty it sleeps until
``notify()`` (a new upload here) or ``poll_s`` (a job queued by another instance). A job runs
``analyzer.run.AnalyzeJob`` over its uploaded captures and writes its calls through the store's
fenced writer; a heartbeat renews the lease and records the bytes read, so the UI shows progress.

Isolation: any exception of one job (a capture that trips the analyzer, a store error) fails
that job, with the error recorded, and the thread goes on with the next one. A job whose lease
was taken over (``LeaseLost``) is abandoned without writing. ``stop()`` is the graceful shutdown:
each thread stops at the next call record, and its job goes back to the queue without spending
an attempt (another instance, or this one restarted, runs it again from the start).

ARCHITECTURE.md section 2 (service, storage); issue 6 (jobs in a worker pool).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from analyzer.capture import anomaly_to_json
from analyzer.manifest import build_manifest
from analyzer.records import CallRecord
from analyzer.report_html import render_html
from analyzer.run import AnalyzeJob, AnalyzeOptions, InputInfo
from analyzer.storage import (
    DEFAULT_LEASE_S,
    DatabaseError,
    InputSpec,
    JobState,
    JobView,
    Lease,
    LeaseLost,
    Recovery,
    Store,
    StoreError,
)
from analyzer.storage.jobs import fenced_update
from analyzer.storage.models import Job
from analyzer.verifying import VerifierConfig

log = logging.getLogger("stirscope.worker")

# Seconds an idle worker waits before looking at the queue again when nobody notified it: the
# delay before this instance picks up a job queued through another instance sharing the store.
DEFAULT_POLL_S = 1.0
# Seconds between progress writes while a job runs (the UI refreshes every few seconds; the
# lease heartbeat alone writes every lease/4 = 15 s).
PROGRESS_INTERVAL_S = 1.0
# Calls listed in a job's HTML report (all are counted in its summary and charts), as in
# `stirscope analyze --format html`: the report stays openable in a browser.
MAX_REPORT_CALLS = 5000
# The HTML report of a job, beside its uploaded captures.
REPORT_FILE = "report.html"
# The job option naming the job's directory under the upload directory.
UPLOAD_OPTION = "upload"
# What a job released by a graceful shutdown says in ``error`` while it waits in the queue.
RELEASED = "requeued: the service stopped while the job was running"


class Outcome(StrEnum):
    """How one run of a job ended."""

    DONE = "done"
    FAILED = "failed"
    RELEASED = "released"
    LOST = "lost"


class _Stopped(Exception):
    """The pool is stopping: leave the job for another run."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """The pool's settings: verifier configuration (as `stirscope analyze`), lease owner name
    (stable per instance, so start-up recovery finds its own jobs), threads, lease, poll."""

    verifier: VerifierConfig
    owner: str
    upload_dir: Path
    threads: int = 1
    lease_s: float = DEFAULT_LEASE_S
    poll_s: float = DEFAULT_POLL_S


def job_directory(job: JobView, upload_dir: Path) -> Path | None:
    """The directory holding a service job's uploads and report (None for CLI jobs)."""
    name = job.options.get(UPLOAD_OPTION)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        return None
    return upload_dir / name


def report_path(job: JobView, upload_dir: Path) -> Path | None:
    """Where the job's HTML report is (or will be) written."""
    directory = job_directory(job, upload_dir)
    return directory / REPORT_FILE if directory is not None else None


def parse_at_option(value: object) -> datetime | None:
    """The ``at`` job option (ISO 8601, stored by the API) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def release(store: Store, lease: Lease) -> None:
    """Put a running job back in the queue without spending an attempt (graceful shutdown:
    the job did not fail); ``LeaseLost`` if it is no longer ours."""
    with store.db.write() as conn:
        fenced_update(
            conn,
            lease,
            state=JobState.QUEUED,
            lease_token=None,
            lease_expires_at=None,
            attempt=Job.attempt - 1,
            error=RELEASED,
        )


def run_job(
    store: Store,
    lease: Lease,
    config: WorkerConfig,
    stop: threading.Event | None = None,
) -> Outcome:
    """Run one claimed job to its end (see the module docstring); never raises for the job's
    own failures: they are recorded as the job's error."""
    stop = stop or threading.Event()
    try:
        _run(store, lease, config, stop)
    except _Stopped:
        with contextlib.suppress(LeaseLost, StoreError, DatabaseError):
            release(store, lease)
        log.info("job released", extra={"job": lease.job_id})
        return Outcome.RELEASED
    except LeaseLost:
        log.warning("job lease lost", extra={"job": lease.job_id})
        return Outcome.LOST
    except Exception as exc:
        log.warning(
            "job failed",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"job": lease.job_id},
        )
        with contextlib.suppress(LeaseLost, StoreError, DatabaseError):
            store.fail(lease, f"{type(exc).__name__}: {exc}")
        return Outcome.FAILED
    log.info("job done", extra={"job": lease.job_id})
    return Outcome.DONE


def _run(store: Store, lease: Lease, config: WorkerConfig, stop: threading.Event) -> None:
    job = store.get_job(lease.job_id)
    if job is None:
        raise LeaseLost(f"job {lease.job_id} was deleted")
    locations = [i.location for i in job.inputs]
    if not locations or any(loc is None for loc in locations):
        raise FileNotFoundError("the job has no uploaded captures to read")
    options = AnalyzeOptions(
        config=config.verifier, at_override=parse_at_option(job.options.get("at")), workers=1
    )
    analysis = AnalyzeJob([str(loc) for loc in locations], options)
    kept: list[CallRecord] = []
    with contextlib.ExitStack() as stack:
        stack.callback(analysis.close)
        beat = stack.enter_context(store.keep_alive(lease, lambda: analysis.bytes_read))
        writer = stack.enter_context(store.writer(lease, background=True))
        progress = _ProgressWriter(store, lease, lambda: analysis.bytes_read)
        for record in analysis.records():
            if stop.is_set():
                raise _Stopped
            if beat.lost is not None:
                raise beat.lost
            writer.add(record)
            if len(kept) < MAX_REPORT_CALLS:
                kept.append(record)
            progress.maybe_write()
        if stop.is_set():
            raise _Stopped
        writer.close()
        anomalies = [anomaly_to_json(a) for a in analysis.anomalies]
        writer.add_anomalies(anomalies)
        # The manifest names the captures as uploaded, not where this server keeps them.
        inputs = [
            InputInfo(spec.name, info.size, info.sha256)
            for spec, info in zip(job.inputs, analysis.inputs(), strict=True)
        ]
        manifest = build_manifest(
            inputs=inputs,
            trust=analysis.verifier.trust,
            config=options.config,
            at_override=options.at_override,
            summary=analysis.summary,
            stats=analysis.stats,
            output_format="store",
        )
        target = report_path(job, config.upload_dir)
        if target is not None:
            html = render_html(
                summary=analysis.summary,
                manifest=manifest,
                records=kept,
                anomalies=anomalies,
                omitted_records=analysis.summary.calls - len(kept),
                omitted_anomalies=analysis.stats.anomalies - len(anomalies),
            )
            target.write_text(html, encoding="utf-8")
        beat.stop()
        store.complete(
            lease,
            summary=analysis.summary.to_json(),
            manifest=manifest,
            inputs=[
                InputSpec(spec.name, info.size, info.sha256, spec.location)
                for spec, info in zip(job.inputs, analysis.inputs(), strict=True)
            ],
            progress_bytes=analysis.bytes_read,
        )


class _ProgressWriter:
    """Writes the bytes read so far (renewing the lease) at most every PROGRESS_INTERVAL_S."""

    def __init__(self, store: Store, lease: Lease, read: Callable[[], int]) -> None:
        self._store = store
        self._lease = lease
        self._read = read
        self._last = time.monotonic()

    def maybe_write(self) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            with contextlib.suppress(StoreError, DatabaseError):
                self._store.heartbeat(self._lease, progress_bytes=self._read())


class WorkerPool:
    """Worker threads running queued jobs (see the module docstring)."""

    def __init__(self, store: Store, config: WorkerConfig) -> None:
        self.store = store
        self.config = config
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._pending = False
        self._threads: list[threading.Thread] = []
        self.outcomes: dict[Outcome, int] = dict.fromkeys(Outcome, 0)

    def start(self) -> Recovery:
        """Recover this owner's interrupted jobs, then start the threads."""
        recovery = self.store.recover(owner=self.config.owner)
        if recovery.requeued or recovery.interrupted:
            log.info(
                "recovered jobs",
                extra={"requeued": recovery.requeued, "interrupted": recovery.interrupted},
            )
        for n in range(self.config.threads):
            thread = threading.Thread(target=self._loop, name=f"stirscope-job-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return recovery

    def notify(self) -> None:
        """A job was queued: wake an idle thread now rather than at its next poll."""
        with self._wake:
            self._pending = True
            self._wake.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown: running jobs are released to the queue, threads end."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _idle(self) -> None:
        with self._wake:
            if not self._pending and not self._stop.is_set():
                self._wake.wait(self.config.poll_s)
            self._pending = False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                lease = self.store.claim(self.config.owner, lease_s=self.config.lease_s)
            except (StoreError, DatabaseError) as exc:  # the database is away: try later
                log.warning("cannot claim a job", extra={"error": str(exc)})
                lease = None
            if lease is None:
                self._idle()
                continue
            outcome = run_job(self.store, lease, self.config, self._stop)
            self.outcomes[outcome] += 1
