"""Streaming capture readers: classic pcap, pcapng, gzip-compressed either, files or stdin.

Theory of operation: ``CaptureReader`` detects the input's format from its first bytes and
hands the rest to a record walk (analyzer/pcapwalk.py), which reads blocks of ``READ_BLOCK``
bytes and walks them with ``struct.unpack_from``, so memory stays bounded by the block size
plus the largest record, whatever the file size (no whole-file load, no mmap: mapped pages
count in RSS). Each record comes out as a plain tuple ``(frame_no, ts_ns, linktype, data,
orig_len)`` (no per-record object beyond the tuple and the data slice: RTP is most of a
capture and most records are dropped by the link layer right after). ``frame_no`` is 1-based
and counts every packet block in file order, as Wireshark does. A damaged tail (truncated
record, corrupt block, broken gzip stream) ends the walk cleanly with one ``Anomaly`` after
every record that could be read; a file that is not a capture at all raises
``NotACaptureError`` before anything is yielded. ``iter_segments`` chains the readers, the link
decoder, IP defragmentation, TCP reassembly and HEP unwrapping.
"""

from __future__ import annotations

import gzip
import heapq
import itertools
import os
import struct
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import BinaryIO, Protocol

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.defrag import Defragmenter
from analyzer.frames import Fragment, Segment
from analyzer.hep import HEP3_MAGIC, HepError, HepStreamFramer, decode_hep, hep_to_segment, is_hep
from analyzer.linklayer import LinkDecoder
from analyzer.pcapwalk import (
    DEFAULT_TSRESOL,
    MAX_BLOCK_BYTES,
    MAX_RECORD_BYTES,
    NS_PER_S,
    OPT_END,
    OPT_IF_TSOFFSET,
    OPT_IF_TSRESOL,
    PCAP_HEADER_LEN,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAPNG_BOM,
    PCAPNG_BOM_BE,
    PCAPNG_BOM_LE,
    PCAPNG_EPB,
    PCAPNG_IDB,
    PCAPNG_OPB,
    PCAPNG_SHB,
    PCAPNG_SPB,
    Record,
    pcap_layout,
    walk_pcap,
    walk_pcapng,
)
from analyzer.tcpstream import FlowKey, StreamChunk, TcpReassembler

# The format constants and ``Record`` moved to analyzer.pcapwalk with the walks; they stay
# importable from here.
__all__ = [
    "DEFAULT_TSRESOL",
    "GZIP_MAGIC",
    "MAX_BLOCK_BYTES",
    "MAX_RECORD_BYTES",
    "NS_PER_S",
    "OPT_END",
    "OPT_IF_TSOFFSET",
    "OPT_IF_TSRESOL",
    "PCAPNG_BOM",
    "PCAPNG_EPB",
    "PCAPNG_IDB",
    "PCAPNG_OPB",
    "PCAPNG_SHB",
    "PCAPNG_SPB",
    "PCAP_HEADER_LEN",
    "PCAP_MAGIC_NS",
    "PCAP_MAGIC_US",
    "READ_BLOCK",
    "CaptureReader",
    "NotACaptureError",
    "Record",
    "Source",
    "iter_segments",
    "merge_records",
    "open_capture",
    "read_records",
]

Source = str | os.PathLike[str] | BinaryIO

# Read size: large enough that the per-read cost vanishes, small enough to stay cache- and
# RSS-friendly (ARCHITECTURE.md section 5: bounded memory, no whole-file load).
READ_BLOCK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"

_GZIP_ERRORS = (EOFError, OSError, zlib.error)


class NotACaptureError(ValueError):
    """The input is not a pcap or pcapng capture (nor a gzip of one).

    draft-ietf-opsawg-pcap section 4, draft-ietf-opsawg-pcapng section 4.1.
    """


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Prefixed:
    """A byte stream that replays ``prefix`` before reading on (detecting gzip on stdin)."""

    def __init__(self, prefix: bytes, rest: _Readable) -> None:
        self._prefix = prefix
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if self._prefix:
            if size < 0:
                data, self._prefix = self._prefix + self._rest.read(), b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._rest.read(size)


def _read_at_least(stream: _Readable, n: int) -> bytes:
    chunks = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class CaptureReader:
    """One capture input, detected on construction and walked lazily by iteration.

    ``source`` is a path or a binary file object (for stdin pass ``sys.stdin.buffer``).
    Construction reads the head of the input and raises ``NotACaptureError`` if it is not a
    capture; iteration yields ``Record`` tuples and, at most once at the end, an ``Anomaly``.

    draft-ietf-opsawg-pcap, draft-ietf-opsawg-pcapng, RFC 1952 (gzip).
    """

    def __init__(self, source: Source, *, source_file: int = 0) -> None:
        self.source_file = source_file
        self.compressed = False
        self._owned: BinaryIO | None = None
        raw: BinaryIO
        if isinstance(source, str | os.PathLike):
            raw = self._owned = open(source, "rb")  # noqa: SIM115
        else:
            raw = source
        self._stream: _Readable = raw
        try:
            head = _read_at_least(raw, 32)
            if head[:2] == GZIP_MAGIC:
                self.compressed = True
                self._stream = gzip.GzipFile(fileobj=_Prefixed(head, raw), mode="rb")  # type: ignore[call-overload]
                try:
                    head = _read_at_least(self._stream, 32)
                except _GZIP_ERRORS as exc:
                    raise NotACaptureError(f"corrupt gzip stream: {exc}") from None
            self._head = head
            self.format = self._detect(head)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _detect(head: bytes) -> str:
        if not head:
            raise NotACaptureError("empty input: not a pcap or pcapng capture")
        if len(head) >= 4:
            le, be = struct.unpack_from("<I", head)[0], struct.unpack_from(">I", head)[0]
            if PCAP_MAGIC_US in (le, be) or PCAP_MAGIC_NS in (le, be):
                if len(head) < PCAP_HEADER_LEN:
                    raise NotACaptureError("pcap file header is truncated")
                return "pcap"
            if le == PCAPNG_SHB:
                if len(head) < 12:
                    raise NotACaptureError("pcapng section header block is truncated")
                bom = head[8:12]
                if bom not in (PCAPNG_BOM_LE, PCAPNG_BOM_BE):
                    raise NotACaptureError("pcapng section header has no byte-order magic")
                return "pcapng"
        raise NotACaptureError(
            f"not a pcap or pcapng capture (starts with {head[:8].hex()}); "
            "expected magic a1b2c3d4, a1b23c4d, 0a0d0d0a or gzip 1f8b"
        )

    def __iter__(self) -> Iterator[Record | Anomaly]:
        return self.walk()

    def walk(self, *, prefilter: bool = False) -> Iterator[Record | Anomaly]:
        """The records in file order (what iteration gives); the reader is closed when the
        walk ends. With ``prefilter``, records the link decoder would drop at its first test
        are skipped before any object is built (Ethernet/IPv4/UDP whose payload cannot start
        SIP or HEP, i.e. RTP, most of a VoIP capture: ``analyzer.pcapwalk``); frame numbers
        still count them.

        ARCHITECTURE.md section 5 (a record walk does ~2 M packets/s; decode only what can
        be SIP).
        """
        return _closing(self._walk(prefilter), self)

    def _walk(self, prefilter: bool) -> Iterator[Record | Anomaly]:
        if self.format == "pcap":
            return walk_pcap(
                self._read, self._head, PCAP_HEADER_LEN, pcap_layout(self._head),
                source_file=self.source_file, prefilter=prefilter,
            )  # fmt: skip
        return walk_pcapng(
            self._read, self._head, 0, source_file=self.source_file, prefilter=prefilter
        )

    def close(self) -> None:
        """Close the file if this reader opened it (never closes a caller's stream)."""
        if isinstance(self._stream, gzip.GzipFile):
            self._stream.close()
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _read(self) -> bytes | Anomaly:
        try:
            return self._stream.read(READ_BLOCK)
        except _GZIP_ERRORS as exc:
            return Anomaly(
                AnomalyKind.TRUNCATED_CAPTURE, None, None, f"compressed stream: {exc}",
                self.source_file,
            )  # fmt: skip


def _closing(walk: Iterator[Record | Anomaly], reader: CaptureReader) -> Iterator[Record | Anomaly]:
    """Close ``reader`` when ``walk`` ends (or is abandoned and collected)."""
    try:
        yield from walk
    finally:
        reader.close()


def open_capture(source: Source, *, source_file: int = 0) -> CaptureReader:
    """Open a capture (path, binary file object or ``-`` for stdin) and detect its format.

    Raises ``NotACaptureError`` (or ``OSError`` for an unreadable path) before any record.

    draft-ietf-opsawg-pcap section 4, draft-ietf-opsawg-pcapng section 4.
    """
    if isinstance(source, str) and source == "-":
        return CaptureReader(sys.stdin.buffer, source_file=source_file)
    return CaptureReader(source, source_file=source_file)


def read_records(source: Source, *, source_file: int = 0) -> Iterator[Record | Anomaly]:
    """Records of one capture, in file order; detection errors are raised at call time.

    draft-ietf-opsawg-pcap section 5, draft-ietf-opsawg-pcapng section 4.3.
    """
    return iter(open_capture(source, source_file=source_file))


def _keyed(
    index: int, items: Iterable[Record | Anomaly]
) -> Iterator[tuple[int, int, Record | Anomaly]]:
    last = 0
    for item in items:
        if type(item) is tuple:
            last = item[1]
        yield last, index, item


def merge_records(
    sources: Sequence[Iterable[Record | Anomaly]],
) -> Iterator[tuple[int, Record | Anomaly]]:
    """Merge several captures by timestamp: ``(source_index, record_or_anomaly)`` pairs.

    Stable: equal timestamps keep the order of ``sources`` (``heapq.merge`` semantics), and
    each file's anomalies stay after that file's last record. Assumes each file is in time
    order, as capture tools write them (mergecap does the same).
    """
    streams = [_keyed(i, s) for i, s in enumerate(sources)]
    for _ts, index, item in heapq.merge(*streams, key=lambda t: t[0]):
        yield index, item


# -- end to end: records -> link layer -> defragmentation -> TCP reassembly -> HEP ------------


def iter_segments(
    sources: Source | Sequence[Source],
    *,
    verify_checksums: bool = False,
    unwrap_hep: bool = True,
) -> Iterator[Segment | Anomaly]:
    """Transport payloads that may carry SIP, with every anomaly, from one or more captures.

    UDP datagrams come out whole (after IP reassembly), TCP as in-order chunks per direction
    (``transport="tcp"``, with ``gap_before``/``end`` marks), HEP packets as their inner
    segments (``encapsulation="hep"``). Several sources are merged in timestamp order.
    Inputs are opened here, so ``NotACaptureError`` is raised by this call, not by iteration.

    ARCHITECTURE.md section 2 (analyzer pipeline); STANDARDS.md section 13 (HEP).
    """
    listed: Sequence[Source]
    if isinstance(sources, str | os.PathLike) or hasattr(sources, "read"):
        listed = [sources]  # type: ignore[list-item]
    else:
        listed = sources
    readers: list[CaptureReader] = []
    try:
        for index, source in enumerate(listed):
            readers.append(open_capture(source, source_file=index))
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return _Pipeline(readers, verify_checksums, unwrap_hep).run()


class _Pipeline:
    """The glue of ``iter_segments``: one decoder and defragmenter per input, shared TCP
    (the connections' classification and their reassembly)."""

    def __init__(self, readers: list[CaptureReader], verify: bool, unwrap_hep: bool) -> None:
        self.readers = readers
        indexes = range(len(readers))
        # One decoder per input (its frames, its anomalies), all sharing the TCP connections'
        # classification: a connection found to carry SIP in one file continues into the next.
        self.decoders: list[LinkDecoder] = []
        for i in indexes:
            shared = self.decoders[0] if self.decoders else None
            self.decoders.append(
                LinkDecoder(source_file=i, verify_checksums=verify, connections=shared)
            )
        self.defrags = [Defragmenter(source_file=i) for i in indexes]
        self.tcp = TcpReassembler()
        self.unwrap_hep = unwrap_hep
        self.hep_flows: dict[FlowKey, HepStreamFramer] = {}

    def run(self) -> Iterator[Segment | Anomaly]:
        pairs: Iterable[tuple[int, Record | Anomaly]]
        if len(self.readers) == 1:
            # One input: skip RTP in the record walk. Not when merging: a skipped record of
            # one file can change where the merge interleaves the others' (out-of-order
            # timestamps), so there every record goes through the decoder.
            walk = self.readers[0]._walk(prefilter=True)  # closed below, when the run ends
            pairs = zip(itertools.repeat(0), walk, strict=False)
        else:
            pairs = merge_records(self.readers)
        decoders = self.decoders
        unwrap_hep = self.unwrap_hep
        try:
            for index, item in pairs:
                if isinstance(item, Anomaly):
                    yield item
                    continue
                dec = decoders[index]
                out = dec.decode_record(item[0], item[1], item[2], item[3])
                if dec.anomalies:
                    yield from dec.take_anomalies()
                if out is None:
                    continue
                if (
                    type(out) is Segment
                    and out.transport == "udp"
                    and not dec.released
                    and not (unwrap_hep and is_hep(out.payload))
                ):
                    yield out  # the common case of _handle, without a generator per packet
                else:
                    yield from self._handle(out, index)
            for defrag in self.defrags:
                defrag.flush()
                yield from defrag.take_anomalies()
            chunks = self.tcp.flush()
            yield from self.tcp.take_anomalies()
            for chunk in chunks:
                yield from self._chunk(chunk)
        finally:
            for reader in self.readers:
                reader.close()

    def _handle(self, out: Segment | Fragment, index: int) -> Iterator[Segment | Anomaly]:
        dec = self.decoders[index]
        while isinstance(out, Fragment):
            defrag = self.defrags[index]
            dg = defrag.feed(out)
            yield from defrag.take_anomalies()
            if dg is None:
                return
            nxt = dec.decode_datagram(
                dg.frame, dg.ts_ns, dg.version, dg.src, dg.dst, dg.proto, dg.payload,
                dg.frames, dg.depth,
            )  # fmt: skip
            yield from dec.take_anomalies()
            if nxt is None:
                return
            out = nxt
        if dec.released:
            for held in dec.take_released():
                yield from self._tcp(held)
        if out.transport == "tcp":
            yield from self._tcp(out)
        elif self.unwrap_hep and is_hep(out.payload):
            yield from self._hep(out.payload, out.frame, out.ts_ns, index)
        else:
            yield out

    def _tcp(self, seg: Segment) -> Iterator[Segment | Anomaly]:
        chunks = self.tcp.feed(seg)
        if self.tcp.anomalies:
            yield from self.tcp.take_anomalies()
        for chunk in chunks:
            yield from self._chunk(chunk)

    def _chunk(self, chunk: StreamChunk) -> Iterator[Segment | Anomaly]:
        flow = chunk.flow
        framer = self.hep_flows.get(flow)
        if framer is None and self.unwrap_hep and chunk.data.startswith(HEP3_MAGIC):
            framer = self.hep_flows[flow] = HepStreamFramer()
        if framer is not None:
            if chunk.gap_before:
                framer.reset()
            for pkt in framer.feed(chunk.data):
                if isinstance(pkt, HepError):
                    yield Anomaly(AnomalyKind.HEP_MALFORMED, chunk.first_frame, chunk.ts_ns,
                                  str(pkt), chunk.source_file)  # fmt: skip
                elif pkt.is_sip:
                    yield hep_to_segment(pkt, chunk.first_frame, ts_ns=chunk.ts_ns,
                                         source_file=chunk.source_file)  # fmt: skip
            if chunk.end:
                del self.hep_flows[flow]
            return
        src, sport, dst, dport = flow
        yield Segment(
            chunk.first_frame, chunk.ts_ns, src, sport, dst, dport, "tcp", chunk.data,
            source_file=chunk.source_file, frames=chunk.frames, gap_before=chunk.gap_before,
            end=chunk.end, frame_sources=chunk.frame_sources, frame_ends=chunk.frame_ends,
        )  # fmt: skip

    def _hep(self, data: bytes, frame: int, ts_ns: int, index: int) -> Iterator[Segment | Anomaly]:
        try:
            pkt = decode_hep(data)
        except HepError as exc:
            if data[:4] == HEP3_MAGIC:
                yield Anomaly(AnomalyKind.HEP_MALFORMED, frame, ts_ns, str(exc), index)
            return
        if pkt.is_sip:
            yield hep_to_segment(pkt, frame, ts_ns=ts_ns, source_file=index)
