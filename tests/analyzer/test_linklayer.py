"""Link/IP/transport decoding, the cheap SIP filter, and the end-to-end iterator on fixtures."""

from __future__ import annotations

import struct

import pytest

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.frames import Fragment, Segment
from analyzer.linklayer import LinkDecoder, looks_like_sip_or_hep
from analyzer.pcapfile import iter_segments
from tests.conftest import FIXTURES, load_script

CAPTURES = FIXTURES / "captures"


gen = load_script(FIXTURES / "gen_captures.py")
A4, B4, A6, B6 = gen.A4, gen.B4, gen.A6, gen.B6
INVITE = gen.sip_message("INVITE")
V4_INVITE = (A4, 5060, B4, 5060, b"INVITE ")
V6_INVITE = (A6, 5060, B6, 5060, b"INVITE ")


def _summary(name: str) -> tuple[list[tuple[str, int, str, int, bytes]], list[AnomalyKind]]:
    segs, kinds = [], []
    for item in iter_segments(CAPTURES / name):
        if isinstance(item, Anomaly):
            kinds.append(item.kind)
        elif item.payload:
            segs.append((item.src, item.sport, item.dst, item.dport, item.payload[:7]))
    return segs, kinds


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("vlan_qinq.pcap", [V4_INVITE] * 3, id="vlan-8100-88a8-9100"),
        pytest.param("sll.pcap", [V4_INVITE, V6_INVITE], id="linux-sll"),
        pytest.param("raw_ip.pcap", [V4_INVITE, V6_INVITE], id="raw-ip-101"),
        pytest.param("raw_ipv4.pcap", [V4_INVITE], id="raw-ipv4-228"),
        pytest.param(
            "null_loopback.pcap",
            [V4_INVITE, V4_INVITE, V6_INVITE, V6_INVITE],
            id="null-both-orders",
        ),
        pytest.param("loop.pcap", [V4_INVITE], id="loop-108"),
        pytest.param("ipv6_ext.pcap", [V6_INVITE], id="ipv6-extension-headers"),
        pytest.param("tunnels.pcap", [V4_INVITE, V6_INVITE, V4_INVITE], id="ip-in-ip-4-41-nested"),
        pytest.param(
            "two_ifaces_le.pcapng",
            [
                V4_INVITE,
                (B4, 5060, A4, 5060, b"SIP/2.0"),
                (A4, 5060, B4, 5060, b"ACK sip"),
                (A4, 5060, B4, 5060, b"BYE sip"),
            ],
            id="pcapng-ethernet-sll2-raw",
        ),
    ],
)
def test_link_layers_yield_the_sip_datagrams(
    name: str, expected: list[tuple[str, int, str, int, bytes]]
) -> None:
    segs, kinds = _summary(name)
    assert segs == expected
    assert kinds == []


def test_rtp_flood_keeps_only_sip() -> None:
    items = list(iter_segments(CAPTURES / "rtp_flood.pcap"))
    assert [(s.frame, s.payload[:6]) for s in items if isinstance(s, Segment)] == [
        (1, b"INVITE"),
        (302, b"BYE si"),
    ]


def test_fragmented_udp_v4_and_v6_reassembled_out_of_order() -> None:
    items = list(iter_segments(CAPTURES / "frag_udp.pcap"))
    segs = [s for s in items if isinstance(s, Segment)]
    big = gen.sip_message("INVITE", 3, body_len=2500)
    assert [(s.frame, s.frames, s.payload) for s in segs] == [
        (3, (2, 3, 1), big),
        (6, (5, 4, 6), big),
    ]
    assert [a.kind for a in items if isinstance(a, Anomaly)] == [AnomalyKind.FRAGMENT_TIMEOUT]


def test_hep_inside_udp_unwrapped() -> None:
    items = list(iter_segments(CAPTURES / "hep.pcap"))
    segs = [s for s in items if isinstance(s, Segment)]
    assert [(s.frame, s.src, s.dport, s.encapsulation, s.payload[:4]) for s in segs] == [
        (1, A4, 5060, "hep", b"INVI"),
        (2, A6, 5060, "hep", b"BYE "),
        (3, A4, 5060, "hep", b"ACK "),
    ]
    assert segs[0].ts_ns == gen.BASE_TS_NS + 5 * gen.NS  # the agent's time, not the frame's
    assert [(a.kind, a.frame) for a in items if isinstance(a, Anomaly)] == [
        (AnomalyKind.HEP_MALFORMED, 4)
    ]


def test_hep_can_be_left_wrapped() -> None:
    segs = [
        s for s in iter_segments(CAPTURES / "hep.pcap", unwrap_hep=False) if isinstance(s, Segment)
    ]
    assert [s.dport for s in segs] == [9060, 9060, 9061, 9060]


def test_tls_flows_reported_once_each_and_dropped() -> None:
    items = list(iter_segments(CAPTURES / "tls.pcap"))
    assert [(a.kind, a.frame) for a in items if isinstance(a, Anomaly)] == [
        (AnomalyKind.TLS_FLOW, 1),
        (AnomalyKind.TLS_FLOW, 3),
    ]
    assert not [s for s in items if isinstance(s, Segment)]


def test_merged_sources_carry_their_index() -> None:
    items = list(iter_segments([CAPTURES / "udp_le_us.pcap", CAPTURES / "udp_le_ns.pcap"]))
    assert [(s.source_file, s.frame) for s in items if isinstance(s, Segment)] == [
        (src, frame) for frame in (1, 2, 3, 4) for src in (0, 1)
    ]


# -- LinkDecoder unit cases ----------------------------------------------------------------------


def _eth_udp(payload: bytes, sport: int = 5060, dport: int = 5060) -> bytes:
    frame: bytes = gen.build_udp_ipv4_ethernet(A4, sport, B4, dport, payload)
    return frame


@pytest.mark.parametrize(
    ("payload", "passes"),
    [
        pytest.param(INVITE, True, id="invite"),
        pytest.param(b"SIP/2.0 180 Ringing\r\n\r\n", True, id="response"),
        pytest.param(b"FOO sip:x SIP/2.0\r\n\r\n", True, id="extension-method"),
        pytest.param(b"OPTIONS sip:x sip/2.0\r\n\r\n", True, id="lowercase-version"),
        pytest.param(b"\r\n\r\nINVITE sip:x SIP/2.0\r\n\r\n", True, id="leading-crlf"),
        pytest.param(b"HEP3\x00\x06", True, id="hep3"),
        pytest.param(gen.hep2(A4, 1, B4, 2, 0, b"x"), True, id="hepv2"),
        pytest.param(gen.rtp(1, 160), False, id="rtp"),
        pytest.param(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\0" * 12, False, id="stun"),
        pytest.param(b"\r\n\r\n", False, id="keepalive"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", False, id="http-text"),
        pytest.param(b"", False, id="empty"),
    ],
)
def test_udp_content_filter_any_port(payload: bytes, passes: bool) -> None:
    dec = LinkDecoder()
    out = dec.decode_record(1, 0, 1, _eth_udp(payload, 40000, 31337))
    assert (out is not None) is passes
    assert looks_like_sip_or_hep(payload, 0, len(payload)) is passes


def test_ethernet_padding_is_not_payload() -> None:
    frame = _eth_udp(b"SIP/2.0 200 OK\r\n")  # short: padded to 60 bytes
    out = LinkDecoder().decode_record(1, 0, 1, frame)
    assert isinstance(out, Segment)
    assert out.payload == b"SIP/2.0 200 OK\r\n"


@pytest.mark.parametrize(
    ("linktype", "data", "kind"),
    [
        pytest.param(1, b"\x00" * 10, AnomalyKind.MALFORMED_PACKET, id="short-ethernet"),
        pytest.param(
            1, gen.MAC_A * 2 + b"\x81\x00\x00", AnomalyKind.MALFORMED_PACKET, id="short-vlan"
        ),
        pytest.param(113, b"\x00" * 12, AnomalyKind.MALFORMED_PACKET, id="short-sll"),
        pytest.param(276, b"\x00" * 12, AnomalyKind.MALFORMED_PACKET, id="short-sll2"),
        pytest.param(101, b"\x45" + b"\x00" * 10, AnomalyKind.MALFORMED_PACKET, id="short-ipv4"),
        pytest.param(101, b"\x60" + b"\x00" * 10, AnomalyKind.MALFORMED_PACKET, id="short-ipv6"),
        pytest.param(101, b"\x75" + b"\x00" * 30, AnomalyKind.MALFORMED_PACKET, id="ip-version-7"),
        pytest.param(147, b"\x00" * 40, AnomalyKind.UNKNOWN_LINK_TYPE, id="user-linktype"),
    ],
)
def test_malformed_frames_are_anomalies(linktype: int, data: bytes, kind: AnomalyKind) -> None:
    dec = LinkDecoder()
    assert dec.decode_record(9, 5, linktype, data) is None
    assert [(a.kind, a.frame, a.ts_ns) for a in dec.take_anomalies()] == [(kind, 9, 5)]


def test_unknown_link_type_reported_once() -> None:
    dec = LinkDecoder()
    for frame in range(1, 4):
        dec.decode_record(frame, 0, 147, b"x")
    assert len(dec.take_anomalies()) == 1


def test_snaplen_truncated_sip_passes_with_anomaly_but_rtp_is_silent() -> None:
    dec = LinkDecoder()
    out = dec.decode_record(1, 0, 1, _eth_udp(INVITE)[:120])
    assert isinstance(out, Segment)
    assert out.payload == INVITE[: 120 - 42]
    assert [a.kind for a in dec.take_anomalies()] == [AnomalyKind.TRUNCATED_PACKET]
    assert dec.decode_record(2, 0, 1, _eth_udp(gen.rtp(1, 1))[:60]) is None
    assert dec.take_anomalies() == []


def test_checksums_verified_only_when_asked() -> None:
    frame = bytearray(_eth_udp(INVITE))
    frame[-1] ^= 0x01
    assert LinkDecoder().decode_record(1, 0, 1, bytes(frame)) is not None
    strict = LinkDecoder(verify_checksums=True)
    assert strict.decode_record(1, 0, 1, _eth_udp(INVITE)) is not None
    assert strict.take_anomalies() == []
    assert strict.decode_record(2, 0, 1, bytes(frame)) is not None
    assert [a.kind for a in strict.take_anomalies()] == [AnomalyKind.BAD_CHECKSUM]


def test_fragments_leave_as_fragment_values() -> None:
    pieces = gen.fragment_ipv4(A4, B4, 17, gen.udp(A4, 1, B4, 2, INVITE), ident=7, size=64)
    out = LinkDecoder().decode_record(1, 0, 101, pieces[1])
    assert isinstance(out, Fragment)
    assert (out.version, out.ident, out.offset, out.more, out.proto) == (4, 7, 64, True, 17)


def _tcp_frame(
    seq: int, payload: bytes, flags: int = 0x18, sport: int = 40000, dport: int = 5080
) -> bytes:
    tcp = gen.tcp(A4, sport, B4, dport, seq, flags, payload)
    frame: bytes = gen.ethernet(0x0800, gen.ipv4(A4, B4, 6, tcp))
    return frame


def test_tcp_segments_held_until_connection_shows_sip() -> None:
    dec = LinkDecoder()
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\n"
    assert dec.decode_record(1, 0, 1, _tcp_frame(500, body)) is None  # arrives first
    out = dec.decode_record(2, 0, 1, _tcp_frame(100, INVITE[:400]))
    assert isinstance(out, Segment)
    assert [s.frame for s in dec.take_released()] == [1]
    later = dec.decode_record(3, 0, 1, _tcp_frame(900, b"no sip text here"))
    assert isinstance(later, Segment)  # the connection is now known to carry SIP


def test_tcp_pure_ack_and_non_sip_connections_dropped() -> None:
    dec = LinkDecoder()
    assert dec.decode_record(1, 0, 1, _tcp_frame(1, b"", flags=0x10)) is None
    for i in range(40):
        assert (
            dec.decode_record(i + 2, 0, 1, _tcp_frame(i * 10, b"HTTP/1.1 data", dport=80)) is None
        )
    assert dec.take_released() == []


def test_tls_port_5061_with_sip_text_is_not_tls() -> None:
    dec = LinkDecoder()
    out = dec.decode_record(1, 0, 1, _tcp_frame(1, INVITE, dport=5061))
    assert isinstance(out, Segment)
    assert dec.tls_flows == 0


def test_tunnel_depth_is_bounded() -> None:
    inner = gen.ipv4(A4, B4, 17, gen.udp(A4, 5060, B4, 5060, INVITE))
    for _ in range(3):
        inner = gen.ipv4("10.0.0.1", "10.0.0.2", 4, inner)
    assert LinkDecoder().decode_record(1, 0, 101, inner) is None


def test_null_loopback_family_unknown_is_skipped() -> None:
    data = struct.pack("<I", 7) + gen.ipv4(A4, B4, 17, gen.udp(A4, 5060, B4, 5060, INVITE))
    assert LinkDecoder().decode_record(1, 0, 0, data) is None
