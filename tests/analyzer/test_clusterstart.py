"""A local cluster's worker server: started early, preloaded with the worker's code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import _asks_local_cluster
from tests.conftest import ROOT

# Forks a child from the server and reports whether the child had the task code already. A
# file, not ``-c``: the child finds ``probe`` by importing the main module.
PROBE = """
import multiprocessing, sys
def probe(queue):
    queue.put("analyzer.cluster" in sys.modules)
if __name__ == "__main__":
    from analyzer.clusterstart import LOCAL_START_METHOD, start_worker_server
    if sys.argv[1] == "early":
        start_worker_server()
        start_worker_server()  # idempotent
    context = multiprocessing.get_context(LOCAL_START_METHOD)
    queue = context.Queue()
    child = context.Process(target=probe, args=(queue,))
    child.start()
    print(queue.get(timeout=60))
    child.join()
"""


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["analyze", "a.pcap", "--cluster", "local:2"], True),
        (["analyze", "--cluster=local:4", "a.pcap"], True),
        (["analyze", "a.pcap", "--cluster", "tcp://10.0.0.1:8786"], False),
        (["analyze", "a.pcap", "--cluster"], False),
        (["analyze", "a.pcap", "local:2"], False),
        (["analyze", "a.pcap"], False),
    ],
)
def test_local_cluster_is_recognised_before_parsing(words: list[str], expected: bool) -> None:
    assert _asks_local_cluster(words) is expected


@pytest.mark.parametrize(("mode", "preloaded"), [("early", True), ("late", False)])
def test_forked_workers_find_the_task_code_imported(
    mode: str, preloaded: bool, tmp_path: Path
) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    done = subprocess.run(
        [sys.executable, str(script), mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    assert done.stdout.strip() == str(preloaded)
