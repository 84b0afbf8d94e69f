"""The results store on a real PostgreSQL server: the whole ``StoreContract`` (claims across
threads and processes with ``FOR UPDATE SKIP LOCKED``, lease expiry, fencing, filters, pages),
migrations racing between instances, and `stirscope analyze --db postgresql://...`.

The server is ``STIRSCOPE_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
every test gets a schema of its own, dropped afterwards. Skipped when the server is not
reachable (the Makefile starts one when it can).
"""

from __future__ import annotations

import os
import threading
import uuid
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

POSTGRES_URL = os.environ.get(
    "STIRSCOPE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
# Seconds to wait for the server before skipping (it is local or absent).
CONNECT_TIMEOUT_S = 3
MIGRATING_INSTANCES = 4


def _libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="module")
def postgres() -> str:
    """The server URL; skips the module when it is not reachable."""
    try:
        with psycopg.connect(_libpq_url(POSTGRES_URL), connect_timeout=CONNECT_TIMEOUT_S):
            pass
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    return POSTGRES_URL


@pytest.fixture
def schema(postgres: str) -> Iterator[str]:
    """A fresh schema name, dropped with everything in it after the test."""
    name = f"stirscope_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(_libpq_url(postgres), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


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
    with psycopg.connect(_libpq_url(postgres)) as conn:
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
