"""The investigator web UI under ``/ui``: server-rendered Jinja2 pages, plain HTML forms.

Pages: sign-in (an API key with the ``jobs`` scope, kept in an HttpOnly, SameSite=Strict
cookie), upload and jobs with progress (refreshed by ``<meta http-equiv="refresh">`` while a job
runs), calls with filters and pages, one call (ladder, PASSporTs, certificate chain, findings),
signers and campaigns with inline SVG charts, traceback candidates with CSV/JSON exports. Every
page works without JavaScript. State-changing forms are POSTs that also check ``Origin`` when
the browser sends it (a second line against cross-site requests besides the cookie's
SameSite). The data comes through the same functions as the JSON API (``service.api.jobs``).
WCAG 2.2 (labels, headings, captions, landmarks); RFC 6265bis (SameSite cookies).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from analyzer.storage import CallOrder, JobState
from analyzer.storage.models import FINAL_STATES
from analyzer.storage.queries import NO_VERSTAT
from analyzer.traceback_campaign import DEFAULT_MIN_CALLS
from analyzer.traceback_report import csv_text
from analyzer.traceback_select import DEFAULT_RULES
from service.api import jobs_data as jobs
from service.api.auth import Scope
from service.api.errors import ERRORS, ApiError, ErrorCode
from service.api.jobs_models import call_detail, job_out
from service.api.state import get_state
from service.web.charts import ATTEST_COLOURS, VERDICT_COLOURS, bar_chart, ladder_svg

router = APIRouter(prefix="/ui", include_in_schema=False)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
# The sign-in cookie: the API key itself (the server keeps only its hash), HttpOnly so page
# scripts cannot read it, SameSite=Strict so other sites' forms and links never carry it.
COOKIE = "stirscope_key"
# Seconds between refreshes of a page showing a queued or running job.
REFRESH_S = 2
# Calls per page in the calls browser.
PAGE_CALLS = 50
# Verdict and attestation choices offered by the filter form (the store's labels).
VERSTATS = ("TN-Validation-Passed", "TN-Validation-Failed", "No-TN-Validation", NO_VERSTAT)
ATTESTS = ("A", "B", "C", "none")
CALL_FILTERS = ("job", "verstat", "attest", "signer", "calling", "called", "since", "until",
                "reason")  # fmt: skip

templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)

P = ParamSpec("P")


class _SignIn(Exception):
    """No valid sign-in cookie: send the browser to the sign-in page."""


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(request=request, **context)
    return HTMLResponse(html, status_code=status)


def _error_page(request: Request, exc: ApiError) -> HTMLResponse:
    spec = ERRORS[exc.code]
    text = spec.text
    for n, value in enumerate(exc.variables, 1):
        text = text.replace(f"%{n}", value)
    return render(request, "error.html", exc.status, code=exc.code.value, message=text)


def pages(
    handler: Callable[P, Response],
) -> Callable[P, Response]:
    """Sign-in redirects and HTML error pages around a page handler."""

    @functools.wraps(handler)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Response:
        request = kwargs["request"]
        assert isinstance(request, Request)
        try:
            return handler(*args, **kwargs)
        except _SignIn:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/ui/login?{urlencode({'next': target})}", 303)
        except ApiError as exc:
            return _error_page(request, exc)

    return wrapped


def signed_in(request: Request) -> jobs.JobsContext:
    """The jobs context for a browser signed in with a key that has the ``jobs`` scope."""
    state = get_state(request)
    token = request.cookies.get(COOKIE)
    key = state.keyring.authenticate(token) if token else None
    if key is None or Scope.JOBS not in key.scopes:
        raise _SignIn
    return jobs.jobs_context(request)


def check_origin(request: Request) -> None:
    """Refuse a form POST whose Origin is another site (RFC 6454 section 7)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return
    if urlsplit(origin).netloc != request.headers.get("host", ""):
        raise ApiError(ErrorCode.FORBIDDEN, "(browser)", "post from another site")


def _local(target: str | None) -> str:
    """Only redirect within the UI (no open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/"


# -- sign-in ----------------------------------------------------------------------------------


@router.get("/static/stirscope.css")
def stylesheet() -> FileResponse:
    return FileResponse(STATIC / "stirscope.css", media_type="text/css")


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", next=_local(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=4)
    key = str(form.get("api_key") or "").strip()
    target = _local(str(form.get("next") or ""))
    try:
        check_origin(request)
        state = get_state(request)
    except ApiError as exc:
        return _error_page(request, exc)
    found = state.keyring.authenticate(key) if key else None
    if found is None or Scope.JOBS not in found.scopes:
        error = "Unknown API key." if found is None else "This key may not use analysis jobs."
        return render(request, "login.html", 401, next=target, error=error)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/ui/login", 303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


# -- jobs -------------------------------------------------------------------------------------


def _jobs_page(request: Request, context: jobs.JobsContext, status: int = 200,
               error: str | None = None) -> HTMLResponse:  # fmt: skip
    listed = [job_out(j) for j in context.store.list_jobs(limit=100)]
    active = any(j.state not in FINAL_STATES for j in listed)
    return render(
        request, "jobs.html", status, jobs=listed, counts=context.store.count_jobs(),
        refresh=REFRESH_S if active else None, error=error,
        limit=context.max_upload_bytes,
    )  # fmt: skip


@router.get("/")
@pages
def jobs_page(request: Request) -> Response:
    return _jobs_page(request, signed_in(request))


@router.post("/jobs")
async def upload(request: Request) -> Response:
    try:
        context = await run_in_threadpool(signed_in, request)
    except _SignIn:
        return RedirectResponse("/ui/login", 303)
    except ApiError as exc:
        return _error_page(request, exc)
    try:
        check_origin(request)
        job = await jobs.create_job_from_request(request, context)
    except ApiError as exc:
        spec = ERRORS[exc.code]
        message = spec.text
        for n, value in enumerate(exc.variables, 1):
            message = message.replace(f"%{n}", value)
        return await run_in_threadpool(_jobs_page, request, context, exc.status, message)
    return RedirectResponse(f"/ui/jobs/{job.id}", 303)


@router.get("/jobs/{job_id}")
@pages
def job_page(request: Request, job_id: str) -> Response:
    context = signed_in(request)
    job = jobs.get_job_or_404(context, job_id)
    counts = context.store.summarize(jobs.call_filter(job=job.id))
    return render(
        request, "job.html", job=job_out(job), counts=counts,
        refresh=REFRESH_S if job.state not in FINAL_STATES else None,
        done=job.state is JobState.DONE,
        has_report=job.state is JobState.DONE and _report(context, job) is not None,
        verdict_chart=bar_chart("Calls by verdict", counts.verstat, VERDICT_COLOURS),
        attest_chart=bar_chart("Calls by attestation", counts.attest, ATTEST_COLOURS),
    )  # fmt: skip


def _report(context: jobs.JobsContext, job: Any) -> Path | None:
    from service.worker import report_path

    path = report_path(job, context.upload_dir)
    return path if path is not None and path.is_file() else None


@router.get("/jobs/{job_id}/export.{kind}")
@pages
def job_export(request: Request, job_id: str, kind: str) -> Response:
    context = signed_in(request)
    job = jobs.get_job_or_404(context, job_id)
    jobs.require_done(job)
    where = jobs.call_filter(job=job.id)
    if kind == "csv":
        text = "".join(jobs.csv_lines(context.store, where))
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers=jobs.attachment(job.id, ".csv"))  # fmt: skip
    if kind == "jsonl":
        text = "".join(jobs.jsonl_lines(context.store, where))
        return Response(text, media_type="application/x-ndjson",
                        headers=jobs.attachment(job.id, ".jsonl"))  # fmt: skip
    path = _report(context, job) if kind == "html" else None
    if path is None:
        raise ApiError(ErrorCode.NOT_FOUND, request.url.path)
    return FileResponse(path, media_type="text/html; charset=utf-8")


# -- traceback --------------------------------------------------------------------------------


@router.get("/jobs/{job_id}/traceback")
@pages
def traceback_page(request: Request, job_id: str, select: str = DEFAULT_RULES,
                   campaign_min: int = DEFAULT_MIN_CALLS) -> Response:  # fmt: skip
    context = signed_in(request)
    job = jobs.get_job_or_404(context, job_id)
    result = jobs.traceback_for(context, job, select[:256], max(1, campaign_min))
    query = urlencode({"select": select, "campaign_min": campaign_min})
    return render(
        request, "traceback.html", job=job_out(job), result=result, select=select,
        campaign_min=campaign_min, query=query,
        campaigns=[c.to_json() for c in result.campaigns],
    )  # fmt: skip


@router.get("/jobs/{job_id}/traceback.{kind}")
@pages
def traceback_export(request: Request, job_id: str, kind: str, select: str = DEFAULT_RULES,
                     campaign_min: int = DEFAULT_MIN_CALLS) -> Response:  # fmt: skip
    context = signed_in(request)
    job = jobs.get_job_or_404(context, job_id)
    if kind not in ("csv", "json"):
        raise ApiError(ErrorCode.NOT_FOUND, request.url.path)
    result = jobs.traceback_for(context, job, select[:256], max(1, campaign_min))
    if kind == "csv":
        return Response(csv_text(result.candidates), media_type="text/csv; charset=utf-8",
                        headers=jobs.attachment(job.id, "-traceback.csv"))  # fmt: skip
    document = jobs.traceback_document(result).model_dump(by_alias=True)
    return Response(
        json.dumps(document, indent=2, ensure_ascii=False) + "\n",
        media_type="application/json",
        headers=jobs.attachment(job.id, "-traceback.json"),
    )


# -- calls ------------------------------------------------------------------------------------


def _moment(name: str, text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(ErrorCode.INVALID_PARAMETER, name, "expected a date and time") from None


@router.get("/calls")
@pages
def calls_page(request: Request) -> Response:
    context = signed_in(request)
    params = request.query_params
    values = {name: params.get(name, "").strip()[:64] for name in CALL_FILTERS}
    cursor = params.get("cursor") or None
    error = None
    page = None
    try:
        where = jobs.call_filter(
            job=values["job"], verstat=values["verstat"], attest=values["attest"],
            signer=values["signer"], calling=values["calling"], called=values["called"],
            since=_moment("since", values["since"]), until=_moment("until", values["until"]),
            reason=values["reason"],
        )  # fmt: skip
        page = jobs.list_calls(context, where, PAGE_CALLS, cursor, CallOrder.START)
    except ApiError as exc:
        if exc.code is not ErrorCode.INVALID_PARAMETER:
            raise
        error = f"{exc.variables[0]}: {exc.variables[1] if len(exc.variables) > 1 else ''}"
    kept = {k: v for k, v in values.items() if v}
    next_link = None
    if page is not None and page.next_cursor:
        next_link = "/ui/calls?" + urlencode({**kept, "cursor": page.next_cursor})
    return render(
        request, "calls.html", 400 if error else 200, values=values, error=error,
        calls=page.calls if page else [], next_link=next_link,
        first_link=("/ui/calls?" + urlencode(kept)) if cursor else None,
        verstats=VERSTATS, attests=ATTESTS,
    )  # fmt: skip


@router.get("/calls/{call_id}")
@pages
def call_page(request: Request, call_id: str) -> Response:
    context = signed_in(request)
    if not call_id.isdigit() or len(call_id) > 19:
        raise ApiError(ErrorCode.NOT_FOUND, f"call {call_id[:32]}")
    detail = call_detail(jobs.get_call_or_404(context, int(call_id)))
    steps = [s.model_dump() for s in detail.ladder]
    passports = [p for p in detail.record.get("passports") or [] if isinstance(p, dict)]
    return render(
        request, "call.html", call=detail, record=detail.record, passports=passports,
        ladder=ladder_svg(detail.endpoints, steps) if steps else None, steps=steps,
    )  # fmt: skip


# -- signers and campaigns --------------------------------------------------------------------


@router.get("/signers")
@pages
def signers_page(request: Request, job: str = "") -> Response:
    context = signed_in(request)
    job = job.strip()[:64]
    selected = jobs.get_job_or_404(context, job) if job else None
    counts = context.store.summarize(jobs.call_filter(job=job or None))
    campaigns: list[dict[str, object]] = []
    if selected is not None and selected.state is JobState.DONE:
        result = jobs.traceback_for(context, selected, DEFAULT_RULES, DEFAULT_MIN_CALLS)
        campaigns = [c.to_json() for c in result.campaigns]
    signer_counts = {
        (s.spc or "?") + (f" ({s.organization})" if s.organization else ""): s.calls
        for s in counts.signers
    }
    return render(
        request, "signers.html", counts=counts, job=selected, campaigns=campaigns,
        verdict_chart=bar_chart("Calls by verdict", counts.verstat, VERDICT_COLOURS),
        attest_chart=bar_chart("Calls by attestation", counts.attest, ATTEST_COLOURS),
        signer_chart=bar_chart("Calls by signer", signer_counts),
        reason_chart=bar_chart("Failures by reason", counts.reasons),
        jobs=[job_out(j) for j in context.store.list_jobs(limit=100)],
    )  # fmt: skip
