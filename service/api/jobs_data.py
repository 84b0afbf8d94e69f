"""Analysis jobs and their results as the API and the web UI read them: the jobs context of
a process (results store, worker pool, upload settings), lookups that answer 404, filters
checked into a store ``CallFilter``, traceback candidates from stored records, and exports.

Store reads are blocking: callers run these in the thread pool, never on the event loop.
ARCHITECTURE.md section 2; issue 6 (analysis jobs).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from analyzer.records import CSV_FIELDS
from analyzer.storage import (
    CallFilter,
    CallOrder,
    InvalidCursor,
    JobState,
    JobView,
    Store,
    StoredCall,
)
from analyzer.traceback import TracebackResult, TracebackSettings, canonical, make_candidates
from analyzer.traceback_facts import CallFacts
from analyzer.traceback_select import Selection, SelectionError
from analyzer.version import __version__
from service import uploads
from service.api.auth import Scope, authorize
from service.api.errors import ApiError, ErrorCode
from service.api.jobs_models import CallPage, Traceback, call_out
from service.api.state import get_state
from service.cmd_verify import UsageError, parse_at
from service.config import ServeConfig
from service.worker import WorkerConfig, WorkerPool

# The attribute of ``app.state`` holding the ``JobsContext`` (absent: jobs are not enabled).
JOBS_ATTRIBUTE = "stirscope_jobs"
# Job ids are uuid4 hex (analyzer.storage.models.JOB_ID_LEN): anything else is unknown.
JOB_ID_RE = re.compile(r"[0-9a-f]{32}")
# Call ids are store row ids: SQL BIGINT (larger ones cannot exist, and SQLite refuses them).
MAX_ROW_ID = 2**63 - 1
# A telephone number filter: digits after dropping visual separators (RFC 3966 section 5.1.1)
# and a leading +; the store keeps canonical TNs (RFC 8224 section 8.3).
_TN_SEPARATORS = re.compile(r"[\s().\-]")
_TN_RE = re.compile(r"\d{1,64}")
# The time range filter must fit the store's nanosecond column (signed 64 bits).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2262, 1, 1, tzinfo=UTC)
# The traceback document's schema URN (as `stirscope traceback --format json`).
TRACEBACK_SCHEMA = "urn:stirscope:traceback-candidate:v1"


@dataclass(slots=True)
class JobsContext:
    """The results store, the worker pool and upload settings of this process."""

    store: Store
    pool: WorkerPool | None
    upload_dir: Path
    max_upload_bytes: int
    freshness_s: int


def owner_name(config: ServeConfig) -> str:
    """This process's lease owner: the configured instance name or ``host:port``, stable across
    restarts so that start-up recovery finds its jobs; with several worker processes each adds
    its pid (their jobs are then recovered by lease expiry)."""
    name = config.instance or f"{socket.gethostname()}:{config.port}"
    return f"{name}/{os.getpid()}" if config.workers > 1 else name


def open_jobs(config: ServeConfig) -> JobsContext | None:
    """Open and migrate the store, start the worker pool (blocking: run it in a thread)."""
    if config.db is None:
        return None
    if config.upload_dir is None:
        raise ValueError("analysis jobs need an upload directory")
    if "://" not in config.db:
        Path(config.db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    config.upload_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = Store.open(config.db)
    try:
        store.migrate()
        pool = None
        if config.job_workers > 0:
            worker = WorkerConfig(
                verifier=config.verifier,
                owner=owner_name(config),
                upload_dir=config.upload_dir,
                threads=config.job_workers,
                lease_s=config.job_lease_s,
            )
            pool = WorkerPool(store, worker)
            pool.start()
    except BaseException:
        store.close()
        raise
    return JobsContext(
        store=store,
        pool=pool,
        upload_dir=config.upload_dir,
        max_upload_bytes=config.max_upload_bytes,
        freshness_s=config.verifier.policy.freshness_s,
    )


def close_jobs(context: JobsContext) -> None:
    """Stop the workers (running jobs go back to the queue) and close the store."""
    if context.pool is not None:
        context.pool.stop()
    context.store.close()


def jobs_context(request: Request) -> JobsContext:
    context = getattr(request.app.state, JOBS_ATTRIBUTE, None)
    if not isinstance(context, JobsContext):
        raise ApiError(ErrorCode.JOBS_UNAVAILABLE)
    return context


def require_jobs(request: Request) -> JobsContext:
    """The jobs context, for a request carrying a key with the ``jobs`` scope."""
    state = get_state(request)
    authorize(state.keyring, request.headers.get("authorization"), Scope.JOBS)
    return jobs_context(request)


def get_job_or_404(context: JobsContext, job_id: str) -> JobView:
    job = context.store.get_job(job_id) if JOB_ID_RE.fullmatch(job_id) else None
    if job is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"job {job_id[:64]}")
    return job


def get_call_or_404(context: JobsContext, call_id: int) -> StoredCall:
    call = context.store.get_call(call_id) if 1 <= call_id <= MAX_ROW_ID else None
    if call is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"call {call_id}")
    return call


def require_done(job: JobView) -> None:
    if job.state is not JobState.DONE:
        raise ApiError(ErrorCode.JOB_NOT_DONE, job.id, job.state.value)


def upload_error(exc: uploads.UploadError, limit: int) -> ApiError:
    """The API error of an upload problem."""
    if exc.kind == uploads.TOO_LARGE:
        return ApiError(ErrorCode.PAYLOAD_TOO_LARGE, str(limit))
    if exc.kind == uploads.NOT_MULTIPART:
        return ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, *exc.detail[:1])
    if exc.kind == uploads.NO_FILES:
        return ApiError(ErrorCode.MISSING_PARAMETER, uploads.FILE_FIELD)
    if exc.kind == uploads.NOT_A_CAPTURE:
        return ApiError(ErrorCode.NOT_A_CAPTURE, *exc.detail[:2])
    return ApiError(ErrorCode.PARSE_FAILURE, "; ".join(exc.detail) or "multipart body")


async def create_job_from_request(request: Request, context: JobsContext) -> JobView:
    """Read the multipart upload, save and check the captures, queue the job."""
    limit = context.max_upload_bytes
    try:
        form = await uploads.read_form(request, limit)
    except uploads.UploadError as exc:
        raise upload_error(exc, limit) from None
    try:
        files = uploads.form_files(form)
        at_text = uploads.form_text(form, "at")
        try:
            at = parse_at(at_text)
        except UsageError as exc:
            raise ApiError(ErrorCode.INVALID_PARAMETER, "at", str(exc)) from None
        batch = await run_in_threadpool(uploads.save_batch, files, context.upload_dir)
    except uploads.UploadError as exc:
        raise upload_error(exc, limit) from None
    finally:
        await form.close()
    options = {
        "command": "serve",
        "at": at.isoformat() if at is not None else None,
        "upload": batch.name,
    }
    try:
        job = await run_in_threadpool(
            context.store.create_job, batch.inputs, options, total_bytes=batch.total_bytes
        )
    except BaseException:
        uploads.discard_batch(batch, context.upload_dir)
        raise
    if context.pool is not None:
        context.pool.notify()
    return job


def tn_filter(name: str, value: str | None) -> str | None:
    """A calling/called number filter as the canonical digits the store keeps."""
    if value is None or not value.strip():
        return None
    digits = _TN_SEPARATORS.sub("", value.strip()).removeprefix("+")
    if _TN_RE.fullmatch(digits) is None:
        raise ApiError(ErrorCode.INVALID_PARAMETER, name, "expected a telephone number")
    return digits


def time_filter(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not EARLIEST <= moment < LATEST:
        raise ApiError(ErrorCode.INVALID_PARAMETER, name, "outside 1970-01-01 to 2262-01-01")
    return moment


def text_filter(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def call_filter(
    *,
    job: str | None = None,
    verstat: str | None = None,
    attest: str | None = None,
    signer: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    calling: str | None = None,
    called: str | None = None,
    reason: str | None = None,
) -> CallFilter:
    """A store filter from query values (checked; empty strings mean "any")."""
    return CallFilter(
        job_id=text_filter(job),
        verstat=text_filter(verstat),
        attest=text_filter(attest),
        signer_spc=text_filter(signer),
        since=time_filter("since", since),
        until=time_filter("until", until),
        calling=tn_filter("calling", calling),
        called=tn_filter("called", called),
        reason=text_filter(reason),
    )


def list_calls(
    context: JobsContext, where: CallFilter, limit: int, cursor: str | None, order: CallOrder
) -> CallPage:
    try:
        page = context.store.list_calls(where, limit=limit, cursor=cursor or None, order=order)
    except InvalidCursor:
        raise ApiError(ErrorCode.INVALID_PARAMETER, "cursor", "not a cursor of this list") from None
    return CallPage(calls=[call_out(c) for c in page.items], next_cursor=page.next_cursor)


def traceback_for(
    context: JobsContext, job: JobView, select: str, campaign_min: int
) -> TracebackResult:
    """Candidates and campaigns of a done job, from its stored call records (as
    `stirscope traceback --from-results`). TRACEBACK.md section 6."""
    require_done(job)
    try:
        selection = Selection.parse(select)
    except SelectionError as exc:
        raise ApiError(ErrorCode.INVALID_PARAMETER, "select", str(exc)) from None
    facts: list[CallFacts] = []
    for call in context.store.iter_calls(CallFilter(job_id=job.id)):
        try:
            facts.append(CallFacts.from_json(call.record or {}))
        except ValueError:
            continue  # a record written by another version without the fields traceback needs
    config = {
        "job": job.id,
        "select": str(selection),
        "campaign_min": campaign_min,
        "freshness_s": context.freshness_s,
    }
    inputs = tuple(i.to_json() for i in job.inputs)
    settings = TracebackSettings(
        freshness_s=context.freshness_s,
        tool_version=__version__,
        config_sha256=hashlib.sha256(canonical(config).encode()).hexdigest(),
        reference_time_policy="recorded",
        evidence_kind="call_records",
        inputs=inputs,
    )
    return make_candidates(facts, settings, selection, min_campaign_calls=campaign_min)


def traceback_document(result: TracebackResult) -> Traceback:
    return Traceback.model_validate(
        {
            "schema": TRACEBACK_SCHEMA,
            "summary": result.summary(),
            "campaigns": [c.to_json() for c in result.campaigns],
            "candidates": result.candidates,
        }
    )


def csv_row(record: dict[str, Any]) -> list[str]:
    """A stored record as the `stirscope analyze --format csv` row (``CSV_FIELDS`` order)."""

    def part(name: str, key: str) -> object:
        value = record.get(name)
        return value.get(key) if isinstance(value, dict) else None

    def items(name: str) -> list[Any]:
        value = record.get(name)
        return value if isinstance(value, list) else []

    signer = record.get("signer") if isinstance(record.get("signer"), dict) else {}
    assert isinstance(signer, dict)
    values: list[object] = [
        record.get("call_id"), record.get("start"), record.get("start_ns"), record.get("src"),
        record.get("dst"), record.get("transport"), record.get("encapsulation"),
        record.get("request_uri"), part("from", "raw"), part("from", "tn"), part("to", "raw"),
        part("to", "tn"), part("pai", "raw"), part("pai", "tn"), record.get("final_status"),
        record.get("state"), record.get("end"), record.get("verstat"), record.get("status_code"),
        record.get("reason"), record.get("attest"), record.get("origid"), signer.get("spc"),
        signer.get("organization"), record.get("x5u"), len(items("passports")),
        len(items("legs")), " ".join(map(str, items("frames"))),
        ";".join(str(a.get("kind")) for a in items("anomalies") if isinstance(a, dict)),
        record.get("error"),
    ]  # fmt: skip
    return ["" if v is None else str(v) for v in values]


def csv_lines(store: Store, where: CallFilter) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for call in store.iter_calls(where):
        writer.writerow(csv_row(call.record or {}))
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def jsonl_lines(store: Store, where: CallFilter) -> Iterator[str]:
    for call in store.iter_calls(where):
        yield json.dumps(call.record or {}, ensure_ascii=False, separators=(",", ":")) + "\n"


def attachment(job_id: str, suffix: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="stirscope-{job_id}{suffix}"'}
