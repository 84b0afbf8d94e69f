"""Analysis jobs on a real PostgreSQL server: jobs and results survive a restart of the
service, two instances sharing the store run each job once, a dead instance's job is taken
over (also two real ``stirscope serve`` processes on PostgreSQL and Redis, one killed in the
middle of a job), and an interrupted run is marked as such.

The server is ``STIRSCOPE_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
every test gets a schema of its own, dropped afterwards. Skipped when unreachable.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from analyzer.storage import InputSpec, JobOrigin, JobState, Store
from tests.conftest import ROOT, load_script
from tests.service.api_client import CERTS, TRUST, free_port, serve_in_process, wait_ready
from tests.service.jobs_support import (
    DEMO,
    DEMO_CALLS,
    auth,
    jobs_config,
    upload,
    wait_job,
    write_job_keys,
)

# A lease short enough to expire during the test.
SHORT_LEASE_S = 0.05


@pytest.fixture
def db(postgres_store_url: str) -> str:
    """A store URL with a fresh schema, dropped afterwards."""
    return postgres_store_url


def test_jobs_and_results_survive_a_restart(db: str, tmp_path: Path) -> None:
    with serve_in_process(jobs_config(tmp_path, db=db)) as api:
        job_id = upload(api, DEMO).json()["id"]
        assert wait_job(api, job_id)["state"] == "done"
    with serve_in_process(jobs_config(tmp_path, db=db)) as api:
        job = api.get(f"/v1/jobs/{job_id}", headers=auth()).json()
        assert (job["state"], job["progress"]["calls"]) == ("done", DEMO_CALLS)
        calls = api.get("/v1/calls", headers=auth(), params={"job": job_id}).json()["calls"]
        assert len(calls) == DEMO_CALLS
        one = api.get(f"/v1/calls/{calls[0]['id']}", headers=auth()).json()
        assert one["record"]["call_id"] == calls[0]["call_id"]
        assert api.get(f"/v1/jobs/{job_id}/export.html", headers=auth()).status_code == 200


def test_two_instances_run_each_job_once(db: str, tmp_path: Path) -> None:
    first = jobs_config(tmp_path, db=db, instance="node-a")
    second = jobs_config(tmp_path, db=db, instance="node-b")
    with serve_in_process(first) as a, serve_in_process(second) as b:
        ids = [upload(a if n % 2 else b, DEMO).json()["id"] for n in range(4)]
        jobs = [wait_job(a, job_id) for job_id in ids]
    assert [(j["state"], j["attempt"]) for j in jobs] == [("done", 1)] * 4
    assert all(j["progress"]["calls"] == DEMO_CALLS for j in jobs)


def test_a_dead_instances_job_is_taken_over(db: str, tmp_path: Path) -> None:
    with serve_in_process(jobs_config(tmp_path, db=db, job_workers=0)) as api:
        job_id = upload(api, DEMO).json()["id"]
    with Store.open(db) as store:
        assert store.claim("dead-node", lease_s=SHORT_LEASE_S) is not None
    time.sleep(SHORT_LEASE_S * 2)
    with serve_in_process(jobs_config(tmp_path, db=db, instance="live-node")) as api:
        job = wait_job(api, job_id)
    assert (job["state"], job["attempt"]) == ("done", 2)


def test_an_interrupted_run_is_marked(db: str, tmp_path: Path) -> None:
    """A `stirscope analyze --db` run that died (its lease expired) cannot be retried by the
    service (its captures are elsewhere): the service marks it interrupted."""
    with serve_in_process(jobs_config(tmp_path, db=db, job_workers=0)):
        pass  # migrates the schema
    with Store.open(db) as store:
        lease = store.begin_job(
            [InputSpec("elsewhere.pcap", 1)], {}, owner="cli-host/1",
            lease_s=SHORT_LEASE_S, origin=JobOrigin.CLI,
        )  # fmt: skip
    time.sleep(SHORT_LEASE_S * 2)
    with serve_in_process(jobs_config(tmp_path, db=db)) as api:
        deadline = time.monotonic() + 30
        while True:
            job = api.get(f"/v1/jobs/{lease.job_id}", headers=auth()).json()
            if job["state"] != JobState.RUNNING.value or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert job["state"] == "interrupted"
    assert "lease" in (job["error"] or "")


# -- real instances, one killed mid-job ------------------------------------------------------

# Calls in the capture of the killed job: ~1-2 s of analysis, so the job is caught running.
KILLED_JOB_CALLS = 3000
# The lease of the real instances (seconds): how soon the survivor takes the job over.
REAL_LEASE_S = 2
REDIS_URL = os.environ.get("STIRSCOPE_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _serve(tmp_path: Path, db: str, name: str, keys: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real ``stirscope serve`` instance on the shared store (and the Redis cache when one
    runs), once ready."""
    port = free_port()
    argv = [
        sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port",
        str(port), "--db", db, "--instance", name, "--job-lease", str(REAL_LEASE_S),
        "--trust", str(TRUST), "--certs", str(CERTS), "--api-keys", str(keys),
        "--upload-dir", str(tmp_path / "uploads"), "--data-dir", str(tmp_path / name),
    ]  # fmt: skip
    if _redis_reachable():
        argv += ["--cache", REDIS_URL]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIRSCOPE_")}
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log_path)
    except AssertionError:
        process.kill()
        raise
    return process, base


def test_an_instance_killed_mid_job_leaves_it_to_the_other(db: str, tmp_path: Path) -> None:
    """Two real instances on one PostgreSQL (and Redis): the one running a job is killed
    (SIGKILL, mid-analysis); the other takes the job over once its lease expires and runs it
    to the end, every call stored once."""
    capture = tmp_path / "calls.pcap"
    load_script(ROOT / "bench" / "bench_analyze.py").build(capture, KILLED_JOB_CALLS)
    keys = write_job_keys(tmp_path / "keys")
    first, first_base = _serve(tmp_path, db, "node-a", keys)
    second: subprocess.Popen[bytes] | None = None
    try:
        with capture.open("rb") as data:
            files = [("capture", ("calls.pcap", data, "application/octet-stream"))]
            sent = httpx.post(f"{first_base}/v1/jobs", headers=auth(), files=files, timeout=60)
        assert sent.status_code in (200, 201, 202), sent.text
        job_id = sent.json()["id"]
        deadline = time.monotonic() + 30
        while True:
            job = httpx.get(f"{first_base}/v1/jobs/{job_id}", headers=auth()).json()
            if job["state"] == "running" or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert (job["state"], job["attempt"]) == ("running", 1)
        first.kill()  # mid-job: no shutdown, the lease is left to expire
        first.wait(timeout=30)
        second, second_base = _serve(tmp_path, db, "node-b", keys)
        deadline = time.monotonic() + 60
        while True:
            job = httpx.get(f"{second_base}/v1/jobs/{job_id}", headers=auth()).json()
            if job["state"] in ("done", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (job["state"], job["attempt"]) == ("done", 2), job
        assert job["progress"]["calls"] == KILLED_JOB_CALLS
        call_ids: list[str] = []
        cursor: str | None = None
        while True:
            params = {"job": job_id, "limit": "1000", **({"cursor": cursor} if cursor else {})}
            page = httpx.get(f"{second_base}/v1/calls", headers=auth(), params=params).json()
            call_ids += [call["call_id"] for call in page["calls"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(call_ids) == len(set(call_ids)) == KILLED_JOB_CALLS  # each stored once
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
