"""Classic pcap writer: raw packets kept as evidence (``stirscope listen --iface --write-pcap``).

The file is the classic libpcap format: a 24-byte global header (magic, version 2.4, snap
length, link type) then one 16-byte record header (seconds, fraction, captured length,
original length) per packet. Nanosecond timestamps use the ``0xA1B23C4D`` magic so kernel
capture times are kept exactly; both magics are read by Wireshark, tcpdump and
``analyzer.pcapfile``. The writer takes any binary stream (the caller opens, flushes and
closes the file), so it stays free of paths and clocks.

draft-ietf-opsawg-pcap sections 4 and 5 (file header, packet record).
"""

from __future__ import annotations

import struct
from typing import Protocol

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_VERSION = (2, 4)  # draft-ietf-opsawg-pcap section 4: major 2, minor 4
# tcpdump's default snap length since 4.0 (262144 bytes): whole packets, even 64 KiB loopback.
DEFAULT_SNAPLEN = 262_144
NS_PER_S = 1_000_000_000
NS_PER_US = 1000

_FILE_HEADER = struct.Struct("=IHHiIII")
_RECORD_HEADER = struct.Struct("=IIII")


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class PcapWriter:
    """Append packets to a classic pcap stream (native byte order, as libpcap writes).

    ``write`` truncates ``data`` to the snap length and records the original length, as a
    capture tool does. ``packets`` counts records written (the last one's Wireshark frame
    number). draft-ietf-opsawg-pcap sections 4 and 5.
    """

    def __init__(
        self,
        out: _Writable,
        linktype: int,
        *,
        snaplen: int = DEFAULT_SNAPLEN,
        nanosecond: bool = True,
    ) -> None:
        if not 0 < snaplen <= 0x7FFFFFFF:
            raise ValueError(f"snap length {snaplen} out of range")
        self._out = out
        self.linktype = linktype
        self.snaplen = snaplen
        self.nanosecond = nanosecond
        self.packets = 0
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        out.write(_FILE_HEADER.pack(magic, *PCAP_VERSION, 0, 0, snaplen, linktype))

    def write(self, ts_ns: int, data: bytes, orig_len: int | None = None) -> int:
        """Append one packet captured at ``ts_ns`` (ns since the epoch); returns its frame
        number (1-based). draft-ietf-opsawg-pcap section 5."""
        sec, frac = divmod(ts_ns, NS_PER_S)
        if not self.nanosecond:
            frac //= NS_PER_US
        kept = data[: self.snaplen]
        original = len(data) if orig_len is None else max(orig_len, len(kept))
        self._out.write(_RECORD_HEADER.pack(sec, frac, len(kept), original) + kept)
        self.packets += 1
        return self.packets
