"""The HTTP contract of analysis jobs and their results: pydantic models and the explicit
mappers from the results store's views (``JobView``, ``StoredCall``, ``CallCounts``).

A call is shown by its store row id (``id``, stable, used in ``/v1/calls/{id}``); its full
record (the `stirscope analyze --format jsonl` object, STANDARDS.md section 9) is in the one-call
answer, with the ladder of the legs the call was seen on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from analyzer.records import iso_ns
from analyzer.storage import CallCounts, JobView, SignerCount, StoredCall


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobProgress(_Out):
    calls: int
    bytes: int
    total_bytes: int | None
    percent: float | None


class JobInput(_Out):
    name: str
    size: int | None
    sha256: str | None


class JobLinks(_Out):
    self: str
    calls: str
    traceback: str
    export_csv: str
    export_jsonl: str
    export_html: str


class Job(_Out):
    """One analysis job: state, progress, inputs and (once done) the run summary."""

    id: str
    state: str
    origin: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: JobProgress
    attempt: int
    max_attempts: int
    error: str | None
    inputs: list[JobInput]
    summary: dict[str, Any] | None
    links: JobLinks


class JobList(_Out):
    jobs: list[Job]
    counts: dict[str, int]


class Call(_Out):
    """One call: the columns the API filters on (the full record is in ``CallDetail``)."""

    id: int
    job_id: str
    call_id: str
    start: str
    start_ns: int
    src: str
    dst: str
    transport: str
    calling: str | None
    called: str | None
    verstat: str | None
    status_code: int | None
    reason: str | None
    attest: str | None
    origid: str | None
    signer_spc: str | None
    signer_org: str | None
    x5u: str | None
    final_status: int | None
    state: str
    error: str | None
    passports: int
    anomalies: int
    replay: bool


class CallPage(_Out):
    calls: list[Call]
    next_cursor: str | None


class LadderStep(_Out):
    """One arrow of the call ladder: a request or response between two endpoints."""

    source: str
    target: str
    label: str
    at: str | None
    frame: int | None


class CallDetail(Call):
    """One call with its whole record (PASSporTs with signer certificate chain and findings,
    legs, anomalies) and ladder steps derived from its legs."""

    record: dict[str, Any]
    endpoints: list[str]
    ladder: list[LadderStep]


class Signer(_Out):
    spc: str | None
    organization: str | None
    calls: int
    verstat: dict[str, int]
    attest: dict[str, int]


class Signers(_Out):
    """Counts over the matching calls by verdict, attestation, failure reason and signer."""

    calls: int
    verstat: dict[str, int]
    attest: dict[str, int]
    reasons: dict[str, int]
    signers: list[Signer]


class Traceback(_Out):
    """Traceback candidates and campaigns of a job (``urn:stirscope:traceback-candidate:v1``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # ``schema`` would shadow a BaseModel attribute: the JSON member is its alias.
    schema_: str = Field(alias="schema")
    summary: dict[str, Any]
    campaigns: list[dict[str, Any]]
    candidates: list[dict[str, Any]]


def job_links(job_id: str) -> JobLinks:
    base = f"/v1/jobs/{job_id}"
    return JobLinks(
        self=base,
        calls=f"/v1/calls?job={job_id}",
        traceback=f"{base}/traceback",
        export_csv=f"{base}/export.csv",
        export_jsonl=f"{base}/export.jsonl",
        export_html=f"{base}/export.html",
    )


def job_out(job: JobView) -> Job:
    data = job.to_json()
    percent = None
    if job.total_bytes:
        percent = round(min(100.0, 100.0 * job.progress_bytes / job.total_bytes), 1)
    return Job(
        id=job.id,
        state=job.state.value,
        origin=job.origin.value,
        created_at=str(data["created_at"]),
        started_at=data["started_at"],  # type: ignore[arg-type]
        finished_at=data["finished_at"],  # type: ignore[arg-type]
        progress=JobProgress(
            calls=job.progress_calls,
            bytes=job.progress_bytes,
            total_bytes=job.total_bytes,
            percent=percent,
        ),
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        error=job.error,
        inputs=[JobInput(name=i.name, size=i.size, sha256=i.sha256) for i in job.inputs],
        summary=job.summary,
        links=job_links(job.id),
    )


def call_fields(call: StoredCall) -> dict[str, Any]:
    return {
        "id": call.pk,
        "job_id": call.job_id,
        "call_id": call.call_id,
        "start": iso_ns(call.start_ns),
        "start_ns": call.start_ns,
        "src": call.src,
        "dst": call.dst,
        "transport": call.transport,
        "calling": call.calling_tn,
        "called": call.called_tn,
        "verstat": call.verstat,
        "status_code": call.status_code,
        "reason": call.reason,
        "attest": call.attest,
        "origid": call.origid,
        "signer_spc": call.signer_spc,
        "signer_org": call.signer_org,
        "x5u": call.x5u,
        "final_status": call.final_status,
        "state": call.state,
        "error": call.error,
        "passports": call.passport_count,
        "anomalies": call.anomaly_count,
        "replay": call.replay,
    }


def call_out(call: StoredCall) -> Call:
    return Call(**call_fields(call))


def ladder(record: dict[str, Any]) -> tuple[list[str], list[LadderStep]]:
    """Endpoints (in order of appearance) and arrows of a call: per leg, the INVITE from its
    source to its destination, then the provisional and final responses back (RFC 3261
    section 17). The record keeps legs, not every message, so this is the call's outline."""
    endpoints: list[str] = []
    steps: list[LadderStep] = []

    def seen(endpoint: str) -> str:
        if endpoint not in endpoints:
            endpoints.append(endpoint)
        return endpoint

    legs = [leg for leg in record.get("legs") or [] if isinstance(leg, dict)]
    if not legs and record.get("src") and record.get("dst"):
        legs = [{"src": record["src"], "dst": record["dst"], "at": record.get("start"),
                 "frame": None, "final_status": record.get("final_status")}]  # fmt: skip
    provisional = [p for p in record.get("provisional") or [] if isinstance(p, int)]
    for n, leg in enumerate(legs):
        src, dst = seen(str(leg.get("src") or "?")), seen(str(leg.get("dst") or "?"))
        at = leg.get("at") if isinstance(leg.get("at"), str) else None
        frame = leg.get("frame") if isinstance(leg.get("frame"), int) else None
        attempts = leg.get("attempts")
        label = "INVITE" + (f" (x{attempts})" if isinstance(attempts, int) and attempts > 1 else "")
        steps.append(LadderStep(source=src, target=dst, label=label, at=at, frame=frame))
        if n == 0:
            for code in provisional:
                steps.append(LadderStep(source=dst, target=src, label=str(code), at=None,
                                        frame=None))  # fmt: skip
        final = leg.get("final_status")
        if isinstance(final, int):
            steps.append(LadderStep(source=dst, target=src, label=str(final), at=None, frame=None))
    end = record.get("end")
    if isinstance(end, str) and end in ("bye", "cancel") and legs:
        first = legs[0]
        src, dst = str(first.get("src") or "?"), str(first.get("dst") or "?")
        steps.append(LadderStep(source=src, target=dst, label=end.upper(), at=None, frame=None))
    return endpoints, steps


def call_detail(call: StoredCall) -> CallDetail:
    record = call.record or {}
    endpoints, steps = ladder(record)
    return CallDetail(**call_fields(call), record=record, endpoints=endpoints, ladder=steps)


def signer_out(s: SignerCount) -> Signer:
    return Signer(
        spc=s.spc, organization=s.organization, calls=s.calls, verstat=s.verstat, attest=s.attest
    )


def signers_out(counts: CallCounts) -> Signers:
    return Signers(
        calls=counts.calls,
        verstat=counts.verstat,
        attest=counts.attest,
        reasons=counts.reasons,
        signers=[signer_out(s) for s in counts.signers],
    )
