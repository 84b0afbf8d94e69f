"""Fixtures shared by the analyzer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, load_script

# Calls in the generated captures: more than analyzer.run.INLINE_CALLS (128), so the pool of
# the cluster verifies some of them too.
CALLS = 200


@pytest.fixture(scope="module")
def bench_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``CALLS`` signed calls with RTP (bench/bench_analyze.py's generator), UDP only."""
    bench = load_script(ROOT / "bench" / "bench_analyze.py")
    setattr(bench, "CALLS", CALLS)  # noqa: B010 - the generator reads the module global
    path = tmp_path_factory.mktemp("bench") / "bench.pcap"
    bench.build(path)
    return path
