"""`stirscope listen --db`: a live session as one job of the results store, and replay flags.

``listen --hep`` runs in a child process on loopback with a SQLite store in tmp_path (and on
PostgreSQL from ``STIRSCOPE_TEST_POSTGRES``, skipped when unreachable): the job is
``running`` with the calls visible while the listener runs, SIGTERM writes the call still in
progress and marks it ``done`` with a summary and manifest, the API (`stirscope serve` on the
same store) lists the calls of the job, and a PASSporT replayed on another Call-ID is
flagged. ``LiveStore`` itself: a lost lease stops storing and fails, an interrupted session is
marked so. ``flag_record`` builds the record ``assess_call(..., replay=flag)`` builds.
RFC 8224 section 12.1; issue 7.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from analyzer.assess import assess_call
from analyzer.calls import Call
from analyzer.extract import request_from_message
from analyzer.live import LivePipeline
from analyzer.records import CallRecord, datetime_ns
from analyzer.sipanswer import call_record_of
from analyzer.storage import CallFilter, JobState, Store, StoreError
from analyzer.traceback_replay import ReplayKind
from analyzer.verifying import build_verifier
from service.listen_sip import Endpoint
from service.listen_store import MAX_PENDING_CALLS, LiveStore
from service.live_feed import ReplayWatch, flag_record
from shaken.verifier import Verifier
from sip import Request, Response, parse_message
from tests.conftest import ROOT
from tests.service.api_client import serve_in_process
from tests.service.hep_packets import NS, dialog_hep, heartbeat, ts_ns
from tests.service.invites import (
    CERTS,
    FIXTURE_AT,
    TRUST,
    fixture_call,
    fixture_config,
    fresh_invite,
    with_branch,
)
from tests.service.jobs_support import auth, jobs_config

TIMEOUT_S = 20.0
AT_NS = ts_ns(FIXTURE_AT)
FIXTURE_CALL_ID = "a1b2c3d4-alpha-a"


def with_call_id(invite: bytes, call_id: str) -> bytes:
    """The same signed INVITE (same Identity header) on another Call-ID: a replay."""
    return invite.replace(FIXTURE_CALL_ID.encode(), call_id.encode())


def wait_for(predicate: Any, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def verifier() -> Iterator[Verifier]:
    with build_verifier(fixture_config()) as built:
        yield built


@pytest.fixture
def pg_url(postgres_store_url: str) -> str:
    """The server with a fresh schema of its own, dropped after the test."""
    return postgres_store_url


# -- the command ----------------------------------------------------------------------------


def start_listen(url: str, listener: str) -> tuple[subprocess.Popen[str], Endpoint, str]:
    """``stirscope listen --<listener> udp --db URL`` in a child (``listener``: hep or sip);
    returns it, the endpoint it bound and the job id it printed."""
    args = [f"--{listener}", "udp:127.0.0.1:0", "--db", url]
    args += ["--trust", str(TRUST), "--certs", str(CERTS)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "listen", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    bound: Endpoint | None = None
    while True:
        words = proc.stderr.readline().split()
        if not words:
            proc.kill()
            raise AssertionError(f"listen exited early: {proc.communicate()[1]}")
        if words[2:3] == [listener]:
            bound = Endpoint.parse(words[3])
        elif words[2:4] == ["db", "job"]:
            assert bound is not None
            return proc, bound, words[4]


def wait_running(url: str, job_id: str, input_name: str, *, calls: int) -> None:
    """The listener's job is running on ``input_name`` and has ``calls`` calls stored (soon)."""
    with Store.open(url) as store:
        job = store.get_job(job_id)
        assert job is not None
        assert job.state is JobState.RUNNING
        assert [i.name for i in job.inputs] == [input_name]
        wait_for(lambda: store.count_calls(CallFilter(job_id=job_id)) == calls)


def session(url: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """A live session: two finished calls (the second replays the first's PASSporT), one in
    progress at shutdown and a garbage datagram; checks the calls are in the store while
    the listener runs. Returns the job id and the finished process."""
    proc, bound, job_id = start_listen(url, "hep")
    hep = (bound.host, bound.port)
    try:
        packets = dialog_hep(fixture_call("alpha_a"), AT_NS)
        packets += dialog_hep(with_call_id(fixture_call("alpha_a"), "replayed-1"), AT_NS + 2 * NS)
        packets += dialog_hep(with_call_id(fixture_call("alpha_a"), "open-1"), AT_NS + 3 * NS)[:1]
        # A keep-alive a minute later moves capture time past both dialogs' linger.
        packets += [b"not hep", heartbeat(AT_NS + 60 * NS)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for packet in packets:
                sock.sendto(packet, hep)
        # Both dialogs ended (their linger passed): written while the listener runs.
        wait_running(url, job_id, f"hep:udp:{hep[0]}:{hep[1]}", calls=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    return job_id, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def check_session(url: str, job_id: str) -> None:
    with Store.open(url) as store:
        job = store.get_job(job_id)
        assert job is not None
        assert (job.state, job.progress_calls, job.error) == (JobState.DONE, 3, None)
        assert job.summary is not None
        assert job.summary["calls"] == 3
        calls: dict[str, dict[str, Any]] = {}
        for stored in store.iter_calls(CallFilter(job_id=job_id)):
            assert stored.record is not None
            calls[stored.call_id] = stored.record
        assert sorted(calls) == [FIXTURE_CALL_ID, "open-1", "replayed-1"]
        assert {c["verstat"] for c in calls.values()} == {"TN-Validation-Passed"}
        assert {c["source"] for c in calls.values()} == {"hep"}
        assert calls["open-1"]["end"] == "end_of_input"
        assert calls[FIXTURE_CALL_ID]["replay"] is None
        flag = calls["replayed-1"]["replay"]
        assert flag is not None
        assert ReplayKind.DIFFERENT_CALL_ID in flag["kinds"]
        assert flag["first_call_id"] == FIXTURE_CALL_ID
        anomalies = store.job_anomalies(job_id)
        assert [a["kind"] for a in anomalies] == ["hep_malformed"]
        manifest = store.get_manifest(job_id)
        assert manifest is not None
        assert manifest["output_format"] == "listen"
        assert manifest["counts"]["feeds"]["hep"]["packets"] == 15
        assert manifest["counts"]["store"]["dropped"] == 0


def test_listen_db_sqlite_and_the_api(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    job_id, done = session(url)
    assert done.returncode == 0, done.stderr
    check_session(url, job_id)
    config = jobs_config(tmp_path, db=url, job_workers=0)
    with serve_in_process(config) as api:
        job = api.get(f"/v1/jobs/{job_id}", headers=auth()).json()
        assert (job["state"], job["progress"]["calls"]) == ("done", 3)
        response = api.get("/v1/calls", headers=auth(), params={"job": job_id})
        assert response.status_code == 200, response.text
        listed = sorted(c["call_id"] for c in response.json()["calls"])
        assert listed == [FIXTURE_CALL_ID, "open-1", "replayed-1"]


def test_listen_db_postgres(pg_url: str) -> None:
    job_id, done = session(pg_url)
    assert done.returncode == 0, done.stderr
    check_session(pg_url, job_id)


# -- the SIP verification server's answers ---------------------------------------------------


def answer_status(sock: socket.socket) -> int:
    """The status of the next final response on ``sock`` (100 Trying skipped)."""
    while True:
        response = parse_message(sock.recv(65535))
        assert isinstance(response, Response)
        if response.status >= 200:
            return response.status


def sip_session(url: str) -> tuple[str, str, subprocess.CompletedProcess[str]]:
    """Three INVITEs to the SIP server: a valid one, the same PASSporT on another Call-ID (a
    replay) and one with a broken signature; checks they are stored while the server runs.
    Returns the job id, the client's address and the finished process."""
    proc, sip, job_id = start_listen(url, "sip")
    try:
        signed = fresh_invite(datetime.now(UTC))
        call_id = signed.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0]
        signature = signed.split(b"Identity: ", 1)[1].split(b";", 1)[0].rsplit(b".", 1)[1]
        tampered = signed.replace(signature, b"A" * len(signature)).replace(call_id, b"bad-1")
        invites = [
            signed,
            with_branch(signed.replace(call_id, b"replayed-sip-1"), "z9hG4bK-replayed"),
            with_branch(tampered, "z9hG4bK-tampered"),
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT_S)
            sock.bind(("127.0.0.1", 0))
            client = sock.getsockname()
            for invite in invites:
                sock.sendto(invite, (sip.host, sip.port))
                assert answer_status(sock) == 302
        wait_running(url, job_id, f"sip:udp:{sip.host}:{sip.port}", calls=3)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return job_id, f"{client[0]}:{client[1]}", done


def check_sip_session(url: str, job_id: str, client: str) -> None:
    with Store.open(url) as store:
        job = store.get_job(job_id)
        assert job is not None
        assert (job.state, job.progress_calls, job.error) == (JobState.DONE, 3, None)
        assert job.summary is not None
        assert job.summary["calls"] == 3
        assert job.summary["verstat"] == {"TN-Validation-Failed": 1, "TN-Validation-Passed": 2}
        stored = list(store.iter_calls(CallFilter(job_id=job_id)))
        calls = {c.call_id: c.record for c in stored if c.record is not None}
        valid, replayed, tampered = (
            calls[c.call_id] for c in sorted(stored, key=lambda c: c.start_ns)
        )
        for record in (valid, replayed, tampered):
            assert record["source"] == "sip"
            assert (record["final_status"], record["state"], record["end"]) == (
                302, "rejected", "final_response",
            )  # fmt: skip
            assert record["src"] == client
            assert [leg["final_status"] for leg in record["legs"]] == [302]
            assert len(record["passports"]) == len(record["signatures"]) == 1
        assert replayed["call_id"] == "replayed-sip-1"
        assert (valid["verstat"], valid["signer"]["spc"], valid["attest"]) == (
            "TN-Validation-Passed", "1234A", "A",
        )  # fmt: skip
        assert (valid["from"]["tn"], valid["to"]["tn"]) == ("12025550101", "12025550199")
        assert valid["replay"] is None
        flag = replayed["replay"]
        assert flag is not None
        assert ReplayKind.DIFFERENT_CALL_ID in flag["kinds"]
        assert flag["first_call_id"] == valid["call_id"]
        assert tampered["verstat"] == "TN-Validation-Failed"
        assert tampered["passports"][0]["reason"] == "signature_invalid"
        manifest = store.get_manifest(job_id)
        assert manifest is not None
        assert manifest["counts"]["store"] == {
            "calls": 3, "anomalies_stored": 0, "anomalies_over_cap": 0, "dropped": 0,
        }  # fmt: skip


def test_a_sip_answer_is_the_call_analyze_would_record(verifier: Verifier) -> None:
    """The call record of an answered INVITE says what `stirscope analyze` says of the same
    INVITE seen in a capture (identities, verdict, PASSporTs, signer, signatures); only the
    SIP outcome is the server's own (its answer, no frames)."""
    call = one_call(verifier)
    analyzed = assess_call(call, verifier)
    invite = call.primary.invite.message
    assert isinstance(invite, Request)
    at = datetime_ns(AT_NS)
    extracted = request_from_message(invite)
    answered = call_record_of(
        invite, extracted, at, verifier.verify(extracted, at=at), 302,
        transport="udp", src="192.0.2.10:5060", dst="127.0.0.1:5060",
        freshness_s=verifier.policy.freshness_s,
    )  # fmt: skip
    same = (
        "call_id", "start_ns", "request_uri", "from_", "to", "pai", "date", "verstat",
        "status_code", "reason", "at", "passports", "attest", "origid", "signer_spc",
        "signer_org", "x5u", "observed_verstat", "signatures", "replay",
    )  # fmt: skip
    for name in same:
        assert getattr(answered, name) == getattr(analyzed, name), name
    assert (answered.final_status, answered.state, answered.frames) == (302, "rejected", ())
    assert [leg.verstat for leg in answered.legs] == ["TN-Validation-Passed"]


def test_listen_sip_db_stores_each_answer_as_a_call(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    job_id, client, done = sip_session(url)
    assert done.returncode == 0, done.stderr
    check_sip_session(url, job_id, client)


def test_listen_sip_db_postgres(pg_url: str) -> None:
    job_id, client, done = sip_session(pg_url)
    assert done.returncode == 0, done.stderr
    check_sip_session(pg_url, job_id, client)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("mysql://nobody@127.0.0.1/x", "--db", id="unsupported-scheme"),
        pytest.param("sqlite:////nonexistent-dir/x/store.db", "--db", id="unwritable-path"),
    ],
)
def test_listen_db_usage_errors(url: str, message: str) -> None:
    args = ["listen", "--hep", "udp:127.0.0.1:0", "--db", url, "--trust", str(TRUST)]
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


# -- LiveStore ------------------------------------------------------------------------------


def one_call(verifier: Verifier, call_id: str = FIXTURE_CALL_ID) -> Call:
    pipeline = LivePipeline()
    for packet in dialog_hep(with_call_id(fixture_call("alpha_a"), call_id), AT_NS):
        pipeline.feed_hep(packet, AT_NS)
    (call,) = [item for item in pipeline.flush() if isinstance(item, Call)]
    return call


@pytest.mark.parametrize("interrupted", [False, True], ids=["failed", "interrupted"])
def test_a_session_that_does_not_complete_is_marked(
    tmp_path: Path, verifier: Verifier, interrupted: bool
) -> None:
    live = LiveStore.open(str(tmp_path / "store.db"))
    try:
        job_id = live.begin(["hep:udp:127.0.0.1:9060"], {"command": "listen"})
        live.add_call(assess_call(one_call(verifier), verifier), "hep")
        live.fail("boom", interrupted=interrupted)
        job = live.store.get_job(job_id)
        assert job is not None
        want = JobState.INTERRUPTED if interrupted else JobState.FAILED
        assert (job.state, job.error) == (want, "boom")
    finally:
        live.close()


def test_a_lost_lease_stops_storing(tmp_path: Path, verifier: Verifier) -> None:
    live = LiveStore.open(str(tmp_path / "store.db"))
    try:
        job_id = live.begin(["hep:udp:127.0.0.1:9060"], {"command": "listen"})
        record = assess_call(one_call(verifier), verifier)
        live.add_call(record, "hep")
        wait_for(lambda: live.store.count_calls(CallFilter(job_id=job_id)) == 1)
        assert live.lease is not None
        live.store.fail(live.lease, "taken over")  # another instance's sweep, say
        live.add_call(record, "hep")
        wait_for(lambda: live.error is not None)
        live.add_call(record, "hep")
        assert live.counts()["dropped"] == 2
        with pytest.raises(StoreError):
            live.complete({})
        job = live.store.get_job(job_id)
        assert job is not None
        assert (job.state, job.error) == (JobState.FAILED, "taken over")
    finally:
        live.close()


def test_deferred_calls_fill_the_store_then_the_flusher_builds_them(
    tmp_path: Path, verifier: Verifier
) -> None:
    """The SIP server's answers: queued as recipes (never waiting), ``full`` past
    ``MAX_PENDING_CALLS`` (the server sheds then), built and stored by the flusher; a recipe
    that fails is counted as dropped, never the flusher's end."""
    live = LiveStore.open(str(tmp_path / "store.db"))
    try:
        record = assess_call(one_call(verifier), verifier)

        def broken() -> CallRecord:
            raise RuntimeError("a bug in a recipe")

        live.add_deferred_call(broken, "sip")
        for _ in range(MAX_PENDING_CALLS - 1):
            live.add_deferred_call(lambda: record, "sip")
        assert live.full()
        job_id = live.begin(["sip:udp:127.0.0.1:5060"], {"command": "listen"})
        wait_for(lambda: live.store.count_calls(CallFilter(job_id=job_id)) > 0)
        assert not live.full()
        live.complete({})
        assert live.store.count_calls(CallFilter(job_id=job_id)) == MAX_PENDING_CALLS - 1
        assert live.counts() == {
            "calls": MAX_PENDING_CALLS - 1, "anomalies_stored": 0, "anomalies_over_cap": 0,
            "dropped": 1,
        }  # fmt: skip
    finally:
        live.close()


# -- replay flags ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call_ids", "flagged"),
    [
        pytest.param(["a", "b"], [False, True], id="replayed-on-another-call-id"),
        pytest.param(["a", "a"], [False, False], id="same-call-seen-twice"),
        pytest.param(["a", "b", "c"], [False, True, True], id="campaign"),
    ],
)
def test_replay_watch_flags_like_assess_call(
    verifier: Verifier, call_ids: list[str], flagged: list[bool]
) -> None:
    watch = ReplayWatch(verifier.policy.freshness_s)
    for call_id, want in zip(call_ids, flagged, strict=True):
        call = one_call(verifier, call_id)
        flag = watch.observe(call)
        assert (flag is not None) == want
        record = flag_record(assess_call(call, verifier), flag)
        assert record == assess_call(call, verifier, replay=flag)
