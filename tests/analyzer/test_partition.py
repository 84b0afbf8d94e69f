"""Partitioned `analyze --cluster`: workers read the captures, the records are the single-process
records byte for byte (calls and INVITE retransmissions across cuts, calls across files, replay
flags), the runs that cannot be partitioned fall back and still give the same bytes, and the
boundary finder and the partition streams' record counter are exact."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import multiprocessing
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analyzer import partition
from analyzer.capture import anomaly_to_json
from analyzer.cluster import ClusterSpec, DaskPoolFactory, PartitionedJob
from analyzer.partition import (
    CHAIN_RECORDS,
    PartitionSpec,
    PartitionStream,
    RecordCounter,
    find_boundary,
    plan_partitions,
    read_layout,
)
from analyzer.pcapfile import read_records
from analyzer.records import jsonl_line
from analyzer.run import AnalyzeJob, AnalyzeOptions
from analyzer.spill import spillable, write_rendered
from analyzer.verifying import VerifierConfig
from service.cli import main
from tests.analyzer.conftest import CALLS
from tests.conftest import FIXTURES, load_script

CAPTURES = FIXTURES / "captures"
DEMO = FIXTURES / "demo" / "demo.pcap"
TRACEBACK = FIXTURES / "traceback" / "traceback.pcap"
CONFIG = VerifierConfig(trust=(FIXTURES / "pki" / "trust",), certs_dirs=(FIXTURES / "certs",))
OPTIONS = AnalyzeOptions(config=CONFIG, workers=1)
TRUST = ["--trust", str(FIXTURES / "pki" / "trust"), "--certs", str(FIXTURES / "certs")]
PCAP_HEADER = 24
NS = 1_000_000_000
CAP = load_script(FIXTURES / "gen_captures.py")


def _records(path: Path) -> tuple[bytes, list[bytes]]:
    """The header and the records of a little-endian classic pcap."""
    data = path.read_bytes()
    header, offset, records = data[:PCAP_HEADER], PCAP_HEADER, []
    while offset < len(data):
        (incl,) = struct.unpack_from("<I", data, offset + 8)
        records.append(data[offset : offset + 16 + incl])
        offset += 16 + incl
    return header, records


def _offsets(records: list[bytes]) -> list[int]:
    """Byte offset of each record in its file."""
    out, at = [], PCAP_HEADER
    for record in records:
        out.append(at)
        at += len(record)
    return out


def _facts(job: AnalyzeJob) -> dict[str, object]:
    return {
        "stats": job.stats.to_json(),
        "summary": job.summary.to_json(),
        "anomalies": [anomaly_to_json(a) for a in job.anomalies],
        "inputs": [i.to_json() for i in job.inputs()],
    }


def _single(paths: list[Path]) -> tuple[bytes, dict[str, object]]:
    job = AnalyzeJob([str(p) for p in paths], OPTIONS)
    text = "".join(str(text) for _digest, text in job.results(jsonl_line))
    return text.encode(), _facts(job)


def _partitioned(
    paths: list[Path], spill: bool, **kwargs: object
) -> tuple[bytes, dict[str, object], PartitionedJob]:
    """The partitioned run's output; with ``spill``, written as ``analyze`` writes ``-o``
    (the workers' lines copied from their spill files, ``analyzer.spill``)."""
    factory = DaskPoolFactory(ClusterSpec(local_workers=2), processes=False)
    job = PartitionedJob([str(p) for p in paths], OPTIONS, factory, **kwargs)  # type: ignore[arg-type]
    if not spill:
        text = "".join(str(text) for _digest, text in job.results(jsonl_line))
        return text.encode(), _facts(job), job
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.jsonl"
        with open(path, "w", encoding="utf-8", newline="") as out:
            job.spill_errors = spillable(out)
            job.spill_parent = tmp
            write_rendered(job.results(jsonl_line), out, lambda: job.spill)
        if job.spill is not None and job.partitions and job.merge_fallback is None:
            assert not os.path.exists(job.spill.directory)  # removed with the run
        return path.read_bytes(), _facts(job), job


def _same_as_single(paths: list[Path], spill: bool = True, **kwargs: object) -> PartitionedJob:
    """A partitioned run of ``paths`` gives the single run's bytes, counts and anomalies
    (by default with the workers' lines spilled, as ``analyze -o`` on a local cluster)."""
    expected, facts = _single(paths)
    got, got_facts, job = _partitioned(paths, spill, **kwargs)
    assert got == expected
    assert got_facts == facts
    if spill and job.partitions and job.merge_fallback is None and expected:
        assert job.spill is not None
    return job


def _spans(records: bytes, cut_frame: int) -> list[dict[str, object]]:
    """The records of calls with frames on both sides of ``cut_frame`` (one input)."""
    out = []
    for line in records.splitlines():
        record = json.loads(line)
        frames = record["frames"]
        if min(frames) < cut_frame <= max(frames):
            out.append(record)
    return out


# -- one file, several partitions -------------------------------------------------------------


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_split_file_gives_the_single_process_bytes(bench_capture: Path, parts: int) -> None:
    size = bench_capture.stat().st_size
    specs = plan_partitions([str(bench_capture)], size // parts)
    assert len(specs) == parts
    job = _same_as_single([bench_capture], spill=parts != 3, partition_bytes=size // parts)
    assert job.partitions == parts
    assert job.fallback is None
    assert job.merge_fallback is None  # the workers tracked their partitions' own calls
    expected, _ = _single([bench_capture])
    assert expected.count(b"\n") == CALLS
    _header, records = _records(bench_capture)
    starts = _offsets(records)
    for spec in specs[1:]:
        cut_frame = starts.index(spec.start) + 1  # the first frame of the partition
        assert _spans(expected, cut_frame), "no call open across the cut"


def _dialog_capture(path: Path, retransmit_gap_ns: int) -> int:
    """Ten unsigned calls; call 5's INVITE is retransmitted ``retransmit_gap_ns`` later. Returns
    the offset of the retransmission (where the test cuts)."""
    out = io.BytesIO()
    writer = CAP.PcapWriter(out, CAP.LINKTYPE_ETHERNET)
    t = 1_768_478_400 * NS
    cut = 0
    for call in range(10):
        invite = CAP.sip_message("INVITE", call)
        frames = [("A", invite)]
        if call == 5:
            frames.append(("retransmit", invite))
        frames += [("B", CAP.sip_message("200", call)), ("A", CAP.sip_message("ACK", call))]
        frames += [("A", CAP.sip_message("BYE", call))]
        for kind, payload in frames:
            if kind == "retransmit":
                t += retransmit_gap_ns
                cut = out.tell()
            src, dst = (CAP.A4, CAP.B4) if kind != "B" else (CAP.B4, CAP.A4)
            writer.write(t, CAP.build_udp_ipv4_ethernet(src, 5060, dst, 5060, payload))
            t += 10_000_000
    path.write_bytes(out.getvalue())
    return cut


def test_invite_retransmission_across_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "retransmit.pcap"
    cut = _dialog_capture(path, NS // 2)
    job = _same_as_single([path], cuts={0: [cut]})
    assert job.partitions == 2
    assert job.merge_fallback is None
    assert job.edge_calls == 1  # call 5, across the cut
    expected, _ = _single([path])
    _header, records = _records(path)
    spanning = _spans(expected, _offsets(records).index(cut) + 1)
    assert [r["call_id"] for r in spanning] == ["call-5@test.invalid"]
    assert spanning[0]["retransmissions"] == 1


def test_replay_flags_across_partitions() -> None:
    """The replayed PASSporT of the traceback fixture is flagged as in one process, with the
    first and later sightings in different partitions (flags follow the global order)."""
    size = TRACEBACK.stat().st_size
    job = _same_as_single([TRACEBACK], partition_bytes=size // 4)
    assert job.partitions == 4
    assert job.merge_fallback is None
    assert job.edge_calls >= 2  # the replayed PASSporT's calls are flagged in the main process
    expected, _ = _single([TRACEBACK])
    flagged = [json.loads(line) for line in expected.splitlines()]
    assert sum(1 for r in flagged if r["replay"]) >= 2


@pytest.mark.parametrize(
    ("name", "parts"),
    [("hep.pcap", 2), ("vlan_qinq.pcap", 2), ("sll.pcap", 2), ("tunnels.pcap", 2),
     ("tls.pcap", 2), ("rtp_flood.pcap", 2), ("two_ifaces_le.pcapng", 2),
     ("two_ifaces_be.pcapng", 2), ("udp_be_ns.pcap", 2),
     ("ipv6_ext.pcap", 1),  # one record: nothing to cut
     ("truncated.pcap", 1),  # no chain of records reaches the damaged end
     ("frag_udp.pcap", 0)],  # a fragment train across the cut: the run falls back
)  # fmt: skip
def test_capture_fixtures_cut_in_the_middle(name: str, parts: int) -> None:
    """Every capture layer (HEP, fragments, VLAN, cooked, tunnels, TLS, damage, pcapng in both
    byte orders) cut in two: the same bytes and counts, partitioned or not."""
    path = CAPTURES / name
    job = _same_as_single([path], cuts={0: [path.stat().st_size // 2]})
    assert job.partitions == parts
    assert (parts == 0) == (job.fallback is not None)


# -- several files ----------------------------------------------------------------------------


def _split_files(capture: Path, folder: Path, cuts: list[int]) -> list[Path]:
    """The records of ``capture`` written to consecutive files, cut before record indexes."""
    header, records = _records(capture)
    bounds = [0, *cuts, len(records)]
    paths = []
    for index, (start, end) in enumerate(itertools.pairwise(bounds)):
        path = folder / f"part{index}.pcap"
        path.write_bytes(header + b"".join(records[start:end]))
        paths.append(path)
    return paths


def test_time_disjoint_files_in_any_order(bench_capture: Path, tmp_path: Path) -> None:
    """Four rotated files given out of order, calls cut across each pair; one of them gzip, the
    others split in two partitions as well: the records are those of one process on the same
    list."""
    _header, records = _records(bench_capture)
    quarter = len(records) // 4
    files = _split_files(bench_capture, tmp_path, [quarter + 3, 2 * quarter + 5, 3 * quarter])
    packed = tmp_path / "part3.pcap.gz"
    packed.write_bytes(gzip.compress(files[3].read_bytes(), mtime=0))
    inputs = [files[2], files[0], packed, files[1]]
    small = min(f.stat().st_size for f in files[:3]) // 2
    job = _same_as_single(inputs, partition_bytes=small)
    assert job.partitions == 7  # two per plain file; the gzip file is read whole
    assert job.merge_fallback is None
    expected, _ = _single(inputs)
    sources = [set(json.loads(line).get("frame_sources", [0])) for line in expected.splitlines()]
    assert any(len(s) == 2 for s in sources), "no call across two files"


def test_overlapping_files_fall_back(
    bench_capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two interfaces of the same period: the workers' scans cannot be concatenated."""
    header, records = _records(bench_capture)
    even, odd = tmp_path / "even.pcap", tmp_path / "odd.pcap"
    even.write_bytes(header + b"".join(records[0::2]))
    odd.write_bytes(header + b"".join(records[1::2]))
    job = _same_as_single([even, odd])
    assert job.partitions == 0
    assert job.fallback is not None
    assert "overlap in time" in job.fallback


# -- fallbacks --------------------------------------------------------------------------------


def test_sip_over_tcp_falls_back() -> None:
    """The demo has SIP over TCP (a message in out-of-order segments across a cut too)."""
    size = DEMO.stat().st_size
    job = _same_as_single([DEMO], partition_bytes=size // 3)
    assert job.partitions == 0
    assert job.fallback is not None
    assert job.fallback.startswith("SIP over TCP")


def test_tcp_message_straddling_a_cut_falls_back(tmp_path: Path) -> None:
    data = (CAPTURES / "tcp_split.pcap").read_bytes()
    path = tmp_path / "tcp.pcap"
    path.write_bytes(data)
    _header, records = _records(path)
    cut = _offsets(records)[3]  # between the INVITE's first and last segments
    job = _same_as_single([path], cuts={0: [cut]})
    assert job.fallback is not None
    assert job.fallback.startswith("SIP over TCP")


def _fake_chain(ts_s: int) -> bytes:
    """Bytes that look like ``CHAIN_RECORDS`` pcap records (what a boundary finder could take
    for a boundary inside a packet)."""
    return b"".join(struct.pack("<IIII", ts_s, 0, 10, 10) + b"x" * 10 for _ in range(CHAIN_RECORDS))


def test_false_boundary_is_caught_by_the_partition_check(tmp_path: Path) -> None:
    """A payload imitating a chain of records fools the finder: partition 0 then does not end
    on a record boundary, and the run falls back with the same bytes."""
    path = tmp_path / "fake.pcap"
    cut = _dialog_capture(path, NS // 2)
    header, records = _records(path)
    index = _offsets(records).index(cut)
    bait = CAP.build_udp_ipv4_ethernet(
        CAP.A4, 9, CAP.B4, 9, b"\x00" * 3 + _fake_chain(1_768_478_400)
    )
    ts_s, ts_us = struct.unpack_from("<II", records[index - 1])
    records.insert(index, struct.pack("<IIII", ts_s, ts_us, len(bait), len(bait)) + bait)
    path.write_bytes(header + b"".join(records))
    with path.open("rb") as f:
        found = find_boundary(f, read_layout(str(path)), cut + 1)
    assert found is not None
    assert cut < found < cut + len(records[index])  # inside the bait packet
    job = _same_as_single([path], cuts={0: [cut + 1]})
    assert job.fallback is not None
    assert "not on a record boundary" in job.fallback


def test_fragment_train_across_a_cut_falls_back(tmp_path: Path) -> None:
    out = io.BytesIO()
    writer = CAP.PcapWriter(out, CAP.LINKTYPE_ETHERNET)
    invite = CAP.sip_message("INVITE", 1, body_len=2000)
    l4 = CAP.udp(CAP.A4, 5060, CAP.B4, 5060, invite)
    t, cut = 1_768_478_400 * NS, 0
    for index, fragment in enumerate(CAP.fragment_ipv4(CAP.A4, CAP.B4, 17, l4, 77, 1024)):
        if index == 1:
            cut = out.tell()
        writer.write(t, CAP.ethernet(0x0800, fragment))
        t += 1_000_000
    path = tmp_path / "frag.pcap"
    path.write_bytes(out.getvalue())
    job = _same_as_single([path], cuts={0: [cut]})
    assert job.fallback is not None
    assert "fragment train" in job.fallback


# -- boundaries and counting ------------------------------------------------------------------


def _noisy_pcap(path: Path, *, big_endian: bool = False, nanosecond: bool = False) -> None:
    """Records of varied sizes, some payloads holding one plausible record header (with the
    right time) or a run of zeros: bytes a boundary finder must not take for boundaries."""
    out = io.BytesIO()
    writer = CAP.PcapWriter(out, CAP.LINKTYPE_ETHERNET, big_endian=big_endian,
                            nanosecond=nanosecond)  # fmt: skip
    e = ">" if big_endian else "<"
    t = 1_768_478_400 * NS
    for i in range(60):
        lie = struct.pack(e + "IIII", t // NS, 5, 40 + i, 40 + i)
        payload = [b"\x00" * 200, lie * 3, CAP.rtp(i, i * 160), lie + b"\x00" * i][i % 4]
        writer.write(t, CAP.build_udp_ipv4_ethernet(CAP.A4, 4000, CAP.B4, 4002, payload))
        t += 7_000_000
    path.write_bytes(out.getvalue())


@pytest.mark.parametrize(
    ("big_endian", "nanosecond"),
    [pytest.param(False, False, id="le-us"), pytest.param(True, True, id="be-ns")],
)
def test_pcap_boundary_from_every_offset(
    tmp_path: Path, big_endian: bool, nanosecond: bool
) -> None:
    path = tmp_path / "noisy.pcap"
    _noisy_pcap(path, big_endian=big_endian, nanosecond=nanosecond)
    data = path.read_bytes()
    e = ">" if big_endian else "<"
    starts, at = [], PCAP_HEADER
    while at < len(data):
        starts.append(at)
        at += 16 + struct.unpack_from(e + "I", data, at + 8)[0]
    layout = read_layout(str(path))
    with path.open("rb") as f:
        for offset in range(PCAP_HEADER, len(data)):
            expected = next((s for s in starts if s >= offset), None)
            assert find_boundary(f, layout, offset) == expected, offset


def test_pcapng_boundary_from_every_offset(tmp_path: Path) -> None:
    out = io.BytesIO()
    writer = CAP.PcapngWriter(out)
    writer.add_interface(CAP.LINKTYPE_ETHERNET, tsresol=9)
    t = 1_768_478_400 * NS
    for i in range(40):
        fake = struct.pack("<II", 6, 32) + b"\x00" * 20 + struct.pack("<I", 32)  # a block shape
        writer.write(0, t, CAP.build_udp_ipv4_ethernet(CAP.A4, 4000, CAP.B4, 4002, fake * (i % 3)))
        t += 1_000_000
    data = out.getvalue()
    path = tmp_path / "noisy.pcapng"
    path.write_bytes(data)
    layout = read_layout(str(path))
    starts, at = [], 0
    while at < len(data):
        btype, blen = struct.unpack_from("<II", data, at)
        if btype == 6:
            starts.append(at)
        at += blen
    assert layout.data_start == starts[0]
    with path.open("rb") as f:
        for offset in range(starts[0], len(data)):
            expected = next((s for s in starts if s >= offset), None)
            assert find_boundary(f, layout, offset) == expected, offset


@pytest.mark.parametrize(
    "name",
    ["udp_le_us.pcap", "udp_be_ns.pcap", "two_ifaces_le.pcapng", "two_ifaces_be.pcapng",
     "truncated.pcap", "frag_udp.pcap"],
)  # fmt: skip
@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_record_counter_matches_the_reader(name: str, piece: int) -> None:
    data = (CAPTURES / name).read_bytes()
    counter = RecordCounter()
    for at in range(0, len(data), piece):
        counter.feed(data[at : at + piece])
    counter.finish()
    items = list(read_records(io.BytesIO(data)))
    records = [r for r in items if isinstance(r, tuple)]
    assert counter.records == records[-1][0]
    keys = [r[1] for r in records]
    assert (counter.min_key, counter.max_key) == (min(keys), max(keys))
    assert counter.clean == (name != "truncated.pcap")


def test_partition_stream_checks_its_end(bench_capture: Path) -> None:
    """A range that ends inside a record is reported unclean; counts add up to the file's."""
    size = bench_capture.stat().st_size
    specs = plan_partitions([str(bench_capture)], size // 3)
    counts = []
    for spec in specs:
        stream = PartitionStream(spec)
        while stream.read(1 << 16):
            pass
        stream.close()
        assert stream.counter.clean
        counts.append(stream.counter.records)
    _header, records = _records(bench_capture)
    assert sum(counts) == len(records)
    spec = specs[0]
    bad = PartitionSpec(spec.path, 0, 0, 2, spec.start, (spec.end or 0) - 1, spec.header)
    stream = PartitionStream(bad)
    while stream.read(1 << 16):
        pass
    stream.close()
    assert not stream.counter.clean


# -- command line -----------------------------------------------------------------------------


def test_cli_partition_mode_with_worker_processes(
    bench_capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _header, records = _records(bench_capture)
    files = _split_files(bench_capture, tmp_path, [len(records) // 2 + 1])
    single, clustered = tmp_path / "single.jsonl", tmp_path / "cluster.jsonl"
    args = ["analyze", *map(str, files), *TRUST, "--format", "jsonl", "--json"]
    assert main([*args, "--workers", "1", "-o", str(single)]) == 0
    alone = json.loads(capsys.readouterr().out)
    argv = [*args, "--cluster", "local:2", "--cluster-mode", "partition", "-o", str(clustered)]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert clustered.read_bytes() == single.read_bytes()
    cluster = document.pop("cluster")
    edge_calls = cluster.pop("edge_calls")
    assert cluster == {
        "address": "local:2", "mode": "partition", "partitions": 2, "fallback": None,
        "merge_fallback": None,
    }  # fmt: skip
    # The call split across the two files at least; not every call.
    assert 0 < edge_calls < len(single.read_text().splitlines())
    assert document == alone
    assert multiprocessing.active_children() == []


def test_cli_fallback_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo.jsonl"
    argv = ["analyze", str(DEMO), *TRUST, "--format", "jsonl", "-o", str(out)]
    assert main([*argv, "--cluster", "local:1", "--cluster-mode", "partition"]) == 0
    captured = capsys.readouterr()
    assert "SIP over TCP" in captured.err
    assert "cluster:      local:1: workers verified (fallback: SIP over TCP" in captured.out


def test_cluster_mode_needs_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["analyze", str(DEMO), *TRUST, "--format", "jsonl", "--cluster-mode", "partition"]
    assert main(argv) == 2
    assert "--cluster-mode needs --cluster" in capsys.readouterr().err


def test_cluster_mode_choices(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["analyze", str(DEMO), *TRUST, "--cluster", "local:2", "--cluster-mode", "both"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "--cluster-mode" in capsys.readouterr().err


def test_partition_size_gives_every_worker_slot_several_partitions() -> None:
    mb = 1 << 20
    assert partition.balanced_partition_bytes([147 * mb], 2) == 147 * mb // 8  # 8 partitions
    assert partition.balanced_partition_bytes([10_000 * mb], 2) == partition.PARTITION_BYTES
    assert partition.balanced_partition_bytes([mb], 2) == partition.MIN_PARTITION_BYTES
    assert partition.balanced_partition_bytes([100 * mb], 0) == 25 * mb  # no slot seen: one


def test_partitions_come_in_whole_rounds_of_the_slots() -> None:
    # 589 MB at 32 MiB would be 17 partitions: one worker of two idle for the last round.
    size = partition.balanced_partition_bytes([589_073_374], 2)
    assert partition.partition_count([589_073_374], size) == 18
    assert size > partition.PARTITION_BYTES * 0.9


@given(
    sizes=st.lists(st.integers(1, 4 << 30), min_size=1, max_size=12),
    slots=st.integers(0, 16),
)
def test_partition_size_bounds_and_rounds(sizes: list[int], slots: int) -> None:
    plain = max(
        partition.MIN_PARTITION_BYTES,
        min(
            partition.PARTITION_BYTES, sum(sizes) // (max(1, slots) * partition.PARTITIONS_PER_SLOT)
        ),
    )
    size = partition.balanced_partition_bytes(sizes, slots)
    assert partition.MIN_PARTITION_BYTES <= size <= plain
    rounds = partition.partition_count(sizes, size) % max(1, slots) == 0
    assert rounds or size == plain  # whole rounds, or none found down to the minimum


@pytest.mark.parametrize("part_bytes", [1 << 16, 100_000, 3 << 17])
def test_partition_count_is_what_the_plan_cuts(bench_capture: Path, part_bytes: int) -> None:
    size = bench_capture.stat().st_size
    planned = plan_partitions([str(bench_capture)], part_bytes)
    assert len(planned) == partition.partition_count([size], part_bytes)
