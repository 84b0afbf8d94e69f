"""Per-direction TCP reassembly, sans-IO, timed by capture time.

Theory of operation: each direction (src, sport, dst, dport) has a ``next_seq``: the sequence
number of the next byte to deliver. The first segment seen fixes it (SYN: ISN + 1; otherwise the
segment's own sequence number, because captures start anywhere). A segment at ``next_seq`` is
delivered at once, followed by any buffered segments it makes contiguous; a segment after it is
buffered (bounded); a segment before it is a retransmission: the part already delivered is
compared with the last ``HISTORY_BYTES`` delivered (identical: ignored; different:
``tcp_retransmission_conflict``, the first copy wins) and only new bytes are delivered.
All sequence arithmetic is modulo 2**32 (RFC 9293 section 3.4), so wraparound is transparent.

Gaps: when buffered data exceeds ``MAX_BUFFERED_BYTES_PER_FLOW`` or ``MAX_BUFFERED_SEGMENTS``, or
at FIN/RST, idle expiry or ``flush()``, the missing bytes are given up: one ``tcp_gap`` anomaly,
and the next chunk carries ``gap_before=True`` so the consumer (``sip.StreamFramer``) resyncs.
FIN/RST end a direction (RST both) with an empty ``end=True`` chunk after its last data.

Several inputs: a connection may continue from one capture file into the next (rotated
captures), so every byte keeps the input index of the frame that carried it, buffered or not;
chunks list the source of each of their frames and anomalies name the source of their frame.

Memory: at most ``MAX_FLOWS`` directions (least recently active evicted first) and
``MAX_BUFFERED_BYTES_TOTAL`` buffered bytes in all; ``IDLE_TIMEOUT_NS`` of capture-time silence
ends a direction.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.frames import TCP_FIN, TCP_RST, TCP_SYN, Segment

FlowKey = tuple[str, int, str, int]

SEQ_MOD = 1 << 32
SEQ_HALF = 1 << 31
# Delivered bytes kept per direction to judge retransmissions (a SIP message is a few kB;
# retransmissions resend the last segments).
HISTORY_BYTES = 4096
# Out-of-order data held per direction before declaring a gap: 256 KiB is above the default
# Linux receive window scaling for a SIP signalling link and bounds a broken flow.
MAX_BUFFERED_BYTES_PER_FLOW = 256 * 1024
MAX_BUFFERED_SEGMENTS = 512
# Out-of-order data held over all flows (bounded memory whatever the flow count).
MAX_BUFFERED_BYTES_TOTAL = 64 * 1024 * 1024
# A segment further ahead than this is not "out of order" but a new byte stream (port reuse or
# a capture hole): Linux's maximum receive window with scaling is 1 GiB; 16 MiB is ample for SIP.
MAX_SEQ_JUMP = 16 * 1024 * 1024
# Directions tracked at once (least recently active evicted).
MAX_FLOWS = 65536
# Zeek's tcp_inactivity_timeout default is 5 min: a direction silent that long is ended.
IDLE_TIMEOUT_NS = 300 * 1_000_000_000


class StreamChunk(NamedTuple):
    """In-order bytes of one direction: ``(flow, data, first_frame, ts_ns)`` plus context.

    ``frames`` lists every frame that contributed bytes; ``ts_ns`` is the capture time of the
    segment that made the bytes available; ``gap_before`` says bytes were lost just before;
    ``end`` marks the end of the direction (``data`` is then empty). ``source_file`` is the
    input index of ``first_frame``; ``frame_sources``, parallel to ``frames``, gives each
    frame's input and is empty when they all come from ``source_file`` (the common case);
    ``frame_ends``, parallel to ``frames``, where each frame's bytes end in ``data``, is empty
    when one frame carried them all (so that a message is credited with the frames holding
    its own bytes, not those of a neighbour released in the same chunk).

    RFC 9293 section 3.10.7.4 (segment arrival, in-order delivery).
    """

    flow: FlowKey
    data: bytes
    first_frame: int
    ts_ns: int
    frames: tuple[int, ...] = ()
    gap_before: bool = False
    end: bool = False
    source_file: int = 0
    frame_sources: tuple[int, ...] = ()
    frame_ends: tuple[int, ...] = ()


# Bytes with the frame that carried them and that frame's input index.
_Part = tuple[bytes, int, int]


@dataclass(slots=True)
class _Direction:
    next_seq: int
    last_ts: int
    last_source: int  # input index of ``last_frame``
    last_frame: int = 0
    history: bytes = b""
    # seq -> (data, frame, ts, input index of frame)
    buffered: dict[int, tuple[bytes, int, int, int]] = field(default_factory=dict)
    buffered_bytes: int = 0
    fin_seq: int | None = None
    gap_pending: bool = False
    conflict_reported: bool = False


def _rel(seq: int, base: int) -> int:
    """Signed distance from ``base`` to ``seq`` modulo 2**32 (RFC 9293 section 3.4)."""
    d = (seq - base) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_HALF else d


class TcpReassembler:
    """Reassemble TCP payloads per direction; ``feed`` returns newly available chunks.

    RFC 9293 sections 3.4 and 3.10.7.4.
    """

    def __init__(
        self,
        *,
        max_flows: int = MAX_FLOWS,
        max_buffered_per_flow: int = MAX_BUFFERED_BYTES_PER_FLOW,
        idle_timeout_ns: int = IDLE_TIMEOUT_NS,
    ) -> None:
        self.max_flows = max_flows
        self.max_buffered_per_flow = max_buffered_per_flow
        self.idle_timeout_ns = idle_timeout_ns
        self.anomalies: list[Anomaly] = []
        self._flows: OrderedDict[FlowKey, _Direction] = OrderedDict()
        self._buffered_total = 0

    def take_anomalies(self) -> list[Anomaly]:
        """Return and clear the anomalies reported since the last call."""
        out, self.anomalies = self.anomalies, []
        return out

    @property
    def flow_count(self) -> int:
        """Directions currently tracked."""
        return len(self._flows)

    def feed(self, seg: Segment) -> list[StreamChunk]:
        """Add one TCP segment (in capture order); return the chunks it makes available.

        RFC 9293 section 3.10.7.4.
        """
        out: list[StreamChunk] = []
        self._expire(seg.ts_ns, out)
        key: FlowKey = (seg.src, seg.sport, seg.dst, seg.dport)
        flags = seg.flags
        d = self._flows.get(key)
        if d is None:
            if not seg.payload and not flags & TCP_SYN:
                if flags & TCP_RST:
                    self._close(key, (seg.dst, seg.dport, seg.src, seg.sport), seg, out)
                return out
            start = (seg.seq + 1) % SEQ_MOD if flags & TCP_SYN else seg.seq
            d = _Direction(start, seg.ts_ns, seg.source_file, seg.frame)
            while len(self._flows) >= self.max_flows:
                old_key = next(iter(self._flows))
                self._end(old_key, self._flows[old_key], seg, out, "flow table full")
            self._flows[key] = d
        else:
            self._flows.move_to_end(key)
            d.last_ts = seg.ts_ns
            d.last_frame = seg.frame
            d.last_source = seg.source_file
            if flags & TCP_SYN and not seg.payload and _rel(seg.seq + 1, d.next_seq) != 0:
                # A new SYN on a known 4-tuple: a new connection (port reuse).
                self._end(key, d, seg, out, "connection restarted")
                d = self._flows[key] = _Direction(
                    (seg.seq + 1) % SEQ_MOD, seg.ts_ns, seg.source_file, seg.frame
                )
        seq = (seg.seq + 1) % SEQ_MOD if flags & TCP_SYN else seg.seq
        if seg.payload:
            self._data(key, d, seq, seg.payload, seg.frame, seg.source_file, seg.ts_ns, out)
        if flags & TCP_FIN:
            d.fin_seq = (seq + len(seg.payload)) % SEQ_MOD
        if flags & TCP_RST:
            self._close(key, (seg.dst, seg.dport, seg.src, seg.sport), seg, out)
        elif d.fin_seq is not None and key in self._flows:
            if d.buffered:
                self._gap(key, d, seg, out, "FIN with missing data")
            self._end(key, d, seg, out, None)
        return out

    def flush(self) -> list[StreamChunk]:
        """End of input: give up every hole and end every direction."""
        out: list[StreamChunk] = []
        for key in list(self._flows):
            d = self._flows[key]
            if d.buffered:
                self._gap(key, d, None, out, "capture ended with missing data")
            self._end(key, d, None, out, None)
        return out

    # -- internals -------------------------------------------------------------------------

    def _data(
        self,
        key: FlowKey,
        d: _Direction,
        seq: int,
        data: bytes,
        frame: int,
        source: int,
        ts: int,
        out: list[StreamChunk],
    ) -> None:
        rel = _rel(seq, d.next_seq)
        if rel > MAX_SEQ_JUMP or rel < -MAX_SEQ_JUMP:
            # Not plausibly the same byte stream: resynchronise on this segment.
            if d.buffered:
                self._gap(key, d, None, out, "stream resynchronised", frame, ts, source)
            self._report_gap(frame, ts, source, f"sequence jumped by {rel} in {key}")
            d.next_seq, d.history, d.gap_pending, rel = seq, b"", True, 0
        if rel > 0:
            self._buffer(key, d, seq, data, frame, source, ts, out)
            return
        if rel < 0:
            data = self._trim_old(d, -rel, data, frame, source, ts)
            if not data:
                return
        self._deliver(key, d, [(data, frame, source)], ts, out)

    def _trim_old(
        self, d: _Direction, old: int, data: bytes, frame: int, source: int, ts: int
    ) -> bytes:
        """Drop the ``old`` leading bytes already delivered, checking them against history."""
        overlap = min(old, len(data))
        hist_start = len(d.history) - old
        if hist_start >= 0:
            seen = d.history[hist_start : hist_start + overlap]
            if seen != data[: len(seen)] and not d.conflict_reported:
                d.conflict_reported = True
                self.anomalies.append(
                    Anomaly(AnomalyKind.TCP_RETRANSMISSION_CONFLICT, frame, ts,
                            "retransmitted bytes differ from the first copy (first kept)",
                            source)
                )  # fmt: skip
        return data[overlap:]

    def _buffer(
        self,
        key: FlowKey,
        d: _Direction,
        seq: int,
        data: bytes,
        frame: int,
        source: int,
        ts: int,
        out: list[StreamChunk],
    ) -> None:
        held = d.buffered.get(seq)
        if held is not None:
            same = held[0][: len(data)] == data[: len(held[0])]
            if not same and not d.conflict_reported:
                d.conflict_reported = True
                self.anomalies.append(
                    Anomaly(AnomalyKind.TCP_RETRANSMISSION_CONFLICT, frame, ts,
                            "out-of-order copies differ (first kept)", source)
                )  # fmt: skip
            if len(data) <= len(held[0]):
                return
            data = held[0] + data[len(held[0]) :]
            self._buffered_total -= len(held[0])
            d.buffered_bytes -= len(held[0])
            frame, source = held[1], held[3]
        d.buffered[seq] = (data, frame, ts, source)
        d.buffered_bytes += len(data)
        self._buffered_total += len(data)
        if d.buffered_bytes > self.max_buffered_per_flow or len(d.buffered) > MAX_BUFFERED_SEGMENTS:
            self._gap(key, d, None, out, "out-of-order buffer full", frame, ts, source)
        while self._buffered_total > MAX_BUFFERED_BYTES_TOTAL:
            victim = next((k for k, v in self._flows.items() if v.buffered), None)
            if victim is None:
                break
            victim_d = self._flows[victim]
            self._gap(victim, victim_d, None, out, "reassembly memory full", frame, ts, source)

    def _deliver(
        self,
        key: FlowKey,
        d: _Direction,
        parts: list[_Part],
        ts: int,
        out: list[StreamChunk],
    ) -> None:
        """Deliver ``parts`` at ``next_seq`` plus whatever buffered data becomes contiguous."""
        d.next_seq = (d.next_seq + sum(len(p) for p, _, _ in parts)) % SEQ_MOD
        if d.buffered:
            # One ordered pass: delivering only moves next_seq forward, so the order holds.
            base = d.next_seq
            for bseq in sorted(d.buffered, key=lambda s: _rel(s, base)):
                rel = _rel(bseq, d.next_seq)
                if rel > 0:
                    break
                bdata, bframe, _bts, bsource = d.buffered.pop(bseq)
                d.buffered_bytes -= len(bdata)
                self._buffered_total -= len(bdata)
                if rel < 0:
                    bdata = self._trim_old_buffered(d, parts, -rel, bdata, bframe, bsource, ts)
                if bdata:
                    parts.append((bdata, bframe, bsource))
                    d.next_seq = (d.next_seq + len(bdata)) % SEQ_MOD
        gap, d.gap_pending = d.gap_pending, False
        if len(parts) == 1:  # the common case: one segment, one frame
            data, frame, source = parts[0]
            d.history = (d.history + data)[-HISTORY_BYTES:]
            out.append(StreamChunk(key, data, frame, ts, (frame,), gap, False, source))
            return
        data = b"".join(p for p, _, _ in parts)
        frames: list[int] = []
        sources: list[int] = []
        ends: list[int] = []
        end = 0
        for part, fr, src in parts:
            end += len(part)
            if not frames or frames[-1] != fr or sources[-1] != src:
                frames.append(fr)
                sources.append(src)
                ends.append(end)
            else:
                ends[-1] = end
        first = sources[0]
        mixed = tuple(sources) if sources.count(first) != len(sources) else ()
        d.history = (d.history + data)[-HISTORY_BYTES:]
        out.append(
            StreamChunk(
                key, data, frames[0], ts, tuple(frames), gap, False, first, mixed,
                tuple(ends) if len(ends) > 1 else (),
            )
        )  # fmt: skip

    def _trim_old_buffered(
        self,
        d: _Direction,
        parts: list[_Part],
        old: int,
        data: bytes,
        frame: int,
        source: int,
        ts: int,
    ) -> bytes:
        """Like ``_trim_old`` but the overlap may still be in ``parts`` (not yet in history)."""
        saved = d.history
        d.history = (d.history + b"".join(p for p, _, _ in parts))[-HISTORY_BYTES:]
        try:
            return self._trim_old(d, old, data, frame, source, ts)
        finally:
            d.history = saved

    def _gap(
        self,
        key: FlowKey,
        d: _Direction,
        seg: Segment | None,
        out: list[StreamChunk],
        why: str,
        frame: int | None = None,
        ts: int | None = None,
        source: int | None = None,
    ) -> None:
        """Give up the hole before the earliest buffered byte and deliver what follows.

        The anomaly names ``seg`` or else ``frame`` (of input ``source``); with neither, the
        direction's last frame's input.
        """
        if seg is not None:
            frame, ts, source = seg.frame, seg.ts_ns, seg.source_file
        if not d.buffered:
            return
        if source is None:
            source = d.last_source
        first = min(d.buffered, key=lambda s: _rel(s, d.next_seq))
        missing = _rel(first, d.next_seq)
        self._report_gap(frame, ts, source, f"{why}: {max(missing, 0)} bytes missing in {key}")
        d.next_seq, d.history, d.gap_pending = first, b"", True
        bdata, bframe, bts, bsource = d.buffered.pop(first)
        d.buffered_bytes -= len(bdata)
        self._buffered_total -= len(bdata)
        self._deliver(key, d, [(bdata, bframe, bsource)], bts if ts is None else ts, out)
        if d.buffered:  # more holes behind: give them up too
            self._gap(key, d, seg, out, why, frame, ts, source)

    def _report_gap(self, frame: int | None, ts: int | None, source: int, detail: str) -> None:
        self.anomalies.append(Anomaly(AnomalyKind.TCP_GAP, frame, ts, detail, source))

    def _end(
        self,
        key: FlowKey,
        d: _Direction,
        seg: Segment | None,
        out: list[StreamChunk],
        why: str | None,
    ) -> None:
        if why and d.buffered:
            self._gap(key, d, seg, out, why)
        self._flows.pop(key, None)
        self._buffered_total -= d.buffered_bytes
        if seg is not None:
            frame, ts, source = seg.frame, seg.ts_ns, seg.source_file
        else:
            frame, ts, source = d.last_frame, d.last_ts, d.last_source
        out.append(StreamChunk(key, b"", frame, ts, (), False, True, source))

    def _close(self, key: FlowKey, reverse: FlowKey, seg: Segment, out: list[StreamChunk]) -> None:
        """RST: end both directions, giving up any hole."""
        for k in (key, reverse):
            d = self._flows.get(k)
            if d is not None:
                if d.buffered:
                    self._gap(k, d, seg, out, "RST with missing data")
                self._end(k, d, seg, out, None)

    def _expire(self, now: int, out: list[StreamChunk]) -> None:
        limit = now - self.idle_timeout_ns
        while self._flows:
            key = next(iter(self._flows))
            d = self._flows[key]
            if d.last_ts >= limit:
                break
            if d.buffered:
                self._gap(key, d, None, out, "idle timeout with missing data", None, d.last_ts)
            self._end(key, d, None, out, None)
