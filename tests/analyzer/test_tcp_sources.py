"""A TCP connection continuing from one capture file into the next (rotated captures): every
frame is credited to its own input, in reassembled chunks, SIP messages, call records and
anomalies alike."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from analyzer.anomaly import Anomaly, AnomalyKind
from analyzer.capture import MessageReader, ObservedMessage, messages_from_segments
from analyzer.frames import TCP_PSH, TCP_SYN, Segment
from analyzer.pcapfile import iter_segments
from analyzer.tcpstream import MAX_BUFFERED_SEGMENTS, StreamChunk, TcpReassembler
from service.cli import main
from tests.conftest import FIXTURES, load_script

gen = load_script(FIXTURES / "gen_captures.py")
TRUST = ["--trust", str(FIXTURES / "pki" / "trust"), "--certs", str(FIXTURES / "certs")]
A, B = gen.A4, gen.B4
FWD = (A, 40000, B, 5060)
T0 = gen.BASE_TS_NS
ISN, RISN = 1000, 5000


def _sip(kind: str, call: int, body_len: int = 0) -> bytes:
    return bytes(gen.sip_message(kind, call, body_len=body_len, transport="TCP"))


def _packet(fwd: bool, seq: int, flags: int, payload: bytes) -> bytes:
    src, sport, dst, dport = FWD if fwd else (B, 5060, A, 40000)
    return bytes(gen.ethernet(0x0800, gen.ipv4(src, dst, 6, gen.tcp(src, sport, dst, dport, seq,
                                                                     flags, payload))))  # fmt: skip


def _pcap(packets: list[bytes], start_ns: int) -> bytes:
    buf = io.BytesIO()
    writer = gen.PcapWriter(buf, gen.LINKTYPE_ETHERNET)
    for i, packet in enumerate(packets):
        writer.write(start_ns + i * 1_000_000, packet)
    return buf.getvalue()


def _rotated_captures() -> tuple[bytes, bytes]:
    """One connection over two files. Forward stream: INVITE 1 | INVITE 2 (straddles the
    boundary) | INVITE 3 (its second half captured first, in file 1) | BYE 1 | INVITE 4 (its
    middle segment lost), then FIN; backward: the 200 of call 1 (file 1), of call 2 (file 2).

    Frames, numbered per file (the expectations below refer to these):
    file 0: 1 SYN, 2 SYN/ACK, 3 INVITE 1, 4 200 (call 1), 5 INVITE 2 head, 6 INVITE 3 tail
    file 1: 1 INVITE 2 tail, 2 INVITE 3 head, 3 BYE 1, 4 200 (call 2), 5 INVITE 4 head,
            6 INVITE 4 tail (the middle never captured), 7 FIN
    """
    inv1, inv2, inv3 = _sip("INVITE", 1), _sip("INVITE", 2, 300), _sip("INVITE", 3, 200)
    bye1, inv4 = _sip("BYE", 1), _sip("INVITE", 4, 600)
    psh = gen.TCP_PSH | gen.TCP_ACK
    seq = ISN + 1
    offsets = {}
    for name, data in (("inv1", inv1), ("inv2", inv2), ("inv3", inv3), ("bye1", bye1),
                       ("inv4", inv4)):  # fmt: skip
        offsets[name] = seq
        seq += len(data)
    fin_seq = seq
    h2, h3, h4 = len(inv2) // 2, len(inv3) // 2, len(inv4) // 3
    ok1, ok2 = _sip("200", 1), _sip("200", 2)
    file0 = [
        _packet(True, ISN, gen.TCP_SYN, b""),
        _packet(False, RISN, gen.TCP_SYN | gen.TCP_ACK, b""),
        _packet(True, offsets["inv1"], psh, inv1),
        _packet(False, RISN + 1, psh, ok1),
        _packet(True, offsets["inv2"], psh, inv2[:h2]),
        _packet(True, offsets["inv3"] + h3, psh, inv3[h3:]),
    ]
    file1 = [
        _packet(True, offsets["inv2"] + h2, psh, inv2[h2:]),
        _packet(True, offsets["inv3"], psh, inv3[:h3]),
        _packet(True, offsets["bye1"], psh, bye1),
        _packet(False, RISN + 1 + len(ok1), psh, ok2),
        _packet(True, offsets["inv4"], psh, inv4[:h4]),
        _packet(True, offsets["inv4"] + 2 * h4, psh, inv4[2 * h4 :]),
        _packet(True, fin_seq, gen.TCP_FIN | gen.TCP_ACK, b""),
    ]
    return _pcap(file0, T0), _pcap(file1, T0 + 10 * gen.NS)


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    first, second = _rotated_captures()
    root = tmp_path_factory.mktemp("rotated")
    (root / "a.pcap").write_bytes(first)
    (root / "b.pcap").write_bytes(second)
    return root / "a.pcap", root / "b.pcap"


def _analyze(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["analyze", *argv, *TRUST]) == 0
    out, _ = capsys.readouterr()
    return out


def test_records_credit_each_frame_to_its_file(
    capsys: pytest.CaptureFixture[str], rotated: tuple[Path, Path]
) -> None:
    out = _analyze(capsys, str(rotated[0]), str(rotated[1]), "--format", "jsonl")
    records = {r["call_id"]: r for r in map(json.loads, out.splitlines())}
    got = {}
    for cid, record in records.items():
        frames = record["frames"]
        sources = record.get("frame_sources", [0] * len(frames))  # absent: all from input 0
        got[cid.split("@")[0]] = list(zip(frames, sources, strict=True))
    assert got == {
        # INVITE and 200 in file 0, the BYE fully in file 1
        "call-1": [(3, 0), (4, 0), (3, 1)],
        # the INVITE straddles the boundary; its 200 is fully in file 1
        "call-2": [(5, 0), (1, 1), (4, 1)],
        # out of order across the boundary: the head (file 1) releases the tail (file 0)
        "call-3": [(2, 1), (6, 0)],
    }


def test_anomalies_name_the_file_of_their_frame(
    capsys: pytest.CaptureFixture[str], rotated: tuple[Path, Path]
) -> None:
    document = json.loads(_analyze(capsys, str(rotated[0]), str(rotated[1]), "--json"))
    found = [(a["kind"], a["frame"], a.get("source_file", 0)) for a in document["anomalies"]]
    assert ("tcp_gap", 7, 1) in found  # at the FIN of file 1, not "frame 7 of file 0"
    framing = [(frame, source) for kind, frame, source in found if kind == "sip_framing"]
    # INVITE 4's head (frame 5) cut short by the gap; the orphan tail (frame 6) at the end
    assert framing == [(5, 1), (6, 1), (6, 1)]


def test_single_file_records_are_unchanged(
    capsys: pytest.CaptureFixture[str], rotated: tuple[Path, Path]
) -> None:
    # The first file alone: only call 1 completes its INVITE, no frame_sources key anywhere.
    out = _analyze(capsys, str(rotated[0]), "--format", "jsonl")
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["frames"], "frame_sources" in r) for r in records] == [([3, 4], False)]


# -- reassembler and framer: any segmentation, any order, any boundary ----------------------

STREAM = b"".join(_sip("INVITE", i, body_len=37 * (i % 5)) for i in range(1, 9))


def _segments(sizes: list[int], rnd: random.Random, boundary: float) -> list[Segment]:
    """``STREAM`` cut by ``sizes``, shuffled, numbered as two files split at ``boundary``."""
    pieces, off, i = [], 0, 0
    while off < len(STREAM):
        n = sizes[i % len(sizes)]
        pieces.append((off, STREAM[off : off + n]))
        off += n
        i += 1
    rnd.shuffle(pieces)
    cut = int(len(pieces) * boundary)
    out = [Segment(1, 0, *FWD, "tcp", b"", ISN, TCP_SYN)]
    for index, (offset, data) in enumerate(pieces):
        source = 0 if index < cut else 1
        frame = index + 2 if source == 0 else index - cut + 1
        out.append(Segment(frame, index + 1, *FWD, "tcp", data, ISN + 1 + offset, TCP_PSH,
                           source_file=source))  # fmt: skip
    return out


def _owners(segments: list[Segment]) -> list[tuple[int, int]]:
    """Reference: the (frame, input) of every stream byte."""
    owner = [(0, 0)] * len(STREAM)
    for seg in segments:
        if seg.payload:
            start = seg.seq - ISN - 1
            owner[start : start + len(seg.payload)] = [(seg.frame, seg.source_file)] * len(
                seg.payload
            )
    return owner


def _pairs(frames: tuple[int, ...], first: int, sources: tuple[int, ...]) -> list[tuple[int, int]]:
    assert not sources or (len(sources) == len(frames) and sources[0] == first)
    assert not sources or len(set(sources)) > 1  # empty whenever all are from ``first``
    return list(zip(frames, sources or (first,) * len(frames), strict=True))


def _dedup(pairs: list[tuple[int, int]], consecutive: bool) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for pair in pairs:
        if (out[-1:] != [pair]) if consecutive else (pair not in out):
            out.append(pair)
    return out


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=6),
    rnd=st.randoms(use_true_random=False),
    boundary=st.floats(0, 1),
)
def test_property_chunks_and_messages_keep_each_frames_source(
    sizes: list[int], rnd: random.Random, boundary: float
) -> None:
    segments = _segments(sizes, rnd, boundary)
    assume(len(segments) < MAX_BUFFERED_SEGMENTS)
    owner = _owners(segments)
    tcp = TcpReassembler()
    chunks: list[StreamChunk] = []
    for seg in segments:
        chunks.extend(tcp.feed(seg))
    chunks.extend(tcp.flush())
    assert tcp.take_anomalies() == []
    pos = 0
    reader = MessageReader()
    messages: list[ObservedMessage] = []
    for chunk in chunks:
        if chunk.data:
            expected = _dedup(owner[pos : pos + len(chunk.data)], consecutive=True)
            assert _pairs(chunk.frames, chunk.source_file, chunk.frame_sources) == expected
            # Where each frame's bytes end in the chunk (none given for a chunk of one frame).
            end = pos + len(chunk.data)
            ends = [
                i + 1 - pos for i in range(pos, end) if i + 1 == end or owner[i + 1] != owner[i]
            ]
            assert chunk.frame_ends == (tuple(ends) if len(ends) > 1 else ())
            pos = end
        src, sport, dst, dport = chunk.flow
        seg = Segment(chunk.first_frame, chunk.ts_ns, src, sport, dst, dport, "tcp", chunk.data,
                      source_file=chunk.source_file, frames=chunk.frames, end=chunk.end,
                      frame_sources=chunk.frame_sources, frame_ends=chunk.frame_ends)  # fmt: skip
        for item in reader.feed(seg):
            assert isinstance(item, ObservedMessage), item
            messages.append(item)
    assert pos == len(STREAM)
    start = 0
    for message in messages:
        end = start + len(message.raw)
        # A message is credited with exactly the frames holding its bytes, in stream order
        # (not a neighbour's released in the same chunk).
        expected = _dedup(owner[start:end], consecutive=False)
        assert _pairs(message.frames, message.source_file, message.frame_sources) == expected
        start = end
    assert start == len(STREAM)


def test_gap_anomaly_names_the_source_of_its_frame() -> None:
    tcp = TcpReassembler()
    tcp.feed(Segment(1, 0, *FWD, "tcp", b"", ISN, TCP_SYN))
    tcp.feed(Segment(2, 1, *FWD, "tcp", b"abc", ISN + 1, TCP_PSH))
    tcp.feed(Segment(1, 2, *FWD, "tcp", b"xyz", ISN + 10, TCP_PSH, source_file=1))
    chunks = tcp.feed(Segment(2, 3, *FWD, "tcp", b"", ISN + 13, 0x11, source_file=1))  # FIN
    (gap,) = tcp.take_anomalies()
    assert (gap.kind, gap.frame, gap.source_file) == (AnomalyKind.TCP_GAP, 2, 1)
    assert [(c.data, c.frames, c.source_file, c.end) for c in chunks] == [
        (b"xyz", (1,), 1, False),
        (b"", (), 1, True),
    ]


def test_pipeline_segments_carry_frame_sources(rotated: tuple[Path, Path]) -> None:
    items = list(iter_segments([rotated[0], rotated[1]]))
    fwd = [s for s in items if isinstance(s, Segment) and s.sport == 40000 and s.payload]
    mixed = [(s.frames, s.source_file, s.frame_sources) for s in fwd if s.frame_sources]
    assert mixed == [((2, 6), 1, (1, 0))]  # INVITE 3: head from file 1 releases its tail
    gaps = [a for a in items if isinstance(a, Anomaly) and a.kind is AnomalyKind.TCP_GAP]
    assert [(a.frame, a.source_file) for a in gaps] == [(7, 1)]


def test_a_connection_known_as_sip_stays_sip_in_the_next_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The next file holds only the tail of a message (no ``SIP/2.0`` in it): the connection
    was classified in the file before, so the tail passes and the message completes, credited
    to both files."""
    inv1, inv2 = _sip("INVITE", 1), _sip("INVITE", 2, 400)
    psh = gen.TCP_PSH | gen.TCP_ACK
    at2 = ISN + 1 + len(inv1)
    tail = inv2[-200:]
    assert b"SIP/2.0" not in tail
    first = [
        _packet(True, ISN, gen.TCP_SYN, b""),
        _packet(True, ISN + 1, psh, inv1),
        _packet(True, at2, psh, inv2[:-200]),
    ]
    second = [_packet(True, at2 + len(inv2) - 200, psh, tail)]
    (tmp_path / "a.pcap").write_bytes(_pcap(first, T0))
    (tmp_path / "b.pcap").write_bytes(_pcap(second, T0 + gen.NS))
    out = _analyze(capsys, str(tmp_path / "a.pcap"), str(tmp_path / "b.pcap"), "--format", "jsonl")
    records = {r["call_id"].split("@")[0]: r for r in map(json.loads, out.splitlines())}
    assert set(records) == {"call-1", "call-2"}
    call2 = records["call-2"]
    assert list(zip(call2["frames"], call2["frame_sources"], strict=True)) == [(3, 0), (1, 1)]


def test_a_message_is_not_credited_with_a_neighbours_frame() -> None:
    """INVITE 1 in frames 2 and 4, INVITE 2 in frame 3, captured 2, 3, 4: frame 4 releases
    INVITE 1's tail and the buffered INVITE 2 in one chunk; each message lists only the frames
    holding its own bytes, and the chunk says where each frame's bytes end."""
    inv1, inv2 = _sip("INVITE", 1), _sip("INVITE", 2, 100)
    half = len(inv1) // 2
    segments = [
        Segment(1, 0, *FWD, "tcp", b"", ISN, TCP_SYN),
        Segment(2, 1, *FWD, "tcp", inv1[:half], ISN + 1, TCP_PSH),
        Segment(3, 2, *FWD, "tcp", inv2, ISN + 1 + len(inv1), TCP_PSH),
        Segment(4, 3, *FWD, "tcp", inv1[half:], ISN + 1 + half, TCP_PSH),
    ]
    tcp = TcpReassembler()
    chunks = [chunk for seg in segments for chunk in tcp.feed(seg)]
    assert [(c.frames, c.frame_ends) for c in chunks] == [
        ((2,), ()),
        ((4, 3), (len(inv1) - half, len(inv1) - half + len(inv2))),
    ]
    reader = MessageReader()
    messages = []
    for chunk in chunks:
        src, sport, dst, dport = chunk.flow
        seg = Segment(chunk.first_frame, chunk.ts_ns, src, sport, dst, dport, "tcp", chunk.data,
                      frames=chunk.frames, frame_ends=chunk.frame_ends)  # fmt: skip
        messages += reader.feed(seg)
    assert [(m.frames, m.ts_ns) for m in messages if isinstance(m, ObservedMessage)] == [
        ((2, 4), 3),
        ((3,), 3),  # before: (4, 3), frame 4 holding none of its bytes
    ]


def test_pipeline_segments_carry_frame_ends(tmp_path: Path) -> None:
    """``iter_segments`` hands the chunk's frame ends on (the capture reader's own path)."""
    inv1, inv2 = _sip("INVITE", 1), _sip("INVITE", 2, 100)
    half = len(inv1) // 2
    psh = gen.TCP_PSH | gen.TCP_ACK
    packets = [
        _packet(True, ISN, gen.TCP_SYN, b""),
        _packet(True, ISN + 1, psh, inv1[:half]),
        _packet(True, ISN + 1 + len(inv1), psh, inv2),
        _packet(True, ISN + 1 + half, psh, inv1[half:]),
    ]
    (tmp_path / "a.pcap").write_bytes(_pcap(packets, T0))
    items = list(iter_segments([tmp_path / "a.pcap"]))
    fwd = [(s.frames, s.frame_ends) for s in items if isinstance(s, Segment) and s.payload]
    assert fwd == [((2,), ()), ((4, 3), (len(inv1) - half, len(inv1) - half + len(inv2)))]
    messages = [m for m in messages_from_segments(items) if isinstance(m, ObservedMessage)]
    assert [m.frames for m in messages] == [(2, 4), (3,)]
