"""Shared test configuration: where the read-only real-world corpus lives (skipped when absent),
the PostgreSQL fixtures, and loading the fixtures' and benchmarks' scripts as modules."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
REALWORLD = Path(
    os.environ.get("STIRSCOPE_REALWORLD", ROOT.parent / "shared" / "data" / "realworld")
)


def load_script(path: Path) -> ModuleType:
    """A script of fixtures/ or bench/ (folders that are not packages) as a module, loaded once
    under its file's stem (the name its siblings load it by)."""
    name = path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def realworld() -> Path:
    """Path to ../shared/data/realworld; skips the test when the corpus is not beside the clone."""
    if not REALWORLD.is_dir():
        pytest.skip("real-world corpus not present (../shared/data/realworld)")
    return REALWORLD


# -- PostgreSQL (the store tests; skipped when no server answers) ----------------------------

POSTGRES_URL = os.environ.get(
    "STIRSCOPE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
# Seconds to wait for the server before skipping (it is local or absent).
POSTGRES_CONNECT_TIMEOUT_S = 3


def libpq_url(url: str) -> str:
    """A SQLAlchemy-style URL as psycopg (libpq) spells it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def postgres() -> str:
    """The server URL; skips the test when PostgreSQL is not reachable."""
    import psycopg

    try:
        with psycopg.connect(libpq_url(POSTGRES_URL), connect_timeout=POSTGRES_CONNECT_TIMEOUT_S):
            pass
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    return POSTGRES_URL


@pytest.fixture
def postgres_schema(postgres: str) -> Iterator[str]:
    """A fresh schema name, dropped with everything in it after the test."""
    import psycopg

    name = f"stirscope_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(libpq_url(postgres), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def postgres_store_url(postgres: str, postgres_schema: str) -> str:
    """A store URL (``?schema=``) whose tables live in a fresh schema of their own."""
    separator = "&" if "?" in postgres else "?"
    return f"{postgres}{separator}schema={postgres_schema}"
