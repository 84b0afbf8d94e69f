"""Values that leave the capture layers: transport payloads with where and when they were seen.

A ``Segment`` is what the SIP layer consumes: one UDP datagram, or one chunk of in-order TCP
bytes, or the inner packet of a HEP encapsulation, with the frame number(s) and capture time
needed for evidence. A ``Fragment`` is one IP fragment on its way to the defragmenter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Transport = Literal["udp", "tcp"]

# TCP header flag bits (RFC 9293 section 3.1).
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10


@dataclass(slots=True, unsafe_hash=True)
class Segment:
    """A transport payload seen on the wire.

    ``frame`` is the 1-based frame number in its capture file (Wireshark numbering) of the
    packet that carried, or for reassembled data completed, the payload; ``frames`` lists every
    frame that contributed bytes (IP fragments, TCP segments) in delivery order, and is empty
    when only ``frame`` did. ``ts_ns`` is the capture time in integer nanoseconds since the
    epoch. For TCP, ``seq`` is the sequence number of the first payload byte and ``flags``
    the TCP flag bits; on reassembled chunks ``gap_before`` says bytes were lost just before
    this chunk (the consumer must resync its framer) and ``end`` marks the end of the stream
    direction (FIN/RST/expiry). ``encapsulation`` is ``"hep"`` for packets unwrapped from HEP.
    ``source_file`` is the index of the input file when several captures are merged (of
    ``frame`` on reassembled data); ``frame_sources``, parallel to ``frames``, gives the input
    of each frame when they differ (a TCP connection continued into the next rotated capture)
    and is empty when every frame is from ``source_file``; ``frame_ends``, parallel to
    ``frames`` on a reassembled chunk that several frames made, gives where each frame's bytes
    end in ``payload`` (empty otherwise).

    A value, never changed once made; not a frozen dataclass only because one is made for every
    SIP packet of a capture and frozen construction (an ``object.__setattr__`` per field) cost
    six times a plain one. Equality and hashing are a frozen one's.

    RFC 768 (UDP), RFC 9293 section 3.1 (TCP header).
    """

    frame: int
    ts_ns: int
    src: str
    sport: int
    dst: str
    dport: int
    transport: Transport
    payload: bytes
    seq: int = 0
    flags: int = 0
    source_file: int = 0
    frames: tuple[int, ...] = ()
    gap_before: bool = False
    end: bool = False
    encapsulation: str = ""
    frame_sources: tuple[int, ...] = ()
    frame_ends: tuple[int, ...] = ()

    @property
    def frame_numbers(self) -> tuple[int, ...]:
        """Every frame that contributed to this payload (at least ``frame``)."""
        return self.frames or (self.frame,)

    @property
    def frame_source_list(self) -> tuple[int, ...]:
        """The input index of every frame in ``frame_numbers`` (parallel to it)."""
        return self.frame_sources or (self.source_file,) * len(self.frame_numbers)


@dataclass(frozen=True, slots=True)
class Fragment:
    """One IPv4 or IPv6 fragment: the bytes after the IP (and IPv6 Fragment) header.

    ``offset`` is in bytes; ``more`` is the More Fragments flag; ``proto`` the upper-layer
    protocol (IPv4 Protocol field, or the IPv6 Fragment header's Next Header); ``ident`` the
    Identification field. ``depth`` counts the IP-in-IP tunnels already unwrapped.

    RFC 791 section 3.2 (IPv4 fragmentation), RFC 8200 section 4.5 (IPv6 Fragment header).
    """

    frame: int
    ts_ns: int
    version: int
    src: str
    dst: str
    proto: int
    ident: int
    offset: int
    more: bool
    payload: bytes
    depth: int = 0
