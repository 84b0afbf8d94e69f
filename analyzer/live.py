"""The live pipeline: packets as they arrive in, finished calls and anomalies out.

Theory of operation. ``LivePipeline`` is the capture pipeline of ``stirscope analyze`` turned
inside out: instead of pulling records from a file it is pushed one input at a time, from an
interface (``feed_record``: link type, frame bytes, kernel capture time), from a HEP collector
(``feed_hep`` for one datagram, ``feed_hep_stream`` for TCP bytes) or as ready ``Segment``
values (``feed_segment``). Each call returns what that input completed: ``Call`` values for the
verifier (``analyzer.assess.assess_call`` judges each INVITE as of its own packet or HEP
timestamp) and ``Anomaly`` values (malformed HEP, unparseable SIP, TCP gaps...), never an
exception for the content of a packet.

Time. Call completion is driven by capture time, as in a file: the packet (or HEP) timestamps
advance the call tracker. Live traffic can stop, though, and a call that ended must not wait
for the next packet to be written, so ``tick(wall_ns)`` moves capture time on by the wall time
elapsed since the newest packet arrived (the capture clock of a HEP agent may be skewed; only
the elapsed time is taken from the wall clock). ``flush()`` ends everything: every call still
open comes out (``end_of_input``), which is how a listener's graceful shutdown writes
in-progress calls.

The machine is single-threaded and does no I/O: the caller owns sockets, threads and the
clock (``wall_ns`` is a parameter). Memory is bounded by the stages' own limits (call tracker,
defragmenter, TCP reassembler, message reader) and ``MAX_HEP_STREAMS``.

ARCHITECTURE.md section 2 (analyzer pipeline); STANDARDS.md section 13 (HEP).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.calls import Call, CallTracker
from analyzer.capture import MessageReader, ObservedMessage
from analyzer.defrag import Defragmenter
from analyzer.frames import Fragment, Segment
from analyzer.hep import (
    HEP3_MAGIC,
    HepChunk,
    HepError,
    HepErrorReason,
    HepPacket,
    HepProtoType,
    HepStreamFramer,
    decode_hep,
    hep_to_segment,
    is_hep,
)
from analyzer.linklayer import LinkDecoder
from analyzer.tcpstream import FlowKey, StreamChunk, TcpReassembler

# HEP-over-TCP connections with a framer at once; the collector limits its connections below
# this, so reaching it means connections were not closed (the oldest framer is dropped).
MAX_HEP_STREAMS = 4096
# Largest HEP protocol type given its own counter label (the registry's values are < 256,
# STANDARDS.md section 13); larger ones are counted as "other" so the label set stays bounded.
MAX_LABELLED_PROTO_TYPE = 0xFF

LiveItem = Call | Anomaly
"""What the pipeline emits: a finished call (to verify) or an anomaly (to record)."""


@dataclass(slots=True)
class LiveStats:
    """Counts of what the pipeline saw (read by metrics and summary lines).

    ``hep_payloads`` counts HEP packets by payload kind (``sip``, ``heartbeat``, the protocol
    type name such as ``rtcp_json``, or ``type_N``); ``hep_chunks`` counts chunks skipped as
    vendor-specific (``vendor``), unknown generic types (``unknown``) or known but not used
    (their name, e.g. ``mos``); ``hep_errors`` counts undecodable packets by reason.
    STANDARDS.md section 13.
    """

    packets: int = 0
    bytes: int = 0
    calls: int = 0
    anomalies: Counter[str] = field(default_factory=Counter)
    hep_versions: Counter[str] = field(default_factory=Counter)
    hep_payloads: Counter[str] = field(default_factory=Counter)
    hep_chunks: Counter[str] = field(default_factory=Counter)
    hep_errors: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, object]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "calls": self.calls,
            "anomalies": dict(sorted(self.anomalies.items())),
            "hep_versions": dict(sorted(self.hep_versions.items())),
            "hep_payloads": dict(sorted(self.hep_payloads.items())),
            "hep_chunks": dict(sorted(self.hep_chunks.items())),
            "hep_errors": dict(sorted(self.hep_errors.items())),
        }


_KNOWN_CHUNKS = {int(c) for c in HepChunk}


def _chunk_label(vendor: int, ctype: int) -> str:
    if vendor != 0:
        return "vendor"
    if ctype in _KNOWN_CHUNKS:
        return HepChunk(ctype).name.lower()
    return "unknown"


def _payload_label(proto_type: int | None) -> str:
    if proto_type is None:
        return "sip"
    try:
        return HepProtoType(proto_type).name.lower()
    except ValueError:
        return f"type_{proto_type}" if proto_type <= MAX_LABELLED_PROTO_TYPE else "other"


def is_heartbeat(pkt: HepPacket) -> bool:
    """A HEP keep-alive: a packet with the keep-alive chunk (0x0d) or nothing to carry.

    STANDARDS.md section 13 (chunk 0x0d, "keep alive timer").
    """
    if not pkt.payload:
        return True
    return any(vendor == 0 and ctype == HepChunk.KEEPALIVE for vendor, ctype, _ in pkt.chunks)


def advance_tracker(tracker: CallTracker, now_ns: int) -> list[Call]:
    """``tracker.advance(now_ns)``: kept for callers written before ``CallTracker.advance``
    existed (RFC 3261 section 17.1.1.2, see calls.py)."""
    return tracker.advance(now_ns)


class LivePipeline:
    """Live inputs -> link layer -> defragmentation -> TCP -> HEP -> SIP -> calls.

    See the module docstring. ARCHITECTURE.md section 2; STANDARDS.md section 13.
    """

    def __init__(
        self,
        *,
        tracker: CallTracker | None = None,
        verify_checksums: bool = False,
        unwrap_hep: bool = True,
    ) -> None:
        self.tracker = tracker if tracker is not None else CallTracker()
        self.decoder = LinkDecoder(verify_checksums=verify_checksums)
        self.defrag = Defragmenter()
        self.tcp = TcpReassembler()
        self.reader = MessageReader()
        self.unwrap_hep = unwrap_hep
        self.stats = LiveStats()
        self.frame = 0  # the last frame number given out
        self._hep_flows: dict[FlowKey, HepStreamFramer] = {}  # HEP over TCP seen on a wire
        self._hep_streams: dict[Hashable, HepStreamFramer] = {}  # collector TCP connections
        self._latest_ts = 0  # newest capture time seen
        self._latest_wall = 0  # wall time when it arrived

    # -- inputs ------------------------------------------------------------------------------

    def feed_record(
        self, linktype: int, data: bytes, ts_ns: int, wall_ns: int, frame: int | None = None
    ) -> list[LiveItem]:
        """One captured frame (``frame`` defaults to the next number; pass the pcap frame
        number when the packets are also written to a file). tcpdump.org link types."""
        frame = self._frame(frame)
        self.stats.packets += 1
        self.stats.bytes += len(data)
        self._clock(ts_ns, wall_ns)
        out: list[LiveItem] = []
        dec = self.decoder
        decoded = dec.decode_record(frame, ts_ns, linktype, data)
        if dec.anomalies:
            self._anomalies(dec.take_anomalies(), out)
        if decoded is not None:
            self._handle(decoded, out)
        return out

    def feed_segment(self, seg: Segment, wall_ns: int) -> list[LiveItem]:
        """One transport payload already taken out of its packet (numbered by the caller)."""
        self.frame = max(self.frame, seg.frame)
        self.stats.packets += 1
        self.stats.bytes += len(seg.payload)
        self._clock(seg.ts_ns, wall_ns)
        out: list[LiveItem] = []
        self._segment(seg, out)
        return out

    def feed_hep(self, data: bytes, wall_ns: int, origin: str = "") -> list[LiveItem]:
        """One HEP packet as received in one datagram (HEPv1/v2/v3). ``origin`` (the agent's
        address) is put in anomaly details. STANDARDS.md section 13."""
        self.stats.packets += 1
        self.stats.bytes += len(data)
        out: list[LiveItem] = []
        try:
            pkt = decode_hep(data)
        except HepError as exc:
            self._hep_error(exc, self._frame(None), wall_ns, origin, out)
            return out
        self._clock(pkt.ts_ns if pkt.ts_ns is not None else wall_ns, wall_ns)
        self._hep_packet(pkt, self._frame(None), wall_ns, out)
        return out

    def feed_hep_stream(
        self, stream: Hashable, data: bytes, wall_ns: int, origin: str = ""
    ) -> list[LiveItem]:
        """Bytes of a HEP-over-TCP connection ``stream`` (any hashable id), framed by the HEP3
        length field. STANDARDS.md section 13 (TCP transport)."""
        self.stats.bytes += len(data)
        framer = self._hep_streams.get(stream)
        if framer is None:
            if len(self._hep_streams) >= MAX_HEP_STREAMS:
                del self._hep_streams[next(iter(self._hep_streams))]
            framer = self._hep_streams[stream] = HepStreamFramer()
        out: list[LiveItem] = []
        for item in framer.feed(data):
            self.stats.packets += 1
            if isinstance(item, HepError):
                self._hep_error(item, self._frame(None), wall_ns, origin, out)
            else:
                self._clock(item.ts_ns if item.ts_ns is not None else wall_ns, wall_ns)
                self._hep_packet(item, self._frame(None), wall_ns, out)
        return out

    def close_hep_stream(self, stream: Hashable, wall_ns: int, origin: str = "") -> list[LiveItem]:
        """The connection ``stream`` closed: a packet it left half sent is an anomaly."""
        framer = self._hep_streams.pop(stream, None)
        out: list[LiveItem] = []
        left = framer.buffered if framer is not None else 0
        if left:
            error = HepError(HepErrorReason.TOO_SHORT, f"connection closed inside a packet "
                             f"({left} bytes)")  # fmt: skip
            self._hep_error(error, self._frame(None), wall_ns, origin, out)
        return out

    def tick(self, wall_ns: int) -> list[LiveItem]:
        """Wall time passed with no packet: move capture time on by the elapsed wall time and
        emit the calls (and IP fragment timeouts) that became due."""
        if not self._latest_wall:
            return []
        now = self._latest_ts + max(0, wall_ns - self._latest_wall)
        out: list[LiveItem] = []
        self.defrag.expire(now)
        if self.defrag.anomalies:
            self._anomalies(self.defrag.take_anomalies(), out)
        self._calls(self.tracker.advance(now), out)
        return out

    def flush(self) -> list[LiveItem]:
        """End of input: every partial stream reported, every open call emitted."""
        out: list[LiveItem] = []
        self.defrag.flush()
        self._anomalies(self.defrag.take_anomalies(), out)
        chunks = self.tcp.flush()
        self._anomalies(self.tcp.take_anomalies(), out)
        for chunk in chunks:
            self._chunk(chunk, out)
        for stream in list(self._hep_streams):
            out.extend(self.close_hep_stream(stream, self._latest_wall))
        self._anomalies(self.reader.close(), out)
        self._calls(self.tracker.flush(), out)
        self._anomalies(self.tracker.take_anomalies(), out)
        return out

    # -- stages ------------------------------------------------------------------------------

    def _frame(self, frame: int | None) -> int:
        self.frame = self.frame + 1 if frame is None else frame
        return self.frame

    def _clock(self, ts_ns: int, wall_ns: int) -> None:
        if ts_ns >= self._latest_ts:
            self._latest_ts = ts_ns
            self._latest_wall = wall_ns

    def _anomalies(self, items: list[Anomaly], out: list[LiveItem]) -> None:
        for item in items:
            self.stats.anomalies[item.kind.value] += 1
            out.append(item)

    def _calls(self, calls: list[Call], out: list[LiveItem]) -> None:
        self.stats.calls += len(calls)
        out.extend(calls)

    def _handle(self, decoded: Segment | Fragment, out: list[LiveItem]) -> None:
        dec = self.decoder
        while isinstance(decoded, Fragment):
            dg = self.defrag.feed(decoded)
            if self.defrag.anomalies:
                self._anomalies(self.defrag.take_anomalies(), out)
            if dg is None:
                return
            nxt = dec.decode_datagram(
                dg.frame, dg.ts_ns, dg.version, dg.src, dg.dst, dg.proto, dg.payload,
                dg.frames, dg.depth,
            )  # fmt: skip
            if dec.anomalies:
                self._anomalies(dec.take_anomalies(), out)
            if nxt is None:
                return
            decoded = nxt
        if dec.released:
            for held in dec.take_released():
                self._tcp(held, out)
        if decoded.transport == "tcp":
            self._tcp(decoded, out)
        elif self.unwrap_hep and is_hep(decoded.payload):
            try:
                pkt = decode_hep(decoded.payload)
            except HepError as exc:
                if decoded.payload[:4] == HEP3_MAGIC:
                    self._hep_error(exc, decoded.frame, decoded.ts_ns, "", out)
                return
            self._hep_packet(pkt, decoded.frame, decoded.ts_ns, out)
        else:
            self._segment(decoded, out)

    def _tcp(self, seg: Segment, out: list[LiveItem]) -> None:
        chunks = self.tcp.feed(seg)
        if self.tcp.anomalies:
            self._anomalies(self.tcp.take_anomalies(), out)
        for chunk in chunks:
            self._chunk(chunk, out)

    def _chunk(self, chunk: StreamChunk, out: list[LiveItem]) -> None:
        flow = chunk.flow
        framer = self._hep_flows.get(flow)
        if framer is None and self.unwrap_hep and chunk.data.startswith(HEP3_MAGIC):
            framer = self._hep_flows[flow] = HepStreamFramer()
        if framer is not None:
            if chunk.gap_before:
                framer.reset()
            for pkt in framer.feed(chunk.data):
                if isinstance(pkt, HepError):
                    self._hep_error(pkt, chunk.first_frame, chunk.ts_ns, "", out)
                else:
                    self._hep_packet(pkt, chunk.first_frame, chunk.ts_ns, out)
            if chunk.end:
                del self._hep_flows[flow]
            return
        src, sport, dst, dport = flow
        self._segment(
            Segment(
                chunk.first_frame, chunk.ts_ns, src, sport, dst, dport, "tcp", chunk.data,
                source_file=chunk.source_file, frames=chunk.frames, gap_before=chunk.gap_before,
                end=chunk.end, frame_sources=chunk.frame_sources, frame_ends=chunk.frame_ends,
            ),
            out,
        )  # fmt: skip

    def _hep_error(
        self, exc: HepError, frame: int, ts_ns: int, origin: str, out: list[LiveItem]
    ) -> None:
        self.stats.hep_errors[exc.reason.value] += 1
        kind = (
            AnomalyKind.HEP_UNSUPPORTED
            if exc.reason is HepErrorReason.UNSUPPORTED_VERSION
            else AnomalyKind.HEP_MALFORMED
        )
        detail = f"from {origin}: {exc}" if origin else str(exc)
        self._anomalies([Anomaly(kind, frame, ts_ns, detail)], out)

    def _hep_packet(
        self, pkt: HepPacket, frame: int, fallback_ns: int, out: list[LiveItem]
    ) -> None:
        """Count one decoded HEP packet and pass its SIP payload on; the time is the agent's
        capture time, else ``fallback_ns`` (arrival, or the outer packet's capture time)."""
        stats = self.stats
        stats.hep_versions[f"v{pkt.version}"] += 1
        for vendor, ctype, _value in pkt.chunks:
            stats.hep_chunks[_chunk_label(vendor, ctype)] += 1
        if is_heartbeat(pkt):
            stats.hep_payloads["heartbeat"] += 1
            return
        if not pkt.is_sip:
            stats.hep_payloads[_payload_label(pkt.proto_type)] += 1
            return
        stats.hep_payloads["sip"] += 1
        self._segment(hep_to_segment(pkt, frame, ts_ns=fallback_ns), out)

    def _segment(self, seg: Segment, out: list[LiveItem]) -> None:
        tracker = self.tracker
        for item in self.reader.feed(seg):
            if type(item) is ObservedMessage:
                done = tracker.feed(item)
                if tracker.anomalies:
                    self._anomalies(tracker.take_anomalies(), out)
                if done:
                    self._calls(done, out)
            else:
                self._anomalies([item], out)  # type: ignore[list-item]
