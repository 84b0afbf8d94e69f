"""The live pipeline (analyzer/live.py): HEP and captured frames in, calls and anomalies out.

Signed fixture calls go in as HEP3 (plain, gzip), HEPv2, TCP byte streams cut anywhere and
Ethernet frames (UDP, TCP, IP fragments, HEP on the wire); each call is verified as of its
packet time. Calls complete on capture time, on a wall-clock tick after the traffic stops, or
on flush. Heartbeats, non-SIP payloads and unknown chunks are counted; garbage, truncated and
oversized HEP become anomalies, never exceptions (fuzzed). STANDARDS.md section 13.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.assess import assess_call
from analyzer.calls import LINGER_NS, Call, CallEnd, CallTracker
from analyzer.hep import MAX_INFLATED_PAYLOAD, HepErrorReason
from analyzer.linklayer import LINKTYPE_ETHERNET
from analyzer.live import LiveItem, LivePipeline, advance_tracker
from analyzer.verifying import build_verifier
from shaken.verifier import Verifier
from tests.analyzer.test_hep import SPEC_EXAMPLE
from tests.service.hep_packets import (
    CALLEE,
    CALLER,
    NS,
    chunk,
    dialog,
    dialog_hep,
    gen,
    heartbeat,
    hep3,
    ts_ns,
    udp_frame,
)
from tests.service.invites import FIXTURE_AT, fixture_call, fixture_config

AT_NS = ts_ns(FIXTURE_AT)
WALL_NS = 1_900_000_000 * NS  # the collector's clock: far from the agents' capture times


@pytest.fixture(scope="module")
def verifier() -> Iterator[Verifier]:
    with build_verifier(fixture_config()) as built:
        yield built


def calls_of(items: list[LiveItem]) -> list[Call]:
    return [item for item in items if isinstance(item, Call)]


def kinds_of(items: list[LiveItem]) -> list[AnomalyKind]:
    return [item.kind for item in items if isinstance(item, Anomaly)]


def feed_all(pipeline: LivePipeline, packets: list[bytes]) -> list[LiveItem]:
    out: list[LiveItem] = []
    for n, packet in enumerate(packets):
        out += pipeline.feed_hep(packet, WALL_NS + n, "192.0.2.99:40000")
    return out


# -- HEP flavours: every one gives the same verified call ---------------------------------------


def _hep3_gzip(invite: bytes) -> list[bytes]:
    packets = dialog_hep(invite, AT_NS)
    return [hep3(dialog(invite)[0], AT_NS, gzip_payload=True), *packets[1:]]


def _hep2(invite: bytes) -> list[bytes]:
    out = []
    for n, message in enumerate(dialog(invite)):
        src, dst = (CALLEE, CALLER) if message.startswith(b"SIP/2.0") else (CALLER, CALLEE)
        out.append(gen.hep2(src[0], src[1], dst[0], dst[1], AT_NS + n * NS // 10, message))
    return out


@pytest.mark.parametrize(
    "build",
    [lambda invite: dialog_hep(invite, AT_NS), _hep3_gzip, _hep2],
    ids=["hep3", "hep3-gzip", "hep2"],
)
def test_hep_dialog_is_one_verified_call(verifier: Verifier, build: object) -> None:
    pipeline = LivePipeline()
    assert callable(build)
    items = feed_all(pipeline, build(fixture_call("alpha_a")))
    assert calls_of(items) == []  # the call lingers for stragglers (RFC 3261 timer B)
    items += pipeline.flush()
    (call,) = calls_of(items)
    assert kinds_of(items) == []
    assert (call.end, call.final_status, call.messages) == (CallEnd.BYE, 200, 6)
    record = assess_call(call, verifier)
    # Judged as of the HEP capture time, not the collector's clock (WALL_NS is 2030).
    assert (record.verstat, record.at, record.encapsulation) == (
        "TN-Validation-Passed",
        "2026-01-15T12:00:05.000000Z",
        "hep",
    )
    assert record.frames == (1, 2, 3, 4, 5, 6)


@pytest.mark.parametrize(
    ("name", "verstat"),
    [
        ("alpha_a", "TN-Validation-Passed"),
        ("tampered", "TN-Validation-Failed"),
        ("unsigned", "No-TN-Validation"),
    ],
    ids=["valid", "tampered", "unsigned"],
)
def test_verdict_per_fixture_call(verifier: Verifier, name: str, verstat: str) -> None:
    pipeline = LivePipeline()
    items = feed_all(pipeline, dialog_hep(fixture_call(name), AT_NS)) + pipeline.flush()
    (call,) = calls_of(items)
    assert assess_call(call, verifier).verstat == verstat


# -- time: capture time, wall-clock ticks, flush ------------------------------------------------


def test_tick_completes_a_call_after_the_traffic_stops() -> None:
    pipeline = LivePipeline()
    packets = dialog_hep(fixture_call("alpha_a"), AT_NS, step_ns=0)
    assert calls_of(feed_all(pipeline, packets)) == []
    last_wall = WALL_NS + len(packets) - 1
    # Before the linger time has passed on the wall clock: nothing.
    assert pipeline.tick(last_wall + LINGER_NS - NS) == []
    (call,) = calls_of(pipeline.tick(last_wall + LINGER_NS + NS))
    assert call.end is CallEnd.BYE
    assert pipeline.flush() == []


def test_tick_before_any_packet_and_time_never_goes_back() -> None:
    pipeline = LivePipeline()
    assert pipeline.tick(WALL_NS) == []
    tracker = CallTracker()
    assert advance_tracker(tracker, 5 * NS) == []
    assert advance_tracker(tracker, 1 * NS) == []  # earlier: ignored
    assert tracker._now == 5 * NS


def test_pending_call_is_flushed_as_end_of_input(verifier: Verifier) -> None:
    pipeline = LivePipeline()
    items = feed_all(pipeline, dialog_hep(fixture_call("alpha_a"), AT_NS)[:1])
    (call,) = calls_of(items + pipeline.flush())
    assert (call.end, call.final_status) == (CallEnd.END_OF_INPUT, None)
    assert assess_call(call, verifier).verstat == "TN-Validation-Passed"


def test_hep_without_timestamp_uses_arrival_time() -> None:
    pipeline = LivePipeline()
    invite = fixture_call("alpha_a")
    pipeline.feed_hep(hep3(invite, None), WALL_NS)
    (call,) = calls_of(pipeline.flush())
    assert call.start_ns == WALL_NS


# -- counting what is not SIP ---------------------------------------------------------------


def test_heartbeats_non_sip_payloads_and_unknown_chunks_are_counted() -> None:
    pipeline = LivePipeline()
    extra = chunk(0x99, b"vendor", vendor=3) + chunk(0x7E, b"?") + chunk(0x20, b"\x01\x9a")
    packets = [
        heartbeat(AT_NS),
        heartbeat(AT_NS + NS),
        hep3(b'{"type":200}', AT_NS, proto_type=0x05),  # RTCP as JSON
        hep3(b"log line", AT_NS, proto_type=0xC8),  # an unregistered type
        hep3(fixture_call("alpha_a"), AT_NS, extra=extra),
    ]
    items = feed_all(pipeline, packets)
    assert kinds_of(items) == []
    stats = pipeline.stats
    assert stats.packets == 5
    assert dict(stats.hep_payloads) == {
        "heartbeat": 2,
        "rtcp_json": 1,
        "type_200": 1,
        "sip": 1,
    }
    assert dict(stats.hep_chunks) == {"keepalive": 2, "vendor": 1, "unknown": 1, "mos": 1}
    assert dict(stats.hep_versions) == {"v3": 5}
    assert len(calls_of(pipeline.flush())) == 1


def _bomb() -> bytes:
    packed = zlib.compress(b"\0" * (MAX_INFLATED_PAYLOAD + 1), 9)
    return b"HEP3" + struct.pack("!H", 6 + 6 + len(packed)) + chunk(0x10, packed)


@pytest.mark.parametrize(
    ("data", "kind", "reason"),
    [
        (b"\x00garbage datagram", AnomalyKind.HEP_MALFORMED, HepErrorReason.BAD_MAGIC),
        (b"", AnomalyKind.HEP_MALFORMED, HepErrorReason.TOO_SHORT),
        (SPEC_EXAMPLE[:60], AnomalyKind.HEP_MALFORMED, HepErrorReason.BAD_LENGTH),
        (b"HEP3\x00\x0c" + chunk(0x0F, b"\x00" * 10, 0)[:6], AnomalyKind.HEP_MALFORMED,
         HepErrorReason.BAD_CHUNK_LENGTH),
        (b"HEP4\x00\x06", AnomalyKind.HEP_UNSUPPORTED, HepErrorReason.UNSUPPORTED_VERSION),
        (_bomb(), AnomalyKind.HEP_MALFORMED, HepErrorReason.PAYLOAD_TOO_LARGE),
        (b"HEP3\x00\x0c" + chunk(0x10, b"not zlib")[:6], AnomalyKind.HEP_MALFORMED,
         HepErrorReason.BAD_CHUNK_LENGTH),
        (hep3(b"x", AT_NS)[:-1], AnomalyKind.HEP_MALFORMED, HepErrorReason.BAD_LENGTH),
    ],
    ids=["garbage", "empty", "truncated-spec-example", "chunk-past-end", "hep4", "gzip-bomb",
         "cut-compressed", "one-byte-short"],
)  # fmt: skip
def test_bad_hep_becomes_an_anomaly(data: bytes, kind: AnomalyKind, reason: HepErrorReason) -> None:
    pipeline = LivePipeline()
    items = pipeline.feed_hep(data, WALL_NS, "192.0.2.99:40000")
    assert kinds_of(items) == [kind]
    assert dict(pipeline.stats.hep_errors) == {reason.value: 1}
    (anomaly,) = items
    assert isinstance(anomaly, Anomaly)
    assert anomaly.frame == 1
    assert "192.0.2.99:40000" in anomaly.detail
    # The pipeline goes on: the next packet is a call.
    pipeline.feed_hep(hep3(fixture_call("alpha_a"), AT_NS), WALL_NS)
    assert len(calls_of(pipeline.flush())) == 1


def test_spec_example_is_decoded_and_its_short_payload_reported() -> None:
    pipeline = LivePipeline()
    items = pipeline.feed_hep(SPEC_EXAMPLE, WALL_NS)
    # "INVITE sip:bob" is the spec's shortened payload: HEP decodes, SIP cannot be parsed.
    assert kinds_of(items) == [AnomalyKind.SIP_UNPARSEABLE]
    assert dict(pipeline.stats.hep_payloads) == {"sip": 1}
    (anomaly,) = items
    assert isinstance(anomaly, Anomaly)
    assert anomaly.ts_ns == 1313440459_120000_000  # the agent's capture time


# -- HEP over TCP ---------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 7, 100, 5000], ids=lambda s: f"step{s}")
def test_hep_stream_any_split(step: int) -> None:
    stream = b"".join(dialog_hep(fixture_call("alpha_a"), AT_NS))
    pipeline = LivePipeline()
    items: list[LiveItem] = []
    for pos in range(0, len(stream), step):
        items += pipeline.feed_hep_stream("conn-1", stream[pos : pos + step], WALL_NS)
    items += pipeline.close_hep_stream("conn-1", WALL_NS)
    assert kinds_of(items) == []
    (call,) = calls_of(items + pipeline.flush())
    assert call.messages == 6
    assert pipeline.stats.packets == 6


def test_hep_stream_garbage_resync_and_cut_packet() -> None:
    packet = hep3(fixture_call("alpha_a"), AT_NS)
    pipeline = LivePipeline()
    items = pipeline.feed_hep_stream(1, b"junk!" + packet + packet[:40], WALL_NS, "agent")
    items += pipeline.close_hep_stream(1, WALL_NS, "agent")
    assert kinds_of(items) == [AnomalyKind.HEP_MALFORMED, AnomalyKind.HEP_MALFORMED]
    assert dict(pipeline.stats.hep_errors) == {"bad_magic": 1, "too_short": 1}
    assert len(calls_of(pipeline.flush())) == 1


def test_flush_reports_streams_left_open() -> None:
    pipeline = LivePipeline()
    pipeline.feed_hep_stream("a", hep3(b"x", AT_NS)[:30], WALL_NS)
    assert kinds_of(pipeline.flush()) == [AnomalyKind.HEP_MALFORMED]


# -- captured frames ------------------------------------------------------------------------


def test_ethernet_udp_frames(verifier: Verifier) -> None:
    pipeline = LivePipeline()
    items: list[LiveItem] = []
    for n, message in enumerate(dialog(fixture_call("alpha_a"))):
        response = message.startswith(b"SIP/2.0")
        src, dst = (CALLEE, CALLER) if response else (CALLER, CALLEE)
        frame = udp_frame(message, src=src, dst=dst)
        items += pipeline.feed_record(LINKTYPE_ETHERNET, frame, AT_NS + n, WALL_NS, frame=10 + n)
    (call,) = calls_of(items + pipeline.flush())
    assert call.frames == (10, 11, 12, 13, 14, 15)
    record = assess_call(call, verifier)
    assert (record.verstat, record.encapsulation, record.transport) == (
        "TN-Validation-Passed",
        "",
        "udp",
    )


def test_ethernet_tcp_and_fragments() -> None:
    invite = fixture_call("alpha_a")
    pipeline = LivePipeline()
    items: list[LiveItem] = []
    # An INVITE over TCP in three segments, the last two swapped.
    segments = gen.build_tcp_segments(*CALLER, *CALLEE, invite, isn=1000, mss=500)
    assert len(segments) == 3
    for seq, tcp in (segments[0], segments[2], segments[1]):
        frame = gen.ethernet(0x0800, gen.ipv4(CALLER[0], CALLEE[0], 6, tcp, ident=seq & 0xFFFF))
        items += pipeline.feed_record(LINKTYPE_ETHERNET, frame, AT_NS, WALL_NS)
    # A second call's INVITE over UDP in IPv4 fragments.
    other = invite.replace(b"a1b2c3d4-alpha-a", b"fragmented-call")
    l4 = gen.udp(CALLER[0], 5070, CALLEE[0], 5060, other)
    for piece in gen.fragment_ipv4(CALLER[0], CALLEE[0], 17, l4, 77, 496):
        items += pipeline.feed_record(LINKTYPE_ETHERNET, gen.ethernet(0x0800, piece), AT_NS,
                                      WALL_NS)  # fmt: skip
    items += pipeline.flush()
    assert kinds_of(items) == []
    assert sorted(call.call_id for call in calls_of(items)) == [
        "a1b2c3d4-alpha-a",
        "fragmented-call",
    ]


def test_hep_sniffed_on_the_wire_is_unwrapped() -> None:
    pipeline = LivePipeline()
    frame = udp_frame(hep3(fixture_call("alpha_a"), AT_NS), dst=("192.0.2.1", 9060))
    pipeline.feed_record(LINKTYPE_ETHERNET, frame, AT_NS + NS, WALL_NS)
    (call,) = calls_of(pipeline.flush())
    assert call.primary.encapsulation == "hep"
    assert call.start_ns == AT_NS


def test_unknown_link_type_is_an_anomaly() -> None:
    pipeline = LivePipeline()
    assert kinds_of(pipeline.feed_record(147, b"\x00" * 40, AT_NS, WALL_NS)) == [
        AnomalyKind.UNKNOWN_LINK_TYPE
    ]


# -- nothing but our values escapes ---------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_any_bytes_give_values_not_exceptions(chunks: list[bytes], hep3_prefix: bool) -> None:
    pipeline = LivePipeline()
    for data in chunks:
        data = (b"HEP3" + data) if hep3_prefix else data
        for item in pipeline.feed_hep(data, WALL_NS):
            assert isinstance(item, Anomaly | Call)
        for item in pipeline.feed_hep_stream("s", data, WALL_NS):
            assert isinstance(item, Anomaly | Call)
        pipeline.feed_record(LINKTYPE_ETHERNET, data, AT_NS, WALL_NS)
    pipeline.tick(WALL_NS + 3600 * NS)
    pipeline.flush()
