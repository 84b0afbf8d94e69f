"""IP fragment reassembly: any order, duplicates, overlaps, timeouts, memory bounds."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.anomaly import AnomalyKind
from analyzer.defrag import REASSEMBLY_TIMEOUT_NS, Datagram, Defragmenter
from analyzer.frames import Fragment

DATA = bytes(range(256)) * 10  # 2560 bytes
SRC, DST = "192.0.2.1", "192.0.2.2"


def _frags(data: bytes, size: int, *, version: int = 4, ident: int = 1) -> list[Fragment]:
    out = []
    for i, off in enumerate(range(0, len(data), size)):
        more = off + size < len(data)
        out.append(
            Fragment(
                i + 1, 1000 + i, version, SRC, DST, 17, ident, off, more, data[off : off + size]
            )
        )
    return out


def _feed(d: Defragmenter, frags: list[Fragment]) -> list[Datagram]:
    return [dg for f in frags if (dg := d.feed(f)) is not None]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("order", list(itertools.permutations(range(3))), ids=str)
def test_any_order_of_three_fragments(version: int, order: tuple[int, ...]) -> None:
    frags = _frags(DATA[:2400], 800, version=version)
    d = Defragmenter()
    out = _feed(d, [frags[i] for i in order])
    assert len(out) == 1
    assert out[0].payload == DATA[:2400]
    assert out[0].frames == (1, 2, 3)
    assert out[0].frame == frags[order[-1]].frame
    assert d.in_flight == 0
    assert d.take_anomalies() == []


def test_exact_duplicates_are_silent() -> None:
    frags = _frags(DATA, 1000)
    d = Defragmenter()
    out = _feed(d, [frags[0], frags[0], frags[1], frags[2]])
    assert [dg.payload for dg in out] == [DATA]
    assert d.take_anomalies() == []


def test_overlap_first_wins_with_one_anomaly() -> None:
    frags = _frags(DATA, 1000)
    evil = Fragment(9, 2000, 4, SRC, DST, 17, 1, 500, True, b"X" * 1000)
    d = Defragmenter()
    out = _feed(d, [frags[0], evil, frags[1], frags[2]])
    assert [dg.payload for dg in out] == [DATA[:1000] + b"X" * 500 + DATA[1500:]]
    assert [a.kind for a in d.take_anomalies()] == [AnomalyKind.FRAGMENT_OVERLAP]


def test_partial_identical_overlap_reported() -> None:
    frags = _frags(DATA, 1000)
    mid = Fragment(9, 2000, 4, SRC, DST, 17, 1, 800, True, DATA[800:1600])
    d = Defragmenter()
    out = _feed(d, [frags[0], mid, frags[1], frags[2]])
    assert [dg.payload for dg in out] == [DATA]
    assert [a.kind for a in d.take_anomalies()] == [AnomalyKind.FRAGMENT_OVERLAP]


def test_different_idents_do_not_mix() -> None:
    a, b = _frags(DATA, 1000, ident=1), _frags(DATA[::-1], 1000, ident=2)
    d = Defragmenter()
    out = _feed(d, [a[0], b[0], b[1], a[1], a[2], b[2]])
    assert [dg.payload for dg in out] == [DATA, DATA[::-1]]


def test_timeout_in_capture_time() -> None:
    frags = _frags(DATA, 1000)
    d = Defragmenter()
    assert d.feed(frags[0]) is None
    late = Fragment(
        5, frags[0].ts_ns + REASSEMBLY_TIMEOUT_NS + 1, 4, SRC, DST, 17, 99, 0, True, b"x" * 8
    )
    d.feed(late)
    assert [(a.kind, a.frame) for a in d.take_anomalies()] == [(AnomalyKind.FRAGMENT_TIMEOUT, 1)]
    assert d.feed(frags[1]) is None  # the old group is gone: no resurrection
    d.flush()
    assert {a.kind for a in d.take_anomalies()} == {AnomalyKind.FRAGMENT_TIMEOUT}
    assert d.in_flight == 0


def test_memory_bounds_drop_oldest() -> None:
    d = Defragmenter(max_datagrams=2)
    for ident in range(5):
        d.feed(Fragment(ident + 1, ident, 4, SRC, DST, 17, ident, 0, True, b"y" * 16))
    assert d.in_flight == 2
    assert [a.kind for a in d.take_anomalies()] == [AnomalyKind.FRAGMENT_LIMIT] * 3
    small = Defragmenter(max_bytes=20)
    small.feed(Fragment(1, 0, 4, SRC, DST, 17, 1, 0, True, b"y" * 16))
    small.feed(Fragment(2, 0, 4, SRC, DST, 17, 2, 0, True, b"y" * 16))
    small.feed(Fragment(3, 0, 4, SRC, DST, 17, 3, 0, True, b"y" * 16))
    assert small.in_flight == 1


def test_fragment_beyond_64k_is_malformed() -> None:
    d = Defragmenter()
    assert d.feed(Fragment(1, 0, 4, SRC, DST, 17, 1, 65528, False, b"z" * 16)) is None
    assert [a.kind for a in d.take_anomalies()] == [AnomalyKind.MALFORMED_PACKET]


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 400).map(lambda n: n * 8),
    data=st.binary(min_size=1, max_size=4000),
    order=st.randoms(use_true_random=False),
    dup=st.booleans(),
)
def test_property_any_fragmentation_any_order(
    size: int, data: bytes, order: object, dup: bool
) -> None:
    frags = _frags(data, size)
    if dup:
        frags = frags + frags[: len(frags) // 2]
    order.shuffle(frags)  # type: ignore[attr-defined]
    d = Defragmenter()
    out = _feed(d, frags)
    assert out[0].payload == data
    assert d.take_anomalies() == []
