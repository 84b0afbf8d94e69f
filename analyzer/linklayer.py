"""Link, network and transport decoding with a cheap "could this be SIP?" filter first.

Theory of operation: ``LinkDecoder.decode_record`` walks one captured frame with byte indexing
and ``struct.unpack_from`` only (no per-layer objects): link header -> IPv4/IPv6 (tunnels
unwrapped up to ``MAX_TUNNEL_DEPTH``) -> UDP/TCP. IP fragments leave as ``Fragment`` for the
defragmenter, whose whole datagrams come back through ``decode_datagram``. Only packets that can
carry SIP or HEP become ``Segment`` objects; everything else returns ``None`` before any string
or object is built, because RTP is most of a VoIP capture (ARCHITECTURE.md section 5).

The filter, correctness first (SIP is found by content on any port, never by port alone):

* UDP: the payload must start like a SIP start line (an ASCII letter, and ``SIP/2.0``, any
  case, on the first line: a request line ``METHOD uri SIP/2.0`` or a status line), optionally
  after leading CRLFs (RFC 3261 section 7.5), or like HEP (``HEP3``, or a plausible HEPv1/v2
  fixed header). RTP (first byte 0x80-0xBF), STUN (0x00/0x01 then a type byte), DNS and
  keep-alives fail on the first byte or two. UDP is one message per datagram (RFC 3261
  section 18.1.1), so no UDP datagram is lost by this test.
* TCP: a stream may split a message anywhere, so the test is per connection, not per packet.
  A connection becomes "SIP" when any segment contains ``SIP/2.0`` (every SIP message has it in
  its start line or its Via) or ``HEP3``; from then on every segment of that connection (both
  directions) passes, SYN/FIN/RST included. Segments of not-yet-classified connections are
  held (bounded: ``MAX_PENDING_SEGMENTS`` per connection, ``MAX_PENDING_CONNECTIONS``) and
  released in ``released`` when the connection is classified, so a message whose first segment
  arrives after its second is not lost. Pure ACKs never pass.
* TLS: a TCP connection whose payload starts with a TLS record header (content type 0x14-0x17,
  version major 3), or whose payload on port 5061 does not start with a letter, is counted and
  reported once as ``tls_flow`` and dropped: its SIP cannot be read without keys.

Anomalies accumulate in ``anomalies``; the caller drains them with ``take_anomalies()``.
"""

from __future__ import annotations

import socket
import struct

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.frames import TCP_FIN, TCP_RST, TCP_SYN, Fragment, Segment

# Link types (tcpdump.org linktypes list, LINKTYPE_* values).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_12 = 12  # DLT_RAW on some BSDs
LINKTYPE_RAW_14 = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
RAW_IP_LINKTYPES = frozenset({LINKTYPE_RAW_12, LINKTYPE_RAW_14, LINKTYPE_RAW, 228, 229})

# EtherTypes (IEEE 802.3 / IANA ieee-802-numbers).
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})  # 802.1Q, 802.1ad QinQ, legacy QinQ
# BSD loopback address families: AF_INET is 2 everywhere; AF_INET6 is 10 (Linux), 24
# (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS) (tcpdump.org LINKTYPE_NULL description).
AF_INET_VALUES = frozenset({2})
AF_INET6_VALUES = frozenset({10, 24, 28, 30})

# IP protocol numbers (IANA protocol-numbers).
IPPROTO_HOPOPTS = 0
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51
IPPROTO_DSTOPTS = 60
IPV6_SKIPPED_EXTENSIONS = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS})

# IP-in-IP nesting we unwrap (IPv4-in-IPv4 RFC 2003, IPv6-in-IPv4 RFC 4213): two levels cover
# real tunnels; more is either an attack or garbage.
MAX_TUNNEL_DEPTH = 2
# IPv6 extension headers we walk before giving up (RFC 8200 section 4.1 lists six kinds,
# each at most once or twice).
MAX_IPV6_EXTENSIONS = 8
# TLS over TCP for SIP (RFC 3261 section 26.2; 5061 is the IANA "sips" port).
SIPS_PORT = 5061
# Held segments of TCP connections not yet seen carrying SIP (bounded memory; 16 segments
# cover a message split at MSS 1460 up to ~23 kB, far beyond a typical INVITE).
MAX_PENDING_SEGMENTS = 16
MAX_PENDING_CONNECTIONS = 1024
# Remembered classified connections (FIFO eviction; an evicted live SIP connection is simply
# re-classified by its next message).
MAX_KNOWN_CONNECTIONS = 65536

_SIP_VERSION = b"SIP/2.0"
_HEP3 = b"HEP3"
_LETTERS = frozenset(range(0x41, 0x5B)) | frozenset(range(0x61, 0x7B))
_HEP_V12_HEADER_LENGTHS = frozenset({16, 40})  # IPv4 / IPv6 fixed headers (STANDARDS 13)
# First payload bytes that may start SIP or HEP (see looks_like_sip_or_hep).
_MAYBE_FIRST_BYTES = _LETTERS | {1, 2, 10, 13}
# The same as a table indexed by the first payload byte: 1 where neither can start.
NOT_SIP_FIRST_BYTE = bytes(0 if b in _MAYBE_FIRST_BYTES else 1 for b in range(256))
# The bytes of an Ethernet frame ``decode_record``'s first test reads, so that capture readers
# can apply it before building anything (analyzer/pcapwalk.py skips RTP with it): two 4-byte
# words as (offset, mask, wanted bytes), whatever the byte order they are read in -- EtherType
# IPv4 and IPv4 with a 20-byte header (bytes 12-14; not the TOS byte), then neither a fragment
# offset nor More Fragments (bytes 20-21; DF may be set) and protocol UDP (byte 23; not the
# TTL) -- and the first UDP payload byte (after 14 + 20 + 8 header bytes), which must then be
# one NOT_SIP_FIRST_BYTE marks for the packet to be dropped.
PLAIN_UDP_WORDS = (
    (12, b"\xff\xff\xff\x00", bytes((0x08, 0x00, 0x45, 0x00))),
    (20, b"\x3f\xff\x00\xff", bytes((0x00, 0x00, 0x00, IPPROTO_UDP))),
)
PLAIN_UDP_FIRST_BYTE = 42
_WORD = struct.Struct("!I").unpack_from
(_W1_AT, _W1_MASK, _W1_WANT), (_W2_AT, _W2_MASK, _W2_WANT) = (
    (at, int.from_bytes(mask, "big"), int.from_bytes(want, "big"))
    for at, mask, want in PLAIN_UDP_WORDS
)

ConnKey = tuple[str, int, str, int]
_PORTS = struct.Struct("!HH").unpack_from
# IPv4 address pairs whose text is cached (bounded: cleared when full; ~100 bytes each).
MAX_CACHED_ADDRESS_PAIRS = 4096


def _addrs(data: bytes, ipoff: int, version: int) -> tuple[str, str]:
    if version == 4:
        return (
            socket.inet_ntop(socket.AF_INET, data[ipoff + 12 : ipoff + 16]),
            socket.inet_ntop(socket.AF_INET, data[ipoff + 16 : ipoff + 20]),
        )
    return (
        socket.inet_ntop(socket.AF_INET6, data[ipoff + 8 : ipoff + 24]),
        socket.inet_ntop(socket.AF_INET6, data[ipoff + 24 : ipoff + 40]),
    )


def looks_like_sip_or_hep(data: bytes, start: int, end: int) -> bool:
    """True when ``data[start:end]`` may be a SIP message or a HEP packet (see module doc).

    RFC 3261 section 7.1 (start line), section 7.5 (leading CRLF); STANDARDS.md section 13.
    """
    if start >= end:
        return False
    first = data[start]
    if first in _LETTERS:
        if data.startswith(_HEP3, start):
            return True
        nl = data.find(b"\n", start, end)
        stop = nl if nl >= 0 else end
        return data.find(_SIP_VERSION, start, stop) >= 0 or _SIP_VERSION in data[start:stop].upper()
    if first in (1, 2):
        return (
            end - start >= 16
            and data[start + 1] in _HEP_V12_HEADER_LENGTHS
            and data[start + 2] in (2, 10)
            and data[start + 3] in (IPPROTO_TCP, IPPROTO_UDP)
        )
    if first in (13, 10):
        i = start
        while i < end and data[i] in (13, 10):
            i += 1
        return i < end and data[i] in _LETTERS and looks_like_sip_or_hep(data, i, end)
    return False


def _inet_checksum(chunks: tuple[bytes, ...]) -> int:
    data = b"".join(chunks)
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


class LinkDecoder:
    """Decode captured frames into ``Segment`` / ``Fragment`` values, filtering non-SIP early.

    State: the TCP connection classification (SIP / TLS / pending; shared between the
    decoders of the files of one run, ``connections``) and the link types already reported
    unknown. ``verify_checksums`` checks UDP/TCP checksums of passing packets and
    reports ``bad_checksum`` (off by default: captures taken on the sending host carry
    offloaded, unfilled checksums); the packet is passed either way.

    RFC 791 section 3.1, RFC 8200 sections 3-4, RFC 768, RFC 9293 section 3.1.
    """

    def __init__(
        self,
        *,
        source_file: int = 0,
        verify_checksums: bool = False,
        connections: LinkDecoder | None = None,
    ) -> None:
        self.source_file = source_file
        self.verify_checksums = verify_checksums
        self.anomalies: list[Anomaly] = []
        self.released: list[Segment] = []
        self.tls_flows = 0
        # The TCP connections' classification, shared with ``connections`` when given (the
        # decoder of an earlier file of the same capture: a connection that continues into
        # this file is SIP, TLS or pending as it was there).
        if connections is None:
            self._sip: dict[ConnKey, None] = {}
            self._tls: dict[ConnKey, None] = {}
            self._pending: dict[ConnKey, list[Segment]] = {}
        else:
            self._sip, self._tls = connections._sip, connections._tls
            self._pending = connections._pending
        self._unknown_links: set[int] = set()
        self._addr_cache: dict[bytes, tuple[str, str]] = {}

    # -- public ----------------------------------------------------------------------------

    def take_anomalies(self) -> list[Anomaly]:
        """Return and clear the anomalies reported since the last call."""
        out, self.anomalies = self.anomalies, []
        return out

    def take_released(self) -> list[Segment]:
        """Return and clear held TCP segments released by a connection's classification."""
        out, self.released = self.released, []
        return out

    def decode_record(
        self, frame: int, ts_ns: int, linktype: int, data: bytes
    ) -> Segment | Fragment | None:
        """Decode one captured frame; ``None`` when it cannot carry SIP or HEP.

        tcpdump.org link-layer header types; IEEE 802.1Q; RFC 791; RFC 8200.
        """
        if linktype == LINKTYPE_ETHERNET:
            # Fast path for the bulk of a VoIP capture (RTP over Ethernet/IPv4/UDP, no IP
            # options, not a fragment): one look at the first payload byte decides.
            if (
                len(data) > PLAIN_UDP_FIRST_BYTE
                and _WORD(data, _W1_AT)[0] & _W1_MASK == _W1_WANT
                and _WORD(data, _W2_AT)[0] & _W2_MASK == _W2_WANT
            ):
                if NOT_SIP_FIRST_BYTE[data[PLAIN_UDP_FIRST_BYTE]]:
                    return None  # what the capture readers' prefilter skips
                # Maybe SIP: what _ip would do for a 20-byte header, straight to UDP.
                total = data[16] << 8 | data[17]
                if not total:
                    return self._udp(frame, ts_ns, data, 34, len(data), 14, 4, None, ())
                if total >= 20:
                    return self._udp(frame, ts_ns, data, 34, 14 + total, 14, 4, None, ())
            if len(data) < 14:
                return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "short Ethernet")
            et = data[12] << 8 | data[13]
            off = 14
            while et in VLAN_TPIDS:
                if len(data) < off + 4:
                    return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "short VLAN tag")
                et = data[off + 2] << 8 | data[off + 3]
                off += 4
        elif linktype in RAW_IP_LINKTYPES:
            if not data:
                return None
            version = data[0] >> 4
            return self._ip(frame, ts_ns, data, 0, version, 0)
        elif linktype == LINKTYPE_LINUX_SLL:
            if len(data) < 16:
                return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "short SLL header")
            et, off = data[14] << 8 | data[15], 16
        elif linktype == LINKTYPE_LINUX_SLL2:
            if len(data) < 20:
                return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "short SLL2 header")
            et, off = data[0] << 8 | data[1], 20
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if len(data) < 4:
                return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "short loopback")
            # Host byte order for NULL, network order for LOOP; accept either for both.
            fam = data[0] if data[3] == 0 and data[2] == 0 else data[3]
            if fam in AF_INET_VALUES:
                return self._ip(frame, ts_ns, data, 4, 4, 0)
            if fam in AF_INET6_VALUES:
                return self._ip(frame, ts_ns, data, 4, 6, 0)
            return None
        else:
            if linktype not in self._unknown_links:
                self._unknown_links.add(linktype)
                self._bad(frame, ts_ns, AnomalyKind.UNKNOWN_LINK_TYPE, f"link type {linktype}")
            return None
        if et == ETHERTYPE_IPV4:
            return self._ip(frame, ts_ns, data, off, 4, 0)
        if et == ETHERTYPE_IPV6:
            return self._ip(frame, ts_ns, data, off, 6, 0)
        return None

    def decode_datagram(
        self,
        frame: int,
        ts_ns: int,
        version: int,
        src: str,
        dst: str,
        proto: int,
        payload: bytes,
        frames: tuple[int, ...] = (),
        depth: int = 0,
    ) -> Segment | Fragment | None:
        """Decode the upper layer of a reassembled IP datagram (after the fragment header).

        RFC 8200 section 4.5 (the reassembled packet continues with the fragment's Next
        Header), RFC 791 section 3.2.
        """
        p, end = 0, len(payload)
        if version == 6:
            for _ in range(MAX_IPV6_EXTENSIONS):
                if proto not in IPV6_SKIPPED_EXTENSIONS and proto != IPPROTO_AH:
                    break
                if p + 2 > end:
                    return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "IPv6 ext")
                ext_len = (
                    (payload[p + 1] + 2) * 4 if proto == IPPROTO_AH else (payload[p + 1] + 1) * 8
                )
                proto, p = payload[p], p + ext_len
        if proto in (IPPROTO_IPIP, IPPROTO_IPV6):
            if depth >= MAX_TUNNEL_DEPTH:
                return None
            return self._ip(frame, ts_ns, payload, p, 4 if proto == IPPROTO_IPIP else 6, depth + 1)
        if proto == IPPROTO_UDP:
            return self._udp(frame, ts_ns, payload, p, end, 0, version, (src, dst), frames)
        if proto == IPPROTO_TCP:
            return self._tcp(frame, ts_ns, payload, p, end, 0, version, (src, dst), frames)
        return None

    # -- layers ----------------------------------------------------------------------------

    def _addr_pair(self, data: bytes, ipoff: int, version: int) -> tuple[str, str]:
        """Source and destination address text, cached by their bytes (a capture has few
        distinct pairs; formatting them is a visible share of the per-packet cost)."""
        if version != 4:
            return _addrs(data, ipoff, version)
        raw = data[ipoff + 12 : ipoff + 20]
        pair = self._addr_cache.get(raw)
        if pair is None:
            if len(self._addr_cache) >= MAX_CACHED_ADDRESS_PAIRS:
                self._addr_cache.clear()
            pair = self._addr_cache[raw] = _addrs(data, ipoff, version)
        return pair

    def _bad(self, frame: int, ts_ns: int, kind: AnomalyKind, detail: str) -> Segment | None:
        """Record an anomaly; returns ``None`` so a layer can ``return self._bad(...)``."""
        self.anomalies.append(Anomaly(kind, frame, ts_ns, detail, self.source_file))
        return None

    def _ip(
        self, frame: int, ts_ns: int, data: bytes, off: int, version: int, depth: int
    ) -> Segment | Fragment | None:
        n = len(data)
        if version == 4:
            if n < off + 20 or data[off] >> 4 != 4:
                return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "bad IPv4 header")
            ihl = (data[off] & 15) * 4
            total = data[off + 2] << 8 | data[off + 3]
            # Total length 0 appears in captures of TSO-offloaded packets: use what we have.
            end = off + total if total else n
            if ihl < 20 or (total and total < ihl):
                return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "bad IPv4 lengths")
            proto = data[off + 9]
            frag = data[off + 6] << 8 | data[off + 7]
            p = off + ihl
            if frag & 0x3FFF:  # MF flag or non-zero offset (RFC 791 section 3.1)
                if end > n:
                    end = n
                src, dst = _addrs(data, off, 4)
                return Fragment(
                    frame, ts_ns, 4, src, dst, proto, data[off + 4] << 8 | data[off + 5],
                    (frag & 0x1FFF) * 8, bool(frag & 0x2000), data[p:end], depth,
                )  # fmt: skip
        elif version == 6:
            if n < off + 40:
                return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "short IPv6 header")
            plen = data[off + 4] << 8 | data[off + 5]
            end = off + 40 + plen if plen else n  # 0: jumbogram (RFC 2675) or offload
            proto = data[off + 6]
            p = off + 40
            for _ in range(MAX_IPV6_EXTENSIONS):
                if proto in IPV6_SKIPPED_EXTENSIONS or proto == IPPROTO_AH:
                    if p + 2 > min(end, n):
                        return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "IPv6 ext")
                    step = (data[p + 1] + 2) * 4 if proto == IPPROTO_AH else (data[p + 1] + 1) * 8
                    proto, p = data[p], p + step
                elif proto == IPPROTO_FRAGMENT:
                    if p + 8 > min(end, n):
                        return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "IPv6 frag")
                    fo = data[p + 2] << 8 | data[p + 3]
                    nxt = data[p]
                    if fo & 0xFFF9:  # offset or M flag set: a real fragment
                        src, dst = _addrs(data, off, 6)
                        return Fragment(
                            frame, ts_ns, 6, src, dst, nxt,
                            struct.unpack_from("!I", data, p + 4)[0], fo & 0xFFF8,
                            bool(fo & 1), data[p + 8 : min(end, n)], depth,
                        )  # fmt: skip
                    proto, p = nxt, p + 8  # atomic fragment (RFC 6946): not fragmented
                else:
                    break
        else:
            return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, f"IP version {version}")
        if proto == IPPROTO_UDP:
            return self._udp(frame, ts_ns, data, p, end, off, version, None, ())
        if proto == IPPROTO_TCP:
            return self._tcp(frame, ts_ns, data, p, end, off, version, None, ())
        if proto in (IPPROTO_IPIP, IPPROTO_IPV6) and depth < MAX_TUNNEL_DEPTH:
            inner = data[:end] if end < n else data
            return self._ip(frame, ts_ns, inner, p, 4 if proto == IPPROTO_IPIP else 6, depth + 1)
        return None

    def _truncated(self, frame: int, ts_ns: int, what: str, want: int, have: int) -> None:
        self._bad(
            frame, ts_ns, AnomalyKind.TRUNCATED_PACKET, f"{what}: {have} of {want} bytes captured"
        )

    def _udp(
        self,
        frame: int,
        ts_ns: int,
        data: bytes,
        p: int,
        end: int,
        ipoff: int,
        version: int,
        addrs: tuple[str, str] | None,
        frames: tuple[int, ...],
    ) -> Segment | None:
        n = len(data)
        if p + 8 > end or p + 8 > n:
            if p + 8 > end:
                self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "short UDP header")
            return None
        ulen = data[p + 4] << 8 | data[p + 5]
        uend = p + ulen if ulen >= 8 else end  # 0 in IPv6 jumbograms (RFC 2675)
        if uend > end:
            uend = end
        if not looks_like_sip_or_hep(data, p + 8, uend if uend < n else n):
            return None
        if uend > n:
            self._truncated(frame, ts_ns, "UDP datagram", uend - p, n - p)
            uend = n
        if addrs is None:
            addrs = self._addr_pair(data, ipoff, version)
        src, dst = addrs
        sport, dport = _PORTS(data, p)
        payload = data[p + 8 : uend]
        if self.verify_checksums and data[p + 6 : p + 8] != b"\0\0":
            self._check(frame, ts_ns, version, src, dst, IPPROTO_UDP, data[p:uend])
        return Segment(
            frame, ts_ns, src, sport, dst, dport, "udp", payload,
            source_file=self.source_file, frames=frames,
        )  # fmt: skip

    def _tcp(
        self,
        frame: int,
        ts_ns: int,
        data: bytes,
        p: int,
        end: int,
        ipoff: int,
        version: int,
        addrs: tuple[str, str] | None,
        frames: tuple[int, ...],
    ) -> Segment | None:
        n = len(data)
        lim = min(end, n)
        if p + 20 > lim:
            if p + 20 > end:
                self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "short TCP header")
            return None
        doff = (data[p + 12] >> 4) * 4
        flags = data[p + 13] | (data[p + 12] & 1) << 8
        pl = p + doff
        if doff < 20 or pl > lim:
            return self._bad(frame, ts_ns, AnomalyKind.MALFORMED_PACKET, "bad TCP data offset")
        if pl >= lim and not flags & (TCP_SYN | TCP_FIN | TCP_RST):
            return None  # pure ACK / window update
        sport, dport, seq = struct.unpack_from("!HHI", data, p)
        src, dst = addrs or self._addr_pair(data, ipoff, version)
        key: ConnKey = (
            (src, sport, dst, dport) if (src, sport) <= (dst, dport) else (dst, dport, src, sport)
        )
        if key in self._tls:
            return None
        payload = data[pl:lim]
        if end > n and key in self._sip:
            self._truncated(frame, ts_ns, "TCP segment", end - pl, n - pl)
        if self.verify_checksums and key in self._sip:
            self._check(frame, ts_ns, version, src, dst, IPPROTO_TCP, data[p:lim])
        seg = Segment(
            frame, ts_ns, src, sport, dst, dport, "tcp", payload, seq, flags,
            source_file=self.source_file, frames=frames,
        )  # fmt: skip
        if key in self._sip:
            return seg
        if payload and (
            (payload[0] in (0x14, 0x15, 0x16, 0x17) and payload[1:2] == b"\x03")
            or (SIPS_PORT in (sport, dport) and payload[0] not in _LETTERS)
        ):
            self._remember(self._tls, key)
            self._pending.pop(key, None)
            self.tls_flows += 1
            self._bad(frame, ts_ns, AnomalyKind.TLS_FLOW, f"TLS on {src}:{sport} -> {dst}:{dport}")
            return None
        if _SIP_VERSION in payload or _HEP3 in payload:
            self._remember(self._sip, key)
            held = self._pending.pop(key, None)
            if held:
                self.released.extend(held)
            return seg
        held = self._pending.get(key)
        if held is None:
            if len(self._pending) >= MAX_PENDING_CONNECTIONS:
                del self._pending[next(iter(self._pending))]
            held = self._pending[key] = []
        held.append(seg)
        if len(held) > MAX_PENDING_SEGMENTS:
            del held[0]
        return None

    @staticmethod
    def _remember(table: dict[ConnKey, None], key: ConnKey) -> None:
        if len(table) >= MAX_KNOWN_CONNECTIONS:
            del table[next(iter(table))]
        table[key] = None

    def _check(
        self, frame: int, ts_ns: int, version: int, src: str, dst: str, proto: int, seg: bytes
    ) -> None:
        fam = socket.AF_INET if version == 4 else socket.AF_INET6
        if version == 4:
            pseudo = struct.pack("!BBH", 0, proto, len(seg))
        else:
            pseudo = struct.pack("!IxxxB", len(seg), proto)
        total = _inet_checksum(
            (socket.inet_pton(fam, src), socket.inet_pton(fam, dst), pseudo, seg)
        )
        if total != 0xFFFF:
            name = "UDP" if proto == IPPROTO_UDP else "TCP"
            self._bad(frame, ts_ns, AnomalyKind.BAD_CHECKSUM, f"{name} checksum mismatch")
