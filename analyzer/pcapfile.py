"""Streaming capture readers: classic pcap, pcapng, gzip-compressed either, files or stdin.

Theory of operation: the input is read in blocks of ``READ_BLOCK`` bytes and walked with
``struct.unpack_from`` over the block, so memory stays bounded by the block size plus the
largest record, whatever the file size (no whole-file load, no mmap: mapped pages count in
RSS). Each record comes out as a plain tuple ``(frame_no, ts_ns, linktype, data, orig_len)``
(no per-record object beyond the tuple and the data slice: RTP is most of a capture and most
records are dropped by the link layer right after). ``frame_no`` is 1-based and counts every
packet block in file order, as Wireshark does. A damaged tail (truncated record, corrupt
block, broken gzip stream) ends the walk cleanly with one ``Anomaly`` after every record that
could be read; a file that is not a capture at all raises ``NotACaptureError`` before anything
is yielded.
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
from analyzer.linklayer import (
    IPPROTO_UDP,
    LINKTYPE_ETHERNET,
    NOT_SIP_FIRST_BYTE,
    PLAIN_UDP_PROBE,
    PLAIN_UDP_PROBE_LEN,
    LinkDecoder,
)
from analyzer.tcpstream import FlowKey, StreamChunk, TcpReassembler

Record = tuple[int, int, int, bytes, int]
"""``(frame_no, ts_ns, linktype, data, orig_len)`` of one captured packet."""

Source = str | os.PathLike[str] | BinaryIO

# Read size: large enough that the per-read cost vanishes, small enough to stay cache- and
# RSS-friendly (ARCHITECTURE.md section 5: bounded memory, no whole-file load).
READ_BLOCK = 1 << 20
# Largest record we accept before calling the framing corrupt: libpcap's MAXIMUM_SNAPLEN is
# 262144; Wireshark's largest (D-Bus) is 128 MiB. 64 MiB bounds memory on a corrupt length.
MAX_RECORD_BYTES = 64 << 20
# Largest pcapng block accepted (same reasoning as MAX_RECORD_BYTES plus block overhead).
MAX_BLOCK_BYTES = MAX_RECORD_BYTES + 4096

NS_PER_S = 1_000_000_000

# Classic pcap magic numbers (libpcap pcap-savefile(5); draft-ietf-opsawg-pcap section 4).
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_HEADER_LEN = 24
# pcapng block types and byte-order magic (draft-ietf-opsawg-pcapng sections 4.1-4.4, 11.1).
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 0x00000001
PCAPNG_OPB = 0x00000002  # obsolete Packet Block (appendix)
PCAPNG_SPB = 0x00000003
PCAPNG_EPB = 0x00000006
PCAPNG_BOM = 0x1A2B3C4D
OPT_END = 0
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
DEFAULT_TSRESOL = 6  # microseconds when if_tsresol is absent (pcapng section 4.2)
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


def _ts_factor(code: int) -> tuple[int, int]:
    """(multiplier, divisor) turning timestamp units into ns for an if_tsresol byte."""
    if code & 0x80:  # negative power of two (pcapng section 4.2, if_tsresol)
        return NS_PER_S, 1 << (code & 0x7F)
    if code <= 9:
        return 10 ** (9 - code), 1
    return 1, 10 ** (code - 9)


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
                if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                    raise NotACaptureError("pcapng section header has no byte-order magic")
                return "pcapng"
        raise NotACaptureError(
            f"not a pcap or pcapng capture (starts with {head[:8].hex()}); "
            "expected magic a1b2c3d4, a1b23c4d, 0a0d0d0a or gzip 1f8b"
        )

    def __iter__(self) -> Iterator[Record | Anomaly]:
        return self.walk()

    def walk(self, *, prefilter: bool = False) -> Iterator[Record | Anomaly]:
        """The records in file order (what iteration gives). With ``prefilter``, records the
        link decoder would drop at its first test are skipped before any object is built
        (``linklayer.PLAIN_UDP_PROBE``: Ethernet/IPv4/UDP whose payload cannot start SIP or
        HEP, i.e. RTP, most of a VoIP capture); frame numbers still count them.

        ARCHITECTURE.md section 5 (a record walk does ~2 M packets/s; decode only what can
        be SIP).
        """
        if self.format == "pcap":
            return _closing(self._walk_pcap(prefilter), self)
        return _closing(self._walk_pcapng(prefilter), self)

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

    def _anomaly(self, kind: AnomalyKind, frame: int, ts: int | None, detail: str) -> Anomaly:
        return Anomaly(kind, frame, ts, detail, self.source_file)

    def _walk_pcap(self, prefilter: bool) -> Iterator[Record | Anomaly]:
        buf = self._head
        e = "<" if struct.unpack_from("<I", buf)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
        magic, _vmaj, _vmin, _zone, _sigfigs, _snaplen, network = struct.unpack_from(
            e + "IHHiIII", buf
        )
        mult = 1 if magic == PCAP_MAGIC_NS else 1000
        linktype = network & 0xFFFF  # upper bits carry FCS length (pcap section 4)
        unpack = struct.Struct(e + "IIII").unpack_from
        # Record header plus the bytes the link decoder's first test reads (linklayer).
        probe = struct.Struct(e + PLAIN_UDP_PROBE).unpack_from
        probe_len = 16 + PLAIN_UDP_PROBE_LEN
        not_sip = NOT_SIP_FIRST_BYTE
        prefilter = prefilter and linktype == LINKTYPE_ETHERNET
        pos, frame, last_ts = PCAP_HEADER_LEN, 0, None
        while True:
            n = len(buf)
            while pos + 16 <= n:
                if prefilter and pos + probe_len <= n:
                    sec, frac, incl, orig, et0, et1, vihl, fr0, fr1, proto, first = probe(buf, pos)
                    end = pos + 16 + incl
                    if (
                        not_sip[first]
                        and proto == IPPROTO_UDP
                        and vihl == 0x45
                        and et0 == 8
                        and not et1
                        and incl > PLAIN_UDP_PROBE_LEN - 1
                        and end <= n
                        and not fr0 & 0x3F
                        and not fr1
                    ):
                        frame += 1
                        last_ts = sec * NS_PER_S + frac * mult
                        pos = end
                        continue
                else:
                    sec, frac, incl, orig = unpack(buf, pos)
                    end = pos + 16 + incl
                if end > n:
                    if incl > MAX_RECORD_BYTES:
                        yield self._anomaly(
                            AnomalyKind.CORRUPT_BLOCK, frame + 1, last_ts,
                            f"record header claims {incl} captured bytes",
                        )  # fmt: skip
                        return
                    break
                frame += 1
                last_ts = sec * NS_PER_S + frac * mult
                yield (frame, last_ts, linktype, buf[pos + 16 : end], orig)
                pos = end
            more = self._read()
            if isinstance(more, Anomaly):
                yield more
                return
            if not more:
                if pos < n:
                    yield self._anomaly(
                        AnomalyKind.TRUNCATED_RECORD, frame + 1, last_ts,
                        f"capture ends inside a record ({n - pos} bytes left over)",
                    )  # fmt: skip
                return
            buf = buf[pos:] + more
            pos = 0

    def _walk_pcapng(self, prefilter: bool) -> Iterator[Record | Anomaly]:
        buf = self._head
        pos, frame = 0, 0
        last_ts: int | None = None
        e = "<"
        # Per interface: (linktype, multiplier, divisor, offset_ns, snaplen).
        ifaces: list[tuple[int, int, int, int, int]] = []
        while True:
            n = len(buf)
            while pos + 12 <= n:
                btype = struct.unpack_from(e + "I", buf, pos)[0]
                if btype == PCAPNG_SHB:
                    bom = buf[pos + 8 : pos + 12]
                    e = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">" if len(bom) == 4 else e
                    if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                        yield self._anomaly(
                            AnomalyKind.CORRUPT_BLOCK, frame + 1, last_ts,
                            "section header without byte-order magic",
                        )  # fmt: skip
                        return
                blen = struct.unpack_from(e + "I", buf, pos + 4)[0]
                if blen < 12 or blen % 4 or blen > MAX_BLOCK_BYTES:
                    yield self._anomaly(
                        AnomalyKind.CORRUPT_BLOCK, frame + 1, last_ts,
                        f"block type {btype:#x} has invalid length {blen}",
                    )  # fmt: skip
                    return
                end = pos + blen
                if end > n:
                    break
                if struct.unpack_from(e + "I", buf, end - 4)[0] != blen:
                    yield self._anomaly(
                        AnomalyKind.CORRUPT_BLOCK, frame + 1, last_ts,
                        f"block type {btype:#x}: trailing length differs from {blen}",
                    )  # fmt: skip
                    return
                if btype in (PCAPNG_EPB, PCAPNG_OPB):
                    frame += 1
                    if btype == PCAPNG_EPB:
                        iface, hi, lo, caplen, orig = struct.unpack_from(e + "IIIII", buf, pos + 8)
                    else:
                        iface, _drops, hi, lo, caplen, orig = struct.unpack_from(
                            e + "HHIIII", buf, pos + 8
                        )
                    if iface >= len(ifaces) or 28 + caplen + 4 > blen:
                        yield self._anomaly(
                            AnomalyKind.CORRUPT_BLOCK, frame, last_ts,
                            f"packet block: interface {iface} / length {caplen} invalid",
                        )  # fmt: skip
                    else:
                        lt, mul, div, off, _snap = ifaces[iface]
                        last_ts = ((hi << 32) | lo) * mul // div + off
                        yield (frame, last_ts, lt, buf[pos + 28 : pos + 28 + caplen], orig)
                elif btype == PCAPNG_SPB:
                    frame += 1
                    if not ifaces or blen < 16:
                        yield self._anomaly(
                            AnomalyKind.CORRUPT_BLOCK, frame, last_ts,
                            "simple packet block without an interface",
                        )  # fmt: skip
                    else:
                        orig = struct.unpack_from(e + "I", buf, pos + 8)[0]
                        lt, _mul, _div, _off, snap = ifaces[0]
                        caplen = min(orig, blen - 16, snap or orig)
                        # An SPB has no timestamp: it inherits the previous packet's time
                        # (pcapng section 4.4 leaves it unspecified; 0 before any packet).
                        yield (frame, last_ts or 0, lt, buf[pos + 12 : pos + 12 + caplen], orig)
                elif btype == PCAPNG_IDB:
                    ifaces.append(self._interface(buf, pos, end, e))
                elif btype == PCAPNG_SHB:
                    ifaces = []  # interface ids are per section (pcapng section 4.1)
                pos = end
            more = self._read()
            if isinstance(more, Anomaly):
                yield more
                return
            if not more:
                if pos < n:
                    yield self._anomaly(
                        AnomalyKind.TRUNCATED_RECORD, frame + 1, last_ts,
                        f"capture ends inside a block ({n - pos} bytes left over)",
                    )  # fmt: skip
                return
            buf = buf[pos:] + more
            pos = 0

    @staticmethod
    def _interface(buf: bytes, pos: int, end: int, e: str) -> tuple[int, int, int, int, int]:
        """Decode an Interface Description Block (pcapng section 4.2)."""
        linktype, _reserved, snaplen = struct.unpack_from(e + "HHI", buf, pos + 8)
        tsresol, offset_s = DEFAULT_TSRESOL, 0
        opt, limit = pos + 16, end - 4
        while opt + 4 <= limit:
            code, olen = struct.unpack_from(e + "HH", buf, opt)
            if code == OPT_END:
                break
            value = buf[opt + 4 : opt + 4 + olen]
            if code == OPT_IF_TSRESOL and olen >= 1:
                tsresol = value[0]
            elif code == OPT_IF_TSOFFSET and olen >= 8:
                offset_s = struct.unpack_from(e + "q", value)[0]
            opt += 4 + olen + (-olen % 4)
        mul, div = _ts_factor(tsresol)
        return linktype, mul, div, offset_s * NS_PER_S, snaplen


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
    """The glue of ``iter_segments``: one decoder and defragmenter per input, shared TCP."""

    def __init__(self, readers: list[CaptureReader], verify: bool, unwrap_hep: bool) -> None:
        self.readers = readers
        indexes = range(len(readers))
        self.decoders = [LinkDecoder(source_file=i, verify_checksums=verify) for i in indexes]
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
            walk = self.readers[0].walk(prefilter=True)
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
            end=chunk.end,
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
