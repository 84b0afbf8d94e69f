"""The analyzer's fast paths give exactly what the plain paths give.

* The record walk's RTP prefilter skips only records ``LinkDecoder`` would drop without a
  trace (no segment, no anomaly), and ``iter_segments`` output does not change with it.
* Messages known by their scanned keys (``ObservedMessage.scanned``) behave like parsed ones:
  same keys, same lazily parsed message, and they survive pickling to worker processes.
* The worker pool (parse + verify + render in other processes) writes the same bytes as one
  process, whatever the chunking.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Literal

import pytest

from analyzer import run as run_module
from analyzer.capture import MessageReader, ObservedMessage, iter_messages
from analyzer.linklayer import LinkDecoder
from analyzer.pcapfile import CaptureReader, iter_segments
from analyzer.records import jsonl_line
from analyzer.run import AnalyzeJob, AnalyzeOptions
from analyzer.verifying import VerifierConfig
from sip import parse_message
from sip.keys import keys_of
from tests.analyzer.test_linklayer import A4, B4, INVITE, gen
from tests.conftest import FIXTURES

DEMO = FIXTURES / "demo" / "demo.pcap"
CAPTURES = FIXTURES / "captures"
CONFIG = VerifierConfig(trust=(FIXTURES / "pki" / "trust",), certs_dirs=(FIXTURES / "certs",))
NS = 1_000_000_000


def _udp_frame(payload: bytes, **ip: object) -> bytes:
    l4 = gen.udp(A4, 40000, B4, 30000, payload)
    frame: bytes = gen.ethernet(0x0800, gen.ipv4(A4, B4, 17, l4, **ip))
    return frame


def _edge_frames() -> list[bytes]:
    """Frames around every condition of the prefilter's test (linklayer.PLAIN_UDP_WORDS)."""
    rtp = gen.rtp(1, 160)
    return [
        _udp_frame(rtp),  # plain RTP: skipped
        _udp_frame(INVITE),  # SIP: kept
        _udp_frame(b"\x00\x01stun"),  # first byte never SIP: skipped
        _udp_frame(b"Hello world, not SIP"),  # a letter: the decoder looks further
        _udp_frame(b"\r\n\r\n"),  # keep-alive: the decoder looks further
        _udp_frame(rtp, options=b"\x01\x01\x01\x01"),  # IP options: not the fast path
        _udp_frame(rtp, frag=0x2000),  # more fragments
        _udp_frame(rtp, frag=0x0001),  # a non-first fragment
        _udp_frame(rtp, frag=0x4000),  # DF only: still the fast path
        _udp_frame(rtp, total_len=10),  # bad IPv4 total length: an anomaly, not skipped
        _udp_frame(b""),  # empty payload: byte 42 is padding
        gen.ethernet(0x86DD, gen.ipv6("2001:db8::1", "2001:db8::2", 17, b"\x80" * 20)),
        gen.ethernet(0x0800, gen.ipv4(A4, B4, 6, b"\x80" * 40)),  # TCP
        gen.ethernet(0x0800, _udp_frame(rtp)[14:], vlans=[(0x8100, 5)]),
        _udp_frame(rtp)[:42],  # too short for the probe
        _udp_frame(rtp)[:43],  # exactly long enough
        _udp_frame(rtp)[:20],  # truncated IPv4 header
    ]


def _pcap(frames: list[bytes], *, big_endian: bool = False) -> bytes:
    out = io.BytesIO()
    writer = gen.PcapWriter(out, gen.LINKTYPE_ETHERNET, big_endian=big_endian)
    for i, frame in enumerate(frames):
        writer.write(1_768_478_400 * NS + i * 1000, frame)
    return out.getvalue()


def _pcapng(frames: list[bytes]) -> bytes:
    """Two sections of different byte orders, each with an Ethernet interface and a raw-IP one
    (whose frames the prefilter must leave alone), Simple Packet Blocks among the EPBs (their
    time is the previous packet's, maybe a skipped one)."""
    out = io.BytesIO()
    half = len(frames) // 2
    for section, big_endian in ((frames[:half], False), (frames[half:], True)):
        writer = gen.PcapngWriter(out, big_endian=big_endian)
        eth = writer.add_interface(gen.LINKTYPE_ETHERNET, tsresol=9)
        raw = writer.add_interface(101)
        for i, frame in enumerate(section):
            writer.write(eth, 1_768_478_400 * NS + i * 1000, frame)
            if i % 5 == 4:
                writer.write_simple(frame)
            if i % 7 == 6:
                writer.write(raw, 1_768_478_400 * NS + i * 1000 + 1, frame[14:])
    return out.getvalue()


CONTAINERS = {
    "pcap": _pcap,
    "pcap-big-endian": lambda frames: _pcap(frames, big_endian=True),
    "pcapng": _pcapng,
}


def _records(data: bytes, prefilter: bool) -> list[tuple[int, int, int, bytes, int]]:
    walked = list(CaptureReader(io.BytesIO(data)).walk(prefilter=prefilter))
    return [r for r in walked if isinstance(r, tuple)]


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "split-across-reads"])
def test_prefilter_skips_only_what_the_decoder_drops_silently(
    container: str, chunked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunked:  # records straddle every read boundary
        monkeypatch.setattr("analyzer.pcapfile.READ_BLOCK", 37)
    frames = _edge_frames() * 3
    data = CONTAINERS[container](frames)
    every = _records(data, prefilter=False)
    kept = _records(data, prefilter=True)
    assert [r[0] for r in every] == list(range(1, len(every) + 1))
    assert set(kept) <= set(every)  # same frame numbers, times (SPBs too) and bytes
    skipped = [r for r in every if r not in kept]
    # Per round: RTP, STUN, DF-only RTP, bad total length (the decoder's first test never
    # reads it either), the empty payload and the 43-byte frame.
    per_round = len(frames) // 3
    expected = [0, 2, 8, 9, 10, 15] * 3
    if container == "pcap":
        assert sorted((r[0] - 1) % per_round for r in skipped) == sorted(expected)
    else:
        assert len(skipped) == len(expected)  # SPBs and raw-IP packets are never skipped
    for frame, ts_ns, linktype, record, _orig in skipped:
        decoder = LinkDecoder()
        assert decoder.decode_record(frame, ts_ns, linktype, record) is None
        assert decoder.anomalies == []
        assert decoder.released == []


@pytest.mark.parametrize("container", CONTAINERS)
def test_prefilter_keeps_frame_numbers_and_truncation_report(container: str) -> None:
    frames = [_udp_frame(gen.rtp(i, i)) for i in range(5)] + [_udp_frame(INVITE)]
    data = CONTAINERS[container](frames[:1] + frames)  # pcapng: one section of each order
    walked = list(CaptureReader(io.BytesIO(data[:-10])).walk(prefilter=True))
    anomaly = walked[-1]
    assert not isinstance(anomaly, tuple)
    assert [r for r in walked[:-1] if isinstance(r, tuple) and r[3] == frames[-1]] == []
    every = _records(data[:-10], prefilter=False)
    assert anomaly.frame == every[-1][0] + 1  # the INVITE record is cut: only the anomaly
    assert anomaly.ts_ns == every[-1][1]  # the last (skipped) record's time


def _empty_pcap() -> io.BytesIO:
    return io.BytesIO(_pcap([]))


@pytest.mark.parametrize(
    "path",
    [DEMO, *sorted(p for p in CAPTURES.glob("*.pcap*") if "not_a_capture" not in p.name)],
    ids=lambda p: p.name,
)
def test_segments_are_the_same_with_and_without_the_prefilter(path: Path) -> None:
    fast = list(iter_segments(path))  # one input: prefiltered walk
    plain = list(iter_segments([path, _empty_pcap()]))  # merging: every record decoded
    assert fast == plain


def test_segments_of_edge_frames_are_the_same_with_and_without_the_prefilter() -> None:
    data = _pcap(_edge_frames())
    assert list(iter_segments(io.BytesIO(data))) == list(
        iter_segments([io.BytesIO(data), _empty_pcap()])
    )


def _demo_messages() -> list[ObservedMessage]:
    return [m for m in iter_messages(DEMO) if isinstance(m, ObservedMessage)]


def test_scanned_messages_match_parsed_ones() -> None:
    scanned = 0
    for obs in _demo_messages():
        parsed = parse_message(obs.raw)
        assert obs.keys == keys_of(parsed)
        scanned += obs._parsed is None
        assert obs.message == parsed
        assert obs.message is obs.message  # parsed once, then kept
    assert scanned > 0  # the demo's UDP messages take the fast path


def test_observed_messages_pickle_as_raw_bytes_and_keys() -> None:
    for obs in _demo_messages():
        obs.message  # noqa: B018 - parsed: the pickle still carries only the bytes
        again = pickle.loads(pickle.dumps(obs))
        assert again == obs
        assert again._parsed is None
        assert again.message == obs.message


def test_unparseable_datagram_still_reported_by_the_reader() -> None:
    from analyzer.frames import Segment

    reader = MessageReader()
    bad = Segment(1, 0, A4, 5060, B4, 5060, "udp", b"INVITE sip:x SIP/2.0 extra\r\n\r\n")
    (item,) = reader.feed(bad)
    assert not isinstance(item, ObservedMessage)
    assert item.kind.value == "sip_unparseable"


def _jsonl(workers: int) -> bytes:
    job = AnalyzeJob([str(DEMO)], AnalyzeOptions(CONFIG, workers=workers))
    return "".join(str(text) for _digest, text in job.results(jsonl_line)).encode()


@pytest.mark.parametrize(("inline", "chunk"), [(0, 1), (3, 4)], ids=["mostly-pooled", "mixed"])
def test_worker_pool_writes_the_same_bytes_as_one_process(
    monkeypatch: pytest.MonkeyPatch, inline: int, chunk: int
) -> None:
    single = _jsonl(1)
    monkeypatch.setattr(run_module, "INLINE_CALLS", inline)
    monkeypatch.setattr(run_module, "CHUNK_CALLS", chunk)
    assert _jsonl(2) == single
    assert single.count(b"\n") == 13


def _plain(frame: bytes, order: Literal["little", "big"]) -> bool:
    from analyzer.linklayer import PLAIN_UDP_WORDS

    return all(
        int.from_bytes(frame[at : at + 4], order) & int.from_bytes(mask, order)
        == int.from_bytes(want, order)
        for at, mask, want in PLAIN_UDP_WORDS
    )


@pytest.mark.parametrize("order", ["little", "big"])
def test_prefilter_words_select_the_decoders_bytes(order: Literal["little", "big"]) -> None:
    # The prefilter reads two 32-bit words in the capture's byte order; masked, they must
    # test exactly what decode_record's first test does, whatever that order.
    from analyzer.linklayer import PLAIN_UDP_FIRST_BYTE

    rtp = gen.rtp(1, 160)
    frame = _udp_frame(rtp)
    assert frame[PLAIN_UDP_FIRST_BYTE] == rtp[0]
    assert _plain(frame, order)
    assert _plain(_udp_frame(rtp, frag=0x4000), order)  # DF only
    other = bytearray(frame)
    other[15], other[22] = 0xB8, 1  # TOS and TTL: outside the masks
    assert _plain(bytes(other), order)
    assert not _plain(_udp_frame(rtp, frag=0x2000), order)  # MF
    assert not _plain(_udp_frame(rtp, frag=0x0001), order)  # fragment offset
    assert not _plain(_udp_frame(rtp, options=b"\x01\x01\x01\x01"), order)  # IHL 6
    assert not _plain(gen.ethernet(0x0800, gen.ipv4(A4, B4, 6, b"\x80" * 40)), order)  # TCP
    assert not _plain(gen.ethernet(0x86DD, bytes(60)), order)  # IPv6
