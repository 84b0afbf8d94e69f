"""The results store schema: jobs, their inputs, calls, PASSporTs, anomalies and manifests.

Typed SQLAlchemy 2 ORM models shared by SQLite (the embedded default) and PostgreSQL. The
Alembic revisions under ``analyzer/storage/migrations/versions`` create exactly this schema
(a test compares them); change both together, never one alone.

Theory of operation for ``jobs``: a job is ``queued`` until a worker claims it, which makes it
``running`` under a lease (``lease_owner``, ``lease_token``, ``lease_expires_at``) renewed by
heartbeats; the claim increments ``attempt`` and draws a fresh token, and every later write of
that attempt is fenced on the token, so a worker whose lease was taken over can no longer write.
A lease that expires goes back to ``queued`` while attempts remain (an instance died: the job
is not lost), else to ``interrupted``; ``done`` and ``failed`` are final.

Calls keep the full JSONL record (``record``, the `stirscope analyze` contract) beside the
columns the API filters on (verstat, attestation, signer SPC, time range, calling and called
number), each indexed. ARCHITECTURE.md section 2 (storage); STANDARDS.md section 9.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

# Constraint names follow one convention so migrations on every dialect name them alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Column sizes. Call-IDs and header-derived strings come from the wire and can be long; the
# store truncates to these (the full values stay in ``record``). RFC 3261 sets no limit on
# Call-ID; 512 covers every capture in the real-world corpus with room to spare.
CALL_ID_LEN = 512
# ``ip:port`` with a bracketed IPv6 address and a zone is under 64 characters.
ENDPOINT_LEN = 64
# E.164 numbers are at most 15 digits (ITU-T E.164 section 6); non-E.164 canonical forms
# (RFC 8224 section 8.3 keeps other digit strings) get more room.
TN_LEN = 64
# verstat values (TN-Validation-Passed...) and reason codes (snake_case enums) are short.
SHORT_LEN = 64
# A signer SPC is a 4-character OCN in practice (ATIS-1000080); organisation names are free text.
SPC_LEN = 64
ORG_LEN = 256
# x5u is an https URL chosen by the caller's signer; longer ones are truncated in the column.
URL_LEN = 2048
# Lease owner names (``host/pid`` or a configured instance name) and lease tokens (uuid4 hex).
OWNER_LEN = 255
TOKEN_LEN = 32
# Job ids are uuid4 hex: unguessable, safe in URLs, unique across instances without a sequence.
JOB_ID_LEN = 32
# SHA-256 as hex (FIPS 180-4).
SHA256_HEX_LEN = 64
# Capture names as given (a path or an upload's filename).
NAME_LEN = 1024


class JobState(StrEnum):
    """Where a job is in its life (stable values: stored and shown in the API)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.INTERRUPTED})


class JobOrigin(StrEnum):
    """Who made a job: the service (inputs stored by it: re-runnable by any instance) or a
    `stirscope analyze --db` run (inputs are that machine's files: never re-run elsewhere)."""

    SERVICE = "service"
    CLI = "cli"


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every dialect: ``timestamptz`` on PostgreSQL, naive UTC text on
    SQLite (which has no time zone type), always read back with ``tzinfo=UTC``."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(DateTime(timezone=dialect.name == "postgresql"))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSON documents as text on every dialect. Not JSONB on PostgreSQL: JSONB reorders keys (a
# stored record would no longer export byte-identical to `stirscope analyze --format jsonl`)
# and costs ~1.6x more per insert; every field the API filters on is a column anyway.
Document = JSON()
# 64-bit keys that are still SQLite's ROWID alias (autoincrement needs INTEGER there).
BigKey = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One analysis: its inputs, options, state, lease and outcome."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(JOB_ID_LEN), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    origin: Mapped[str] = mapped_column(String(16), default=JobOrigin.SERVICE.value)
    options: Mapped[dict[str, Any]] = mapped_column(Document, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    progress_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    progress_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(OWNER_LEN))
    lease_token: Mapped[str | None] = mapped_column(String(TOKEN_LEN))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    summary: Mapped[dict[str, Any] | None] = mapped_column(Document)

    inputs: Mapped[list[JobInput]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobInput.position"
    )

    __table_args__ = (
        # Claiming scans queued jobs oldest first; the lease sweep scans running jobs by expiry.
        Index("ix_jobs_state_created", "state", "created_at"),
        Index("ix_jobs_state_lease", "state", "lease_expires_at"),
        Index("ix_jobs_created", "created_at"),
    )


class JobInput(Base):
    """One capture of a job: name as given, size and SHA-256 (known once read)."""

    __tablename__ = "job_inputs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX_LEN), index=True)
    # Where the service keeps an uploaded capture (a path or object key), for re-runs.
    location: Mapped[str | None] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="inputs")


class CallRow(Base):
    """One call record of a job, with its filterable fields as columns."""

    __tablename__ = "calls"

    id: Mapped[int] = mapped_column(BigKey, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)  # position in the run's output (emission order)
    call_id: Mapped[str] = mapped_column(String(CALL_ID_LEN))
    start_ns: Mapped[int] = mapped_column(BigInteger)
    start: Mapped[datetime] = mapped_column(UTCDateTime())
    src: Mapped[str] = mapped_column(String(ENDPOINT_LEN))
    dst: Mapped[str] = mapped_column(String(ENDPOINT_LEN))
    transport: Mapped[str] = mapped_column(String(16))
    encapsulation: Mapped[str | None] = mapped_column(String(16))
    calling_tn: Mapped[str | None] = mapped_column(String(TN_LEN))
    called_tn: Mapped[str | None] = mapped_column(String(TN_LEN))
    verstat: Mapped[str | None] = mapped_column(String(SHORT_LEN))
    status_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(SHORT_LEN))
    attest: Mapped[str | None] = mapped_column(String(8))
    origid: Mapped[str | None] = mapped_column(String(SHORT_LEN))
    signer_spc: Mapped[str | None] = mapped_column(String(SPC_LEN))
    signer_org: Mapped[str | None] = mapped_column(String(ORG_LEN))
    x5u: Mapped[str | None] = mapped_column(String(URL_LEN))
    final_status: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(SHORT_LEN))
    error: Mapped[str | None] = mapped_column(Text)
    passport_count: Mapped[int] = mapped_column(Integer, default=0)
    anomaly_count: Mapped[int] = mapped_column(Integer, default=0)
    replay: Mapped[bool] = mapped_column(Boolean, default=False)
    record: Mapped[dict[str, Any]] = mapped_column(Document)

    __table_args__ = (
        Index("uq_calls_job_seq", "job_id", "seq", unique=True),
        Index("ix_calls_job_start", "job_id", "start_ns", "id"),
        Index("ix_calls_start", "start_ns", "id"),
        Index("ix_calls_verstat", "verstat", "start_ns"),
        Index("ix_calls_attest", "attest", "start_ns"),
        Index("ix_calls_signer_spc", "signer_spc", "start_ns"),
        Index("ix_calls_calling_tn", "calling_tn", "start_ns"),
        Index("ix_calls_called_tn", "called_tn", "start_ns"),
        Index("ix_calls_call_id", "call_id"),
    )


class PassportRow(Base):
    """One PASSporT of a call (what the verifier decoded), for signer and replay searches."""

    __tablename__ = "passports"

    id: Mapped[int] = mapped_column(BigKey, primary_key=True, autoincrement=True)
    call_pk: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    ppt: Mapped[str | None] = mapped_column(String(SHORT_LEN))
    attest: Mapped[str | None] = mapped_column(String(8))
    origid: Mapped[str | None] = mapped_column(String(SHORT_LEN))
    orig_tn: Mapped[str | None] = mapped_column(String(TN_LEN))
    iat: Mapped[int | None] = mapped_column(BigInteger)
    x5u: Mapped[str | None] = mapped_column(String(URL_LEN))
    signer_spc: Mapped[str | None] = mapped_column(String(SPC_LEN))
    valid: Mapped[bool | None] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(SHORT_LEN))
    signature_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX_LEN))

    __table_args__ = (
        Index("ix_passports_call", "call_pk", "position"),
        Index("ix_passports_job", "job_id"),
        Index("ix_passports_origid", "origid"),
        Index("ix_passports_signature", "signature_sha256"),
        Index("ix_passports_signer_spc", "signer_spc"),
    )


class AnomalyRow(Base):
    """A "weird" record: of the run (``call_pk`` null) or attached to one call."""

    __tablename__ = "anomalies"

    id: Mapped[int] = mapped_column(BigKey, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    call_pk: Mapped[int | None] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(SHORT_LEN))
    frame: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str | None] = mapped_column(Text)
    document: Mapped[dict[str, Any]] = mapped_column(Document)

    __table_args__ = (
        Index("ix_anomalies_job_kind", "job_id", "kind"),
        Index("ix_anomalies_call", "call_pk"),
    )


class ManifestRow(Base):
    """The evidence manifest of a finished job (analyzer.manifest)."""

    __tablename__ = "manifests"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(Document)
