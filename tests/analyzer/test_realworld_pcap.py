"""Every real-world capture reads end to end; INVITE counts agree with tshark.

Expected INVITE counts come from ``tshark -r FILE -Y 'sip.Method == "INVITE"'`` run once with
TShark (Wireshark) 4.0.17 (Debian 4.0.17-0+deb12u3); tshark is not needed to run this test.
Our count is the number of yielded payloads starting with ``b"INVITE "``. One known difference:
in ndpi_fuzz-2006-06-26-2594.pcap frame 346 is a fuzzed INVITE whose Request-URI holds a NUL
byte (``INVITE sip:0%s\\x00239...``); tshark does not dissect it as SIP, we yield it (the SIP
layer decides what it is).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from analyzer.anomaly import Anomaly
from analyzer.frames import Segment
from analyzer.pcapfile import iter_segments

pytestmark = pytest.mark.realworld

# file name -> (tshark 4.0.17 INVITE count, our INVITE payload count)
EXPECTED = {
    "derived_real_neustar_invite_udp_ipfrag.pcap": (1, 1),
    "derived_real_neustar_invite_udp_single.pcap": (1, 1),
    "ndpi_FAX-Call-t38-CA-TDM-SIP-FB-1.pcap": (16, 16),
    "ndpi_fuzz-2006-06-26-2594.pcap": (6, 7),
    "ndpi_sip.pcap": (11, 11),
    "sngrep_aaa.pcap": (11, 11),
    "sngrep_ipip.pcap": (1, 1),
    "sngrep_ipv6frag.pcap": (2, 2),
    "suricata_public-cloudshark-sip-s0.pcap": (2, 2),
    "suricata_sdp.pcap": (1, 1),
    "suricata_sip-body-large.pcap": (1, 1),
    "suricata_sip_compact_form.pcap": (1, 1),
    "suricata_sip_header_multi_val.pcap": (1, 1),
}


def _read(path: Path) -> tuple[list[Segment], list[Anomaly]]:
    segs: list[Segment] = []
    anomalies: list[Anomaly] = []
    for item in iter_segments(path):
        (anomalies if isinstance(item, Anomaly) else segs).append(item)  # type: ignore[arg-type]
    return segs, anomalies


def test_every_capture_reads_end_to_end(realworld: Path) -> None:
    files = sorted((realworld / "pcap").iterdir())
    assert files
    for path in files:
        segs, _anomalies = _read(path)  # anomalies allowed, exceptions not
        assert all(s.frame >= 1 for s in segs if not s.end), path.name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invite_count_matches_tshark(realworld: Path, name: str) -> None:
    path = realworld / "pcap" / name
    if not path.is_file():
        pytest.skip(f"{name} not in this corpus")
    segs, _ = _read(path)
    invites = sum(1 for s in segs if s.payload.startswith(b"INVITE "))
    tshark, ours = EXPECTED[name]
    assert invites == ours
    assert abs(invites - tshark) <= 1


def test_fragmented_real_invite_keeps_identity_header(realworld: Path) -> None:
    single, _ = _read(realworld / "pcap" / "derived_real_neustar_invite_udp_single.pcap")
    frag, anomalies = _read(realworld / "pcap" / "derived_real_neustar_invite_udp_ipfrag.pcap")
    assert [s.payload for s in frag] == [s.payload for s in single]
    assert b"\r\nIdentity:" in frag[0].payload
    assert frag[0].frames == (1, 2)
    assert anomalies == []


def test_tcp_body_large_reassembled(realworld: Path) -> None:
    segs, _ = _read(realworld / "pcap" / "suricata_sip-body-large.pcap")
    tcp = b"".join(s.payload for s in segs if s.transport == "tcp" and s.dport == 5060)
    assert tcp.startswith(b"INVITE ")
    assert len(tcp) > 65536  # the 64 KiB body arrived whole, in order
