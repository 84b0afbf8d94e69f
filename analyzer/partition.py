"""Capture files cut into partitions for a distributed scan: verified record boundaries, and
partition streams that count what they carry.

Theory of operation. A large classic pcap or pcapng file is cut into byte ranges at record
boundaries, so that several workers each read one range (``analyzer.partscan``). A worker
reads a *partition stream*: the file's header bytes (the pcap global header, or the pcapng
section header and the blocks before the first packet) followed by the bytes of its range, so
the ordinary capture reader (``analyzer.pcapfile``) walks it as it would a whole file.

Boundaries. pcapng blocks carry their length at both ends, so an offset is a boundary when a
chain of ``CHAIN_RECORDS`` blocks from it has matching leading and trailing lengths. Classic
pcap records carry no marker: a boundary is the first offset where ``CHAIN_RECORDS`` plausible
record headers follow each other (lengths within libpcap's bounds, a valid sub-second field,
timestamps close together), which bytes inside a packet rarely imitate. Either way the choice
is checked after the fact: a ``RecordCounter`` walks the record framing of every partition
stream as the reader consumes it (headers only, no payload copy) and says whether the range
ended exactly on a record boundary. Partition i starts on a boundary (the first one, right
after the file header, is certain), so it ends cleanly exactly when partition i+1 starts on a
true boundary; when one does not, the run does not use the partitions (``analyzer.partscan``).

The counter also gives what the main process needs to put the partitions back together: the
number of packet records (the frame numbers of a later partition are shifted by it), the range
of merge keys (record timestamps, the order ``pcapfile.merge_records`` gives several files)
and any section or interface block inside the range (a later partition would not know it).

Gzip-compressed files and files smaller than two partitions are one partition each, read
whole (a gzip stream cannot be entered in the middle). draft-ietf-opsawg-pcap sections 4-5;
draft-ietf-opsawg-pcapng sections 3-4.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import BinaryIO

from analyzer.pcapfile import GZIP_MAGIC
from analyzer.pcapwalk import (
    MAX_BLOCK_BYTES,
    MAX_RECORD_BYTES,
    NS_PER_S,
    PCAP_HEADER_LEN,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAPNG_BOM_BE,
    PCAPNG_BOM_LE,
    PCAPNG_EPB,
    PCAPNG_IDB,
    PCAPNG_OPB,
    PCAPNG_SHB,
    PCAPNG_SPB,
    decode_interface,
)

# Bytes per partition: a worker scans a VoIP capture at ~100 MB/s, so a partition is ~0.3 s of
# work (the task overhead is a few ms). A file smaller than two partitions is read whole.
PARTITION_BYTES = 32 << 20
# That at most. Fewer bytes per partition when the inputs would otherwise give a worker slot
# fewer than PARTITIONS_PER_SLOT partitions: with tasks of equal size the last round leaves
# slots idle (five partitions on two workers: three rounds, the last half empty), so more,
# smaller tasks balance better; each cut costs only the calls that cross it.
# MIN_PARTITION_BYTES bounds the per-task overhead.
PARTITIONS_PER_SLOT = 4
MIN_PARTITION_BYTES = 4 << 20
# Record headers that must follow each other before an offset is taken as a pcap boundary
# (and pcapng blocks whose two lengths must match): one chance in billions for packet bytes,
# and the partition streams check the choice anyway.
CHAIN_RECORDS = 8
# A plausible pcap record: captured and original lengths within libpcap's MAXIMUM_SNAPLEN
# (262144), larger than zero (runs of zero bytes in payloads look like empty records).
MAX_PLAUSIBLE_LEN = 262_144
# Largest step between two timestamps of a chain: a capture can be quiet for hours, not days.
MAX_CHAIN_STEP_S = 86_400
# Bytes searched for a boundary after a nominal split offset: first a small window (a boundary
# is usually within one packet), then one holding a chain of the largest records twice.
FIRST_SEARCH_BYTES = 64 << 10
SEARCH_BYTES = 2 * CHAIN_RECORDS * (MAX_PLAUSIBLE_LEN + 16)
# Largest pcapng header (section header and the blocks before the first packet) copied in
# front of every partition; a file with more before its first packet is read whole.
MAX_HEADER_BYTES = 1 << 20

_PACKET_BLOCKS = frozenset({PCAPNG_EPB, PCAPNG_OPB, PCAPNG_SPB})
# Bytes of an EPB or OPB that hold its interface, timestamp and captured length.
_PACKET_HEAD = 28
_PCAP_HEADERS = {e: struct.Struct(e + "IIII").unpack_from for e in "<>"}
_PCAPNG_HEADERS = {e: struct.Struct(e + "II").unpack_from for e in "<>"}
_PCAPNG_TRAILERS = {e: struct.Struct(e + "I").unpack_from for e in "<>"}


@dataclass(frozen=True, slots=True)
class CaptureLayout:
    """How a capture file is framed, as far as cutting it needs.

    ``format`` is ``pcap``, ``pcapng`` or ``gzip`` (read whole); ``header`` is copied in front
    of every partition and ``data_start`` is where the first record or packet block begins.
    """

    format: str
    size: int
    header: bytes = b""
    data_start: int = 0
    endian: str = "<"
    nanosecond: bool = False

    @property
    def splittable(self) -> bool:
        return self.format in ("pcap", "pcapng") and self.data_start > 0


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    """One worker's share of the inputs: bytes ``[start, end)`` of input ``source_file``
    (``end`` None: to the end of the file) read after ``header``; a ``compressed`` file is one
    partition, decompressed whole. ``part`` counts the partitions of the same file from 0."""

    path: str
    source_file: int
    part: int
    parts: int
    start: int
    end: int | None
    header: bytes = b""
    compressed: bool = False
    merge_keys: bool = False

    @property
    def is_first(self) -> bool:
        return self.part == 0

    @property
    def is_last(self) -> bool:
        return self.part == self.parts - 1

    def describe(self) -> str:
        if self.parts == 1:
            return self.path
        return f"{self.path} (part {self.part + 1} of {self.parts}, offset {self.start})"


def read_layout(path: str) -> CaptureLayout:
    """The layout of the capture at ``path`` (format and header); a file this cannot frame is
    read whole, by the capture reader that reports what is wrong with it."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        head = f.read(PCAP_HEADER_LEN)
        if head[:2] == GZIP_MAGIC:
            return CaptureLayout("gzip", size)
        if len(head) >= PCAP_HEADER_LEN:
            for e in ("<", ">"):
                magic = struct.unpack_from(e + "I", head)[0]
                if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                    nano = magic == PCAP_MAGIC_NS
                    return CaptureLayout("pcap", size, head, PCAP_HEADER_LEN, e, nano)
        if len(head) >= 12 and struct.unpack_from("<I", head)[0] == PCAPNG_SHB:
            return _pcapng_layout(f, size, head)
    return CaptureLayout("unknown", size)


def _pcapng_layout(f: BinaryIO, size: int, head: bytes) -> CaptureLayout:
    """The blocks before the first packet block become the header (pcapng section 4)."""
    bom = head[8:12]
    if bom not in (PCAPNG_BOM_LE, PCAPNG_BOM_BE):
        return CaptureLayout("unknown", size)
    e = "<" if bom == PCAPNG_BOM_LE else ">"
    pos = 0
    while pos < min(size, MAX_HEADER_BYTES):
        f.seek(pos)
        block = f.read(8)
        if len(block) < 8:
            break
        btype, blen = struct.unpack(e + "II", block)
        if btype in _PACKET_BLOCKS:
            f.seek(0)
            return CaptureLayout("pcapng", size, f.read(pos), pos, e)
        if blen < 12 or blen % 4:
            break
        pos += blen
    return CaptureLayout("unknown", size)


# -- boundaries ----------------------------------------------------------------------------------


def find_boundary(f: BinaryIO, layout: CaptureLayout, offset: int) -> int | None:
    """The first record (pcap) or packet block (pcapng) boundary at or after ``offset`` that a
    chain of ``CHAIN_RECORDS`` confirms, or None when none is found nearby.

    draft-ietf-opsawg-pcap section 5 (record header); draft-ietf-opsawg-pcapng section 3.1
    (block total length at both ends).
    """
    for window in (FIRST_SEARCH_BYTES, SEARCH_BYTES):
        f.seek(offset)
        data = f.read(window)
        at_eof = offset + len(data) >= layout.size
        check = _pcap_chain if layout.format == "pcap" else _pcapng_chain
        # pcapng blocks are 32-bit aligned from the start of the file (pcapng section 3.1).
        first, step = (0, 1) if layout.format == "pcap" else (-offset % 4, 4)
        for start in range(first, len(data), step):
            verdict = check(data, start, layout, at_eof)
            if verdict is _Chain.FOUND:
                return offset + start
            if verdict is _Chain.SHORT:
                break  # this start needs more bytes: a later one cannot be trusted before it
        else:
            return None
        if at_eof:
            return None
    return None


class _Chain(Enum):
    FOUND = "found"  # a chain of records starts here
    BROKEN = "broken"  # not a boundary
    SHORT = "short"  # the window ends before the chain could be checked


def _pcap_chain(data: bytes, start: int, layout: CaptureLayout, at_eof: bool) -> _Chain:
    unpack = _PCAP_HEADERS[layout.endian]
    frac_limit = NS_PER_S if layout.nanosecond else 1_000_000
    n, pos, prev_sec = len(data), start, None
    for _ in range(CHAIN_RECORDS):
        if pos == n and at_eof:
            break  # the chain ends exactly at the end of the file
        if pos + 16 > n:
            return _Chain.BROKEN if at_eof else _Chain.SHORT
        sec, frac, incl, orig = unpack(data, pos)
        if not (
            0 < incl <= orig <= MAX_PLAUSIBLE_LEN
            and frac < frac_limit
            and sec > 0
            and (prev_sec is None or abs(sec - prev_sec) <= MAX_CHAIN_STEP_S)
        ):
            return _Chain.BROKEN
        prev_sec = sec
        pos += 16 + incl
    return _Chain.FOUND if prev_sec is not None else _Chain.BROKEN


def _pcapng_chain(data: bytes, start: int, layout: CaptureLayout, at_eof: bool) -> _Chain:
    unpack = _PCAPNG_HEADERS[layout.endian]
    n, pos = len(data), start
    if pos + 12 > n or unpack(data, pos)[0] not in _PACKET_BLOCKS:
        return _Chain.BROKEN  # a partition starts with a packet
    for _ in range(CHAIN_RECORDS):
        if pos == n and at_eof:
            break
        if pos + 12 > n:
            return _Chain.BROKEN if at_eof else _Chain.SHORT
        btype, blen = unpack(data, pos)
        if blen < 12 or blen % 4 or blen > MAX_BLOCK_BYTES or btype == PCAPNG_SHB:
            return _Chain.BROKEN
        if pos + blen > n:
            return _Chain.BROKEN if at_eof else _Chain.SHORT
        if _PCAPNG_TRAILERS[layout.endian](data, pos + blen - 4)[0] != blen:
            return _Chain.BROKEN
        pos += blen
    return _Chain.FOUND


def balanced_partition_bytes(sizes: Sequence[int], slots: int) -> int:
    """The partition size for inputs of ``sizes`` bytes on ``slots`` worker slots: enough
    partitions for ``PARTITIONS_PER_SLOT`` each, within [``MIN_PARTITION_BYTES``,
    ``PARTITION_BYTES``]; then a little smaller where that makes the partitions come in whole
    rounds of the slots (17 partitions on 2 workers leave one idle for the whole last round;
    18 slightly smaller ones do not), down to ``MIN_PARTITION_BYTES``."""
    slots = max(1, slots)
    target = sum(sizes) // (slots * PARTITIONS_PER_SLOT)
    size = max(MIN_PARTITION_BYTES, min(PARTITION_BYTES, target))
    candidate = size
    while candidate >= MIN_PARTITION_BYTES:
        if partition_count(sizes, candidate) % slots == 0:
            return candidate
        candidate -= max(1, candidate // 64)  # 1.5% smaller each step
    return size


def partition_count(sizes: Sequence[int], part_bytes: int) -> int:
    """How many partitions ``plan_partitions`` cuts files of ``sizes`` bytes into at
    ``part_bytes`` (when every file can be split): one per file under two ``part_bytes``."""
    return sum(size // part_bytes if size >= 2 * part_bytes else 1 for size in sizes)


def plan_partitions(
    names: Sequence[str],
    part_bytes: int = PARTITION_BYTES,
    cuts: Mapping[int, Sequence[int]] | None = None,
) -> list[PartitionSpec]:
    """The partitions of the inputs, in input and file order: one per file, and several for a
    plain pcap/pcapng file of at least two ``part_bytes``, cut at verified boundaries near
    every multiple of ``part_bytes`` (or, for input ``i`` in ``cuts``, near those offsets).
    ``OSError`` for an unreadable file."""
    specs: list[PartitionSpec] = []
    merged = len(names) > 1  # several files are merged by time: their keys are needed
    for index, name in enumerate(names):
        layout = read_layout(name)
        starts = [layout.data_start]
        nominal: Sequence[int] = ()
        if cuts is not None and index in cuts:
            nominal = sorted(cuts[index])
        elif layout.size >= 2 * part_bytes:
            count = layout.size // part_bytes
            step = (layout.size - layout.data_start) // count
            nominal = [layout.data_start + k * step for k in range(1, count)]
        if layout.splittable and nominal:
            with open(name, "rb") as f:
                for offset in nominal:
                    found = find_boundary(f, layout, max(starts[-1] + 1, offset))
                    if found is not None and found < layout.size:
                        starts.append(found)
        if len(starts) == 1:
            specs.append(
                PartitionSpec(name, index, 0, 1, 0, None, b"", layout.format == "gzip", merged)
            )
            continue
        ends: list[int | None] = [*starts[1:], None]
        for part, (start, end) in enumerate(zip(starts, ends, strict=True)):
            specs.append(
                PartitionSpec(
                    name, index, part, len(starts), start, end, layout.header, False, merged
                )
            )
    return specs


# -- partition streams ---------------------------------------------------------------------------


class PartitionStream:
    """The bytes of one partition as a binary stream (only ``read`` is used by the capture
    reader): the header, then the range; a compressed file decompressed whole. A
    ``RecordCounter`` walks them as they pass; ``eof`` is set once the end has been read."""

    def __init__(self, spec: PartitionSpec) -> None:
        self._file = open(spec.path, "rb")  # noqa: SIM115 - closed by close()
        self._source: BinaryIO = self._file
        try:
            if spec.compressed:
                self._source = gzip.GzipFile(fileobj=self._file, mode="rb")  # type: ignore[assignment]
            else:
                self._file.seek(spec.start)
        except BaseException:
            self._file.close()
            raise
        self._header = spec.header
        self._left = None if spec.end is None else spec.end - spec.start
        self.counter = RecordCounter(len(spec.header), keyed=spec.merge_keys)
        self.eof = False

    def read(self, size: int = -1, /) -> bytes:
        if not size:
            return b""
        if self._header:
            data = self._header if size < 0 else self._header[:size]
            self._header = self._header[len(data) :]
        else:
            want = size
            if self._left is not None:
                want = self._left if size < 0 else min(size, self._left)
            data = self._source.read(want) if want else b""
            if self._left is not None:
                self._left -= len(data)
        if data:
            self.counter.feed(data)
        elif not self.eof:
            self.eof = True
            self.counter.finish()
        return data

    def close(self) -> None:
        if self._source is not self._file:
            self._source.close()
        self._file.close()


class RecordCounter:
    """Walks the record framing of a pcap or pcapng byte stream fed in pieces (sans-IO).

    Counts packet records as the capture reader numbers frames (every EPB, OPB and SPB, and
    every pcap record it yields); with ``keyed`` (several files merged by time) keeps the
    smallest and largest merge key (a record's timestamp; an anomaly of the reader takes the
    key of the record before it, 0 before any); notes section and interface blocks at or
    after ``header_len`` (inside the range) and a simple packet block before any timed packet
    (it would borrow a time from before the range). ``clean`` (after ``finish``) says the
    stream ended exactly on a record boundary. Stops where the reader stops, at a record or
    block length it rejects.

    draft-ietf-opsawg-pcap section 5; draft-ietf-opsawg-pcapng sections 4.1-4.4.
    """

    def __init__(self, header_len: int = 0, *, keyed: bool = True) -> None:
        self.records = 0
        self.min_key: int | None = None
        self.max_key: int | None = None
        self.section_blocks = 0
        self.untimed_simple = False
        self.stopped = False
        self.clean = False
        self._header_len = header_len
        self._keyed = keyed
        self._format: str | None = None
        self._buf = b""
        self._skip = 0
        self._offset = 0  # stream offset of _buf[0]
        self._pending: int | None = None  # key of a record whose data is still being skipped
        self._e = "<"
        self._mult = 1000
        self._ifaces: list[tuple[int, int, int]] = []
        self._last_ts: int | None = None
        self._last_key = 0

    def feed(self, data: bytes) -> None:
        if self.stopped:
            return
        if self._skip:
            if self._skip >= len(data):
                self._skip -= len(data)
                self._offset += len(data)
                if not self._skip:
                    self._commit()
                return
            data = data[self._skip :]
            self._offset += self._skip
            self._skip = 0
            self._commit()
        buf = self._buf + data if self._buf else data
        pos = self._walk(buf)
        if pos > len(buf):
            self._skip = pos - len(buf)
            self._buf = b""
            self._offset += len(buf)
        else:
            self._buf = buf[pos:]
            self._offset += pos

    def finish(self) -> None:
        """End of the stream: was it cut on a record boundary?"""
        self.clean = not self.stopped and not self._skip and not self._buf
        self._pending = None

    def _key(self, key: int) -> None:
        if not self._keyed:
            return
        if self.min_key is None or key < self.min_key:
            self.min_key = key
        if self.max_key is None or key > self.max_key:
            self.max_key = key

    def _commit(self) -> None:
        if self._pending is not None:
            self.records += 1
            self._key(self._pending)
            self._last_key = self._pending
            self._pending = None

    def _record(self, key: int, complete: bool) -> None:
        if complete:
            self._pending = key
            self._commit()
        else:
            self._pending = key

    def _walk(self, buf: bytes) -> int:
        if self._format is None:
            if len(buf) < 12:
                return 0
            if struct.unpack_from("<I", buf)[0] == PCAPNG_SHB:
                self._format = "pcapng"
            else:
                if len(buf) < PCAP_HEADER_LEN:
                    return 0
                self._format = "pcap"
                le = struct.unpack_from("<I", buf)[0]
                self._e = "<" if le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
                magic = struct.unpack_from(self._e + "I", buf)[0]
                self._mult = 1 if magic == PCAP_MAGIC_NS else 1000
                return self._walk_pcap(buf, PCAP_HEADER_LEN)
        if self._format == "pcap":
            return self._walk_pcap(buf, 0)
        return self._walk_pcapng(buf)

    def _walk_pcap(self, buf: bytes, pos: int) -> int:
        # The hot loop of a partition's bookkeeping (one pass per record): locals only, and
        # the keys only when a merge of several files needs them.
        unpack = struct.Struct(self._e + "IIII").unpack_from
        n, mult, keyed = len(buf), self._mult, self._keyed
        count, key, low, high = 0, None, self.min_key, self.max_key
        while pos + 16 <= n:
            sec, frac, incl, _orig = unpack(buf, pos)
            end = pos + 16 + incl
            if end > n:
                if incl > MAX_RECORD_BYTES:
                    self.stopped = True  # the reader reports a corrupt record here and stops
                    break
                self._pending = sec * NS_PER_S + frac * mult
                pos = end
                break
            count += 1
            if keyed:
                key = sec * NS_PER_S + frac * mult
                if low is None or key < low:
                    low = key
                if high is None or key > high:
                    high = key
            pos = end
        self.records += count
        self.min_key, self.max_key = low, high
        if key is not None:
            self._last_key = key
        return pos

    def _walk_pcapng(self, buf: bytes) -> int:
        pos, n = 0, len(buf)
        while pos + 12 <= n:
            btype = struct.unpack_from(self._e + "I", buf, pos)[0]
            if btype == PCAPNG_SHB:
                bom = buf[pos + 8 : pos + 12]
                if bom not in (PCAPNG_BOM_LE, PCAPNG_BOM_BE):
                    self.stopped = True
                    return pos
                self._e = "<" if bom == PCAPNG_BOM_LE else ">"
            blen = struct.unpack_from(self._e + "I", buf, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_BLOCK_BYTES:
                self.stopped = True
                return pos
            end = pos + blen
            inside = self._offset + pos >= self._header_len
            if btype in (PCAPNG_EPB, PCAPNG_OPB):
                if pos + min(blen, _PACKET_HEAD) > n:
                    return pos  # wait for the packet's head
                self._timed_packet(buf, pos, btype, blen, end <= n)
            elif btype == PCAPNG_SPB:
                if not self._ifaces or blen < 16:
                    self._record(self._last_key, end <= n)  # a frame the reader reports
                else:
                    if self._last_ts is None and inside:
                        self.untimed_simple = True
                    self._record(self._last_ts or 0, end <= n)
            elif btype in (PCAPNG_IDB, PCAPNG_SHB):
                if end > n:
                    return pos  # interface and section blocks are read whole
                if btype == PCAPNG_IDB:
                    self._ifaces.append(decode_interface(buf, pos, end, self._e)[1:4])
                else:
                    self._ifaces = []
                if inside:
                    self.section_blocks += 1
            pos = end
        return pos

    def _timed_packet(self, buf: bytes, pos: int, btype: int, blen: int, complete: bool) -> None:
        if blen < _PACKET_HEAD + 4:
            self._record(self._last_key, complete)  # the reader reports it; keyed as anomaly
            return
        if btype == PCAPNG_EPB:
            iface, hi, lo, caplen = struct.unpack_from(self._e + "IIII", buf, pos + 8)
        else:
            iface, _drops, hi, lo, caplen = struct.unpack_from(self._e + "HHIII", buf, pos + 8)
        if iface >= len(self._ifaces) or _PACKET_HEAD + caplen + 4 > blen:
            self._record(self._last_key, complete)
            return
        mul, div, off = self._ifaces[iface]
        ts = ((hi << 32) | lo) * mul // div + off
        self._last_ts = ts
        self._record(ts, complete)
