"""The results store on a real PostgreSQL server: the whole ``StoreContract`` (claims across
threads and processes with ``FOR UPDATE SKIP LOCKED``, lease expiry, fencing, filters, pages),
migrations racing between instances, and `stirscope analyze --db postgresql://...`.

The server is ``STIRSCOPE_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
every test gets a schema of its own, dropped afterwards. Skipped when the server is not
reachable (the Makefile starts one when it can).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from analyzer.storage import JobState, Store
from tests.analyzer.test_storage import (
    DEMO_CALLS,
    TABLES,
    StoreContract,
    analyze_into,
    check_stored_run,
)
from tests.conftest import libpq_url

MIGRATING_INSTANCES = 4


@pytest.fixture
def schema(postgres_schema: str) -> str:
    return postgres_schema


@pytest.fixture
def store(postgres: str, schema: str) -> Iterator[Store]:
    with Store.open(postgres, schema=schema) as opened:
        opened.migrate()
        yield opened


class TestPostgresStore(StoreContract):
    pass


def test_migrations_run_from_an_empty_schema(postgres: str, schema: str) -> None:
    with Store.open(postgres, schema=schema) as store:
        assert store.revision() is None
        store.migrate()
        assert store.is_current()
    with psycopg.connect(libpq_url(postgres)) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    assert {name for (name,) in rows} == TABLES


def test_instances_starting_together_migrate_once(postgres: str, schema: str) -> None:
    barrier = threading.Barrier(MIGRATING_INSTANCES)
    errors: list[BaseException] = []

    def instance() -> None:
        try:
            with Store.open(postgres, schema=schema) as store:
                barrier.wait()
                store.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=instance) for _ in range(MIGRATING_INSTANCES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Store.open(postgres, schema=schema) as store:
        assert store.is_current()


def test_the_clock_is_the_servers(store: Store) -> None:
    first, second = store.now(), store.now()
    assert first.tzinfo is not None
    assert first <= second


def test_analyze_db_records_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, postgres: str, schema: str
) -> None:
    url = f"{postgres}?schema={schema}"
    code, stdout, records = analyze_into(capsys, url, tmp_path)
    assert code == 0
    with Store.open(url) as store:
        check_stored_run(store, records)
        (job,) = store.list_jobs()
        assert f"stored:       job {job.id}" in stdout
        # a second run of the same capture is a second job; filters can pick either
        code, _, _ = analyze_into(capsys, url, tmp_path)
        assert code == 0
        assert store.count_calls() == 2 * DEMO_CALLS
        assert store.count_jobs()[JobState.DONE] == 2
