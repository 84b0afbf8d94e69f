"""From captures to SIP: transport payloads -> SIP messages with where and when they were seen.

Theory of operation: ``iter_segments`` (analyzer/pcapfile.py) yields UDP datagrams whole, HEP
inner packets whole and TCP as in-order chunks per direction. A UDP datagram or a HEP packet
carries exactly one SIP message (RFC 3261 section 18.1.1; HEP agents send one per packet):
``sip.keys.scan_keys`` reads its call keys and the full ``sip.parse_message`` is deferred to
first use (in a worker process, for the INVITEs that get verified), unless the scan declines an
unusual message, which is then parsed at once. A TCP direction gets a ``sip.StreamFramer``; the
bytes fed and not yet consumed are mirrored (bounded by one message, like the framer's own
buffer) together with the frames that carried them and their inputs, so every message is
attributed to exactly the frames holding its bytes (a connection may continue from one capture
file into the next: each frame keeps its own input index), and the capture time of the frame
that completed it. A chunk
marked ``gap_before`` closes the framer (its partial message is reported) and starts a new one;
``end`` closes the direction. Nothing raises: an unparseable payload or stream garbage becomes
a ``Anomaly`` with its frame number, next to the capture layers' ``Anomaly`` values.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.frames import Segment
from analyzer.pcapfile import Source, iter_segments
from analyzer.tcpstream import FlowKey
from sip import (
    FramingError,
    Request,
    Response,
    SipParseError,
    SipReason,
    StreamFramer,
    parse_message,
)
from sip.keys import MessageKeys, keys_of, scan_keys
from sip.parser import find_header_end

# TCP directions with an open framer. One per SIP connection direction; iter_segments already
# bounds the flows it tracks (tcpstream.MAX_FLOWS), this bounds ours the same way.
MAX_STREAMS = 65536


# One anomaly type for every layer (analyzer/anomaly.py).
AnyAnomaly = Anomaly


def anomaly_to_json(item: AnyAnomaly) -> dict[str, object]:
    """The JSON shape of an anomaly in JSONL records and summaries."""
    out: dict[str, object] = {"kind": item.kind.value, "frame": item.frame}
    if item.source_file:
        out["source_file"] = item.source_file
    out["detail"] = item.detail
    return out


@dataclass(slots=True, init=False, unsafe_hash=True)
class ObservedMessage:
    """One SIP message as seen on the wire: the message plus where and when.

    ``frame`` is the first frame that carried its bytes and ``frames`` every such frame, in
    delivery order; ``source_file`` is the input index of ``frame`` and ``frame_sources``,
    parallel to ``frames``, that of each frame, empty when all are from ``source_file`` (only a
    TCP message straddling two capture files has frames from two inputs); ``ts_ns`` is the
    capture time (integer ns since the epoch) of the packet that completed it. ``transport`` is
    the inner transport (``udp`` or ``tcp``); ``encapsulation`` is ``"hep"`` when it was
    unwrapped from HEP. ``keys`` are the call correlation keys; ``message`` is the parsed
    message, parsed on first use when the value was made by ``scanned`` (the call tracker needs
    only the keys, and most messages are never looked at again). A value: never changed once
    made (but for that parse, kept on first use). Not a frozen dataclass only because one is
    made for every message of a capture, and frozen construction (an ``object.__setattr__`` per
    field) cost six times a plain one; equality and hashing are a frozen one's. ARCHITECTURE.md
    section 2.
    """

    raw: bytes
    keys: MessageKeys
    ts_ns: int
    frame: int
    frames: tuple[int, ...]
    src: str
    sport: int
    dst: str
    dport: int
    transport: str
    source_file: int = 0
    encapsulation: str = ""
    frame_sources: tuple[int, ...] = ()
    _parsed: Request | Response | None = field(default=None, repr=False, compare=False)

    def __init__(
        self, message: Request | Response, ts_ns: int, frame: int, frames: tuple[int, ...],
        src: str, sport: int, dst: str, dport: int, transport: str, source_file: int = 0,
        encapsulation: str = "", frame_sources: tuple[int, ...] = (),
    ) -> None:  # fmt: skip
        _fill(
            self, message.raw, keys_of(message), ts_ns, frame, frames, src, sport, dst, dport,
            transport, source_file, encapsulation, frame_sources, message,
        )  # fmt: skip

    @classmethod
    def scanned(
        cls, raw: bytes, keys: MessageKeys, ts_ns: int, frame: int, frames: tuple[int, ...],
        src: str, sport: int, dst: str, dport: int, transport: str, source_file: int = 0,
        encapsulation: str = "", frame_sources: tuple[int, ...] = (),
    ) -> ObservedMessage:  # fmt: skip
        """A message known by its bytes and keys (``sip.keys.scan_keys``), parsed on demand."""
        obs = _new(cls)
        _fill(
            obs, raw, keys, ts_ns, frame, frames, src, sport, dst, dport, transport, source_file,
            encapsulation, frame_sources, None,
        )  # fmt: skip
        return obs

    @property
    def frame_source_list(self) -> tuple[int, ...]:
        """The input index of every frame in ``frames`` (parallel to it)."""
        return self.frame_sources or (self.source_file,) * len(self.frames)

    @property
    def message(self) -> Request | Response:
        """The parsed message (RFC 3261 section 7)."""
        parsed = self._parsed
        if parsed is None:
            # scan_keys vouched for it: parse_message does not raise on these bytes.
            parsed = self._parsed = parse_message(self.raw)
        return parsed

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # Worker processes get the raw bytes and parse them again when needed: cheaper to
        # pickle than the parsed message with its accessor cache, and parsing is deterministic.
        return _scanned, (
            self.raw, self.keys, self.ts_ns, self.frame, self.frames, self.src, self.sport,
            self.dst, self.dport, self.transport, self.source_file, self.encapsulation,
            self.frame_sources,
        )  # fmt: skip


_new = object.__new__


def _scanned(
    raw: bytes, keys: MessageKeys, ts_ns: int, frame: int, frames: tuple[int, ...], src: str,
    sport: int, dst: str, dport: int, transport: str, source_file: int, encapsulation: str,
    frame_sources: tuple[int, ...] = (),
) -> ObservedMessage:  # fmt: skip
    """``ObservedMessage.scanned`` for unpickling (a module function pickles by name once)."""
    return ObservedMessage.scanned(
        raw, keys, ts_ns, frame, frames, src, sport, dst, dport, transport, source_file,
        encapsulation, frame_sources,
    )  # fmt: skip


def _fill(
    obs: ObservedMessage, raw: bytes, keys: MessageKeys, ts_ns: int, frame: int,
    frames: tuple[int, ...], src: str, sport: int, dst: str, dport: int, transport: str,
    source_file: int, encapsulation: str, frame_sources: tuple[int, ...],
    parsed: Request | Response | None,
) -> None:  # fmt: skip
    obs.raw = raw
    obs.keys = keys
    obs.ts_ns = ts_ns
    obs.frame = frame
    obs.frames = frames
    obs.src = src
    obs.sport = sport
    obs.dst = dst
    obs.dport = dport
    obs.transport = transport
    obs.source_file = source_file
    obs.encapsulation = encapsulation
    obs.frame_sources = frame_sources
    obs._parsed = parsed


# Stream bytes [start, end) with the frames that carried them, the capture time of the chunk,
# the input of its first frame and the inputs of its frames (empty: all from that input).
_Span = tuple[int, int, tuple[int, ...], int, int, tuple[int, ...]]


@dataclass(slots=True)
class _Stream:
    """One TCP direction: its framer and a mirror of the bytes the framer still holds."""

    framer: StreamFramer = field(default_factory=StreamFramer)
    origin: int = 0  # stream offset where this framer started
    base: int = 0  # stream offset of data[0]
    fed: int = 0  # stream offset after the last byte fed
    data: bytearray = field(default_factory=bytearray)
    spans: deque[_Span] = field(default_factory=deque)


class MessageReader:
    """Turns segments into ``ObservedMessage`` values and SIP anomalies (sans-IO machine).

    RFC 3261 section 18.3 (framing on streams), section 18.1.1 (one message per datagram).
    """

    def __init__(self) -> None:
        self._streams: dict[FlowKey, _Stream] = {}
        self.segments = 0
        self.messages = 0

    def feed(self, seg: Segment) -> list[ObservedMessage | Anomaly]:
        """Messages and anomalies completed by ``seg``."""
        self.segments += 1
        transport = seg.transport
        if transport == "tcp" and not seg.encapsulation:
            return self._stream(seg)
        payload = seg.payload
        if type(payload) is not bytes:
            payload = bytes(payload)
        keys = scan_keys(payload)
        if keys is not None:  # the common case: keys now, the full parse only if needed
            self.messages += 1
            obs = _new(ObservedMessage)
            _fill(
                obs, payload, keys, seg.ts_ns, seg.frame, seg.frames or (seg.frame,), seg.src,
                seg.sport, seg.dst, seg.dport, transport, seg.source_file, seg.encapsulation,
                seg.frame_sources, None,
            )  # fmt: skip
            return [obs]
        try:
            message = parse_message(payload)
        except SipParseError as exc:
            return [
                Anomaly(
                    AnomalyKind.SIP_UNPARSEABLE, seg.frame, seg.ts_ns,
                    f"{exc.reason.value}: {exc.detail}", seg.source_file,
                )
            ]  # fmt: skip
        self.messages += 1
        return [
            ObservedMessage(
                message, seg.ts_ns, seg.frame, seg.frame_numbers, seg.src, seg.sport, seg.dst,
                seg.dport, seg.transport, seg.source_file, seg.encapsulation, seg.frame_sources,
            )
        ]  # fmt: skip

    def close(self) -> list[Anomaly]:
        """End of input: partial messages left in any stream are reported."""
        out: list[Anomaly] = []
        for key in sorted(self._streams):
            stream = self._streams[key]
            out.extend(self._errors(stream, stream.framer.close(), 0))
        self._streams.clear()
        return out

    def _stream(self, seg: Segment) -> list[ObservedMessage | Anomaly]:
        key: FlowKey = (seg.src, seg.sport, seg.dst, seg.dport)
        out: list[ObservedMessage | Anomaly] = []
        stream = self._streams.get(key)
        if stream is not None and seg.gap_before:
            out.extend(self._errors(stream, stream.framer.close(), seg.source_file))
            stream = _Stream(origin=stream.fed, base=stream.fed, fed=stream.fed)
            self._streams[key] = stream
        if stream is None:
            if len(self._streams) >= MAX_STREAMS:
                del self._streams[next(iter(self._streams))]
            stream = self._streams[key] = _Stream()
        if seg.payload:
            start = stream.fed
            stream.fed += len(seg.payload)
            stream.data += seg.payload
            if seg.frame_ends:  # several frames' bytes: a span for each frame's
                _frame_spans(stream.spans, start, seg)
            else:
                stream.spans.append(
                    (start, stream.fed, seg.frame_numbers, seg.ts_ns, seg.source_file,
                     seg.frame_sources)
                )  # fmt: skip
            cursor = stream.base
            for item in stream.framer.feed(seg.payload):
                if isinstance(item, FramingError):
                    out.extend(self._errors(stream, [item], seg.source_file))
                    if item.reason is SipReason.MESSAGE_TOO_LARGE:
                        head = self._oversized_head(stream, item, seg)
                        if head is not None:
                            out.append(head)
                    cursor = stream.origin + item.stream_offset + item.length
                    continue
                observed, cursor = self._locate(stream, item, cursor, seg)
                out.append(observed)
            consumed = stream.fed - stream.framer.buffered
            if consumed > stream.base:
                del stream.data[: consumed - stream.base]
                stream.base = consumed
            while stream.spans and stream.spans[0][1] <= stream.base:
                stream.spans.popleft()
        if seg.end:
            out.extend(self._errors(stream, stream.framer.close(), seg.source_file))
            del self._streams[key]
        return out

    def _oversized_head(
        self, stream: _Stream, err: FramingError, seg: Segment
    ) -> ObservedMessage | None:
        """The header block of a message too large to frame whole (its body is skipped).

        Verification needs only the headers; a huge body (RFC 3261 section 18.3 puts no limit
        on it) must not hide the INVITE from the analysis.
        """
        start = stream.origin + err.stream_offset - stream.base
        if start < 0:
            return None
        head_end, body_start = find_header_end(stream.data, start)
        if head_end < 0:
            return None
        try:
            message = parse_message(bytes(stream.data[start:body_start]))
        except SipParseError:
            return None
        observed, _end = self._locate(stream, message, stream.base + start, seg)
        return observed

    def _locate(
        self, stream: _Stream, message: Request | Response, cursor: int, seg: Segment
    ) -> tuple[ObservedMessage, int]:
        """Where ``message`` sits in the mirrored stream: its frames and completion time."""
        raw = message.raw
        found = stream.data.find(raw, max(0, cursor - stream.base))
        start = stream.base + (found if found >= 0 else max(0, cursor - stream.base))
        end = start + len(raw)
        frames: list[int] = []
        source = -1  # input of the first span; any other input makes the frames "mixed"
        mixed = False
        ts_ns = seg.ts_ns
        for s_start, s_end, s_frames, s_ts, s_source, s_sources in stream.spans:
            if s_end <= start or s_start >= end:
                continue
            if source < 0:
                source = s_source
            if s_sources or s_source != source:
                mixed = True
            for frame in s_frames:
                if frame not in frames:
                    frames.append(frame)
            ts_ns = s_ts
        sources: tuple[int, ...] = ()
        if mixed:  # a connection continued into the next capture file (rare)
            frames, sources = _frames_of(stream.spans, start, end)
            source = sources[0]
            if sources.count(source) == len(sources):
                sources = ()
        elif not frames:
            frames, source = [seg.frame], seg.source_file
        self.messages += 1
        observed = ObservedMessage(
            message, ts_ns, frames[0], tuple(frames), seg.src, seg.sport, seg.dst, seg.dport,
            "tcp", source, "", sources,
        )  # fmt: skip
        return observed, end

    def _errors(self, stream: _Stream, errors: Sequence[object], source_file: int) -> list[Anomaly]:
        out = []
        for err in errors:
            if not isinstance(err, FramingError):
                continue
            at = stream.origin + err.stream_offset
            frame, ts, source = None, None, source_file
            span = None
            for candidate in stream.spans:
                if candidate[0] <= at < candidate[1]:
                    span = candidate
                    break
            if span is None and stream.spans:
                span = stream.spans[-1]
            if span is not None:
                # The span's first frame: its input is the span's (first) input.
                frame, ts, source = span[2][0], span[3], span[4]
            detail = f"{err.reason.value}: {err.length} bytes" + (
                f" ({err.detail})" if err.detail else ""
            )
            out.append(Anomaly(AnomalyKind.SIP_FRAMING, frame, ts, detail, source))
        return out


def _frame_spans(spans: deque[_Span], start: int, seg: Segment) -> None:
    """The spans of a chunk that several frames made (``seg.frame_ends``): one per frame, at
    the chunk's time (when its bytes became available), with the frame's own input."""
    lower = start
    for frame, source, end in zip(seg.frames, seg.frame_source_list, seg.frame_ends, strict=True):
        spans.append((lower, start + end, (frame,), seg.ts_ns, source, ()))
        lower = start + end


def _frames_of(spans: Iterable[_Span], start: int, end: int) -> tuple[list[int], tuple[int, ...]]:
    """The frames holding stream bytes ``[start, end)`` and the input of each, in delivery
    order; a frame is told apart by its number and its input (numbers restart in every file)."""
    seen: list[tuple[int, int]] = []
    for s_start, s_end, s_frames, _ts, s_source, s_sources in spans:
        if s_end <= start or s_start >= end:
            continue
        for pair in zip(s_frames, s_sources or (s_source,) * len(s_frames), strict=True):
            if pair not in seen:
                seen.append(pair)
    return [frame for frame, _ in seen], tuple(source for _, source in seen)


def iter_messages(
    sources: Source | Sequence[Source],
    *,
    verify_checksums: bool = False,
) -> Iterator[ObservedMessage | AnyAnomaly]:
    """Every SIP message in the captures, in capture order, with every anomaly on the way.

    Inputs are opened by this call, so ``NotACaptureError`` is raised here, not by iteration.

    ARCHITECTURE.md section 2 (analyzer pipeline); RFC 3261 section 18.
    """
    segments = iter_segments(sources, verify_checksums=verify_checksums)
    return messages_from_segments(segments)


def messages_from_segments(
    segments: Iterable[Segment | Anomaly], reader: MessageReader | None = None
) -> Iterator[ObservedMessage | AnyAnomaly]:
    """SIP messages (and anomalies, passed through) from ``iter_segments`` output.

    RFC 3261 section 18.
    """
    reader = reader or MessageReader()
    for item in segments:
        if type(item) is Anomaly:
            yield item
        else:
            yield from reader.feed(item)  # type: ignore[arg-type]
    yield from reader.close()
