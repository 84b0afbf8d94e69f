"""Record walks over classic pcap and pcapng bytes: blocks in, ``Record`` tuples out.

Theory of operation: a walk owns a byte buffer and a position in it. It decodes every whole
record (pcap) or block (pcapng) the buffer holds with ``struct.unpack_from`` (no per-record
object but the ``Record`` tuple and its data slice), then asks ``read`` for the next block and
carries the unread tail over (``_refill``, the one place that decides what the end of the
input means). Memory stays bounded by the block size plus the largest record, whatever the
file size. ``frame`` counts every packet record or block in file order from 1 (Wireshark's
numbering); a walk can start anywhere a record or block starts, given the buffer and position
there, the frame number before it and (pcapng) the byte order and interfaces in force, so a
capture can be read from a record offset. A damaged tail (a corrupt length, a record cut short
by the end of the input, an unreadable compressed stream) ends the walk with one ``Anomaly``
after every record that could be read.

Prefilter: RTP is most of a VoIP capture, and the link decoder drops every Ethernet/IPv4/UDP
packet whose payload cannot start SIP or HEP at its first test (``linklayer.PLAIN_UDP_WORDS``
and ``NOT_SIP_FIRST_BYTE``). With ``prefilter``, a walk applies that same test straight on the
buffer and skips such records without building anything, in a tight inner loop; frame numbers
still count them, and the time of a skipped record is worked out only where something may
need it (an anomaly, the end of a buffer; in pcapng, what follows a run of skipped blocks).

draft-ietf-opsawg-pcap sections 4-5 (classic pcap), draft-ietf-opsawg-pcapng sections 3-4.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.linklayer import (
    LINKTYPE_ETHERNET,
    NOT_SIP_FIRST_BYTE,
    PLAIN_UDP_FIRST_BYTE,
    PLAIN_UDP_WORDS,
)

Record = tuple[int, int, int, bytes, int]
"""``(frame_no, ts_ns, linktype, data, orig_len)`` of one captured packet."""

Read = Callable[[], "bytes | Anomaly"]
"""The next block of the input: ``b""`` at its end, an ``Anomaly`` when it cannot be read."""

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
PCAP_RECORD_HEADER_LEN = 16
# pcapng block types and byte-order magic (draft-ietf-opsawg-pcapng sections 4.1-4.4, 11.1).
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 0x00000001
PCAPNG_OPB = 0x00000002  # obsolete Packet Block (appendix)
PCAPNG_SPB = 0x00000003
PCAPNG_EPB = 0x00000006
PCAPNG_BOM = 0x1A2B3C4D
PCAPNG_BOM_LE = b"\x4d\x3c\x2b\x1a"
PCAPNG_BOM_BE = b"\x1a\x2b\x3c\x4d"
# Enhanced Packet Block: 28 bytes of header before the packet data, 4 of trailing length.
PCAPNG_EPB_HEADER_LEN = 28
OPT_END = 0
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
DEFAULT_TSRESOL = 6  # microseconds when if_tsresol is absent (pcapng section 4.2)

Interface = tuple[int, int, int, int, int]
"""A pcapng interface: ``(linktype, multiplier, divisor, offset_ns, snaplen)``; a timestamp
in its units is ``units * multiplier // divisor + offset_ns`` nanoseconds."""


class PcapLayout(NamedTuple):
    """What a classic pcap file header says about every record after it.

    ``byte_order`` is the ``struct`` prefix (``<`` or ``>``), ``ts_mult`` the nanoseconds per
    unit of the record timestamps' fraction, ``linktype`` the link type of every record.
    draft-ietf-opsawg-pcap section 4.
    """

    byte_order: str
    ts_mult: int
    linktype: int


def pcap_layout(head: bytes) -> PcapLayout:
    """The layout a classic pcap file header (its first 24 bytes) declares.

    draft-ietf-opsawg-pcap section 4 (magic, LinkType and the FCS bits above it).
    """
    e = "<" if struct.unpack_from("<I", head)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
    magic, _vmaj, _vmin, _zone, _sigfigs, _snaplen, network = struct.unpack_from(
        e + "IHHiIII", head
    )
    linktype = network & 0xFFFF  # upper bits carry FCS length (pcap section 4)
    return PcapLayout(e, 1 if magic == PCAP_MAGIC_NS else 1000, linktype)


def _words(byte_order: str) -> tuple[int, int, int, int]:
    """``PLAIN_UDP_WORDS`` as integers for ``struct`` words read in ``byte_order``:
    (first mask, first value, second mask, second value)."""
    order: Literal["little", "big"] = "little" if byte_order == "<" else "big"
    (_o1, m1, v1), (_o2, m2, v2) = PLAIN_UDP_WORDS
    return (
        int.from_bytes(m1, order),
        int.from_bytes(v1, order),
        int.from_bytes(m2, order),
        int.from_bytes(v2, order),
    )


def _probe(byte_order: str, lead: str, at: int) -> struct.Struct:
    """A ``struct`` reading ``lead`` (the record or block header fields the skip needs), then
    the two ``PLAIN_UDP_WORDS`` and the first UDP payload byte of a frame starting at ``at``."""
    (o1, _m1, _v1), (o2, _m2, _v2) = PLAIN_UDP_WORDS
    size = struct.calcsize("=" + lead)
    return struct.Struct(
        f"{byte_order}{lead}{at + o1 - size}xI{o2 - o1 - 4}xI{PLAIN_UDP_FIRST_BYTE - o2 - 4}xB"
    )


def _refill(
    read: Read, buf: bytes, pos: int, frame: int, last_ts: int | None, source_file: int, unit: str
) -> bytes | Anomaly | None:
    """The unread tail of ``buf`` (from ``pos``) followed by the next block of the input.

    None at a clean end of the input, an ``Anomaly`` when it ends inside a ``unit`` (record or
    block: the next frame is lost) or cannot be read; either way the walk stops there.
    """
    more = read()
    if isinstance(more, Anomaly):
        return more
    if not more:
        left = len(buf) - pos
        if left <= 0:
            return None
        return Anomaly(
            AnomalyKind.TRUNCATED_RECORD, frame + 1, last_ts,
            f"capture ends inside a {unit} ({left} bytes left over)", source_file,
        )  # fmt: skip
    return buf[pos:] + more if pos < len(buf) else more


def walk_pcap(
    read: Read,
    buf: bytes,
    pos: int,
    layout: PcapLayout,
    *,
    frame: int = 0,
    source_file: int = 0,
    prefilter: bool = False,
) -> Iterator[Record | Anomaly]:
    """Records of a classic pcap from ``buf[pos:]`` on (a record boundary), then ``read``.

    ``frame`` is the number of the record before the first one read. With ``prefilter``,
    records the link decoder would drop at its first test are skipped (module docstring).
    draft-ietf-opsawg-pcap section 5 (packet records).
    """
    e, mult, linktype = layout
    header = struct.Struct(e + "IIII").unpack_from
    m1, v1, m2, v2 = _words(e)
    probe = _probe(e, "8xI", PCAP_RECORD_HEADER_LEN)
    skip, probe_len = probe.unpack_from, probe.size
    min_incl = PLAIN_UDP_FIRST_BYTE + 1
    not_sip = NOT_SIP_FIRST_BYTE
    prefilter = prefilter and linktype == LINKTYPE_ETHERNET
    last_ts: int | None = None
    skipped = -1  # position in buf of the last record, when it was skipped (its time unread)
    while True:
        n = len(buf)
        while True:
            if prefilter:
                lim = n - probe_len
                while pos <= lim:
                    incl, w1, w2, first = skip(buf, pos)
                    end = pos + 16 + incl
                    if (
                        not_sip[first]
                        and w2 & m2 == v2
                        and w1 & m1 == v1
                        and incl >= min_incl
                        and end <= n
                    ):
                        frame += 1
                        skipped = pos
                        pos = end
                    else:
                        break
            if pos + 16 > n:
                break
            sec, frac, incl, orig = header(buf, pos)
            end = pos + 16 + incl
            if end > n:
                if incl > MAX_RECORD_BYTES:
                    if skipped >= 0:
                        sec0, frac0 = header(buf, skipped)[:2]
                        last_ts = sec0 * NS_PER_S + frac0 * mult
                    yield Anomaly(
                        AnomalyKind.CORRUPT_BLOCK, frame + 1, last_ts,
                        f"record header claims {incl} captured bytes", source_file,
                    )  # fmt: skip
                    return
                break
            frame += 1
            last_ts = sec * NS_PER_S + frac * mult
            skipped = -1
            yield (frame, last_ts, linktype, buf[pos + 16 : end], orig)
            pos = end
        if skipped >= 0:
            sec, frac = header(buf, skipped)[:2]
            last_ts = sec * NS_PER_S + frac * mult
            skipped = -1
        nxt = _refill(read, buf, pos, frame, last_ts, source_file, "record")
        if not isinstance(nxt, bytes):
            if nxt is not None:
                yield nxt
            return
        buf, pos = nxt, 0


def decode_interface(buf: bytes, pos: int, end: int, e: str) -> Interface:
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


def _ts_factor(code: int) -> tuple[int, int]:
    """(multiplier, divisor) turning timestamp units into ns for an if_tsresol byte."""
    if code & 0x80:  # negative power of two (pcapng section 4.2, if_tsresol)
        return NS_PER_S, 1 << (code & 0x7F)
    if code <= 9:
        return 10 ** (9 - code), 1
    return 1, 10 ** (code - 9)


def _epb_ts(buf: bytes, pos: int, e: str, ifaces: list[Interface]) -> int:
    """The time of the Enhanced Packet Block at ``pos`` (its interface already checked)."""
    iface, hi, lo = struct.unpack_from(e + "III", buf, pos + 8)
    _lt, mul, div, off, _snap = ifaces[iface]
    ts: int = ((hi << 32) | lo) * mul // div + off
    return ts


class _EpbSkip(NamedTuple):
    """The prefilter's test on Enhanced Packet Blocks for one byte order and interface table."""

    probe: Callable[[bytes, int], tuple[int, ...]]
    size: int
    trailer: Callable[[bytes, int], tuple[int, ...]]
    words: tuple[int, int, int, int]
    ethernet: bytes  # per interface id: 1 when its link type is Ethernet


def _epb_skip(e: str, ifaces: list[Interface]) -> _EpbSkip:
    """The skip's test for a section of byte order ``e`` with interfaces ``ifaces`` (made
    again whenever a Section Header or Interface Description Block changes either)."""
    probe = _probe(e, "III8xI", PCAPNG_EPB_HEADER_LEN)
    return _EpbSkip(
        probe.unpack_from,
        probe.size,
        struct.Struct(e + "I").unpack_from,
        _words(e),
        bytes(iface[0] == LINKTYPE_ETHERNET for iface in ifaces),
    )


def walk_pcapng(
    read: Read,
    buf: bytes,
    pos: int,
    *,
    frame: int = 0,
    source_file: int = 0,
    prefilter: bool = False,
    byte_order: str = "<",
    interfaces: tuple[Interface, ...] = (),
) -> Iterator[Record | Anomaly]:
    """Packet records of a pcapng from ``buf[pos:]`` on (a block boundary), then ``read``.

    ``frame`` is the number of the packet before the first one read; ``byte_order`` and
    ``interfaces`` are those of the section the walk starts in (a Section Header Block
    resets both). With ``prefilter``, Enhanced Packet Blocks the link decoder would drop at
    its first test are skipped (module docstring). draft-ietf-opsawg-pcapng section 4.
    """
    e = byte_order
    ifaces = list(interfaces)
    not_sip = NOT_SIP_FIRST_BYTE
    # The skip reads the frame up to its first UDP payload byte.
    min_caplen = PLAIN_UDP_FIRST_BYTE + 1
    last_ts: int | None = None
    probe, probe_size, trailer, (m1, v1, m2, v2), ethernet = _epb_skip(e, ifaces)
    while True:
        n = len(buf)
        lim = n - probe_size
        while True:
            if prefilter:
                skipped = -1
                while pos <= lim:
                    btype, blen, iface, caplen, w1, w2, first = probe(buf, pos)
                    end = pos + blen
                    if (
                        btype == PCAPNG_EPB
                        and not_sip[first]
                        and w2 & m2 == v2
                        and w1 & m1 == v1
                        and iface < len(ethernet)
                        and ethernet[iface]
                        and min_caplen <= caplen <= blen - PCAPNG_EPB_HEADER_LEN - 4
                        and end <= n
                        and not blen % 4
                        and blen <= MAX_BLOCK_BYTES
                        and trailer(buf, end - 4)[0] == blen
                    ):
                        frame += 1
                        skipped = pos
                        pos = end
                    else:
                        break
                if skipped >= 0:  # the time of the last packet, for what comes next
                    last_ts = _epb_ts(buf, skipped, e, ifaces)
            if pos + 12 > n:
                break
            btype = struct.unpack_from(e + "I", buf, pos)[0]
            if btype == PCAPNG_SHB:
                bom = buf[pos + 8 : pos + 12]
                e = "<" if bom == PCAPNG_BOM_LE else ">" if len(bom) == 4 else e
                if bom not in (PCAPNG_BOM_LE, PCAPNG_BOM_BE):
                    yield Anomaly(
                        AnomalyKind.CORRUPT_BLOCK, frame + 1, last_ts,
                        "section header without byte-order magic", source_file,
                    )  # fmt: skip
                    return
            blen = struct.unpack_from(e + "I", buf, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_BLOCK_BYTES:
                yield Anomaly(
                    AnomalyKind.CORRUPT_BLOCK, frame + 1, last_ts,
                    f"block type {btype:#x} has invalid length {blen}", source_file,
                )  # fmt: skip
                return
            end = pos + blen
            if end > n:
                break
            if struct.unpack_from(e + "I", buf, end - 4)[0] != blen:
                yield Anomaly(
                    AnomalyKind.CORRUPT_BLOCK, frame + 1, last_ts,
                    f"block type {btype:#x}: trailing length differs from {blen}", source_file,
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
                    yield Anomaly(
                        AnomalyKind.CORRUPT_BLOCK, frame, last_ts,
                        f"packet block: interface {iface} / length {caplen} invalid",
                        source_file,
                    )  # fmt: skip
                else:
                    lt, mul, div, off, _snap = ifaces[iface]
                    last_ts = ((hi << 32) | lo) * mul // div + off
                    yield (frame, last_ts, lt, buf[pos + 28 : pos + 28 + caplen], orig)
            elif btype == PCAPNG_SPB:
                frame += 1
                if not ifaces or blen < 16:
                    yield Anomaly(
                        AnomalyKind.CORRUPT_BLOCK, frame, last_ts,
                        "simple packet block without an interface", source_file,
                    )  # fmt: skip
                else:
                    orig = struct.unpack_from(e + "I", buf, pos + 8)[0]
                    lt, _mul, _div, _off, snap = ifaces[0]
                    caplen = min(orig, blen - 16, snap or orig)
                    # An SPB has no timestamp: it inherits the previous packet's time
                    # (pcapng section 4.4 leaves it unspecified; 0 before any packet).
                    yield (frame, last_ts or 0, lt, buf[pos + 12 : pos + 12 + caplen], orig)
            elif btype == PCAPNG_IDB:
                ifaces.append(decode_interface(buf, pos, end, e))
                probe, probe_size, trailer, (m1, v1, m2, v2), ethernet = _epb_skip(e, ifaces)
            elif btype == PCAPNG_SHB:
                ifaces = []  # interface ids are per section (pcapng section 4.1)
                probe, probe_size, trailer, (m1, v1, m2, v2), ethernet = _epb_skip(e, ifaces)
            pos = end
        nxt = _refill(read, buf, pos, frame, last_ts, source_file, "block")
        if not isinstance(nxt, bytes):
            if nxt is not None:
                yield nxt
            return
        buf, pos = nxt, 0
