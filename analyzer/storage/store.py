"""``Store``: the results store (jobs, calls, anomalies, manifests) behind one object.

Open with ``Store.open(url)`` (``sqlite:///PATH``, a bare file path, or ``postgresql://...``),
bring the schema up to date with ``migrate()`` (Alembic, configured here: no alembic.ini),
then create and claim jobs, write a run's results through ``writer()``, and read calls back
with filters and pages. Every method that judges time takes ``now=``; left out, it is the
database server's clock (``Database.now``), the one clock all instances sharing the store
agree on. Thread-safe: each call uses its own pooled connection.

ARCHITECTURE.md section 2 (storage); issues 6 and 8 (persistence, several instances).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from analyzer.storage import jobs, queries
from analyzer.storage.engine import Database, DatabaseError, StoreError, database_url
from analyzer.storage.jobs import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    InputSpec,
    JobView,
    Lease,
    Recovery,
)
from analyzer.storage.models import JobOrigin, JobState
from analyzer.storage.queries import (
    DEFAULT_PAGE,
    MAX_PAGE,
    CallCounts,
    CallFilter,
    CallOrder,
    CallPage,
    StoredCall,
)
from analyzer.storage.writer import BATCH_CALLS, Heartbeat, RunWriter

# Where the Alembic scripts live, as a package resource (ships inside the wheel).
SCRIPT_LOCATION = "analyzer.storage:migrations"
# pg_advisory_xact_lock key serialising migrations of instances starting together (any
# constant unique to this application; ASCII "stirscop").
MIGRATION_LOCK_KEY = 0x73746972_73636F70
# Heartbeats per lease period: a lease survives this many minus one missed beats.
BEATS_PER_LEASE = 4
_ANY = CallFilter()


def alembic_config() -> Config:
    """The Alembic configuration of the store (for ``command.*`` with a connection)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


class Store:
    """The results store (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, url: str, *, schema: str | None = None, echo: bool = False) -> Store:
        """Open (not create or migrate) the store at ``url``; ``schema`` (or ``?schema=NAME``
        in a PostgreSQL URL) puts the tables in a schema of their own, created by ``migrate``.
        ``StoreError`` for a bad or unsupported URL."""
        parsed = database_url(url)
        named = parsed.query.get("schema")
        if isinstance(named, str) and parsed.get_backend_name() == "postgresql":
            parsed = parsed.difference_update_query(["schema"])
            schema = schema or named
        return cls(Database(parsed, schema=schema, echo=echo))

    @property
    def url(self) -> str:
        """The URL with any password hidden (for logs and errors)."""
        url = self.db.url
        if self.db.schema is not None:
            url = url.update_query_dict({"schema": self.db.schema})
        return url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.db.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema to the latest revision (idempotent; safe when several
        instances start at once on PostgreSQL: they take turns on an advisory lock)."""
        config = alembic_config()
        try:
            with self.db.write() as conn:
                if self.db.is_postgres:
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY}
                    )
                    if self.db.schema is not None:
                        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.db.schema}"'))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except DatabaseError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreError(f"cannot migrate {self.url}: {cause}") from exc

    def revision(self) -> str | None:
        """The schema revision of the database (None before the first ``migrate``)."""
        with self.db.read() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @staticmethod
    def head() -> str | None:
        """The latest schema revision this code knows."""
        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    def is_current(self) -> bool:
        """Is the schema at the latest revision (for readiness checks)?"""
        return self.revision() == self.head()

    def now(self) -> datetime:
        """The database server's clock (UTC)."""
        return self.db.now()

    def _now(self, now: datetime | None) -> datetime:
        return now if now is not None else self.db.now()

    # -- jobs --------------------------------------------------------------------------------

    def create_job(
        self,
        inputs: Sequence[InputSpec],
        options: Mapping[str, Any] | None = None,
        *,
        origin: JobOrigin = JobOrigin.SERVICE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        total_bytes: int | None = None,
        now: datetime | None = None,
    ) -> JobView:
        """Queue a job for the workers."""
        return jobs.create_job(
            self.db, inputs, options or {}, now=self._now(now), origin=origin,
            max_attempts=max_attempts, total_bytes=total_bytes,
        )  # fmt: skip

    def begin_job(
        self,
        inputs: Sequence[InputSpec],
        options: Mapping[str, Any] | None = None,
        *,
        owner: str,
        lease_s: float = DEFAULT_LEASE_S,
        origin: JobOrigin = JobOrigin.CLI,
        total_bytes: int | None = None,
        now: datetime | None = None,
    ) -> Lease:
        """Record a run that starts now in this process (``running``, leased to ``owner``)."""
        return jobs.begin_job(
            self.db, inputs, options or {}, owner=owner, now=self._now(now), lease_s=lease_s,
            origin=origin, total_bytes=total_bytes,
        )  # fmt: skip

    def claim(
        self, owner: str, *, lease_s: float = DEFAULT_LEASE_S, now: datetime | None = None
    ) -> Lease | None:
        """Claim the oldest queued job (exactly one claimer wins it), or None."""
        return jobs.claim(self.db, owner, now=self._now(now), lease_s=lease_s)

    def heartbeat(
        self,
        lease: Lease,
        *,
        progress_bytes: int | None = None,
        total_bytes: int | None = None,
        now: datetime | None = None,
    ) -> Lease:
        """Renew a lease; ``LeaseLost`` when the job is no longer ours."""
        return jobs.heartbeat(
            self.db, lease, now=self._now(now), progress_bytes=progress_bytes,
            total_bytes=total_bytes,
        )  # fmt: skip

    def keep_alive(
        self, lease: Lease, progress_bytes: Callable[[], int] | None = None
    ) -> Heartbeat:
        """A ``Heartbeat`` renewing ``lease`` every lease/4 with the progress so far; use it as
        a context manager around the run and check ``.lost`` (or the writer's ``LeaseLost``)."""

        def renew() -> None:
            done = progress_bytes() if progress_bytes is not None else None
            self.heartbeat(lease, progress_bytes=done)

        return Heartbeat(renew, lease.lease_s / BEATS_PER_LEASE)

    def complete(
        self,
        lease: Lease,
        *,
        summary: Mapping[str, Any] | None = None,
        manifest: Mapping[str, Any] | None = None,
        inputs: Sequence[InputSpec] | None = None,
        progress_bytes: int | None = None,
        now: datetime | None = None,
    ) -> None:
        """Mark a job done with its summary, manifest and final input facts."""
        jobs.complete(
            self.db, lease, now=self._now(now), summary=summary, manifest=manifest,
            inputs=inputs, progress_bytes=progress_bytes,
        )  # fmt: skip

    def fail(
        self,
        lease: Lease,
        error: str,
        *,
        state: JobState = JobState.FAILED,
        now: datetime | None = None,
    ) -> None:
        """End a job as failed (or interrupted)."""
        jobs.fail(self.db, lease, error, now=self._now(now), state=state)

    def recover(self, *, owner: str | None = None, now: datetime | None = None) -> Recovery:
        """Sweep expired leases (and, with ``owner``, that owner's running jobs: call it at
        start-up with the instance name): re-queue what can be retried, else interrupted."""
        return jobs.recover(self.db, now=self._now(now), owner=owner)

    def get_job(self, job_id: str) -> JobView | None:
        return jobs.get_job(self.db, job_id)

    def list_jobs(
        self, *, state: JobState | None = None, limit: int = 50, offset: int = 0
    ) -> list[JobView]:
        """Jobs, newest first."""
        return jobs.list_jobs(self.db, state=state, limit=limit, offset=offset)

    def count_jobs(self) -> dict[str, int]:
        """Jobs per state."""
        return jobs.count_jobs(self.db)

    def delete_job(self, job_id: str) -> bool:
        """Delete a job with its calls, anomalies and manifest; False if there was none."""
        return jobs.delete_job(self.db, job_id)

    # -- results -----------------------------------------------------------------------------

    def writer(
        self, lease: Lease, *, batch_calls: int = BATCH_CALLS, background: bool = False
    ) -> RunWriter:
        """A writer for the leased job's results (clears what an earlier attempt left);
        ``background`` writes batches from a helper thread while the analysis goes on."""
        return RunWriter(self.db, lease, batch_calls=batch_calls, background=background)

    def list_calls(
        self,
        where: CallFilter = _ANY,
        *,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
        offset: int | None = None,
        order: CallOrder = CallOrder.START,
        with_record: bool = False,
    ) -> CallPage:
        """A page of calls matching ``where`` (keyset ``cursor`` or ``offset``)."""
        return queries.list_calls(
            self.db, where, limit=limit, cursor=cursor, offset=offset, order=order,
            with_record=with_record,
        )  # fmt: skip

    def iter_calls(self, where: CallFilter = _ANY, *, page: int = MAX_PAGE) -> Iterator[StoredCall]:
        """Every matching call with its record, oldest first (bounded memory, for exports)."""
        return queries.iter_calls(self.db, where, page=page)

    def count_calls(self, where: CallFilter = _ANY) -> int:
        return queries.count_calls(self.db, where)

    def get_call(self, pk: int) -> StoredCall | None:
        """One call with its full record."""
        return queries.get_call(self.db, pk)

    def summarize(self, where: CallFilter = _ANY) -> CallCounts:
        """Counts by verdict, attestation, reason and signer."""
        return queries.summarize(self.db, where)

    def job_anomalies(
        self, job_id: str, *, run_only: bool = True, limit: int = DEFAULT_PAGE, offset: int = 0
    ) -> list[dict[str, Any]]:
        return queries.job_anomalies(self.db, job_id, run_only=run_only, limit=limit, offset=offset)

    def get_manifest(self, job_id: str) -> dict[str, Any] | None:
        return queries.get_manifest(self.db, job_id)
