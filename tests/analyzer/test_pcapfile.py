"""Capture readers: classic pcap (both byte orders, us/ns), pcapng, gzip, streams, damage."""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from pathlib import Path

import dpkt
import pytest

from analyzer import pcapfile
from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.pcapfile import NotACaptureError, merge_records, open_capture, read_records
from tests.conftest import FIXTURES, load_script

CAPTURES = FIXTURES / "captures"


gen = load_script(FIXTURES / "gen_captures.py")
BASE = gen.BASE_TS_NS


class _Pipe:
    """A non-seekable byte stream (like stdin) that returns at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int = 5) -> None:
        self._data, self._step = data, step

    def read(self, size: int = -1, /) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        out, self._data = self._data[:n], self._data[n:]
        return out


def _records(items: Sequence[object]) -> list[tuple[int, int, int, bytes, int]]:
    return [r for r in items if isinstance(r, tuple)]


def _anomalies(items: Sequence[object]) -> list[Anomaly]:
    return [a for a in items if isinstance(a, Anomaly)]


@pytest.mark.parametrize(
    ("name", "fmt", "ts_frac"),
    [
        pytest.param("udp_le_us.pcap", "pcap", 123_456_000, id="pcap-le-us"),
        pytest.param("udp_be_us.pcap", "pcap", 123_456_000, id="pcap-be-us"),
        pytest.param("udp_le_ns.pcap", "pcap", 123_456_789, id="pcap-le-ns"),
        pytest.param("udp_be_ns.pcap", "pcap", 123_456_789, id="pcap-be-ns"),
        pytest.param("udp_le_us.pcap.gz", "pcap", 123_456_000, id="pcap-gzip"),
    ],
)
def test_classic_pcap_variants(name: str, fmt: str, ts_frac: int) -> None:
    reader = open_capture(CAPTURES / name)
    assert reader.format == fmt
    assert reader.compressed == name.endswith(".gz")
    items = list(reader)
    records = _records(items)
    assert not _anomalies(items)
    assert [r[0] for r in records] == [1, 2, 3, 4]
    assert [r[1] for r in records] == [BASE + ts_frac + i * 10_000_000 for i in range(4)]
    assert {r[2] for r in records} == {1}
    assert [r[3] for r in records] == gen._dialog_frames()
    assert all(r[4] == len(r[3]) for r in records)


@pytest.mark.parametrize("name", ["udp_le_us.pcap", "udp_be_ns.pcap"])
def test_classic_pcap_matches_dpkt(name: str) -> None:
    with open(CAPTURES / name, "rb") as handle:
        theirs = [bytes(buf) for _ts, buf in dpkt.pcap.Reader(handle)]
    assert [r[3] for r in _records(list(read_records(CAPTURES / name)))] == theirs


@pytest.mark.parametrize("name", ["two_ifaces_le.pcapng", "two_ifaces_be.pcapng"])
def test_pcapng_interfaces_resolutions_and_blocks(name: str) -> None:
    items = list(read_records(CAPTURES / name))
    assert not _anomalies(items)
    records = _records(items)
    t = BASE + 123_456_000
    pow2 = gen.PcapngWriter(io.BytesIO())
    pow2.add_interface(1)
    pow2.add_interface(1, tsresol=0x80 | 20, tsoffset_s=1_000_000_000)
    units = pow2.units(1, t + 2_000_000_000 + 1_048_576_000)
    pow2_ns = (units * 1_000_000_000 >> 20) + 1_000_000_000 * 1_000_000_000
    assert [(r[0], r[1], r[2]) for r in records] == [
        (1, t, 1),  # Ethernet, default microseconds
        (2, t + 1_000_001, 276),  # SLL2, nanoseconds
        (3, pow2_ns, 101),  # raw IP, 2^-20 s units plus if_tsoffset
        (4, pow2_ns, 1),  # SPB: interface 0, previous packet's time
    ]


def test_pcapng_matches_dpkt() -> None:
    with open(CAPTURES / "two_ifaces_le.pcapng", "rb") as handle:
        theirs = [bytes(buf) for _ts, buf in dpkt.pcapng.Reader(handle)]
    ours = [r[3] for r in _records(list(read_records(CAPTURES / "two_ifaces_le.pcapng")))]
    assert ours[: len(theirs)] == theirs  # dpkt skips the SPB


@pytest.mark.parametrize("name", ["udp_le_us.pcap", "two_ifaces_be.pcapng", "udp_le_us.pcap.gz"])
@pytest.mark.parametrize("block", [1, 7, 64])
def test_tiny_read_blocks_give_same_records(
    name: str, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = list(read_records(CAPTURES / name))
    monkeypatch.setattr(pcapfile, "READ_BLOCK", block)
    assert list(read_records(CAPTURES / name)) == expected


@pytest.mark.parametrize("name", ["udp_le_us.pcap", "udp_le_us.pcap.gz", "two_ifaces_le.pcapng"])
def test_non_seekable_stream_like_stdin(name: str) -> None:
    data = (CAPTURES / name).read_bytes()
    expected = list(read_records(CAPTURES / name))
    assert list(read_records(_Pipe(data))) == expected  # type: ignore[arg-type]
    assert list(read_records(io.BytesIO(data))) == expected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"This is a text file.\n", id="text"),
        pytest.param(b"\xd4\xc3\xb2\xa1\x02\x00", id="truncated-pcap-header"),
        pytest.param(b"\n\r\r\n\x1c\x00\x00\x00", id="pcapng-without-bom"),
        pytest.param(gzip.compress(b"plain text, gzipped", mtime=0), id="gzip-of-text"),
        pytest.param(b"\x1f\x8b\x08\x00garbage", id="corrupt-gzip"),
    ],
)
def test_not_a_capture_raises_before_yielding(data: bytes) -> None:
    with pytest.raises(NotACaptureError):
        read_records(io.BytesIO(data))


def test_not_a_capture_fixture() -> None:
    with pytest.raises(NotACaptureError, match="not a pcap"):
        open_capture(CAPTURES / "not_a_capture.pcap")


def test_truncated_last_record_yields_records_then_anomaly() -> None:
    items = list(read_records(CAPTURES / "truncated.pcap"))
    assert [r[0] for r in _records(items)] == [1, 2, 3]
    assert isinstance(items[-1], Anomaly)
    assert items[-1].kind is AnomalyKind.TRUNCATED_RECORD
    assert items[-1].frame == 4


def test_truncated_gzip_stream_is_an_anomaly() -> None:
    data = (CAPTURES / "udp_le_us.pcap.gz").read_bytes()[:-30]
    items = list(read_records(io.BytesIO(data)))
    assert isinstance(items[-1], Anomaly)
    assert items[-1].kind in (AnomalyKind.TRUNCATED_CAPTURE, AnomalyKind.TRUNCATED_RECORD)


@pytest.mark.parametrize(
    ("offset", "value", "kind"),
    [
        pytest.param(4, b"\x0d\x00\x00\x00", AnomalyKind.CORRUPT_BLOCK, id="length-not-multiple-4"),
        pytest.param(4, b"\xff\xff\xff\x7f", AnomalyKind.CORRUPT_BLOCK, id="length-huge"),
        pytest.param(8, b"\x09\x00\x00\x00", AnomalyKind.CORRUPT_BLOCK, id="unknown-interface"),
    ],
)
def test_corrupt_pcapng_block_after_first_packet(
    offset: int, value: bytes, kind: AnomalyKind
) -> None:
    data = bytearray((CAPTURES / "two_ifaces_le.pcapng").read_bytes())
    # Locate the second EPB (first packet of interface 1) by walking the blocks.
    pos, epbs = 0, 0
    while True:
        btype, blen = (
            int.from_bytes(data[pos : pos + 4], "little"),
            int.from_bytes(data[pos + 4 : pos + 8], "little"),
        )
        if btype == 6:
            epbs += 1
            if epbs == 2:
                break
        pos += blen
    data[pos + offset : pos + offset + 4] = value
    items = list(read_records(io.BytesIO(bytes(data))))
    assert _records(items)[0][0] == 1
    assert kind in [a.kind for a in _anomalies(items)]


def test_huge_record_length_is_corrupt_not_memory() -> None:
    data = bytearray((CAPTURES / "udp_le_us.pcap").read_bytes())
    data[24 + 8 : 24 + 12] = (1 << 30).to_bytes(4, "little")
    items = list(read_records(io.BytesIO(bytes(data))))
    assert [a.kind for a in _anomalies(items)] == [AnomalyKind.CORRUPT_BLOCK]


def test_merge_is_time_ordered_and_stable() -> None:
    a = read_records(CAPTURES / "udp_le_us.pcap", source_file=0)
    b = read_records(CAPTURES / "udp_be_us.pcap", source_file=1)  # same timestamps
    c = read_records(CAPTURES / "udp_le_ns.pcap", source_file=2)  # 789 ns later each
    merged = list(merge_records([a, b, c]))
    assert [(i, r[0]) for i, r in merged if isinstance(r, tuple)] == [
        (src, frame) for frame in (1, 2, 3, 4) for src in (0, 1, 2)
    ]


def test_merge_keeps_anomaly_after_its_records() -> None:
    merged = list(
        merge_records(
            [read_records(CAPTURES / "truncated.pcap"), read_records(CAPTURES / "udp_le_ns.pcap")]
        )
    )
    kinds = [(i, r.kind if isinstance(r, Anomaly) else r[0]) for i, r in merged]
    assert kinds.index((0, AnomalyKind.TRUNCATED_RECORD)) > kinds.index((0, 3))


def test_open_capture_path_object_and_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "copy.pcap"
    path.write_bytes((CAPTURES / "udp_le_us.pcap").read_bytes())
    with open_capture(path) as reader:
        assert reader.format == "pcap"
    assert len(_records(list(open_capture(str(path))))) == 4
