"""Analysis jobs and their results over HTTP: ``/v1/jobs``, ``/v1/calls``, ``/v1/signers``,
traceback candidates and exports (the data access is ``service.api.jobs_data``). Every route
needs an API key with the ``jobs`` scope.

Uploads (``POST /v1/jobs``, multipart, field ``capture``, one or more files) are read within
``max_upload_bytes`` (413 beyond), saved under the upload directory and checked to be captures
(415 ``not_a_capture`` otherwise) before the job is queued; the worker pool (``service.worker``)
runs it. Store reads are blocking and run in the thread pool (sync routes or
``run_in_threadpool``), never on the event loop. Unknown ids are 404 ``not_found``; exports and
traceback of a job that is not done are 409 ``job_not_done``. ARCHITECTURE.md section 2;
issue 6 (analysis jobs).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from analyzer.storage import CallFilter, CallOrder, JobState
from analyzer.storage.queries import MAX_PAGE
from analyzer.traceback_campaign import DEFAULT_MIN_CALLS
from analyzer.traceback_report import csv_text
from analyzer.traceback_select import DEFAULT_RULES
from service.api.errors import ApiError, ErrorCode
from service.api.jobs_data import (
    attachment,
    call_filter,
    create_job_from_request,
    csv_lines,
    get_call_or_404,
    get_job_or_404,
    jsonl_lines,
    list_calls,
    require_done,
    require_jobs,
    traceback_document,
    traceback_for,
)
from service.api.jobs_models import (
    CallDetail,
    CallPage,
    Job,
    JobList,
    Signers,
    Traceback,
    call_detail,
    job_out,
    signers_out,
)
from service.api.models import ErrorBody
from service.worker import report_path

router = APIRouter(prefix="/v1", tags=["jobs"])

# Jobs listed per page.
MAX_JOBS_PAGE = 200
# Filter strings (verstat, attestation, SPC, reason): the store's short columns.
MAX_FILTER_CHARS = 64
# The traceback selection expression (a few rule names).
MAX_SELECT_CHARS = 256


JOBS_SECURITY: dict[str, Any] = {"security": [{"apiKey": []}]}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "malformed request or parameter",
        401: "no or unknown API key",
        403: "API key without the jobs scope",
        404: "no such job or call",
        409: "the job is not done",
        413: "upload larger than the limit",
        415: "not multipart/form-data, or a file that is not a capture",
        503: "not ready, or analysis jobs not enabled",
    }
    return {s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses}


# -- routes -----------------------------------------------------------------------------------

UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "capture": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "pcap or pcapng captures (gzip-compressed or not)",
                    },
                    "at": {
                        "type": "string",
                        "description": "verify every call as of this time (epoch or ISO 8601)",
                    },
                },
                "required": ["capture"],
            }
        }
    },
}


@router.post(
    "/jobs",
    status_code=202,
    response_model=Job,
    summary="Upload captures and queue their analysis",
    responses=_errors(400, 401, 403, 413, 415, 503),
    openapi_extra={**JOBS_SECURITY, "requestBody": UPLOAD_BODY},
)
async def post_job(request: Request) -> JSONResponse:
    context = require_jobs(request)
    job = await create_job_from_request(request, context)
    body = job_out(job).model_dump()
    return JSONResponse(body, status_code=202, headers={"Location": body["links"]["self"]})


@router.get(
    "/jobs",
    response_model=JobList,
    summary="Jobs, newest first, with counts per state",
    responses=_errors(400, 401, 403, 503),
    openapi_extra=JOBS_SECURITY,
)
def get_jobs(
    request: Request,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_JOBS_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JSONResponse:
    context = require_jobs(request)
    jobs = context.store.list_jobs(state=state, limit=limit, offset=offset)
    body = JobList(jobs=[job_out(j) for j in jobs], counts=context.store.count_jobs())
    return JSONResponse(body.model_dump())


@router.get(
    "/jobs/{job_id}",
    response_model=Job,
    summary="One job: state and progress",
    responses=_errors(400, 401, 403, 404, 503),
    openapi_extra=JOBS_SECURITY,
)
def get_job(request: Request, job_id: str) -> JSONResponse:
    context = require_jobs(request)
    return JSONResponse(job_out(get_job_or_404(context, job_id)).model_dump())


@router.get(
    "/calls",
    response_model=CallPage,
    summary="Calls matching the filters, a page at a time (pass next_cursor as cursor)",
    responses=_errors(400, 401, 403, 503),
    openapi_extra=JOBS_SECURITY,
)
def get_calls(
    request: Request,
    job: Annotated[str | None, Query(max_length=64)] = None,
    verstat: Annotated[str | None, Query(max_length=MAX_FILTER_CHARS)] = None,
    attest: Annotated[str | None, Query(max_length=MAX_FILTER_CHARS)] = None,
    signer: Annotated[str | None, Query(max_length=MAX_FILTER_CHARS)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    calling: Annotated[str | None, Query(max_length=MAX_FILTER_CHARS)] = None,
    called: Annotated[str | None, Query(max_length=MAX_FILTER_CHARS)] = None,
    reason: Annotated[str | None, Query(max_length=MAX_FILTER_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    order: CallOrder = CallOrder.START,
) -> JSONResponse:
    context = require_jobs(request)
    where = call_filter(
        job=job, verstat=verstat, attest=attest, signer=signer, since=since, until=until,
        calling=calling, called=called, reason=reason,
    )  # fmt: skip
    return JSONResponse(list_calls(context, where, limit, cursor, order).model_dump())


@router.get(
    "/calls/{call_id}",
    response_model=CallDetail,
    summary="One call: PASSporTs, certificate chain, findings, legs and ladder",
    responses=_errors(400, 401, 403, 404, 503),
    openapi_extra=JOBS_SECURITY,
)
def get_call(request: Request, call_id: int) -> JSONResponse:
    context = require_jobs(request)
    return JSONResponse(call_detail(get_call_or_404(context, call_id)).model_dump())


@router.get(
    "/signers",
    response_model=Signers,
    summary="Calls by signer, verdict, attestation and failure reason",
    responses=_errors(400, 401, 403, 503),
    openapi_extra=JOBS_SECURITY,
)
def get_signers(
    request: Request, job: Annotated[str | None, Query(max_length=64)] = None
) -> JSONResponse:
    context = require_jobs(request)
    where = call_filter(job=job)
    return JSONResponse(signers_out(context.store.summarize(where)).model_dump())


SelectQuery = Annotated[str, Query(max_length=MAX_SELECT_CHARS)]
CampaignQuery = Annotated[int, Query(ge=1, le=1_000_000)]


@router.get(
    "/jobs/{job_id}/traceback",
    response_model=Traceback,
    summary="Traceback candidates and campaigns of a done job",
    responses=_errors(400, 401, 403, 404, 409, 503),
    openapi_extra=JOBS_SECURITY,
)
def get_traceback(
    request: Request,
    job_id: str,
    select: SelectQuery = DEFAULT_RULES,
    campaign_min: CampaignQuery = DEFAULT_MIN_CALLS,
) -> JSONResponse:
    context = require_jobs(request)
    result = traceback_for(context, get_job_or_404(context, job_id), select, campaign_min)
    return JSONResponse(traceback_document(result).model_dump(by_alias=True))


def _text_responses(media: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"content": {media: {"schema": {"type": "string"}}}},
        **_errors(400, 401, 403, 404, 409, 503),
    }


@router.get(
    "/jobs/{job_id}/traceback.csv",
    summary="Traceback candidates of a done job as CSV",
    response_class=Response,
    responses=_text_responses("text/csv"),
    openapi_extra=JOBS_SECURITY,
)
def get_traceback_csv(
    request: Request,
    job_id: str,
    select: SelectQuery = DEFAULT_RULES,
    campaign_min: CampaignQuery = DEFAULT_MIN_CALLS,
) -> Response:
    context = require_jobs(request)
    result = traceback_for(context, get_job_or_404(context, job_id), select, campaign_min)
    return Response(
        csv_text(result.candidates),
        media_type="text/csv; charset=utf-8",
        headers=attachment(job_id, "-traceback.csv"),
    )


@router.get(
    "/jobs/{job_id}/export.csv",
    summary="Every call of a done job as CSV (the `stirscope analyze --format csv` columns)",
    response_class=Response,
    responses=_text_responses("text/csv"),
    openapi_extra=JOBS_SECURITY,
)
def export_csv(request: Request, job_id: str) -> Response:
    context = require_jobs(request)
    job = get_job_or_404(context, job_id)
    require_done(job)
    return StreamingResponse(
        csv_lines(context.store, CallFilter(job_id=job.id)),
        media_type="text/csv; charset=utf-8",
        headers=attachment(job.id, ".csv"),
    )


@router.get(
    "/jobs/{job_id}/export.jsonl",
    summary="Every call record of a done job as JSON Lines",
    response_class=Response,
    responses=_text_responses("application/x-ndjson"),
    openapi_extra=JOBS_SECURITY,
)
def export_jsonl(request: Request, job_id: str) -> Response:
    context = require_jobs(request)
    job = get_job_or_404(context, job_id)
    require_done(job)
    return StreamingResponse(
        jsonl_lines(context.store, CallFilter(job_id=job.id)),
        media_type="application/x-ndjson",
        headers=attachment(job.id, ".jsonl"),
    )


@router.get(
    "/jobs/{job_id}/export.html",
    summary="The HTML report of a done job (self-contained, with charts)",
    response_class=Response,
    responses=_text_responses("text/html"),
    openapi_extra=JOBS_SECURITY,
)
def export_html(request: Request, job_id: str) -> Response:
    context = require_jobs(request)
    job = get_job_or_404(context, job_id)
    require_done(job)
    path = report_path(job, context.upload_dir)
    if path is None or not path.is_file():
        raise ApiError(ErrorCode.NOT_FOUND, f"report of job {job.id}")
    return FileResponse(
        path, media_type="text/html; charset=utf-8", headers=attachment(job.id, ".html")
    )
