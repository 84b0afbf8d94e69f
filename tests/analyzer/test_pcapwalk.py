"""Record walks (analyzer/pcapwalk.py) on their own: started at a record or block boundary in the
middle of a file, fed by reads of any size, and the ends of the input (``_refill``)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import pytest

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.pcapfile import read_records
from analyzer.pcapwalk import (
    PCAP_HEADER_LEN,
    PCAP_RECORD_HEADER_LEN,
    Record,
    pcap_layout,
    walk_pcap,
    walk_pcapng,
)
from tests.analyzer.test_fastpath import _edge_frames, _pcap, _pcapng
from tests.conftest import FIXTURES

CAPTURES = FIXTURES / "captures"


def _reads(data: bytes, step: int) -> Callable[[], bytes | Anomaly]:
    """``read`` for a walk: ``data`` in blocks of ``step`` bytes, then ``b""``."""
    blocks: Iterator[bytes] = (data[i : i + step] for i in range(0, len(data), step))
    return lambda: next(blocks, b"")


def _pcap_offsets(data: bytes, pos: int = PCAP_HEADER_LEN) -> list[int]:
    """Where each record of a little-endian classic pcap starts (from ``pos``, the first)."""
    offsets = []
    while pos + PCAP_RECORD_HEADER_LEN <= len(data):
        offsets.append(pos)
        pos += PCAP_RECORD_HEADER_LEN + struct.unpack_from("<I", data, pos + 8)[0]
    return offsets


@pytest.mark.parametrize("prefilter", [False, True], ids=["every-record", "prefiltered"])
@pytest.mark.parametrize("step", [1, 29, 1 << 20], ids=["byte-reads", "odd-reads", "one-read"])
def test_pcap_walk_from_a_record_boundary_continues_the_whole_walk(
    prefilter: bool, step: int
) -> None:
    data = _pcap(_edge_frames() * 2)
    layout = pcap_layout(data[:PCAP_HEADER_LEN])
    data = data[PCAP_HEADER_LEN:]
    whole = list(walk_pcap(_reads(data, step), b"", 0, layout, prefilter=prefilter))
    # Start at the eighth record (not the eighth yielded one: the prefilter skips some).
    at = _pcap_offsets(data, 0)[7]
    tail = list(walk_pcap(_reads(data[at:], step), b"", 0, layout, frame=7, prefilter=prefilter))
    assert tail == [r for r in whole if isinstance(r, tuple) and r[0] > 7]
    assert tail  # something was read after the boundary


def test_pcap_walk_from_a_boundary_inside_the_first_block() -> None:
    data = (CAPTURES / "udp_le_us.pcap").read_bytes()
    at = _pcap_offsets(data)[2]
    layout = pcap_layout(data)
    records = list(walk_pcap(_reads(b"", 1), data, at, layout, frame=2))
    assert records == list(read_records(CAPTURES / "udp_le_us.pcap"))[2:]


def _first_section_blocks(data: bytes) -> list[tuple[int, int]]:
    """(offset, block type) of the blocks of a pcapng's first, little-endian section."""
    blocks, pos = [], 0
    while pos + 8 <= len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        if btype == 0x0A0D0D0A and pos:
            break
        blocks.append((pos, btype))
        pos += blen
    return blocks


@pytest.mark.parametrize("prefilter", [False, True], ids=["every-record", "prefiltered"])
def test_pcapng_walk_from_a_block_boundary_with_the_sections_interfaces(prefilter: bool) -> None:
    data = _pcapng(_edge_frames() * 2)
    whole = list(walk_pcapng(_reads(data, 4096), b"", 0, prefilter=prefilter))
    packets = [(pos, btype) for pos, btype in _first_section_blocks(data) if btype in (3, 6)]
    # Start at an Enhanced Packet Block well inside the first section, knowing its interfaces
    # as its IDBs declared them (test_fastpath._pcapng: Ethernet in ns, raw IP in us); the walk
    # goes on into the second, big-endian section, which declares its own.
    before = next(i for i, (_pos, btype) in enumerate(packets) if btype == 6 and i >= 5)
    interfaces = ((1, 1, 1, 0, 0), (101, 1000, 1, 0, 0))
    tail = list(
        walk_pcapng(
            _reads(data[packets[before][0] :], 333), b"", 0, frame=before, prefilter=prefilter,
            interfaces=interfaces,
        )
    )  # fmt: skip
    assert tail == [r for r in whole if isinstance(r, tuple) and r[0] > before]
    assert any(isinstance(r, tuple) and r[2] == 101 for r in tail)  # raw IP, both sections


def test_end_inside_a_record_is_reported_with_the_next_frame_and_last_time() -> None:
    data = (CAPTURES / "udp_le_us.pcap").read_bytes()
    layout = pcap_layout(data)
    items: list[Record | Anomaly] = list(
        walk_pcap(_reads(data[PCAP_HEADER_LEN:-5], 7), b"", 0, layout)
    )
    records = [r for r in items if isinstance(r, tuple)]
    (anomaly,) = [a for a in items if isinstance(a, Anomaly)]
    assert items[-1] is anomaly
    assert anomaly.kind is AnomalyKind.TRUNCATED_RECORD
    assert anomaly.frame == records[-1][0] + 1
    assert anomaly.ts_ns == records[-1][1]
    assert "inside a record" in anomaly.detail


def test_unreadable_input_ends_the_walk_with_the_readers_anomaly() -> None:
    data = (CAPTURES / "udp_le_us.pcap").read_bytes()
    broken = Anomaly(AnomalyKind.TRUNCATED_CAPTURE, None, None, "compressed stream: boom")
    second = _pcap_offsets(data)[1]
    blocks: Iterator[bytes | Anomaly] = iter([data[PCAP_HEADER_LEN : second + 10], broken])
    items = list(walk_pcap(lambda: next(blocks), b"", 0, pcap_layout(data)))
    assert items[-1] is broken
    assert [r[0] for r in items if isinstance(r, tuple)] == [1]  # the one whole record read
