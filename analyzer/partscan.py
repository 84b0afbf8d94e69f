"""Scanning partitions on workers, and putting the scans back together in the main process.

Theory of operation. A worker scans one partition (``analyzer.partition``): the capture reader,
link decoding, IP reassembly and the SIP key scan, exactly as a single process does
(``iter_segments`` then ``MessageReader``), and returns the SIP messages and anomalies in
capture order, compact (raw bytes, keys, time, frames, addresses), with what the main process
needs to check and place them (``ScanSummary``). The scans stay on the workers, which track
the calls only their partition sees (``analyzer.parttrack``). When that could differ from one
tracker, the main process feeds the messages of all partitions, in capture order, to its one
``CallTracker`` (``merged_items``): calls that span partitions or files, emission order,
replay flags and every count come out as in a single-process run by construction, and the
calls go back to the workers for verification (``analyzer.cluster``).

What a worker cannot know is the state a single reader would carry over from the bytes before
its partition. The scans are used only when none is carried, else the run reads the captures
in one process (``merged_items`` is never started) and says why:

* SIP over TCP (or HEP over TCP): the stream reassembly and the connection classification of
  the link decoder carry state across any cut, so a run that sees a TCP SIP segment anywhere
  falls back (``TCP_REASON``).
* A cut that is not a clean record boundary, a damaged capture before the end of a file (a
  single reader stops at the damage), an IP fragment train open at a cut, a pcapng section or
  interface block before a cut, a simple packet block (no timestamp of its own) right after
  one.
* Several files that overlap in time: a single run interleaves their records by timestamp.
  Files are put in order by the range of their merge keys (``pcapfile.merge_records``) and
  used only when each ends before the next begins.

The rest is placed exactly: frame numbers of a later partition are shifted by the records of
the earlier ones, the input index is set, anomalies a link decoder reports once per file (an
unknown link type, a TLS connection) are kept once, and the fragment trains still open at the
end of a file are reported after everything else, in input order, as a single reader flushes
them. HEP over UDP is unwrapped as the single reader does (``pcapfile``'s pipeline), here
after the scan so that a HEP stream over TCP is seen as TCP. ARCHITECTURE.md section 2.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import cast

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.capture import MessageReader, ObservedMessage
from analyzer.frames import Segment
from analyzer.hep import HEP3_MAGIC, HepError, decode_hep, hep_to_segment, is_hep
from analyzer.linklayer import MAX_KNOWN_CONNECTIONS
from analyzer.partition import PartitionSpec, PartitionStream
from analyzer.pcapfile import Source, iter_segments
from sip.keys import MessageKeys

MessageTuple = tuple[bytes, MessageKeys, int, int, tuple[int, ...], str, int, str, int, str, str]
"""``(raw, keys, ts_ns, frame, frames, src, sport, dst, dport, transport, encapsulation)``:
an ``ObservedMessage`` without its input index, cheap to pickle. Scans stop at SIP over TCP,
so every frame of a message is from the partition's input (``frame_sources`` stays empty)."""
ScanItem = MessageTuple | Anomaly

TCP_REASON = "SIP over TCP"
# Anomalies of the capture reader itself: a single reader stops at them.
_CAPTURE_KINDS = frozenset(
    {AnomalyKind.TRUNCATED_RECORD, AnomalyKind.TRUNCATED_CAPTURE, AnomalyKind.CORRUPT_BLOCK}
)
# Anomalies a link decoder reports once per input (its own tables remember them).
_ONCE_KINDS = frozenset({AnomalyKind.UNKNOWN_LINK_TYPE, AnomalyKind.TLS_FLOW})


@dataclass(frozen=True, slots=True)
class ScanSummary:
    """What the main process checks before using any scan (small: sent for every partition).

    ``records`` are the packet records of the partition, ``min_key``/``max_key`` the range of
    its merge keys (None: no record nor anomaly), ``unsafe`` why it cannot be used (None when
    it can), ``tls`` the TLS connections it reported (a single reader remembers at most
    ``MAX_KNOWN_CONNECTIONS`` per input)."""

    records: int
    min_key: int | None
    max_key: int | None
    unsafe: str | None
    segments: int
    messages: int
    tls: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PartitionScan:
    """A partition's SIP messages and anomalies in capture order (``items``), the fragment
    anomalies its end flushed (``tail``), and its summary."""

    summary: ScanSummary
    items: tuple[ScanItem, ...]
    tail: tuple[Anomaly, ...]


def summary_of(scan: PartitionScan) -> ScanSummary:
    """The summary alone (run where the scan is, so the items stay there until needed)."""
    return scan.summary


def _unsafe(spec: PartitionSpec, why: str) -> PartitionScan:
    return PartitionScan(ScanSummary(0, None, None, f"{why} in {spec.describe()}", 0, 0), (), ())


def scan_partition(spec: PartitionSpec, verify_checksums: bool = False) -> PartitionScan:
    """The worker task: scan one partition (see the module docstring). Pure function of the
    file bytes, so a task that is run again gives the same scan.

    ARCHITECTURE.md section 2 (capture sources -> reassembly -> SIP messages).
    """
    stream = PartitionStream(spec)
    reader = MessageReader()
    items: list[ScanItem] = []
    tail: list[Anomaly] = []
    tls: set[str] = set()
    collecting = gc.isenabled()
    # The scan keeps every message until the main process asks for them: hundreds of
    # thousands of acyclic objects the cyclic collector would walk again and again (a fifth
    # of the scan time, measured), and nothing to collect.
    gc.disable()
    try:
        segments = iter_segments(
            cast(Source, stream), verify_checksums=verify_checksums, unwrap_hep=False
        )
        for item in segments:
            if type(item) is not Segment:
                assert isinstance(item, Anomaly)
                if stream.eof and item.kind is AnomalyKind.FRAGMENT_TIMEOUT:
                    tail.append(item)  # flushed at the end of the input
                    continue
                if item.kind is AnomalyKind.TLS_FLOW:
                    tls.add(tls_connection(item.detail) or "")
                items.append(item)
                continue
            if item.transport == "tcp":
                return _unsafe(spec, f"{TCP_REASON} (frame {item.frame})")
            found = reader.feed(item) if not is_hep(item.payload) else _unwrap_hep(item, reader)
            for out in found:
                if type(out) is ObservedMessage:
                    items.append(
                        (out.raw, out.keys, out.ts_ns, out.frame, out.frames, out.src, out.sport,
                         out.dst, out.dport, out.transport, out.encapsulation)
                    )  # fmt: skip
                else:
                    items.append(out)  # type: ignore[arg-type]
        reader.close()  # UDP only: nothing is left in a stream
    finally:
        stream.close()
        if collecting:
            gc.enable()
    counter = stream.counter
    low, high = counter.min_key, counter.max_key
    if spec.merge_keys and low is None and items:
        low = high = 0  # anomalies before any record: a merge keys them 0
    summary = ScanSummary(
        counter.records, low, high,
        _edge_problem(spec, stream, items, tail), reader.segments, reader.messages,
        frozenset(tls),
    )  # fmt: skip
    return PartitionScan(summary, tuple(items), tuple(tail))


def _edge_problem(
    spec: PartitionSpec, stream: PartitionStream, items: list[ScanItem], tail: list[Anomaly]
) -> str | None:
    """Why the cut after (or before) this partition loses state a single reader keeps."""
    counter = stream.counter
    where = spec.describe()
    if not spec.is_first and counter.untimed_simple:
        return f"a pcapng simple packet block right after the cut in {where}"
    if spec.is_last:
        return None
    if not counter.clean:
        return f"the cut after {where} is not on a record boundary"
    for item in items:
        if type(item) is Anomaly and item.kind in _CAPTURE_KINDS:
            return f"a damaged capture before the cut after {where}"
    if tail:
        return f"an IP fragment train across the cut after {where}"
    if counter.section_blocks:
        return f"a pcapng section or interface block before the cut after {where}"
    return None


def _unwrap_hep(seg: Segment, reader: MessageReader) -> list[ObservedMessage | Anomaly]:
    """A HEP packet over UDP unwrapped as the single reader's pipeline does (``pcapfile``),
    its inner packet read by ``reader``. STANDARDS.md section 13."""
    data = seg.payload
    try:
        pkt = decode_hep(data)
    except HepError as exc:
        if data[:4] == HEP3_MAGIC:
            return [Anomaly(AnomalyKind.HEP_MALFORMED, seg.frame, seg.ts_ns, str(exc))]
        return []
    if pkt.is_sip:
        return reader.feed(hep_to_segment(pkt, seg.frame, ts_ns=seg.ts_ns))
    return []


def tls_connection(detail: str) -> str | None:
    """The connection of a ``tls_flow`` anomaly (``TLS on A:P -> B:Q``) without direction, as
    the link decoder remembers it; None if the text is not of that form."""
    if not detail.startswith("TLS on "):
        return None
    ends = detail.removeprefix("TLS on ").split(" -> ")
    return " ".join(sorted(ends)) if len(ends) == 2 else None


# -- main process --------------------------------------------------------------------------------


def order_partitions(
    specs: Sequence[PartitionSpec], summaries: Sequence[ScanSummary]
) -> tuple[list[int], str | None]:
    """The partitions in the order a single reader meets their records, or why the scans
    cannot stand in for one (``None`` when they can). draft-ietf-opsawg-pcap section 5."""
    for summary in summaries:
        if summary.unsafe is not None:
            return [], summary.unsafe
    files: dict[int, list[int]] = {}
    for index, spec in enumerate(specs):
        files.setdefault(spec.source_file, []).append(index)
    tls: dict[int, set[str]] = {}
    for index, spec in enumerate(specs):
        seen = tls.setdefault(spec.source_file, set())
        seen |= summaries[index].tls
        if "" in seen:
            return [], f"a TLS report of unknown form in {spec.path}"
        if len(seen) >= MAX_KNOWN_CONNECTIONS:
            return [], f"more TLS connections than one reader remembers in {spec.path}"
    if len(files) == 1:
        return list(files[next(iter(files))]), None
    ranges: list[tuple[int, int, int]] = []  # (min key, max key, input index)
    for source, parts in files.items():
        keys = [(summaries[i].min_key, summaries[i].max_key) for i in parts]
        lows = [lo for lo, _hi in keys if lo is not None]
        highs = [hi for _lo, hi in keys if hi is not None]
        if lows and highs:
            ranges.append((min(lows), max(highs), source))
    ranges.sort()
    for (_lo, hi, source), (lo_next, _hi, source_next) in itertools.pairwise(ranges):
        # heapq.merge takes equal keys in input order: a tie is fine only in that order.
        if hi > lo_next or (hi == lo_next and source > source_next):
            first, second = specs[files[source][0]].path, specs[files[source_next][0]].path
            return [], f"{first} and {second} overlap in time"
    ordered = [source for _lo, _hi, source in ranges]
    ordered += sorted(source for source in files if source not in ordered)
    return [i for source in ordered for i in files[source]], None


def frame_offsets(specs: Sequence[PartitionSpec], summaries: Sequence[ScanSummary]) -> list[int]:
    """Per partition, the packet records of the same file before it (frame numbers shift)."""
    offsets: list[int] = []
    seen: dict[int, int] = {}
    for spec, summary in zip(specs, summaries, strict=True):
        before = seen.get(spec.source_file, 0)
        offsets.append(before)
        seen[spec.source_file] = before + summary.records
    return offsets


def _shift(frames: tuple[int, ...], offset: int) -> tuple[int, ...]:
    return tuple(frame + offset for frame in frames)


def placed(item: Anomaly, offset: int, source: int) -> Anomaly:
    """An anomaly of a partition's scan with its frame shifted and its input set."""
    frame = item.frame + offset if item.frame is not None else None
    return replace(item, frame=frame, source_file=source)


def observed(item: MessageTuple, offset: int, source: int) -> ObservedMessage:
    """A scanned message as one reader of the inputs yields it: frames shifted by ``offset``
    (the records of the same file in earlier partitions), input index ``source``."""
    raw, keys, ts, frame, frames, src, sport, dst, dport, transport, encap = item
    if offset:
        frame += offset
        # Most messages come in one frame: no generator for them (hot loop).
        frames = (frame,) if frames == (frame - offset,) else _shift(frames, offset)
    return _scanned(raw, keys, ts, frame, frames, src, sport, dst, dport, transport, source, encap)


_scanned = ObservedMessage.scanned


def _once_key(item: Anomaly) -> str | None:
    if item.kind is AnomalyKind.TLS_FLOW:
        return "tls " + (tls_connection(item.detail) or item.detail)
    if item.kind is AnomalyKind.UNKNOWN_LINK_TYPE:
        return "link " + item.detail
    return None


def first_report(item: Anomaly, reported: set[str]) -> bool:
    """False for an anomaly a link decoder reports once per input and ``reported`` (that
    input's) already holds; records it otherwise."""
    if item.kind not in _ONCE_KINDS:
        return True
    key = _once_key(item) or ""
    if key in reported:
        return False
    reported.add(key)
    return True


def merged_items(
    specs: Sequence[PartitionSpec],
    order: Sequence[int],
    offsets: Sequence[int],
    fetch: Callable[[int], PartitionScan],
) -> Iterator[ObservedMessage | Anomaly]:
    """The messages and anomalies of all partitions as one reader of the inputs yields them
    (``order`` from ``order_partitions``; ``fetch`` gets a partition's scan when its turn
    comes). ARCHITECTURE.md section 2."""
    once: dict[int, set[str]] = {}
    tails: dict[int, list[Anomaly]] = {}
    for index in order:
        source, offset = specs[index].source_file, offsets[index]
        reported = once.setdefault(source, set())
        scan = fetch(index)
        for item in scan.items:
            if type(item) is tuple:
                yield observed(item, offset, source)
                continue
            assert isinstance(item, Anomaly)
            if first_report(item, reported):
                yield placed(item, offset, source)
        if scan.tail:
            tails.setdefault(source, []).extend(placed(a, offset, source) for a in scan.tail)
    for source in sorted(tails):
        yield from tails[source]
