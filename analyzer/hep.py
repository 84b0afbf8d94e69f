"""HEP (Homer Encapsulation Protocol) decoding, sans-IO: HEPv3 chunks, HEPv2 and HEPv1 headers.

Theory of operation: ``decode_hep`` turns one HEP packet into a ``HepPacket`` or raises
``HepError`` with a stable ``HepErrorReason`` (and nothing else, whatever the bytes: fuzzed).
HEPv3 is ``HEP3``, a 16-bit total length, then chunks (vendor, type, length including the
6-byte chunk header, value); generic chunks (vendor 0) are decoded, vendor and unknown chunks are
kept raw and skipped by length. Compressed payloads (chunk 0x10, gzip or zlib) are inflated with
a size cap. ``HepStreamFramer`` cuts a TCP byte stream into HEPv3 packets by their length field.
``hep_to_segment`` turns the inner packet into a ``Segment`` like one seen on the wire.

HEPv1/v2 (Kamailio/sngrep ``struct hep_hdr``): version, header length (16 for IPv4, 40 for
IPv6: the 8-byte header plus both addresses), family, protocol, ports and addresses in network
order; v2 then adds ``struct hep_timehdr`` (seconds, microseconds, 16-bit capture id, 2 bytes
of padding: 12 bytes) written in the agent's host order, which is little-endian in practice.

STANDARDS.md section 13 (HEP3 specification rev. 37; heplify, sngrep and OpenSIPS).
"""

from __future__ import annotations

import socket
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from analyzer.frames import Segment, Transport

HEP3_MAGIC = b"HEP3"
HEP3_HEADER_LEN = 6
CHUNK_HEADER_LEN = 6
HEP_V12_HEADER_LEN_V4 = 16
HEP_V12_HEADER_LEN_V6 = 40
HEP_V2_TIME_HEADER_LEN = 12
HEP_DEFAULT_PORT = 9060  # by convention (STANDARDS.md section 13)
# Inflated payload cap for chunk 0x10: a SIP message over UDP stays below 64 kB; anything
# bigger from a compressed chunk is a decompression bomb.
MAX_INFLATED_PAYLOAD = 1 << 20
# Chunks per packet: a 65535-byte packet holds at most 10922 6-byte chunks.
MAX_CHUNKS = 65535 // CHUNK_HEADER_LEN
# zlib window bits: 32 + 15 auto-detects gzip or zlib headers (zlib manual, inflateInit2).
_AUTO_GZIP_ZLIB = 32 + 15

AF_INET_HEP = 2  # HEP IP family values are the Linux AF_* numbers (STANDARDS.md section 13)
AF_INET6_HEP = 10


class HepChunk(IntEnum):
    """Generic (vendor 0) HEPv3 chunk types. STANDARDS.md section 13."""

    IP_FAMILY = 0x01
    IP_PROTO = 0x02
    IPV4_SRC = 0x03
    IPV4_DST = 0x04
    IPV6_SRC = 0x05
    IPV6_DST = 0x06
    SRC_PORT = 0x07
    DST_PORT = 0x08
    TS_SEC = 0x09
    TS_USEC = 0x0A
    PROTO_TYPE = 0x0B
    CAPTURE_ID = 0x0C
    KEEPALIVE = 0x0D
    AUTH_KEY = 0x0E
    PAYLOAD = 0x0F
    COMPRESSED_PAYLOAD = 0x10
    CORRELATION_ID = 0x11
    VLAN = 0x12
    NODE_NAME = 0x13
    SRC_MAC = 0x14
    DST_MAC = 0x15
    ETHERTYPE = 0x16
    TCP_FLAGS = 0x17
    TOS = 0x18
    MOS = 0x20
    R_FACTOR = 0x21
    GEO = 0x22
    JITTER = 0x23
    TRANSACTION_TYPE = 0x24
    PAYLOAD_JSON_KEYS = 0x25
    TAGS = 0x26
    TAG_TYPE = 0x27
    EVENT_TYPE = 0x28
    GROUP_ID = 0x29


class HepProtoType(IntEnum):
    """Payload protocol types (chunk 0x0b); unknown values are kept as plain ints."""

    SIP = 0x01
    XMPP = 0x02
    SDP = 0x03
    RTP = 0x04
    RTCP_JSON = 0x05
    MGCP = 0x06
    MEGACO = 0x07
    M2UA = 0x08
    M3UA = 0x09
    IAX = 0x0A
    M2PA = 0x0D
    SIP_JSON = 0x32
    DNS_JSON = 0x35
    DIAMETER = 0x38
    LOG = 0x64
    CDR = 0x65


class HepErrorReason(StrEnum):
    """Why a HEP packet could not be decoded (stable snake_case values)."""

    TOO_SHORT = "too_short"
    BAD_MAGIC = "bad_magic"
    BAD_LENGTH = "bad_length"
    BAD_CHUNK_LENGTH = "bad_chunk_length"
    BAD_CHUNK_VALUE = "bad_chunk_value"
    BAD_FAMILY = "bad_family"
    DECOMPRESSION_FAILED = "decompression_failed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_VERSION = "unsupported_version"


class HepError(ValueError):
    """A HEP packet that cannot be decoded; ``reason`` is the stable code.

    STANDARDS.md section 13.
    """

    def __init__(self, reason: HepErrorReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class HepPacket:
    """One decoded HEP packet. ``ts_ns`` is ``None`` when the agent sent no timestamp;
    ``chunks`` holds vendor-specific and unknown chunks as ``(vendor, type, value)``.

    STANDARDS.md section 13 (HEP3 specification rev. 37).
    """

    version: int
    family: int
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    ts_ns: int | None
    capture_id: int | None
    proto_type: int | None
    payload: bytes
    correlation_id: bytes = b""
    node_name: str = ""
    auth_key_present: bool = False
    compressed: bool = False
    vlan: int | None = None
    tcp_flags: int | None = None
    chunks: tuple[tuple[int, int, bytes], ...] = ()

    @property
    def is_sip(self) -> bool:
        """True when the payload is a SIP message (proto type 1, or absent on v1/v2)."""
        return self.proto_type in (None, HepProtoType.SIP)


def _uint(value: bytes, ctype: int) -> int:
    if not 1 <= len(value) <= 8:
        raise HepError(HepErrorReason.BAD_CHUNK_VALUE, f"chunk {ctype:#x}: {len(value)} bytes")
    return int.from_bytes(value, "big")


def _addr(value: bytes, family: int, ctype: int) -> str:
    if len(value) != (4 if family == socket.AF_INET else 16):
        raise HepError(HepErrorReason.BAD_CHUNK_VALUE, f"chunk {ctype:#x}: {len(value)} bytes")
    return socket.inet_ntop(family, value)


def _inflate(data: bytes) -> bytes:
    try:
        inflater = zlib.decompressobj(_AUTO_GZIP_ZLIB)
        out = inflater.decompress(data, MAX_INFLATED_PAYLOAD + 1)
    except zlib.error as exc:
        raise HepError(HepErrorReason.DECOMPRESSION_FAILED, str(exc)) from None
    if len(out) > MAX_INFLATED_PAYLOAD:
        raise HepError(HepErrorReason.PAYLOAD_TOO_LARGE, f"over {MAX_INFLATED_PAYLOAD} bytes")
    if not inflater.eof:
        raise HepError(HepErrorReason.DECOMPRESSION_FAILED, "truncated compressed payload")
    return out


def _text(value: bytes) -> str:
    return value.rstrip(b"\0").decode("utf-8", "replace")


def _decode_v3(data: bytes) -> HepPacket:
    if len(data) < HEP3_HEADER_LEN:
        raise HepError(HepErrorReason.TOO_SHORT, f"{len(data)} bytes")
    total = data[4] << 8 | data[5]
    if total < HEP3_HEADER_LEN or total > len(data):
        raise HepError(HepErrorReason.BAD_LENGTH, f"total length {total}, have {len(data)}")
    family = proto = sport = dport = 0
    src4 = dst4 = src6 = dst6 = b""
    sec = usec = None
    capture_id = proto_type = vlan = tcp_flags = None
    payload, correlation, node = b"", b"", ""
    auth = compressed = False
    extra: list[tuple[int, int, bytes]] = []
    pos = HEP3_HEADER_LEN
    for _ in range(MAX_CHUNKS):
        if pos >= total:
            break
        if pos + CHUNK_HEADER_LEN > total:
            raise HepError(HepErrorReason.BAD_CHUNK_LENGTH, f"chunk header cut at {pos}")
        vendor, ctype, clen = struct.unpack_from("!HHH", data, pos)
        if clen < CHUNK_HEADER_LEN or pos + clen > total:
            raise HepError(HepErrorReason.BAD_CHUNK_LENGTH, f"chunk {ctype:#x} length {clen}")
        value = data[pos + CHUNK_HEADER_LEN : pos + clen]
        pos += clen
        if vendor != 0:
            extra.append((vendor, ctype, value))
        elif ctype == HepChunk.IP_FAMILY:
            family = _uint(value, ctype)
        elif ctype == HepChunk.IP_PROTO:
            proto = _uint(value, ctype)
        elif ctype == HepChunk.IPV4_SRC:
            src4 = value
        elif ctype == HepChunk.IPV4_DST:
            dst4 = value
        elif ctype == HepChunk.IPV6_SRC:
            src6 = value
        elif ctype == HepChunk.IPV6_DST:
            dst6 = value
        elif ctype == HepChunk.SRC_PORT:
            sport = _uint(value, ctype)
        elif ctype == HepChunk.DST_PORT:
            dport = _uint(value, ctype)
        elif ctype == HepChunk.TS_SEC:
            sec = _uint(value, ctype)
        elif ctype == HepChunk.TS_USEC:
            usec = _uint(value, ctype)
        elif ctype == HepChunk.PROTO_TYPE:
            proto_type = _uint(value, ctype)
        elif ctype == HepChunk.CAPTURE_ID:
            capture_id = _uint(value, ctype)
        elif ctype == HepChunk.AUTH_KEY:
            auth = True  # never kept: it is a shared secret
        elif ctype == HepChunk.PAYLOAD:
            payload = value
        elif ctype == HepChunk.COMPRESSED_PAYLOAD:
            payload, compressed = _inflate(value), True
        elif ctype == HepChunk.CORRELATION_ID:
            correlation = value
        elif ctype == HepChunk.NODE_NAME:
            node = _text(value)
        elif ctype == HepChunk.VLAN:
            vlan = _uint(value, ctype)
        elif ctype == HepChunk.TCP_FLAGS:
            tcp_flags = _uint(value, ctype)
        else:
            extra.append((vendor, ctype, value))
    else:
        raise HepError(HepErrorReason.BAD_CHUNK_LENGTH, "too many chunks")
    if family == AF_INET6_HEP or (not family and (src6 or dst6)):
        af, raw_src, raw_dst = socket.AF_INET6, src6, dst6
    elif family in (AF_INET_HEP, 0):
        af, raw_src, raw_dst = socket.AF_INET, src4, dst4
    else:
        raise HepError(HepErrorReason.BAD_FAMILY, f"IP family {family}")
    src = _addr(raw_src, af, HepChunk.IPV4_SRC) if raw_src else ""
    dst = _addr(raw_dst, af, HepChunk.IPV4_DST) if raw_dst else ""
    ts_ns = None
    if sec is not None:
        ts_ns = sec * 1_000_000_000 + (usec or 0) * 1000
    return HepPacket(
        3, family, proto, src, sport, dst, dport, ts_ns, capture_id, proto_type, payload,
        correlation, node, auth, compressed, vlan, tcp_flags, tuple(extra),
    )  # fmt: skip


def _decode_v12(data: bytes) -> HepPacket:
    version = data[0]
    if len(data) < 4:
        raise HepError(HepErrorReason.TOO_SHORT, f"{len(data)} bytes")
    hlen, family, proto = data[1], data[2], data[3]
    if family == AF_INET_HEP:
        af, want = socket.AF_INET, HEP_V12_HEADER_LEN_V4
    elif family == AF_INET6_HEP:
        af, want = socket.AF_INET6, HEP_V12_HEADER_LEN_V6
    else:
        raise HepError(HepErrorReason.BAD_FAMILY, f"IP family {family}")
    if hlen != want:
        raise HepError(HepErrorReason.BAD_LENGTH, f"header length {hlen}, expected {want}")
    body = hlen + (HEP_V2_TIME_HEADER_LEN if version == 2 else 0)
    if len(data) < body:
        raise HepError(HepErrorReason.TOO_SHORT, f"{len(data)} bytes, header needs {body}")
    sport, dport = struct.unpack_from("!HH", data, 4)
    alen = 4 if af == socket.AF_INET else 16
    src = socket.inet_ntop(af, data[8 : 8 + alen])
    dst = socket.inet_ntop(af, data[8 + alen : 8 + 2 * alen])
    ts_ns = capture_id = None
    if version == 2:
        sec, usec, capture_id = struct.unpack_from("<IIH", data, hlen)
        ts_ns = sec * 1_000_000_000 + usec * 1000
    return HepPacket(
        version, family, proto, src, sport, dst, dport, ts_ns, capture_id, None, data[body:]
    )


def decode_hep(data: bytes) -> HepPacket:
    """Decode one HEP packet (v3, v2 or v1); raise ``HepError`` and nothing else.

    STANDARDS.md section 13 (HEP3 specification rev. 37; HEPv2/v1 fixed headers).
    """
    if data[:4] == HEP3_MAGIC:
        return _decode_v3(bytes(data))
    if not data:
        raise HepError(HepErrorReason.TOO_SHORT, "empty")
    if data[0] in (1, 2):
        return _decode_v12(bytes(data))
    if data[:3] == b"HEP" or data[:4] == b"EEP\x03":
        raise HepError(HepErrorReason.UNSUPPORTED_VERSION, repr(bytes(data[:4])))
    raise HepError(HepErrorReason.BAD_MAGIC, bytes(data[:4]).hex())


def is_hep(data: bytes) -> bool:
    """Cheap test: does ``data`` start like a HEP packet (v3 magic or a v1/v2 header)?

    STANDARDS.md section 13.
    """
    if data[:4] == HEP3_MAGIC:
        return True
    return (
        len(data) >= HEP_V12_HEADER_LEN_V4
        and data[0] in (1, 2)
        and data[1] in (HEP_V12_HEADER_LEN_V4, HEP_V12_HEADER_LEN_V6)
        and data[2] in (AF_INET_HEP, AF_INET6_HEP)
    )


# IANA protocol numbers carried in the HEP IP protocol chunk.
_TRANSPORTS: dict[int, Transport] = {6: "tcp", 17: "udp"}


def hep_to_segment(pkt: HepPacket, frame: int, *, ts_ns: int = 0, source_file: int = 0) -> Segment:
    """The inner packet of ``pkt`` as a ``Segment`` seen at ``frame``.

    The time is the agent's capture time from the HEP header when present (more precise than
    the collector's), else ``ts_ns`` (the outer packet's capture time). Inner SCTP or unknown
    protocols are reported as ``udp`` (one message per packet). STANDARDS.md section 13.
    """
    return Segment(
        frame, pkt.ts_ns if pkt.ts_ns is not None else ts_ns, pkt.src, pkt.sport, pkt.dst,
        pkt.dport, _TRANSPORTS.get(pkt.proto, "udp"), pkt.payload,
        flags=pkt.tcp_flags or 0, source_file=source_file, encapsulation="hep",
    )  # fmt: skip


class HepStreamFramer:
    """Cut a TCP byte stream into HEPv3 packets by their 16-bit total length.

    ``feed`` returns the decoded packets and ``HepError`` values for bad ones, in stream
    order. On garbage (no ``HEP3`` magic where a packet should start) it reports one
    ``bad_magic`` error and resyncs on the next ``HEP3``; ``reset()`` drops partial data after
    a TCP gap. The buffer never exceeds one maximum packet (65535 bytes) plus one feed.

    STANDARDS.md section 13 (TCP transport: HEP3 packets framed by their length).
    """

    def __init__(self) -> None:
        self._buf = b""

    def reset(self) -> None:
        """Forget partial data (after a TCP gap the next bytes start anywhere)."""
        self._buf = b""

    @property
    def buffered(self) -> int:
        """Bytes held of a packet not yet complete (at most one maximum packet plus a feed)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[HepPacket | HepError]:
        """Add stream bytes; return every complete packet (or its error) in order."""
        buf = self._buf + data if self._buf else bytes(data)
        out: list[HepPacket | HepError] = []
        pos = 0
        while len(buf) - pos >= HEP3_HEADER_LEN:
            if buf[pos : pos + 4] != HEP3_MAGIC:
                nxt = buf.find(HEP3_MAGIC, pos + 1)
                out.append(HepError(HepErrorReason.BAD_MAGIC, "stream resynchronised"))
                if nxt < 0:
                    pos = max(pos, len(buf) - 3)  # keep a possible partial magic
                    break
                pos = nxt
                continue
            total = buf[pos + 4] << 8 | buf[pos + 5]
            if total < HEP3_HEADER_LEN:
                out.append(HepError(HepErrorReason.BAD_LENGTH, f"total length {total}"))
                pos += 4
                continue
            if len(buf) - pos < total:
                break
            try:
                out.append(decode_hep(buf[pos : pos + total]))
            except HepError as exc:
                out.append(exc)
            pos += total
        self._buf = buf[pos:]
        return out
