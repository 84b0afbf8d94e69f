"""`stirscope analyze --cluster`: a local Dask cluster gives the single-process records, byte
for byte (also for a call split across two capture files); bad values are usage errors."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from analyzer import cluster as cluster_module
from analyzer import run as run_module
from analyzer.cluster import ClusterSpec, DaskChunkPool, DaskPoolFactory, parse_cluster
from analyzer.run import AnalyzeJob, AnalyzeOptions
from analyzer.spill import SpillOutput
from analyzer.verifying import VerifierConfig
from service.cli import main
from tests.analyzer.conftest import CALLS

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
DEMO = FIXTURES / "demo" / "demo.pcap"
TRUST = ["--trust", str(FIXTURES / "pki" / "trust"), "--certs", str(FIXTURES / "certs")]
CONFIG = VerifierConfig(trust=(FIXTURES / "pki" / "trust",), certs_dirs=(FIXTURES / "certs",))
PCAP_HEADER = 24  # classic pcap global header; each record has a 16-byte header
RECORD_HEADER = 16


def _split_pcap(data: bytes, first: Path, second: Path) -> None:
    """Write the records of a classic little-endian pcap to two files, half in each."""
    header, offset, records = data[:PCAP_HEADER], PCAP_HEADER, []
    while offset < len(data):
        (incl,) = struct.unpack_from("<I", data, offset + 8)
        records.append(data[offset : offset + RECORD_HEADER + incl])
        offset += RECORD_HEADER + incl
    half = len(records) // 2
    first.write_bytes(header + b"".join(records[:half]))
    second.write_bytes(header + b"".join(records[half:]))


def _demo(tmp: Path) -> list[str]:
    return [str(DEMO)]


def _split(tmp: Path) -> list[str]:
    first, second = tmp / "part1.pcap", tmp / "part2.pcap"
    _split_pcap(DEMO.read_bytes(), first, second)
    return [str(first), str(second)]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Chunks of 2 after 3 inline calls (the demo has 13), counting the chunks Dask ran."""
    monkeypatch.setattr(run_module, "INLINE_CALLS", 3)
    monkeypatch.setattr(run_module, "CHUNK_CALLS", 1)
    monkeypatch.setattr(cluster_module, "DASK_CHUNK_FACTOR", 2)
    sizes: list[int] = []
    submit = DaskChunkPool.submit

    def counting(self: DaskChunkPool, chunk: list[Any], *args: Any) -> Any:
        sizes.append(len(chunk))
        return submit(self, chunk, *args)

    monkeypatch.setattr(DaskChunkPool, "submit", counting)
    return sizes


@pytest.mark.parametrize(
    ("inputs", "spans_files"),
    [pytest.param(_demo, False, id="demo"), pytest.param(_split, True, id="call-split-in-two")],
)
def test_local_cluster_output_is_byte_identical_to_single_process(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    small_chunks: list[int],
    inputs: Callable[[Path], list[str]],
    spans_files: bool,
) -> None:
    captures = inputs(tmp_path)
    single, clustered = tmp_path / "single.jsonl", tmp_path / "cluster.jsonl"
    args = [*captures, *TRUST, "--format", "jsonl", "--json"]
    assert main(["analyze", *args, "--workers", "1", "-o", str(single)]) == 0
    assert main(["analyze", *args, "--cluster", "local:2", "-o", str(clustered)]) == 0
    capsys.readouterr()
    expected = single.read_bytes()
    assert clustered.read_bytes() == expected
    assert expected.count(b"\n") == 13
    assert sum(small_chunks) == 13 - 3  # every call after the inline ones went to Dask
    # frame_sources (per frame, its input) is written only when an input other than 0 is used
    sources = [set(json.loads(line).get("frame_sources", [0])) for line in expected.splitlines()]
    assert ({0, 1} in sources) == spans_files
    assert multiprocessing.active_children() == []  # the local cluster is shut down


def test_in_process_cluster_through_the_job_api(small_chunks: list[int]) -> None:
    options = AnalyzeOptions(config=CONFIG, workers=1)
    single = [r.to_json() for r in AnalyzeJob([str(DEMO)], options).records()]
    factory = DaskPoolFactory(ClusterSpec(local_workers=2), processes=False)
    clustered = [r.to_json() for r in AnalyzeJob([str(DEMO)], options, pool=factory).records()]
    assert clustered == single
    assert factory.last is not None
    assert factory.last.slots == 2
    assert factory.last.chunk_calls == 2
    assert len(small_chunks) == 5  # ceil(10 / 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("local:1", ClusterSpec(local_workers=1), id="local-1"),
        pytest.param("local:16", ClusterSpec(local_workers=16), id="local-16"),
        pytest.param("tcp://sched:8786", ClusterSpec(scheduler="tcp://sched:8786"), id="tcp"),
        pytest.param(
            "tls://10.0.0.5:8786/", ClusterSpec(scheduler="tls://10.0.0.5:8786"), id="tls"
        ),
        pytest.param("tcp://[::1]:8786", ClusterSpec(scheduler="tcp://[::1]:8786"), id="ipv6"),
    ],
)
def test_parse_cluster(text: str, expected: ClusterSpec) -> None:
    assert parse_cluster(text) == expected


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--cluster", "local:0"], id="local-zero"),
        pytest.param(["--cluster", "local:x"], id="local-not-a-number"),
        pytest.param(["--cluster", "local:-1"], id="local-negative"),
        pytest.param(["--cluster", "local:100000"], id="local-too-many"),
        pytest.param(["--cluster", "sched:8786"], id="no-scheme"),
        pytest.param(["--cluster", "http://sched:8786"], id="http-scheme"),
        pytest.param(["--cluster", "tcp://sched"], id="no-port"),
        pytest.param(["--cluster", "tcp://:8786"], id="no-host"),
        pytest.param(["--cluster", "tcp://sched:99999"], id="port-out-of-range"),
        pytest.param(["--cluster", "tcp://sched:8786/x?y"], id="path-and-query"),
        pytest.param(["--cluster", "tcp://u@sched:8786"], id="userinfo"),
        pytest.param(["--cluster", "local:2", "--workers", "2"], id="with-workers"),
    ],
)
def test_bad_cluster_values_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(["analyze", str(DEMO), *TRUST, "--format", "jsonl", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--cluster" in err


def test_unreachable_scheduler_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, small_chunks: list[int]
) -> None:
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT_S", 0.3)
    code = main(
        ["analyze", str(DEMO), *TRUST, "--format", "jsonl", "--cluster", "tcp://127.0.0.1:1"]
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert "tcp://127.0.0.1:1" in err
    assert small_chunks == []


def test_small_capture_never_starts_the_cluster(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: DaskPoolFactory, config: VerifierConfig) -> DaskChunkPool:
        raise AssertionError("cluster started for 13 calls")

    monkeypatch.setattr(DaskPoolFactory, "__call__", refuse)
    assert main(["analyze", str(DEMO), *TRUST, "--format", "jsonl", "--cluster", "local:2"]) == 0
    assert capsys.readouterr().out.count("\n") == 13


class _Infos:
    """A client stand-in: only ``nthreads`` (worker addresses, unsorted)."""

    def nthreads(self) -> dict[str, int]:
        return {"tcp://127.0.0.1:9002": 1, "tcp://127.0.0.1:9001": 1}


def test_local_scans_go_round_robin_in_order() -> None:
    job = cluster_module.PartitionedJob.__new__(cluster_module.PartitionedJob)
    job.factory = DaskPoolFactory(parse_cluster("local:2"), processes=False)
    placements = job._placements(_Infos(), 5)
    assert [p["workers"] for p in placements] == [
        ["tcp://127.0.0.1:9001"],
        ["tcp://127.0.0.1:9002"],
        ["tcp://127.0.0.1:9001"],
        ["tcp://127.0.0.1:9002"],
        ["tcp://127.0.0.1:9001"],
    ]
    assert all(p["allow_other_workers"] for p in placements)  # a worker that leaves: others
    assert [p["priority"] for p in placements] == [10, 8, 6, 4, 2]  # each worker in order


def test_remote_scans_are_placed_by_dask() -> None:
    job = cluster_module.PartitionedJob.__new__(cluster_module.PartitionedJob)
    job.factory = DaskPoolFactory(parse_cluster("tcp://127.0.0.1:8786"))
    assert job._placements(_Infos(), 3) == [{}, {}, {}]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling")
def test_input_hash_runs_at_idle_priority() -> None:
    policies: list[int] = []

    class Recording(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            policies.append(os.sched_getscheduler(0))
            return super().read(size)

    reader = run_module.HashingReader(Recording(b"x" * 10), "x", owned=True)
    hasher = cluster_module._InputHasher([reader])
    hasher.start()
    hasher.finish(True)
    assert reader.bytes_read == 10
    assert policies
    assert set(policies) == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller's own priority untouched


def test_partitioned_local_run_copies_the_workers_lines_from_spill_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bench_capture: Path
) -> None:
    """``-o`` with workers on this machine: the workers' lines come through spill files
    beside the output (analyzer.spill), the bytes are the single run's (a capture in two
    files, a partition each), and nothing of the spill directory is left."""
    first, second = tmp_path / "part1.pcap", tmp_path / "part2.pcap"
    _split_pcap(bench_capture.read_bytes(), first, second)
    captures = [str(first), str(second)]
    single, clustered = tmp_path / "single.jsonl", tmp_path / "out" / "cluster.jsonl"
    clustered.parent.mkdir()
    args = [*captures, *TRUST, "--format", "jsonl"]
    assert main(["analyze", *args, "--workers", "1", "-o", str(single)]) == 0
    argv = [*args, "--cluster", "local:2", "--cluster-mode", "partition", "-o", str(clustered)]
    written: list[int] = []
    copy = SpillOutput.write

    def counting(self: Any, rank: int, texts: Any) -> Any:
        written.append(len(texts))
        return copy(self, rank, texts)

    # In-process workers (the spill directory is the same for any worker on this machine).
    factory = cluster_module.DaskPoolFactory
    in_process = lambda spec, **kw: factory(spec, processes=False, **kw)  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SpillOutput, "write", counting)
        patch.setattr(cluster_module, "DaskPoolFactory", in_process)
        assert main(["analyze", *argv]) == 0
    capsys.readouterr()
    assert clustered.read_bytes() == single.read_bytes()
    assert sum(written) > CALLS // 2  # the workers spilled most lines
    assert sorted(os.listdir(clustered.parent)) == ["cluster.jsonl", "cluster.jsonl.manifest.json"]


def test_local_cluster_runs_without_dask_diagnostics() -> None:
    """A local cluster's worker processes and scheduler start with ``LOCAL_CLUSTER_CONFIG``:
    no statistical profiler in the workers, the ticks and monitors made rare; the process's
    own Dask configuration is left as it was."""
    import dask
    import distributed  # noqa: F401  # its configuration defaults

    profiling = dask.config.get("distributed.worker.profile.enabled")
    factory = DaskPoolFactory(parse_cluster("local:1"))
    try:
        client = factory.client()

        def probe(dask_worker: Any) -> tuple[list[str], object, float]:
            import dask as worker_dask

            return (
                sorted(dask_worker.periodic_callbacks),
                worker_dask.config.get("distributed.worker.profile.enabled"),
                dask_worker.periodic_callbacks["tick"].callback_time,
            )

        ((callbacks, enabled, tick_ms),) = client.run(probe).values()
        assert "profile" not in callbacks
        assert "profile-cycle" not in callbacks
        assert enabled is False
        assert tick_ms == 1000
        scheduler = factory._cluster.scheduler
        assert scheduler.periodic_callbacks["monitor"].callback_time == 2000
    finally:
        factory.close()
    assert dask.config.get("distributed.worker.profile.enabled") == profiling


def test_on_connect_runs_once_the_client_is_up() -> None:
    """``on_connect`` (the command line's ``gc.freeze``) runs once, when the client connects."""
    calls: list[object] = []
    factory = DaskPoolFactory(
        parse_cluster("local:1"), processes=False, on_connect=lambda: calls.append(factory._client)
    )
    try:
        assert calls == []
        client = factory.client()
        assert factory.client() is client
        assert len(calls) == 1
    finally:
        factory.close()
