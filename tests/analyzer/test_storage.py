"""The results store on SQLite: schema and migrations, job claiming under leases, results
written in batches and read back with filters and pages, and `stirscope analyze --db`.

``StoreContract`` holds the tests every backend must pass; ``TestSqliteStore`` runs them on an
SQLite file in tmp_path and tests/analyzer/test_storage_postgres.py on a real PostgreSQL.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from analyzer.records import Summary
from analyzer.run import AnalyzeJob, AnalyzeOptions
from analyzer.storage import (
    CallFilter,
    CallOrder,
    InputSpec,
    InvalidCursor,
    JobOrigin,
    JobState,
    Lease,
    LeaseLost,
    Store,
    StoreError,
    database_url,
)
from analyzer.storage.models import Base
from analyzer.storage.writer import RunWriter
from analyzer.verifying import VerifierConfig
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
DEMO = FIXTURES / "demo" / "demo.pcap"
TRUST = ["--trust", str(FIXTURES / "pki" / "trust"), "--certs", str(FIXTURES / "certs")]
DEMO_CALLS = 13
T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TABLES = {"jobs", "job_inputs", "calls", "passports", "anomalies", "manifests", "alembic_version"}
# Concurrency tests: claimers and jobs (enough that claims overlap, small enough to be quick).
THREADS, THREAD_JOBS = 8, 40
PROCESSES, PROCESS_JOBS = 3, 24


@cache
def demo_records() -> tuple[dict[str, Any], ...]:
    """The demo capture's JSONL objects, as `stirscope analyze --format jsonl` writes them."""
    config = VerifierConfig(trust=(FIXTURES / "pki" / "trust",), certs_dirs=(FIXTURES / "certs",))
    job = AnalyzeJob([str(DEMO)], AnalyzeOptions(config=config))
    return tuple(record.to_json() for record in job.records())


def write_demo(
    store: Store, *, batch_calls: int = 4, now: datetime = T0, background: bool = False
) -> Lease:
    """A done job holding the demo records (written in several batches)."""
    store.create_job([InputSpec("demo.pcap", DEMO.stat().st_size)], {"demo": True}, now=now)
    lease = store.claim("writer", now=now)
    assert lease is not None
    with store.writer(lease, batch_calls=batch_calls, background=background) as writer:
        for doc in demo_records():
            writer.add_json(doc)
    writer.add_anomalies([{"kind": "tls_flow", "frame": 78, "detail": "TLS"}])
    store.complete(lease, summary={"calls": DEMO_CALLS}, manifest={"manifest_version": 1}, now=now)
    return lease


def claim_all(store: Store, owner: str, pause_s: float = 0.0) -> list[str]:
    claimed = []
    while (lease := store.claim(owner)) is not None:
        claimed.append(lease.job_id)
        time.sleep(pause_s)  # "work": lets the other claimers interleave
    return claimed


def claim_in_process(url: str, owner: str, gate: str, claimers: int) -> list[str]:
    """A separate process (another instance): wait until every claimer is up, then claim."""
    Path(gate, owner).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(gate)) < claimers and time.monotonic() < deadline:
        time.sleep(0.005)
    with Store.open(url) as store:
        return claim_all(store, owner, pause_s=0.005)


def _tn(doc: dict[str, Any], key: str) -> object:
    value = doc[key]
    assert isinstance(value, dict)
    return value["tn"]


# Filters with the predicate that picks the same calls out of the JSONL objects.
FILTERS: list[tuple[str, CallFilter, Callable[[dict[str, Any]], bool]]] = [
    ("all", CallFilter(), lambda d: True),
    ("passed", CallFilter(verstat="TN-Validation-Passed"),
     lambda d: d["verstat"] == "TN-Validation-Passed"),
    ("failed", CallFilter(verstat="TN-Validation-Failed"),
     lambda d: d["verstat"] == "TN-Validation-Failed"),
    ("no-verstat", CallFilter(verstat="error"), lambda d: d["verstat"] is None),
    ("attest-A", CallFilter(attest="A"), lambda d: d["attest"] == "A"),
    ("no-attest", CallFilter(attest="none"), lambda d: d["attest"] is None),
    ("signer-1234A", CallFilter(signer_spc="1234A"), lambda d: d["signer"]["spc"] == "1234A"),
    ("signer-and-attest", CallFilter(signer_spc="1234A", attest="B"),
     lambda d: d["signer"]["spc"] == "1234A" and d["attest"] == "B"),
    ("reason", CallFilter(reason="signature_invalid"),
     lambda d: d["reason"] == "signature_invalid"),
    ("calling", CallFilter(calling="12025550101"), lambda d: _tn(d, "from") == "12025550101"),
    ("called-nobody", CallFilter(called="19995550000"), lambda d: False),
    ("since", CallFilter(since=T0 + timedelta(seconds=20)),
     lambda d: d["start_ns"] >= (T0 + timedelta(seconds=20)).timestamp() * 1e9),
    ("until", CallFilter(until=T0 + timedelta(seconds=20)),
     lambda d: d["start_ns"] < (T0 + timedelta(seconds=20)).timestamp() * 1e9),
    ("call-id", CallFilter(call_id="demo-05-tampered@sbc.alpha.example"),
     lambda d: d["call_id"] == "demo-05-tampered@sbc.alpha.example"),
]  # fmt: skip


class StoreContract:
    """What every backend of the store must do (the ``store`` fixture is the backend's)."""

    # -- schema ------------------------------------------------------------------------------

    def test_migrations_reach_head_and_match_the_models(self, store: Store) -> None:
        assert store.revision() == Store.head() == "0001"
        assert store.is_current()
        with store.db.read() as conn:
            assert set(inspect(conn).get_table_names()) == TABLES
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []

    def test_migrate_again_changes_nothing(self, store: Store) -> None:
        lease = write_demo(store)
        store.migrate()
        assert store.is_current()
        assert store.count_calls(CallFilter(job_id=lease.job_id)) == DEMO_CALLS

    # -- jobs --------------------------------------------------------------------------------

    def test_job_is_queued_then_claimed_then_done(self, store: Store) -> None:
        job = store.create_job([InputSpec("a.pcap", 100)], {"k": "v"}, now=T0)
        assert (job.state, job.attempt, job.origin) == (JobState.QUEUED, 0, JobOrigin.SERVICE)
        assert job.inputs == (InputSpec("a.pcap", 100),)
        lease = store.claim("w1", now=T0 + timedelta(seconds=1), lease_s=30)
        assert lease is not None
        assert (lease.job_id, lease.attempt) == (job.id, 1)
        running = store.get_job(job.id)
        assert running is not None
        assert (running.state, running.lease_owner) == (JobState.RUNNING, "w1")
        assert running.lease_expires_at == T0 + timedelta(seconds=31)
        store.heartbeat(lease, progress_bytes=50, now=T0 + timedelta(seconds=20))
        beat = store.get_job(job.id)
        assert beat is not None
        assert (beat.progress_bytes, beat.lease_expires_at) == (50, T0 + timedelta(seconds=50))
        digest = "ab" * 32
        store.complete(
            lease, summary={"calls": 0}, manifest={"m": 1},
            inputs=[InputSpec("a.pcap", 100, digest)], now=T0 + timedelta(seconds=30),
        )  # fmt: skip
        done = store.get_job(job.id)
        assert done is not None
        assert (done.state, done.summary, done.error) == (JobState.DONE, {"calls": 0}, None)
        assert done.finished_at == T0 + timedelta(seconds=30)
        assert done.inputs[0].sha256 == digest
        assert store.get_manifest(job.id) == {"m": 1}
        assert store.count_jobs()[JobState.DONE] == 1

    @pytest.mark.parametrize("state", [JobState.FAILED, JobState.INTERRUPTED], ids=str)
    def test_failed_and_interrupted_are_final(self, store: Store, state: JobState) -> None:
        store.create_job([InputSpec("a.pcap")], now=T0)
        lease = store.claim("w1", now=T0)
        assert lease is not None
        store.fail(lease, "boom", state=state, now=T0)
        job = store.get_job(lease.job_id)
        assert job is not None
        assert (job.state, job.error) == (state, "boom")
        assert store.claim("w2", now=T0 + timedelta(days=1)) is None
        with pytest.raises(LeaseLost):
            store.heartbeat(lease, now=T0)

    def test_claim_takes_the_oldest_first_and_none_when_empty(self, store: Store) -> None:
        assert store.claim("w", now=T0) is None
        ids = [store.create_job([], now=T0 + timedelta(seconds=n)).id for n in (2, 0, 1)]
        order = []
        while (lease := store.claim("w", now=T0 + timedelta(seconds=5))) is not None:
            order.append(lease.job_id)
        assert order == [ids[1], ids[2], ids[0]]

    def test_threads_never_claim_a_job_twice(self, store: Store) -> None:
        jobs = {store.create_job([], now=T0).id for _ in range(THREAD_JOBS)}
        barrier = threading.Barrier(THREADS)

        def claimer(n: int) -> list[str]:
            barrier.wait()
            return claim_all(store, f"thread-{n}", pause_s=0.001)

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(claimer, range(THREADS)))
        claimed = [job for result in results for job in result]
        assert sorted(claimed) == sorted(jobs)  # each once, none lost
        assert sum(1 for result in results if result) > 1

    def test_processes_never_claim_a_job_twice(self, store: Store, tmp_path: Path) -> None:
        jobs = {store.create_job([], now=T0).id for _ in range(PROCESS_JOBS)}
        gate = tmp_path / "gate"
        gate.mkdir()
        with ProcessPoolExecutor(PROCESSES, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(claim_in_process, store.url, f"proc-{n}", str(gate), PROCESSES)
                for n in range(PROCESSES)
            ]
            results = [f.result(timeout=120) for f in futures]
        claimed = [job for result in results for job in result]
        assert sorted(claimed) == sorted(jobs)
        assert sum(1 for result in results if result) > 1
        for job_id in jobs:
            job = store.get_job(job_id)
            assert job is not None
            assert (job.state, job.attempt) == (JobState.RUNNING, 1)

    def test_an_expired_lease_is_reclaimed_and_the_old_worker_fenced(self, store: Store) -> None:
        store.create_job([], now=T0)
        first = store.claim("dead", now=T0, lease_s=10)
        assert first is not None
        assert store.claim("other", now=T0 + timedelta(seconds=9)) is None  # still leased
        second = store.claim("alive", now=T0 + timedelta(seconds=11), lease_s=10)
        assert second is not None
        assert (second.job_id, second.attempt) == (first.job_id, 2)
        later = T0 + timedelta(seconds=12)
        stale: list[Callable[[], object]] = [
            lambda: store.heartbeat(first, now=later),
            lambda: store.writer(first),
            lambda: store.complete(first, now=later),
            lambda: store.fail(first, "late", now=later),
        ]
        for operation in stale:
            with pytest.raises(LeaseLost):
                operation()
        store.complete(second, now=later)
        job = store.get_job(first.job_id)
        assert job is not None
        assert (job.state, job.lease_owner, job.attempt) == (JobState.DONE, "alive", 2)

    @pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
    def test_a_lost_lease_stops_the_writer_mid_run(self, store: Store, background: bool) -> None:
        store.create_job([], now=T0)
        lease = store.claim("slow", now=T0, lease_s=10)
        assert lease is not None
        writer = store.writer(lease, batch_calls=2, background=background)
        writer.add_json(demo_records()[0])
        writer.add_json(demo_records()[1])
        writer.close()
        assert store.count_calls() == 2
        writer = store.writer(lease, batch_calls=2, background=background)  # clears them
        writer.add_json(demo_records()[0])
        assert store.claim("fast", now=T0 + timedelta(seconds=60)) is not None

        def finish() -> None:
            writer.add_json(demo_records()[1])  # a full batch: written (or queued) here
            writer.close()

        with pytest.raises(LeaseLost):
            finish()
        assert store.count_calls() == 0

    def test_the_background_writer_writes_what_the_inline_one_does(self, store: Store) -> None:
        inline = write_demo(store, batch_calls=3)
        background = write_demo(store, batch_calls=3, background=True)
        records = [
            [c.record for c in store.iter_calls(CallFilter(job_id=lease.job_id))]
            for lease in (inline, background)
        ]
        assert records[0] == records[1]
        assert len(records[0]) == DEMO_CALLS
        job = store.get_job(background.job_id)
        assert job is not None
        assert job.progress_calls == DEMO_CALLS

    def test_attempts_run_out_then_interrupted(self, store: Store) -> None:
        job = store.create_job([], max_attempts=2, now=T0)
        now = T0
        for attempt in (1, 2):
            lease = store.claim("crashy", now=now, lease_s=10)
            assert lease is not None
            assert lease.attempt == attempt
            now += timedelta(seconds=11)
        assert store.claim("w", now=now) is None
        gone = store.get_job(job.id)
        assert gone is not None
        assert (gone.state, gone.attempt) == (JobState.INTERRUPTED, 2)
        assert gone.error is not None

    def test_recover_at_startup(self, store: Store) -> None:
        service = store.create_job([], now=T0)
        cli = store.begin_job([InputSpec("local.pcap")], owner="laptop/1", now=T0, lease_s=600)
        mine = store.claim("instance-a", now=T0, lease_s=600)
        assert mine is not None
        assert mine.job_id == service.id
        # instance-a restarts: its own running jobs are re-queued although not yet expired
        recovery = store.recover(owner="instance-a", now=T0 + timedelta(seconds=1))
        assert (recovery.requeued, recovery.interrupted) == (1, 0)
        # the CLI run dies: once its lease expires it is interrupted, never re-run elsewhere
        recovery = store.recover(now=T0 + timedelta(seconds=601))
        assert (recovery.requeued, recovery.interrupted) == (0, 1)
        states = {j.id: j.state for j in store.list_jobs()}
        assert states == {service.id: JobState.QUEUED, cli.job_id: JobState.INTERRUPTED}
        assert store.list_jobs(state=JobState.INTERRUPTED)[0].origin == JobOrigin.CLI

    def test_heartbeat_thread_renews_the_lease(self, store: Store) -> None:
        store.create_job([], now=store.now())
        lease = store.claim("w", lease_s=0.2)
        assert lease is not None
        with store.keep_alive(lease, lambda: 1234) as beat:
            time.sleep(0.5)
        assert beat.lost is None
        job = store.get_job(lease.job_id)
        assert job is not None
        assert job.progress_bytes == 1234
        assert job.lease_expires_at is not None
        assert job.lease_expires_at > lease.expires_at

    def test_heartbeat_thread_reports_a_lost_lease(self, store: Store) -> None:
        store.create_job([], now=store.now())
        lease = store.claim("w", lease_s=0.2)
        assert lease is not None
        store.delete_job(lease.job_id)
        with store.keep_alive(lease) as beat:
            deadline = time.monotonic() + 30
            while beat.lost is None and time.monotonic() < deadline:
                time.sleep(0.01)
        assert isinstance(beat.lost, LeaseLost)

    # -- results -----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("where", "pick"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS]
    )
    def test_filters_match_the_jsonl(
        self, store: Store, where: CallFilter, pick: Callable[[dict[str, Any]], bool]
    ) -> None:
        write_demo(store)
        expected = [d["call_id"] for d in demo_records() if pick(d)]
        page = store.list_calls(where, limit=100)
        assert sorted(c.call_id for c in page.items) == sorted(expected)
        assert page.next_cursor is None
        assert store.count_calls(where) == len(expected)

    @pytest.mark.parametrize("order", list(CallOrder), ids=str)
    @pytest.mark.parametrize("size", [1, 4, 13, 50], ids=lambda n: f"page{n}")
    def test_keyset_pages_list_every_call_once(
        self, store: Store, order: CallOrder, size: int
    ) -> None:
        write_demo(store)
        seen: list[int] = []
        cursor: str | None = None
        while True:
            page = store.list_calls(limit=size, cursor=cursor, order=order)
            seen.extend(c.pk for c in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(seen) == len(set(seen)) == DEMO_CALLS
        starts = [store.get_call(pk).start_ns for pk in seen]  # type: ignore[union-attr]
        assert starts == sorted(starts, reverse=order is CallOrder.START_DESC)

    def test_offset_pages_and_export_agree_with_keyset(self, store: Store) -> None:
        write_demo(store)
        by_offset = [c.pk for n in range(0, DEMO_CALLS, 5) for c in store.list_calls(
            limit=5, offset=n).items]  # fmt: skip
        exported = list(store.iter_calls(page=3))
        assert by_offset == [c.pk for c in exported]
        assert [c.record for c in exported] == sorted(demo_records(), key=lambda d: d["start_ns"])

    @pytest.mark.parametrize("cursor", ["", "12", "a.b", "1.2.3", "1;drop", "9" * 30 + ".1"])
    def test_a_foreign_cursor_is_refused(self, store: Store, cursor: str) -> None:
        with pytest.raises(InvalidCursor):
            store.list_calls(cursor=cursor)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"limit": 0}, "limit"),
            ({"limit": 1001}, "limit"),
            ({"offset": -1}, "offset"),
            ({"offset": 1, "cursor": "1.1"}, "not both"),
        ],
        ids=["limit0", "limit-too-big", "negative-offset", "cursor-and-offset"],
    )
    def test_bad_page_arguments(self, store: Store, kwargs: dict[str, Any], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            store.list_calls(**kwargs)

    def test_one_call_has_its_record_passports_and_anomalies(self, store: Store) -> None:
        lease = write_demo(store)
        for doc in demo_records():
            (found,) = store.list_calls(CallFilter(call_id=doc["call_id"])).items
            call = store.get_call(found.pk)
            assert call is not None
            assert call.record == doc
            assert (call.job_id, call.verstat, call.attest) == (
                lease.job_id, doc["verstat"], doc["attest"],
            )  # fmt: skip
            assert call.passport_count == len(doc["passports"])
            assert call.anomaly_count == len(doc["anomalies"])
        assert store.get_call(10**9) is None
        assert store.job_anomalies(lease.job_id) == [
            {"kind": "tls_flow", "frame": 78, "detail": "TLS"}
        ]
        per_call = store.job_anomalies(lease.job_id, run_only=False)
        assert len(per_call) == 1 + sum(len(d["anomalies"]) for d in demo_records())

    def test_counts_match_the_run_summary(self, store: Store) -> None:
        lease = write_demo(store)
        summary = Summary()
        for doc in demo_records():
            summary.add(_digest(doc))
        counts = store.summarize(CallFilter(job_id=lease.job_id))
        expected = summary.to_json()
        assert counts.calls == expected["calls"] == DEMO_CALLS
        assert counts.verstat == expected["verstat"]
        assert counts.attest == expected["attest"]
        assert counts.reasons == expected["reasons"]
        signers = {f"{s.spc} ({s.organization})": s.calls for s in counts.signers}
        assert signers == expected["signers"]
        top = counts.signers[0]
        assert (top.spc, sum(top.verstat.values()), sum(top.attest.values())) == (
            "1234A", top.calls, top.calls,
        )  # fmt: skip

    def test_a_retried_job_keeps_one_copy_of_each_call(self, store: Store) -> None:
        store.create_job([], now=T0)
        first = store.claim("a", now=T0, lease_s=10)
        assert first is not None
        partial = store.writer(first, batch_calls=2)
        for doc in demo_records()[:5]:
            partial.add_json(doc)  # two batches committed, one record pending, then a crash
        assert store.count_calls() == 4
        second = store.claim("b", now=T0 + timedelta(seconds=11))
        assert second is not None
        writer = store.writer(second)
        for doc in demo_records():
            writer.add_json(doc)
        writer.flush()
        store.complete(second, now=T0 + timedelta(seconds=12))
        assert store.count_calls() == DEMO_CALLS
        job = store.get_job(second.job_id)
        assert job is not None
        assert job.progress_calls == DEMO_CALLS

    def test_undecodable_text_is_stored_escaped(self, store: Store) -> None:
        doc = dict(demo_records()[0])
        doc["call_id"] = "bad\udcff\x00id"
        doc["request_uri"] = "sip:\udc80@x"
        store.create_job([InputSpec("odd\udcfe.pcap")], {"note": "\x00"}, now=T0)
        lease = store.claim("w", now=T0)
        assert lease is not None
        writer = store.writer(lease)
        writer.add_json(doc)
        writer.flush()
        (call,) = store.list_calls(with_record=True).items
        assert call.call_id == "bad\\udcff\\x00id"
        assert call.record is not None
        assert call.record["request_uri"] == "sip:\\udc80@x"
        job = store.get_job(lease.job_id)
        assert job is not None
        assert job.inputs[0].name == "odd\\udcfe.pcap"

    def test_deleting_a_job_deletes_its_results(self, store: Store) -> None:
        kept = write_demo(store)
        gone = write_demo(store)
        assert store.delete_job(gone.job_id)
        assert not store.delete_job(gone.job_id)
        assert store.get_job(gone.job_id) is None
        assert store.get_manifest(gone.job_id) is None
        assert store.job_anomalies(gone.job_id, run_only=False) == []
        assert store.count_calls() == DEMO_CALLS
        assert store.count_calls(CallFilter(job_id=kept.job_id)) == DEMO_CALLS


def _digest(doc: dict[str, Any]) -> Any:
    from analyzer.records import CallDigest

    return CallDigest(
        doc["start_ns"], doc["verstat"], doc["attest"], doc["signer"]["spc"],
        doc["signer"]["organization"], doc["reason"], doc["final_status"], doc["state"],
        doc["transport"], doc["encapsulation"] or "",
        tuple(str(a["kind"]) for a in doc["anomalies"]),
    )  # fmt: skip


# -- SQLite ----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'results.db'}") as opened:
        opened.migrate()
        yield opened


class TestSqliteStore(StoreContract):
    pass


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("results.db", "sqlite:///results.db"),
        ("/var/lib/x.db", "sqlite:////var/lib/x.db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("sqlite+pysqlite:///x.db", "sqlite:///x.db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h:5433/db", "postgresql+psycopg://u@h:5433/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
    ids=["bare-path", "absolute-path", "sqlite", "pysqlite", "postgresql", "postgres", "psycopg"],
)
def test_database_urls(given: str, expected: str) -> None:
    assert database_url(given).render_as_string() == expected


@pytest.mark.parametrize(
    "given",
    ["mysql://u@h/db", "postgresql+psycopg2://u@h/db", "sqlite://", "sqlite:///:memory:", "x://"],
    ids=["mysql", "psycopg2", "sqlite-memory", "sqlite-memory-named", "nonsense"],
)
def test_unsupported_database_urls(given: str) -> None:
    with pytest.raises(StoreError):
        database_url(given)


def test_sqlite_directory_gets_the_default_file(tmp_path: Path) -> None:
    with Store.open(str(tmp_path)) as store:
        store.migrate()
    assert (tmp_path / "stirscope.db").is_file()


def test_sqlite_in_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Store.open(str(tmp_path / "nowhere" / "x.db"))


def test_a_schema_is_postgresql_only(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Store.open(str(tmp_path / "x.db"), schema="tenant")


def test_naive_times_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.count_calls(CallFilter(since=datetime(2026, 1, 1)))


# -- stirscope analyze --db ------------------------------------------------------------------


def analyze_into(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path, *extra: str
) -> tuple[int, str, list[dict[str, Any]]]:
    """``analyze --db URL --format jsonl -o FILE``: exit code, stdout, the JSONL records."""
    out = tmp_path / "calls.jsonl"
    code = main(["analyze", str(DEMO), *TRUST, "--db", url, "--format", "jsonl", "-o", str(out),
                 "--workers", "1", *extra])  # fmt: skip
    stdout, _ = capsys.readouterr()
    return code, stdout, [json.loads(line) for line in out.read_text("utf-8").splitlines()]


def _line(document: dict[str, Any] | None) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def check_stored_run(store: Store, records: list[dict[str, Any]]) -> None:
    """The store holds exactly the run that the JSONL describes, as a done CLI job."""
    (job,) = store.list_jobs()
    assert (job.state, job.origin, job.attempt) == (JobState.DONE, JobOrigin.CLI, 1)
    assert job.progress_calls == len(records) == DEMO_CALLS
    assert job.progress_bytes == job.total_bytes == DEMO.stat().st_size
    manifest = store.get_manifest(job.id)
    assert manifest is not None
    assert job.inputs == (InputSpec(str(DEMO), DEMO.stat().st_size,
                                    manifest["inputs"][0]["sha256"]),)  # fmt: skip
    assert job.summary is not None
    assert job.summary["calls"] == DEMO_CALLS
    stored = [c.record for c in store.iter_calls(CallFilter(job_id=job.id))]
    # the same objects with their keys in the same order: exports are byte-identical
    assert [_line(r) for r in stored] == [
        _line(r) for r in sorted(records, key=lambda d: d["start_ns"])
    ]
    counts = store.summarize()
    assert counts.verstat == job.summary["verstat"]
    assert counts.attest == job.summary["attest"]
    assert Counter(d["verstat"] for d in records)["TN-Validation-Passed"] == store.count_calls(
        CallFilter(verstat="TN-Validation-Passed")
    )
    kinds = {a["kind"] for a in store.job_anomalies(job.id)}
    assert "tls_flow" in kinds


def test_analyze_db_records_the_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    code, stdout, records = analyze_into(capsys, str(db), tmp_path)
    assert code == 0
    with Store.open(str(db)) as store:
        check_stored_run(store, records)
        (job,) = store.list_jobs()
    assert f"stored:       job {job.id}" in stdout


def test_analyze_db_json_summary_names_the_job(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code = main(["analyze", str(DEMO), *TRUST, "--db", url, "--json", "--workers", "1"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    with Store.open(url) as store:
        (job,) = store.list_jobs()
        assert document["store"] == {"url": url, "job": job.id}
        assert store.count_calls() == document["summary"]["calls"] == DEMO_CALLS


@pytest.mark.parametrize(
    "url", ["mysql://u@h/db", "/no/such/dir/x.db", "postgresql://u@127.0.0.1:1/db"],
    ids=["unsupported", "missing-directory", "unreachable"],
)  # fmt: skip
def test_analyze_db_unusable_store_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code = main(["analyze", str(DEMO), *TRUST, "--db", url])
    _, err = capsys.readouterr()
    assert code == 2
    assert "--db" in err


def test_analyze_db_failure_mid_run_marks_the_job_failed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: RunWriter, docs: object, first: int) -> None:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(RunWriter, "_write", broken)
    db = tmp_path / "runs.db"
    code = main(["analyze", str(DEMO), *TRUST, "--db", str(db), "--workers", "1"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "results store" in err
    with Store.open(str(db)) as store:
        (job,) = store.list_jobs()
        assert job.state == JobState.FAILED
        assert job.error is not None
