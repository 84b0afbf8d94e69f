"""Analysis jobs on a real PostgreSQL server: jobs and results survive a restart of the
service, two instances sharing the store run each job once, a dead instance's job is taken
over, and an interrupted run is marked as such.

The server is ``STIRSCOPE_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
every test gets a schema of its own, dropped afterwards. Skipped when unreachable.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from analyzer.storage import InputSpec, JobOrigin, JobState, Store
from tests.service.api_client import serve_in_process
from tests.service.jobs_support import DEMO, DEMO_CALLS, auth, jobs_config, upload, wait_job

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
