"""HEP decoding: the HEP3 specification example, v3 chunks, compression, v2/v1, errors, TCP."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.hep import (
    MAX_INFLATED_PAYLOAD,
    HepError,
    HepErrorReason,
    HepPacket,
    HepStreamFramer,
    decode_hep,
    hep_to_segment,
    is_hep,
)
from tests.conftest import FIXTURES, load_script

gen = load_script(FIXTURES / "gen_captures.py")

# The example packet of the HEP3 specification (sipcapture/HEP, "HEP3 Network Protocol
# Specification"), as transcribed byte by byte with its annotations in the hep-erlang test suite
# (hep_v3_tests.erl, example_packet_test). Total length 113 octets, payload shortened.
SPEC_EXAMPLE = bytes.fromhex(
    "48455033" "0071"                      # HEP3, total length 113
    "0000" "0001" "0007" "02"              # IP family 2 (IPv4)
    "0000" "0002" "0007" "11"              # IP protocol 17 (UDP)
    "0000" "0003" "000a" "d4ca0001"        # IPv4 source 212.202.0.1
    "0000" "0004" "000a" "527400d3"        # IPv4 destination 82.116.0.211
    "0000" "0007" "0008" "2eea"            # source port 12010
    "0000" "0008" "0008" "13c4"            # destination port 5060
    "0000" "0009" "000a" "4e4982cb"        # seconds 1313440459
    "0000" "000a" "000a" "0001d4c0"        # microseconds 120000
    "0000" "000b" "0007" "01"              # protocol type 1 (SIP)
    "0000" "000c" "000a" "000000e4"        # capture id 228
    "0000" "000f" "0014" "494e56495445207369703a626f62"  # payload "INVITE sip:bob"
)  # fmt: skip


def test_spec_example_packet() -> None:
    pkt = decode_hep(SPEC_EXAMPLE)
    assert pkt == HepPacket(
        version=3, family=2, proto=17, src="212.202.0.1", sport=12010, dst="82.116.0.211",
        dport=5060, ts_ns=1313440459_120000_000, capture_id=228, proto_type=1,
        payload=b"INVITE sip:bob",
    )  # fmt: skip
    seg = hep_to_segment(pkt, 7)
    assert (seg.frame, seg.ts_ns, seg.transport, seg.encapsulation) == (7, pkt.ts_ns, "udp", "hep")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zlib"])
@pytest.mark.parametrize(
    ("src", "dst"), [("192.0.2.1", "192.0.2.2"), ("2001:db8::1", "2001:db8::2")], ids=["v4", "v6"]
)
def test_generated_hep3_round_trip(compress: bool, src: str, dst: str) -> None:
    payload = gen.sip_message("INVITE")
    data = gen.hep3(src, 5060, dst, 5080, 1_700_000_000_123_456_000, payload, compress=compress,
                    extra=[(3, 0x99, b"opensips"), (0, 0x7E, b"?")])  # fmt: skip
    pkt = decode_hep(data)
    assert (pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.payload) == (src, 5060, dst, 5080, payload)
    assert pkt.ts_ns == 1_700_000_000_123_456_000
    assert (pkt.correlation_id, pkt.node_name, pkt.capture_id) == (b"call-1@test", "node-a", 2001)
    assert pkt.compressed is compress
    assert pkt.chunks == ((3, 0x99, b"opensips"), (0, 0x7E, b"?"))
    assert pkt.is_sip


def test_gzip_payload_and_auth_key() -> None:
    gz = gzip.compress(b"BYE sip:x SIP/2.0\r\n\r\n", mtime=0)
    body = (
        struct.pack("!HHH", 0, 0x10, 6 + len(gz)) + gz + struct.pack("!HHH", 0, 0x0E, 10) + b"pass"
    )
    pkt = decode_hep(b"HEP3" + struct.pack("!H", 6 + len(body)) + body)
    assert pkt.payload.startswith(b"BYE")
    assert pkt.auth_key_present
    assert pkt.ts_ns is None
    assert hep_to_segment(pkt, 1, ts_ns=42).ts_ns == 42


def test_hepv2_and_v1() -> None:
    v2 = gen.hep2("192.0.2.1", 5060, "192.0.2.2", 5062, 1_700_000_000_000_001_000, b"ACK x")
    pkt = decode_hep(v2)
    assert (pkt.version, pkt.src, pkt.dport, pkt.ts_ns, pkt.capture_id, pkt.payload) == (
        2, "192.0.2.1", 5062, 1_700_000_000_000_001_000, 2002, b"ACK x",
    )  # fmt: skip
    v1 = bytes([1]) + v2[1:16] + b"OPTIONS"
    pkt1 = decode_hep(v1)
    assert (pkt1.version, pkt1.ts_ns, pkt1.payload) == (1, None, b"OPTIONS")
    assert is_hep(v2)
    assert is_hep(v1)


def _chunked(*chunks: bytes) -> bytes:
    body = b"".join(chunks)
    return b"HEP3" + struct.pack("!H", 6 + len(body)) + body


def _chunk(ctype: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("!HHH", 0, ctype, 6 + len(value) if length is None else length) + value


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"", HepErrorReason.TOO_SHORT, id="empty"),
        pytest.param(b"HEP3\x00", HepErrorReason.TOO_SHORT, id="short-header"),
        pytest.param(b"HEP3\x00\x03", HepErrorReason.BAD_LENGTH, id="total-below-header"),
        pytest.param(b"HEP3\x00\x40abc", HepErrorReason.BAD_LENGTH, id="total-beyond-data"),
        pytest.param(b"HEP2\x00\x06", HepErrorReason.UNSUPPORTED_VERSION, id="hep2-magic"),
        pytest.param(b"\x80\x00\x01\x02", HepErrorReason.BAD_MAGIC, id="rtp"),
        pytest.param(
            _chunked(b"\x00\x00\x00"), HepErrorReason.BAD_CHUNK_LENGTH, id="cut-chunk-header"
        ),
        pytest.param(
            _chunked(_chunk(1, b"\x02", 3)), HepErrorReason.BAD_CHUNK_LENGTH, id="chunk-len-below-6"
        ),
        pytest.param(
            _chunked(_chunk(1, b"\x02", 60)),
            HepErrorReason.BAD_CHUNK_LENGTH,
            id="chunk-beyond-packet",
        ),
        pytest.param(_chunked(_chunk(7, b"")), HepErrorReason.BAD_CHUNK_VALUE, id="empty-port"),
        pytest.param(
            _chunked(_chunk(3, b"\x01\x02\x03")), HepErrorReason.BAD_CHUNK_VALUE, id="short-ipv4"
        ),
        pytest.param(_chunked(_chunk(1, b"\x07")), HepErrorReason.BAD_FAMILY, id="family-7"),
        pytest.param(
            _chunked(_chunk(0x10, b"not zlib")), HepErrorReason.DECOMPRESSION_FAILED, id="bad-zlib"
        ),
        pytest.param(
            _chunked(_chunk(0x10, zlib.compress(b"x" * 100)[:-6])),
            HepErrorReason.DECOMPRESSION_FAILED,
            id="cut-zlib",
        ),
        pytest.param(
            _chunked(_chunk(0x10, zlib.compress(b"\0" * (MAX_INFLATED_PAYLOAD + 1)))),
            HepErrorReason.PAYLOAD_TOO_LARGE,
            id="zlib-bomb",
        ),
        pytest.param(b"\x02\x10\x07\x11" + b"\0" * 30, HepErrorReason.BAD_FAMILY, id="v2-family"),
        pytest.param(
            b"\x02\x11\x02\x11" + b"\0" * 30, HepErrorReason.BAD_LENGTH, id="v2-header-length"
        ),
        pytest.param(
            b"\x02\x10\x02\x11" + b"\0" * 20, HepErrorReason.TOO_SHORT, id="v2-no-time-header"
        ),
    ],
)
def test_malformed_packets_raise_hep_error(data: bytes, reason: HepErrorReason) -> None:
    with pytest.raises(HepError) as info:
        decode_hep(data)
    assert info.value.reason is reason


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.binary(max_size=200).map(lambda b: b"HEP3" + b)))
def test_only_hep_error_escapes(data: bytes) -> None:
    try:
        result: HepPacket | HepError = decode_hep(data)
    except HepError as exc:
        result = exc
    assert isinstance(result, HepPacket) or isinstance(result.reason, HepErrorReason)


def _stream() -> tuple[bytes, list[bytes]]:
    msgs = [gen.sip_message(k) for k in gen.DIALOG]
    packets = [
        gen.hep3("192.0.2.1", 5060, "192.0.2.2", 5060, i, m, proto=6) for i, m in enumerate(msgs)
    ]
    return b"".join(packets), msgs


@pytest.mark.parametrize("step", [1, 7, 100, 10_000], ids=lambda s: f"step{s}")
def test_stream_framer_any_split(step: int) -> None:
    data, msgs = _stream()
    framer, out = HepStreamFramer(), []
    for i in range(0, len(data), step):
        out.extend(framer.feed(data[i : i + step]))
    assert [p.payload for p in out if isinstance(p, HepPacket)] == msgs
    assert all(p.proto == 6 for p in out if isinstance(p, HepPacket))


def test_stream_framer_resyncs_after_garbage_and_reset() -> None:
    data, msgs = _stream()
    framer = HepStreamFramer()
    out = framer.feed(b"garbage!" + data)
    assert isinstance(out[0], HepError)
    assert out[0].reason is HepErrorReason.BAD_MAGIC
    assert [p.payload for p in out[1:] if isinstance(p, HepPacket)] == msgs
    framer.feed(data[:50])
    framer.reset()
    assert [p.payload for p in framer.feed(data) if isinstance(p, HepPacket)] == msgs
