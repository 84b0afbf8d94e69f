"""IPv4 and IPv6 fragment reassembly, sans-IO, timed by capture time.

Theory of operation: fragments are grouped by (version, source, destination, protocol,
identification) (RFC 791 section 3.2; RFC 8200 section 4.5 uses source, destination and
identification). Each group keeps non-overlapping pieces keyed by byte offset; the datagram is
complete when the last fragment (More Fragments clear) has fixed the total length and the
pieces cover it without a hole. Fragments may arrive in any order and be duplicated.

Overlaps: the first bytes received win and the datagram is still delivered, with one
``fragment_overlap`` anomaly. (RFC 5722 tells an IPv6 *host* to drop such datagrams; an analyzer
wants to see what the receiver may have seen, and Wireshark also keeps the first copy.)

Time: capture time only. A group older than ``REASSEMBLY_TIMEOUT_NS`` since its first fragment
is dropped with a ``fragment_timeout`` anomaly when later traffic shows the time has passed, or
at ``flush()``. Memory: at most ``MAX_DATAGRAMS_IN_FLIGHT`` groups and ``MAX_BYTES_IN_FLIGHT``
buffered bytes; beyond that the oldest group is dropped (``fragment_limit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.frames import Fragment

# Linux net.ipv4.ipfrag_time and net.ipv6.ip6frag_time default to 30 s (RFC 791 section 3.2
# suggests a 15 s lower bound; RFC 8200 section 4.5 allows up to 60 s).
REASSEMBLY_TIMEOUT_NS = 30 * 1_000_000_000
# Linux net.ipv4.ipfrag_high_thresh default: 4 MiB of fragment memory.
MAX_BYTES_IN_FLIGHT = 4 * 1024 * 1024
# Datagrams under reassembly at once (Linux bounds by memory only; 4096 keeps lookups cheap).
MAX_DATAGRAMS_IN_FLIGHT = 4096
# Largest reassembled payload: the IPv4 total length / IPv6 payload length field is 16 bits.
MAX_DATAGRAM_BYTES = 65535
# Fragments per datagram: 65535 / 8-byte minimum fragment data; bounds a fragment flood.
MAX_FRAGMENTS_PER_DATAGRAM = 8192

FragmentKey = tuple[int, str, str, int, int]


@dataclass(frozen=True, slots=True)
class Datagram:
    """A reassembled IP datagram: the upper-layer bytes after the IP/fragment headers.

    ``frame``/``ts_ns`` are those of the fragment that completed it (Wireshark shows the
    reassembled packet there); ``frames`` lists every fragment's frame in offset order.

    RFC 791 section 3.2, RFC 8200 section 4.5.
    """

    frame: int
    ts_ns: int
    version: int
    src: str
    dst: str
    proto: int
    payload: bytes
    frames: tuple[int, ...]
    depth: int = 0


@dataclass(slots=True)
class _Pending:
    first_ts: int
    first_frame: int
    pieces: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # offset -> (data, frame)
    total: int | None = None
    size: int = 0
    overlapped: bool = False


class Defragmenter:
    """Reassemble fragments fed in capture order; whole datagrams come out of ``feed``.

    RFC 791 section 3.2, RFC 8200 section 4.5.
    """

    def __init__(
        self,
        *,
        timeout_ns: int = REASSEMBLY_TIMEOUT_NS,
        max_datagrams: int = MAX_DATAGRAMS_IN_FLIGHT,
        max_bytes: int = MAX_BYTES_IN_FLIGHT,
        source_file: int = 0,
    ) -> None:
        self.timeout_ns = timeout_ns
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.source_file = source_file
        self.anomalies: list[Anomaly] = []
        self._groups: dict[FragmentKey, _Pending] = {}
        self._bytes = 0

    def take_anomalies(self) -> list[Anomaly]:
        """Return and clear the anomalies reported since the last call."""
        out, self.anomalies = self.anomalies, []
        return out

    @property
    def in_flight(self) -> int:
        """Datagrams currently under reassembly."""
        return len(self._groups)

    def feed(self, frag: Fragment) -> Datagram | None:
        """Add one fragment; return the datagram it completes, if any.

        RFC 791 section 3.2 (reassembly), RFC 8200 section 4.5.
        """
        self.expire(frag.ts_ns)
        key = (frag.version, frag.src, frag.dst, frag.proto, frag.ident)
        group = self._groups.get(key)
        if group is None:
            while len(self._groups) >= self.max_datagrams:
                self._drop(next(iter(self._groups)), AnomalyKind.FRAGMENT_LIMIT, frag)
            group = self._groups[key] = _Pending(frag.ts_ns, frag.frame)
        start, data = frag.offset, frag.payload
        end = start + len(data)
        if end > MAX_DATAGRAM_BYTES or len(group.pieces) >= MAX_FRAGMENTS_PER_DATAGRAM:
            self._drop(key, AnomalyKind.MALFORMED_PACKET, frag, "fragment beyond 65535 bytes")
            return None
        if not frag.more:
            if group.total is not None and group.total != end:
                self._overlap(group, frag, "two last fragments disagree on the length")
            elif group.total is None:
                group.total = end
        self._insert(group, frag, start, data)
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._groups)), AnomalyKind.FRAGMENT_LIMIT, frag)
        if key not in self._groups or group.total is None or group.size < group.total:
            return None
        # Pieces never overlap, so covering size == total means no hole.
        del self._groups[key]
        self._bytes -= group.size
        ordered = sorted(group.pieces.items())
        payload = b"".join(piece for _, (piece, _) in ordered)[: group.total]
        return Datagram(
            frag.frame, frag.ts_ns, frag.version, frag.src, frag.dst, frag.proto, payload,
            tuple(fr for _, (_, fr) in ordered), frag.depth,
        )  # fmt: skip

    def _insert(self, group: _Pending, frag: Fragment, start: int, data: bytes) -> None:
        """Add the parts of [start, start+len) not already held (first copy wins)."""
        end = start + len(data)
        cuts = [start]
        for off, (piece, _) in group.pieces.items():
            p_end = off + len(piece)
            if off < end and p_end > start:
                if (
                    bytes(data[max(off, start) - start : min(p_end, end) - start])
                    != piece[max(off, start) - off : min(p_end, end) - off]
                ):
                    self._overlap(group, frag, "overlapping fragments differ")
                elif not group.overlapped and (off, p_end) != (start, end):
                    self._overlap(group, frag, "overlapping fragments")
                cuts.append(off)
                cuts.append(p_end)
        if len(cuts) == 1:
            group.pieces[start] = (data, frag.frame)
            group.size += len(data)
            self._bytes += len(data)
            return
        # Walk the free intervals of [start, end) between held pieces.
        held = sorted((o, o + len(p)) for o, (p, _) in group.pieces.items())
        pos = start
        for h_start, h_end in held:
            if h_end <= pos:
                continue
            if h_start >= end:
                break
            if h_start > pos:
                self._add(group, pos, data[pos - start : h_start - start], frag.frame)
            pos = max(pos, h_end)
        if pos < end:
            self._add(group, pos, data[pos - start :], frag.frame)

    def _add(self, group: _Pending, off: int, piece: bytes, frame: int) -> None:
        group.pieces[off] = (piece, frame)
        group.size += len(piece)
        self._bytes += len(piece)

    def _overlap(self, group: _Pending, frag: Fragment, detail: str) -> None:
        if not group.overlapped:
            group.overlapped = True
            self.anomalies.append(
                Anomaly(AnomalyKind.FRAGMENT_OVERLAP, frag.frame, frag.ts_ns, detail,
                        self.source_file)
            )  # fmt: skip

    def _drop(
        self, key: FragmentKey, kind: AnomalyKind, frag: Fragment | None, detail: str = ""
    ) -> None:
        group = self._groups.pop(key)
        self._bytes -= group.size
        frame = frag.frame if frag is not None else group.first_frame
        ts = frag.ts_ns if frag is not None else group.first_ts
        have = f"{group.size} of {group.total if group.total is not None else '?'} bytes"
        text = detail or f"IPv{key[0]} {key[1]} -> {key[2]} id {key[4]:#x}: {have}"
        self.anomalies.append(Anomaly(kind, frame, ts, text, self.source_file))

    def expire(self, now_ns: int) -> None:
        """Drop groups whose first fragment is older than the timeout at capture time ``now_ns``.

        Linux ipfrag_time; RFC 791 section 3.2 (reassembly timer).
        """
        limit = now_ns - self.timeout_ns
        while self._groups:
            key = next(iter(self._groups))
            group = self._groups[key]
            if group.first_ts >= limit:
                break  # groups are kept in creation order, so the rest are younger
            self._drop(key, AnomalyKind.FRAGMENT_TIMEOUT, None)

    def flush(self) -> None:
        """End of input: every incomplete datagram becomes a ``fragment_timeout`` anomaly."""
        for key in list(self._groups):
            self._drop(key, AnomalyKind.FRAGMENT_TIMEOUT, None)
