"""Job lifecycle in the results store: create, claim under a lease, heartbeat, finish, recover.

Theory of operation. Claiming is one ``UPDATE ... WHERE id = (oldest queued job) AND state =
'queued' RETURNING``: on PostgreSQL the inner select is ``FOR UPDATE SKIP LOCKED``, so
concurrent claimers on any number of instances each take a different row without waiting;
on SQLite the write transaction is ``BEGIN IMMEDIATE`` (one writer at a time, see
``engine``), so the same statement is a compare-and-set. Either way a job is claimed by one
worker per attempt. Each claim draws a fresh lease token and every later write of the attempt
(heartbeat, results batch, completion) is fenced on ``(id, token, state = 'running')``: a
worker that lost its lease (it stalled past the expiry and someone else took the job) gets
``LeaseLost`` and writes nothing. A lease that expires (the instance died, or was stopped
hard) is swept back to ``queued`` while attempts remain, so no job is lost; jobs of the CLI
(their inputs are files on another machine) and jobs out of attempts become ``interrupted``.

Time is a parameter (``now``); ``Store`` defaults it to the database server's clock.
ARCHITECTURE.md section 2 (storage); issue 8 (several instances share one PostgreSQL).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from analyzer.storage.engine import Database, StoreError, clean, clean_text
from analyzer.storage.models import (
    NAME_LEN,
    Job,
    JobInput,
    JobOrigin,
    JobState,
    ManifestRow,
    UTCDateTime,
)

# Attempts a service job gets before an expiring lease marks it interrupted: one crash of an
# instance is retried elsewhere, a capture that kills every worker stops after three tries.
DEFAULT_MAX_ATTEMPTS = 3
# Seconds a lease lasts without a heartbeat. Heartbeats come every lease/4 (``Heartbeat``), so
# a worker survives three missed beats (a long GC pause, a slow commit) before losing its job,
# and a dead instance's job is retried within a minute.
DEFAULT_LEASE_S = 60.0
# Claim attempts when the chosen row was taken by a concurrent claimer in between (SQLite
# only serialises writers; PostgreSQL skips locked rows and rarely needs a second try).
CLAIM_RETRIES = 8
# What an expired lease leaves in ``error`` (the job itself is re-queued or interrupted).
LEASE_EXPIRED = "interrupted: the worker stopped renewing its lease"


class LeaseLost(StoreError):
    """The lease is no longer ours: the job was re-queued, taken over, finished or deleted."""


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One capture of a job: the name as given, size and SHA-256 when known, and where the
    service keeps an uploaded copy (``location``)."""

    name: str
    size: int | None = None
    sha256: str | None = None
    location: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as stored (a snapshot; read it again for fresh progress)."""

    id: str
    state: JobState
    origin: JobOrigin
    options: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress_calls: int
    progress_bytes: int
    total_bytes: int | None
    error: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    attempt: int
    max_attempts: int
    summary: dict[str, Any] | None
    inputs: tuple[InputSpec, ...]

    def to_json(self) -> dict[str, object]:
        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment is not None else None

        return {
            "id": self.id,
            "state": self.state.value,
            "origin": self.origin.value,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "progress": {
                "calls": self.progress_calls,
                "bytes": self.progress_bytes,
                "total_bytes": self.total_bytes,
            },
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "error": self.error,
            "inputs": [i.to_json() for i in self.inputs],
            "options": self.options,
            "summary": self.summary,
        }


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to run one attempt of a job until ``expires_at`` (renewed by heartbeats)."""

    job_id: str
    owner: str
    token: str
    attempt: int
    expires_at: datetime
    lease_s: float


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a lease sweep did: jobs put back in the queue, jobs marked interrupted."""

    requeued: int
    interrupted: int


def _at(now: datetime) -> ColumnElement[datetime]:
    return literal(now, UTCDateTime())


def _fence(lease: Lease) -> ColumnElement[bool]:
    return and_(
        Job.id == lease.job_id, Job.lease_token == lease.token, Job.state == JobState.RUNNING
    )


def fenced_update(conn: Connection, lease: Lease, **values: Any) -> None:
    """Update the leased job (inside the caller's transaction); ``LeaseLost`` if not ours.
    With no values it only checks (and on PostgreSQL locks the row until commit)."""
    if not values:
        values = {"lease_token": Job.lease_token}
    row = conn.execute(update(Job).where(_fence(lease)).values(**values).returning(Job.id))
    if row.first() is None:
        raise LeaseLost(f"job {lease.job_id}: lease {lease.token} is no longer held")


def _insert_inputs(conn: Connection, job_id: str, inputs: Sequence[InputSpec]) -> None:
    if inputs:
        conn.execute(
            insert(JobInput),
            [
                {
                    "job_id": job_id,
                    "position": n,
                    "name": clean_text(i.name)[:NAME_LEN],
                    "size": i.size,
                    "sha256": i.sha256,
                    "location": i.location,
                }
                for n, i in enumerate(inputs)
            ],
        )


def create_job(
    db: Database,
    inputs: Sequence[InputSpec],
    options: Mapping[str, Any],
    *,
    now: datetime,
    origin: JobOrigin = JobOrigin.SERVICE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    total_bytes: int | None = None,
) -> JobView:
    """A new ``queued`` job (for a worker to claim)."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    job_id = uuid.uuid4().hex
    with db.write() as conn:
        conn.execute(
            insert(Job).values(
                id=job_id,
                state=JobState.QUEUED,
                origin=origin,
                options=clean(dict(options)),
                created_at=now,
                progress_calls=0,
                progress_bytes=0,
                total_bytes=total_bytes,
                attempt=0,
                max_attempts=max_attempts,
            )
        )
        _insert_inputs(conn, job_id, inputs)
    job = get_job(db, job_id)
    assert job is not None
    return job


def begin_job(
    db: Database,
    inputs: Sequence[InputSpec],
    options: Mapping[str, Any],
    *,
    owner: str,
    now: datetime,
    lease_s: float = DEFAULT_LEASE_S,
    origin: JobOrigin = JobOrigin.CLI,
    total_bytes: int | None = None,
) -> Lease:
    """A job created ``running`` under a lease of ``owner`` (a run that is already happening,
    such as `stirscope analyze --db`: no worker may claim it). One attempt only."""
    job_id, token = uuid.uuid4().hex, uuid.uuid4().hex
    expires = now + timedelta(seconds=lease_s)
    with db.write() as conn:
        conn.execute(
            insert(Job).values(
                id=job_id,
                state=JobState.RUNNING,
                origin=origin,
                options=clean(dict(options)),
                created_at=now,
                started_at=now,
                progress_calls=0,
                progress_bytes=0,
                total_bytes=total_bytes,
                lease_owner=owner,
                lease_token=token,
                lease_expires_at=expires,
                attempt=1,
                max_attempts=1,
            )
        )
        _insert_inputs(conn, job_id, inputs)
    return Lease(job_id, owner, token, 1, expires, lease_s)


def claim(
    db: Database, owner: str, *, now: datetime, lease_s: float = DEFAULT_LEASE_S
) -> Lease | None:
    """Claim the oldest queued job for ``owner`` (None when there is none); expired leases are
    swept first, so a job of a dead instance is claimable again."""
    for _ in range(CLAIM_RETRIES):
        token = uuid.uuid4().hex
        expires = now + timedelta(seconds=lease_s)
        with db.write() as conn:
            _sweep(conn, now, owner=None)
            pick = (
                select(Job.id)
                .where(Job.state == JobState.QUEUED)
                .order_by(Job.created_at, Job.id)
                .limit(1)
            )
            if db.is_postgres:
                pick = pick.with_for_update(skip_locked=True)
            row = conn.execute(
                update(Job)
                .where(Job.id == pick.scalar_subquery(), Job.state == JobState.QUEUED)
                .values(
                    state=JobState.RUNNING,
                    lease_owner=owner,
                    lease_token=token,
                    lease_expires_at=expires,
                    attempt=Job.attempt + 1,
                    started_at=_at(now),
                    progress_calls=0,
                    progress_bytes=0,
                )
                .returning(Job.id, Job.attempt)
            ).first()
            if row is not None:
                return Lease(row.id, owner, token, row.attempt, expires, lease_s)
            queued = select(Job.id).where(Job.state == JobState.QUEUED).limit(1)
            if conn.execute(queued).first() is None:
                return None
    return None


def heartbeat(
    db: Database,
    lease: Lease,
    *,
    now: datetime,
    progress_bytes: int | None = None,
    total_bytes: int | None = None,
) -> Lease:
    """Renew the lease (and record progress); ``LeaseLost`` when it is no longer ours."""
    expires = now + timedelta(seconds=lease.lease_s)
    values: dict[str, Any] = {"lease_expires_at": expires}
    if progress_bytes is not None:
        values["progress_bytes"] = progress_bytes
    if total_bytes is not None:
        values["total_bytes"] = total_bytes
    with db.write() as conn:
        fenced_update(conn, lease, **values)
    return Lease(lease.job_id, lease.owner, lease.token, lease.attempt, expires, lease.lease_s)


def complete(
    db: Database,
    lease: Lease,
    *,
    now: datetime,
    summary: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
    inputs: Sequence[InputSpec] | None = None,
    progress_bytes: int | None = None,
) -> None:
    """Mark the job ``done`` with its summary, evidence manifest and final input facts
    (sizes and SHA-256 are known once read), atomically; ``LeaseLost`` if not ours."""
    values: dict[str, Any] = {
        "state": JobState.DONE,
        "finished_at": now,
        "lease_token": None,
        "lease_expires_at": None,
        "error": None,
        "summary": clean(dict(summary)) if summary is not None else None,
    }
    if progress_bytes is not None:
        values["progress_bytes"] = progress_bytes
    with db.write() as conn:
        fenced_update(conn, lease, **values)
        if manifest is not None:
            conn.execute(delete(ManifestRow).where(ManifestRow.job_id == lease.job_id))
            conn.execute(
                insert(ManifestRow).values(job_id=lease.job_id, document=clean(dict(manifest)))
            )
        if inputs is not None:
            conn.execute(delete(JobInput).where(JobInput.job_id == lease.job_id))
            _insert_inputs(conn, lease.job_id, inputs)


def fail(
    db: Database,
    lease: Lease,
    error: str,
    *,
    now: datetime,
    state: JobState = JobState.FAILED,
) -> None:
    """End the attempt as ``failed`` (or ``interrupted``, e.g. on Ctrl-C); final either way."""
    if state not in (JobState.FAILED, JobState.INTERRUPTED):
        raise ValueError(f"fail() ends a job as failed or interrupted, not {state}")
    with db.write() as conn:
        fenced_update(
            conn,
            lease,
            state=state,
            finished_at=now,
            error=clean_text(error),
            lease_token=None,
            lease_expires_at=None,
        )


def _sweep(conn: Connection, now: datetime, owner: str | None) -> Recovery:
    stale = (
        or_(Job.lease_expires_at < now, Job.lease_owner == owner)
        if owner
        else (Job.lease_expires_at < now)
    )
    running = and_(Job.state == JobState.RUNNING, stale)
    cleared = {"lease_token": None, "lease_expires_at": None, "error": LEASE_EXPIRED}
    retry = and_(running, Job.origin == JobOrigin.SERVICE, Job.attempt < Job.max_attempts)
    requeued = conn.execute(
        update(Job).where(retry).values(state=JobState.QUEUED, **cleared).returning(Job.id)
    ).all()
    interrupted = conn.execute(
        update(Job)
        .where(running)
        .values(state=JobState.INTERRUPTED, finished_at=_at(now), **cleared)
        .returning(Job.id)
    ).all()
    return Recovery(len(requeued), len(interrupted))


def recover(db: Database, *, now: datetime, owner: str | None = None) -> Recovery:
    """Sweep leases: running jobs whose lease expired, and with ``owner`` every running job of
    that owner (call at start-up with the instance's own name: its previous process is gone),
    go back to ``queued`` when they can be retried, else to ``interrupted``."""
    with db.write() as conn:
        return _sweep(conn, now, owner)


def _view(row: Row[Any], inputs: Sequence[InputSpec]) -> JobView:
    return JobView(
        id=row.id,
        state=JobState(row.state),
        origin=JobOrigin(row.origin),
        options=row.options,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        progress_calls=row.progress_calls,
        progress_bytes=row.progress_bytes,
        total_bytes=row.total_bytes,
        error=row.error,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        summary=row.summary,
        inputs=tuple(inputs),
    )


def _with_inputs(conn: Connection, rows: Sequence[Row[Any]]) -> list[JobView]:
    ids = [row.id for row in rows]
    inputs: dict[str, list[InputSpec]] = {i: [] for i in ids}
    if ids:
        query = (
            select(JobInput.__table__)
            .where(JobInput.job_id.in_(ids))
            .order_by(JobInput.job_id, JobInput.position)
        )
        for i in conn.execute(query):
            inputs[i.job_id].append(InputSpec(i.name, i.size, i.sha256, i.location))
    return [_view(row, inputs[row.id]) for row in rows]


def get_job(db: Database, job_id: str) -> JobView | None:
    with db.read() as conn:
        row = conn.execute(select(Job.__table__).where(Job.id == job_id)).first()
        return _with_inputs(conn, [row])[0] if row is not None else None


def list_jobs(
    db: Database, *, state: JobState | None = None, limit: int = 50, offset: int = 0
) -> list[JobView]:
    """Jobs newest first."""
    query = select(Job.__table__).order_by(Job.created_at.desc(), Job.id.desc())
    if state is not None:
        query = query.where(Job.state == state)
    with db.read() as conn:
        rows = conn.execute(query.limit(limit).offset(offset)).all()
        return _with_inputs(conn, rows)


def count_jobs(db: Database) -> dict[str, int]:
    """Jobs per state (every state present, zero when none): for metrics and the UI."""
    counts = {state.value: 0 for state in JobState}
    with db.read() as conn:
        for state, n in conn.execute(select(Job.state, func.count()).group_by(Job.state)):
            counts[state] = int(n)
    return counts


def delete_job(db: Database, job_id: str) -> bool:
    """Delete a job and everything stored for it; a worker still running it loses its lease."""
    with db.write() as conn:
        return (
            conn.execute(delete(Job).where(Job.id == job_id).returning(Job.id)).first() is not None
        )
