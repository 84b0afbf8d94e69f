"""Analysis jobs in-process: upload the demo capture, wait for the worker, read the calls back
with filters and pages, one call, signers, traceback and exports; and every bad request a 4xx
JSON error with a stable code (never a 500)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analyzer.records import CSV_FIELDS
from analyzer.run import AnalyzeJob
from analyzer.storage import JobState, Store
from service import worker
from service.api.jobs_data import owner_name
from tests.service.api_client import ApiClient, serve_in_process
from tests.service.jobs_support import (
    DEMO,
    DEMO_CALLS,
    auth,
    jobs_config,
    upload,
    wait_job,
)


def _code(response: Any) -> str:
    body = response.json()["requestError"]
    detail = body.get("serviceException") or body.get("policyException")
    return str(detail["code"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiClient, str]]:
    """A service with the demo capture analysed once: (client, job id)."""
    directory = tmp_path_factory.mktemp("jobs")
    with serve_in_process(jobs_config(directory)) as api:
        response = upload(api, DEMO)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert response.headers["location"] == f"/v1/jobs/{job_id}"
        assert wait_job(api, job_id)["state"] == "done"
        yield api, job_id


@pytest.fixture
def api(served: tuple[ApiClient, str]) -> ApiClient:
    return served[0]


@pytest.fixture
def job_id(served: tuple[ApiClient, str]) -> str:
    return served[1]


def test_job_reports_progress_inputs_and_summary(api: ApiClient, job_id: str) -> None:
    job = api.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    size = DEMO.stat().st_size
    assert job["state"] == "done"
    assert job["progress"] == {
        "calls": DEMO_CALLS, "bytes": size, "total_bytes": size, "percent": 100.0,
    }  # fmt: skip
    assert job["inputs"][0]["name"] == "demo.pcap"
    assert len(job["inputs"][0]["sha256"]) == 64
    assert job["summary"]["calls"] == DEMO_CALLS
    listed = api.get("/v1/jobs", headers=auth()).json()
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    assert listed["counts"]["done"] == 1


def test_manifest_names_the_upload_not_the_server_path(api: ApiClient, job_id: str) -> None:
    store = api.app.state.stirscope_jobs.store
    manifest = store.get_manifest(job_id)
    assert [i["name"] for i in manifest["inputs"]] == ["demo.pcap"]


def _calls(api: ApiClient, **params: Any) -> list[dict[str, Any]]:
    response = api.get("/v1/calls", headers=auth(), params=params)
    assert response.status_code == 200, response.text
    calls: list[dict[str, Any]] = response.json()["calls"]
    return calls


@pytest.mark.parametrize(
    ("params", "check"),
    [
        ({}, lambda c: True),
        ({"verstat": "TN-Validation-Passed"}, lambda c: c["verstat"] == "TN-Validation-Passed"),
        ({"verstat": "No-TN-Validation"}, lambda c: c["verstat"] == "No-TN-Validation"),
        ({"attest": "C"}, lambda c: c["attest"] == "C"),
        ({"attest": "none"}, lambda c: c["attest"] is None),
        ({"signer": "5678B"}, lambda c: c["signer_spc"] == "5678B"),
        ({"calling": "+1 (202) 555-0101"}, lambda c: c["calling"] == "12025550101"),
        ({"called": "12025550199"}, lambda c: c["called"] == "12025550199"),
        ({"reason": "cert_revoked"}, lambda c: c["reason"] == "cert_revoked"),
        ({"since": "2026-01-15T12:00:30Z"}, lambda c: c["start"] >= "2026-01-15T12:00:30"),
        ({"until": "2026-01-15T12:00:10"}, lambda c: c["start"] < "2026-01-15T12:00:10"),
    ],
    ids=[
        "all",
        "verstat",
        "unsigned",
        "attest",
        "no-attest",
        "signer",
        "calling-formatted",
        "called",
        "reason",
        "since",
        "until-naive-is-utc",
    ],
)
def test_call_filters(api: ApiClient, job_id: str, params: dict[str, str], check: Any) -> None:
    everything = _calls(api, job=job_id)
    assert len(everything) == DEMO_CALLS
    calls = _calls(api, job=job_id, **params)
    assert calls, "the demo capture has a call for every filter"
    assert all(check(c) for c in calls)
    assert len([c for c in everything if check(c)]) == len(calls)


def test_pages_follow_the_cursor_without_gaps_or_repeats(api: ApiClient, job_id: str) -> None:
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"job": job_id, "limit": 4}
        if cursor:
            params["cursor"] = cursor
        body = api.get("/v1/calls", headers=auth(), params=params).json()
        seen.extend(c["id"] for c in body["calls"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 4
    assert seen == [c["id"] for c in _calls(api, job=job_id)]
    descending = _calls(api, job=job_id, order="-start")
    assert [c["id"] for c in descending] == seen[::-1]


def test_one_call_has_passports_chain_findings_and_ladder(api: ApiClient, job_id: str) -> None:
    first = _calls(api, job=job_id, signer="5678B", verstat="TN-Validation-Passed")[0]
    call = api.get(f"/v1/calls/{first['id']}", headers=auth()).json()
    assert call["id"] == first["id"]
    passport = call["record"]["passports"][0]
    assert passport["valid"] is True
    assert passport["signer"]["spc"] == "5678B"
    assert len(passport["signer"]["chain"]) == 3
    assert passport["findings"] == []
    assert call["endpoints"] == [call["src"], call["dst"]]
    labels = [step["label"] for step in call["ladder"]]
    assert labels[0] == "INVITE"
    assert "200" in labels


def test_signers_count_calls_by_spc(api: ApiClient, job_id: str) -> None:
    body = api.get("/v1/signers", headers=auth(), params={"job": job_id}).json()
    assert body["calls"] == DEMO_CALLS
    by_spc = {s["spc"]: s["calls"] for s in body["signers"]}
    assert by_spc["1234A"] == 7
    assert sum(body["verstat"].values()) == DEMO_CALLS


def test_traceback_candidates_and_campaigns(api: ApiClient, job_id: str) -> None:
    body = api.get(f"/v1/jobs/{job_id}/traceback", headers=auth()).json()
    assert body["schema"] == "urn:stirscope:traceback-candidate:v1"
    assert body["summary"]["calls"] == DEMO_CALLS
    assert body["summary"]["candidates"] == len(body["candidates"]) > 0
    assert body["summary"]["campaigns"] == len(body["campaigns"])
    everything = api.get(
        f"/v1/jobs/{job_id}/traceback", headers=auth(), params={"select": "all"}
    ).json()
    assert len(everything["candidates"]) == DEMO_CALLS
    text = api.get(f"/v1/jobs/{job_id}/traceback.csv", headers=auth()).text
    assert len(list(csv.reader(io.StringIO(text)))) == len(body["candidates"]) + 1


def test_exports(api: ApiClient, job_id: str) -> None:
    response = api.get(f"/v1/jobs/{job_id}/export.csv", headers=auth())
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_FIELDS
    assert len(rows) == DEMO_CALLS + 1
    lines = api.get(f"/v1/jobs/{job_id}/export.jsonl", headers=auth()).text.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == DEMO_CALLS
    assert [r["call_id"] for r in records] == [row[0] for row in rows[1:]]
    html = api.get(f"/v1/jobs/{job_id}/export.html", headers=auth())
    assert html.headers["content-type"].startswith("text/html")
    assert "<!DOCTYPE html>" in html.text


def test_metrics_count_jobs(api: ApiClient, job_id: str) -> None:
    text = api.get("/metrics").text
    assert 'stirscope_jobs_processed_total{outcome="done"}' in text
    done = [line for line in text.splitlines() if line.startswith('stirscope_jobs{state="done"}')]
    assert done
    assert float(done[0].split()[-1]) >= 1


def test_gzip_capture_and_several_files_make_one_job(api: ApiClient, tmp_path: Path) -> None:
    packed = tmp_path / "demo.pcap.gz"
    packed.write_bytes(gzip.compress(DEMO.read_bytes()))
    response = upload(api, packed, DEMO, at="2026-01-15T12:00:00Z")
    assert response.status_code == 202, response.text
    job = wait_job(api, response.json()["id"])
    assert job["state"] == "done"
    assert [i["name"] for i in job["inputs"]] == ["demo.pcap.gz", "demo.pcap"]
    assert job["progress"]["calls"] >= DEMO_CALLS


# -- errors -----------------------------------------------------------------------------------


def _multipart(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    boundary = "stirscope-test-boundary"
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _upload_raw(api: ApiClient, body: bytes, content_type: str) -> Any:
    return api.post("/v1/jobs", headers={**auth(), "Content-Type": content_type}, content=body)


@pytest.mark.parametrize(
    ("parts", "content_type", "status", "code"),
    [
        ([("capture", "notes.txt", b"hello, this is text\n" * 4)], None, 415, "not_a_capture"),
        ([("capture", "empty.pcap", b"")], None, 415, "not_a_capture"),
        ([("capture", "x.gz", b"\x1f\x8b\x08\x00garbage")], None, 415, "not_a_capture"),
        ([("capture", None, b"\xd4\xc3\xb2\xa1")], None, 400, "parse_failure"),
        ([("other", "demo.pcap", b"\xd4\xc3\xb2\xa1")], None, 400, "missing_parameter"),
        ([], "application/json", 415, "unsupported_media_type"),
        ([], "multipart/form-data", 400, "parse_failure"),
        ([("at", None, b"yesterday"), ("capture", "d.pcap", b"x")], None, 400, "invalid_parameter"),
    ],
    ids=[
        "text-file",
        "empty-file",
        "bad-gzip",
        "capture-as-text-field",
        "no-capture-field",
        "json-body",
        "no-boundary",
        "bad-at",
    ],
)
def test_bad_uploads_are_json_errors(
    api: ApiClient,
    parts: list[tuple[str, str | None, bytes]],
    content_type: str | None,
    status: int,
    code: str,
) -> None:
    body, multipart_type = _multipart(*parts)
    response = _upload_raw(api, body, content_type or multipart_type)
    assert (response.status_code, _code(response)) == (status, code), response.text


def test_rejected_uploads_leave_no_files(api: ApiClient) -> None:
    context = api.app.state.stirscope_jobs
    before = sorted(context.upload_dir.iterdir())
    body, content_type = _multipart(("capture", "notes.txt", b"not a capture at all"))
    assert _upload_raw(api, body, content_type).status_code == 415
    assert sorted(context.upload_dir.iterdir()) == before


def test_oversized_upload_is_413(tmp_path: Path) -> None:
    with serve_in_process(jobs_config(tmp_path, max_upload_bytes=4096)) as api:
        declared = upload(api, DEMO)
        assert (declared.status_code, _code(declared)) == (413, "payload_too_large")

        async def chunks() -> Any:  # no Content-Length: counted as it streams
            body, _ = _multipart(("capture", "demo.pcap", DEMO.read_bytes()))
            for start in range(0, len(body), 1024):
                yield body[start : start + 1024]

        _, content_type = _multipart(("capture", "demo.pcap", b""))
        streamed = api.post(
            "/v1/jobs", headers={**auth(), "Content-Type": content_type}, content=chunks()
        )
        assert (streamed.status_code, _code(streamed)) == (413, "payload_too_large")
        assert api.get("/v1/jobs", headers=auth()).json()["jobs"] == []


@pytest.mark.parametrize(
    ("method", "url", "status", "code"),
    [
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef", 404, "not_found"),
        ("GET", "/v1/jobs/not-a-job-id", 404, "not_found"),
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef/traceback", 404, "not_found"),
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef/export.csv", 404, "not_found"),
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef/export.html", 404, "not_found"),
        ("GET", "/v1/calls/999999", 404, "not_found"),
        ("GET", "/v1/calls/0", 404, "not_found"),
        ("GET", "/v1/calls/99999999999999999999999", 404, "not_found"),
        ("GET", "/v1/calls/abc", 400, "invalid_parameter"),
        ("GET", "/v1/calls?limit=0", 400, "invalid_parameter"),
        ("GET", "/v1/calls?limit=100000", 400, "invalid_parameter"),
        ("GET", "/v1/calls?cursor=garbage", 400, "invalid_parameter"),
        ("GET", "/v1/calls?since=yesterday", 400, "invalid_parameter"),
        ("GET", "/v1/calls?since=9999-01-01T00:00:00Z", 400, "invalid_parameter"),
        ("GET", "/v1/calls?calling=abc", 400, "invalid_parameter"),
        ("GET", "/v1/calls?order=sideways", 400, "invalid_parameter"),
        ("GET", "/v1/jobs?state=sleeping", 400, "invalid_parameter"),
        ("DELETE", "/v1/jobs", 405, "method_not_allowed"),
    ],
    ids=lambda v: str(v) if not str(v).startswith("/") else str(v).replace("/", "_"),
)
def test_bad_requests_are_json_errors(
    api: ApiClient, method: str, url: str, status: int, code: str
) -> None:
    response = api.request(method, url, headers=auth())
    assert (response.status_code, _code(response)) == (status, code), response.text


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer nope"}, 401, "unauthorized"),
        (auth("verifier"), 403, "forbidden"),
    ],
    ids=["no-key", "unknown-key", "key-without-jobs-scope"],
)
@pytest.mark.parametrize("url", ["/v1/jobs", "/v1/calls", "/v1/signers"])
def test_job_routes_need_a_jobs_key(
    api: ApiClient, url: str, headers: dict[str, str], status: int, code: str
) -> None:
    response = api.get(url, headers=headers)
    assert (response.status_code, _code(response)) == (status, code)


def test_unfinished_job_has_no_exports_yet(tmp_path: Path) -> None:
    with serve_in_process(jobs_config(tmp_path, job_workers=0)) as api:
        job_id = upload(api, DEMO).json()["id"]
        assert api.get(f"/v1/jobs/{job_id}", headers=auth()).json()["state"] == "queued"
        for suffix in ("traceback", "traceback.csv", "export.csv", "export.jsonl", "export.html"):
            response = api.get(f"/v1/jobs/{job_id}/{suffix}", headers=auth())
            assert (response.status_code, _code(response)) == (409, "job_not_done"), suffix


def test_without_a_store_jobs_are_unavailable(tmp_path: Path) -> None:
    with serve_in_process(jobs_config(tmp_path, db=None)) as api:
        response = api.get("/v1/jobs", headers=auth())
        assert (response.status_code, _code(response)) == (503, "jobs_unavailable")


# -- the worker pool --------------------------------------------------------------------------


def test_a_crashing_job_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    def flaky(inputs: list[str], options: Any) -> Any:
        if Path(inputs[0]).read_bytes() != DEMO.read_bytes():
            raise RuntimeError("the analyzer tripped")
        return AnalyzeJob(inputs, options)

    monkeypatch.setattr(worker, "AnalyzeJob", flaky)
    other = tmp_path / "other.pcap"
    other.write_bytes(DEMO.read_bytes() + b"\0" * 16)  # a trailing partial record header
    with serve_in_process(jobs_config(tmp_path)) as api:
        bad = upload(api, other).json()["id"]
        good = upload(api, DEMO).json()["id"]
        failed, done = wait_job(api, bad), wait_job(api, good)
    assert failed["state"] == "failed"
    assert failed["error"] == "RuntimeError: the analyzer tripped"
    assert done["state"] == "done"


def test_shutdown_requeues_a_running_job_without_spending_an_attempt(tmp_path: Path) -> None:
    config = jobs_config(tmp_path, job_workers=0)
    with serve_in_process(config) as api:
        job_id = upload(api, DEMO).json()["id"]
    store = Store.open(str(config.db))
    try:
        lease = store.claim(owner_name(config))
        assert lease is not None
        stop = threading.Event()
        stop.set()  # the pool is stopping: the job goes back at the first record
        settings = worker.WorkerConfig(config.verifier, "test", config.upload_dir or tmp_path)
        assert worker.run_job(store, lease, settings, stop) is worker.Outcome.RELEASED
        job = store.get_job(job_id)
        assert job is not None
        assert (job.state, job.attempt, job.error) == (JobState.QUEUED, 0, worker.RELEASED)
    finally:
        store.close()


def test_start_up_recovers_the_jobs_this_instance_was_running(tmp_path: Path) -> None:
    config = jobs_config(tmp_path, job_workers=0, instance="node-1")
    with serve_in_process(config) as api:
        job_id = upload(api, DEMO).json()["id"]
    store = Store.open(str(config.db))
    try:
        assert store.claim("node-1") is not None  # then the process "dies"
    finally:
        store.close()
    with serve_in_process(jobs_config(tmp_path, instance="node-1")) as api:
        job = wait_job(api, job_id)
    assert (job["state"], job["attempt"]) == ("done", 2)
