"""Shared test configuration: where the read-only real-world corpus lives (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
REALWORLD = Path(
    os.environ.get("STIRSCOPE_REALWORLD", ROOT.parent / "shared" / "data" / "realworld")
)


@pytest.fixture(scope="session")
def realworld() -> Path:
    """Path to ../shared/data/realworld; skips the test when the corpus is not beside the clone."""
    if not REALWORLD.is_dir():
        pytest.skip("real-world corpus not present (../shared/data/realworld)")
    return REALWORLD
