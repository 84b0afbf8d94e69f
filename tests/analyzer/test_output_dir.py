"""`analyze --output-dir`: the records as part files. JSONL parts concatenate to the ``-o``
bytes, Parquet parts hold every record and the CSV columns typed; in partitioned cluster mode
the workers write their partitions' calls and this process the calls it tracked, the union
being the single run's records; bad uses are usage errors."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import struct
import sys
from pathlib import Path

import pytest

from analyzer import outputdir
from analyzer.cluster import ClusterSpec, DaskPoolFactory, PartitionedJob
from analyzer.outputdir import WRITTEN, PartOutput
from analyzer.records import CSV_FIELDS, jsonl_line
from analyzer.run import AnalyzeJob
from service.cli import main
from tests.analyzer.test_partition import (  # the same captures and settings
    DEMO,
    OPTIONS,
    PCAP_HEADER,
    TRACEBACK,
    TRUST,
)
from tests.conftest import FIXTURES


def _single_jsonl(paths: list[Path]) -> bytes:
    job = AnalyzeJob([str(p) for p in paths], OPTIONS)
    return "".join(str(text) for _digest, text in job.results(jsonl_line)).encode()


def _manifest_parts(manifest: Path, folder: Path) -> list[str]:
    """The parts the manifest lists (checked against the files), by file name."""
    listed = json.loads(manifest.read_text())["outputs"]
    for part in listed:
        data = Path(part["name"]).read_bytes()
        assert Path(part["name"]).parent == folder
        assert part["size"] == len(data)
        assert part["sha256"] == hashlib.sha256(data).hexdigest()
    return [Path(part["name"]).name for part in listed]


# -- one process --------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_jsonl_parts_concatenate_to_the_jsonl_output(
    bench_capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    monkeypatch.setattr(outputdir, "ROWS_PER_PART", 64)
    single = tmp_path / "single.jsonl"
    args = ["analyze", str(bench_capture), *TRUST, "--workers", workers]
    assert main([*args, "--format", "jsonl", "-o", str(single)]) == 0
    folder, manifest = tmp_path / "parts", tmp_path / "manifest.json"
    assert main([*args, "--output-dir", str(folder), "--manifest", str(manifest)]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"part-{n:05d}.jsonl" for n in range(4)]  # 200 calls, 64 per part
    assert b"".join((folder / n).read_bytes() for n in names) == single.read_bytes()
    assert _manifest_parts(manifest, folder) == names
    document = json.loads(manifest.read_text())
    assert document["output_format"] == "jsonl"
    assert [p["records"] for p in document["outputs"]] == [64, 64, 64, 8]


def test_parquet_parts_hold_the_records_and_the_csv_columns(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    jsonl, table = tmp_path / "calls.jsonl", tmp_path / "calls.csv"
    args = ["analyze", str(TRACEBACK), *TRUST]
    assert main([*args, "--format", "jsonl", "-o", str(jsonl)]) == 0
    assert main([*args, "--format", "csv", "-o", str(table)]) == 0
    folder = tmp_path / "parts"
    assert main([*args, "--output-dir", str(folder), "--format", "parquet"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet"]
    data = pq.read_table(folder / "part-00000.parquet")
    assert data.column_names == [*CSV_FIELDS, "record"]
    assert str(data.schema.field("start_ns").type) == "int64"
    assert str(data.schema.field("status_code").type) == "int64"
    assert str(data.schema.field("call_id").type) == "string"
    rows = data.to_pylist()
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    assert [row["record"] for row in rows] == lines
    with table.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == list(CSV_FIELDS)
        expected = list(reader)
    got = [["" if row[f] is None else str(row[f]) for f in CSV_FIELDS] for row in rows]
    assert got == expected
    assert any(row["status_code"] is None for row in rows)  # null stays null, not ""


def test_a_run_without_calls_leaves_an_empty_part(tmp_path: Path) -> None:
    empty = FIXTURES / "captures" / "tls.pcap"  # SIP over TLS only: no call read
    folder = tmp_path / "parts"
    assert main(["analyze", str(empty), *TRUST, "--output-dir", str(folder)]) == 0
    assert [(p.name, p.read_bytes()) for p in folder.iterdir()] == [("part-00000.jsonl", b"")]


# -- partitioned cluster mode ----------------------------------------------------------------------


def _partitioned(path: Path, output: PartOutput, **kwargs: object) -> tuple[PartitionedJob, bytes]:
    """An in-process cluster run writing to ``output``: the job and the records it returned
    (those of the calls this process tracked; the others are ``WRITTEN``)."""
    factory = DaskPoolFactory(ClusterSpec(local_workers=2), processes=False)
    job = PartitionedJob([str(path)], OPTIONS, factory, output=output, **kwargs)  # type: ignore[arg-type]
    mine = [text for _digest, text in job.results(jsonl_line) if text != WRITTEN]
    return job, "".join(map(str, mine)).encode()


def test_workers_write_their_partitions_calls(tmp_path: Path) -> None:
    expected = _single_jsonl([TRACEBACK]).splitlines(keepends=True)
    folder = tmp_path / "parts"
    folder.mkdir()
    size = TRACEBACK.stat().st_size
    job, mine = _partitioned(TRACEBACK, PartOutput(str(folder), "jsonl"), partition_bytes=size // 4)
    assert job.partitions == 4
    assert job.fallback is None
    assert job.merge_fallback is None
    assert job.worker_parts is not None
    written = {p.name: (folder / p.name).read_bytes() for p in job.worker_parts}
    assert written
    assert set(written) <= {f"part-{rank:05d}.jsonl" for rank in range(4)}
    assert sorted(p.name for p in folder.iterdir()) == sorted(written)
    # This process kept the calls it tracked (replays, calls across cuts); the rest is on disk.
    assert mine.count(b"\n") == job.edge_calls >= 2
    parts = [*written.values(), mine]
    lines = [line for part in parts for line in part.splitlines(keepends=True)]
    assert sorted(lines) == sorted(expected)
    for part in parts:  # each part in emission order
        places = [expected.index(line) for line in part.splitlines(keepends=True)]
        assert places == sorted(places)
    for info in job.worker_parts:
        assert info.sha256 == hashlib.sha256(written[info.name]).hexdigest()


def test_fallback_leaves_the_writing_to_this_process(tmp_path: Path) -> None:
    """SIP over TCP: the workers do not read, so they write nothing."""
    folder = tmp_path / "parts"
    folder.mkdir()
    job, mine = _partitioned(DEMO, PartOutput(str(folder), "jsonl"))
    assert job.fallback is not None
    assert job.worker_parts is None
    assert mine == _single_jsonl([DEMO])
    assert list(folder.iterdir()) == []


def test_a_worker_that_cannot_write_makes_this_process_write(tmp_path: Path) -> None:
    """The workers' part directory does not exist: phase two fails, this process tracks every
    call (merge fallback) and no worker part is left."""
    size = TRACEBACK.stat().st_size
    output = PartOutput(str(tmp_path / "missing"), "jsonl")
    job, mine = _partitioned(TRACEBACK, output, partition_bytes=size // 2)
    assert job.partitions == 2
    assert job.merge_fallback is not None
    assert job.merge_fallback.startswith("a worker could not track its partition")
    assert job.worker_parts is None
    assert mine == _single_jsonl([TRACEBACK])


def _split(capture: Path, folder: Path, pieces: int) -> list[str]:
    """The records of a little-endian classic pcap in ``pieces`` consecutive files (one
    partition each: calls go across the files)."""
    data = capture.read_bytes()
    header, offset, records = data[:PCAP_HEADER], PCAP_HEADER, []
    while offset < len(data):
        (incl,) = struct.unpack_from("<I", data, offset + 8)
        records.append(data[offset : offset + 16 + incl])
        offset += 16 + incl
    step = -(-len(records) // pieces)
    paths = []
    for index in range(pieces):
        path = folder / f"piece{index}.pcap"
        path.write_bytes(header + b"".join(records[index * step : (index + 1) * step]))
        paths.append(str(path))
    return paths


def test_cli_partition_mode_workers_write_parts(
    bench_capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    single = tmp_path / "single.jsonl"
    args = ["analyze", *_split(bench_capture, tmp_path, 3), *TRUST, "--json"]
    assert main([*args, "--workers", "1", "--format", "jsonl", "-o", str(single)]) == 0
    alone = json.loads(capsys.readouterr().out)
    folder, manifest = tmp_path / "parts", tmp_path / "manifest.json"
    argv = [*args, "--cluster", "local:2", "--cluster-mode", "partition"]
    assert main([*argv, "--output-dir", str(folder), "--manifest", str(manifest)]) == 0
    document = json.loads(capsys.readouterr().out)
    cluster = document["cluster"]
    assert cluster["partitions"] == 3
    assert cluster["merge_fallback"] is None
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(_manifest_parts(manifest, folder))
    worker_parts = [n for n in names if not n.startswith("part-main-")]
    assert len(worker_parts) >= 2  # the workers wrote
    main_parts = [n for n in names if n.startswith("part-main-")]
    edge_lines = sum((folder / n).read_bytes().count(b"\n") for n in main_parts)
    assert edge_lines == cluster["edge_calls"] > 0  # the calls across cuts, written here
    lines = [line for n in names for line in (folder / n).read_bytes().splitlines()]
    assert sorted(lines) == sorted(single.read_bytes().splitlines())
    assert document["summary"] == alone["summary"]
    assert document["anomalies"] == alone["anomalies"]
    assert multiprocessing.active_children() == []


# -- usage errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "parquet"], "--format parquet needs --output-dir"),
        (["--output-dir", "{dir}", "--format", "csv"], "--output-dir writes jsonl or parquet"),
        (["--output-dir", "{dir}", "-o", "{dir}/x.jsonl"], "-o and --output-dir exclude"),
        (["--output-dir", "{file}"], "not a directory"),
        (["--output-dir", "{full}"], "not empty"),
    ],
)
def test_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "part-00000.jsonl").write_text("")
    where = {"dir": str(tmp_path / "new"), "file": str(tmp_path / "file")}
    where["full"] = str(tmp_path / "full")
    argv = ["analyze", str(TRACEBACK), *TRUST, *(a.format(**where) for a in extra)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "full" / "part-00000.jsonl").read_text() == ""


def test_parquet_without_pyarrow_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    folder = tmp_path / "parts"
    argv = ["analyze", str(TRACEBACK), *TRUST, "--output-dir", str(folder), "--format", "parquet"]
    assert main(argv) == 2
    assert "needs pyarrow" in capsys.readouterr().err
    assert not folder.exists()


def test_summary_goes_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(TRACEBACK), *TRUST, "--output-dir", str(tmp_path / "p")]) == 0
    captured = io.StringIO(capsys.readouterr().out).read()
    assert captured.startswith("23 calls in 1 capture(s)")
