"""Calls tracked on the workers (analyzer.parttrack): the keyed tracker is the call tracker,
its emission keys follow its emission order, and partitioned runs over captures made to cut
calls every way (closing, idle and end-of-input emissions carried past a cut, challenges,
CANCEL, retransmissions, late and Call-ID-less messages, a Call-ID reused, replayed PASSporTs
within and across partitions and files) give the single-process bytes, counts and anomalies,
for random cuts; what cannot be exact falls back to tracking every call in the main process."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer import cluster as cluster_module
from analyzer import parttrack
from analyzer import run as run_module
from analyzer.calls import CallTracker
from analyzer.capture import ObservedMessage
from analyzer.cluster import ClusterSpec, DaskChunkPool, DaskPoolFactory, PartitionedJob
from analyzer.parttrack import KeyedTracker, sum_stats
from analyzer.run import AnalyzeJob
from shaken.signing import shaken_payload, sign_passport
from sip.keys import scan_keys
from tests.analyzer.test_partition import (
    OPTIONS,
    _records,
    _same_as_single,
    _single,
    _split_files,
)
from tests.conftest import FIXTURES, load_script

CAP = load_script(FIXTURES / "gen_captures.py")
NS = 1_000_000_000
START_S = 1_768_478_400  # inside the test certificates' validity
X5U = "https://certs.alpha.example/alpha.pem"
A, B = "192.0.2.10", "198.51.100.20"


def _sip(
    first: str, call_id: str | None, cseq: str, branch: str, to_tag: bool, identity: str = ""
) -> bytes:
    """A SIP message: ``first`` is a method (request) or ``"486 Busy Here"`` (response)."""
    start = (
        f"SIP/2.0 {first}\r\n" if first[0].isdigit() else f"{first} sip:+12025550111@b SIP/2.0\r\n"
    )
    lines = [
        start.rstrip("\r\n"),
        f"Via: SIP/2.0/UDP {A}:5060;branch=z9hG4bK{branch}",
        "From: <sip:+12025550100@a>;tag=f1",
        "To: <sip:+12025550111@b>" + (";tag=t1" if to_tag else ""),
    ]
    if call_id is not None:
        lines.append(f"Call-ID: {call_id}")
    lines.append(f"CSeq: {cseq}")
    if identity:
        lines.append(f"Identity: {identity}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def _tokens(count: int) -> list[str]:
    """``count`` SHAKEN Identity values signed with the alpha test key (verifiable with the
    fixtures' trust store and certificates)."""
    key = load_script(FIXTURES / "gen_vectors.py")._key("alpha")
    out = []
    for index in range(count):
        payload = shaken_payload(
            attest="A", orig_tn="12025550100", dest_tns=["12025550111"], iat=START_S + 30 * index,
            origid=f"00000000-0000-4000-8000-{index:012d}",
        )  # fmt: skip
        token = sign_passport(key, x5u=X5U, payload=payload)
        out.append(f"{token};info=<{X5U}>;alg=ES256;ppt=shaken")
    return out


KINDS = ("bye", "reject", "challenge", "cancel", "unanswered", "answered", "retransmit", "late")


def _call(kind: str, cid: str, identity: str) -> list[tuple[float, bool, bytes]]:
    """One call's messages: (seconds after its start, sent by A, bytes)."""
    inv = _sip("INVITE", cid, "1 INVITE", f"-{cid}-1", False, identity)
    ok = _sip("200 OK", cid, "1 INVITE", f"-{cid}-1", True)
    ack = _sip("ACK", cid, "1 ACK", f"-{cid}-a", True)
    bye = _sip("BYE", cid, "2 BYE", f"-{cid}-b", True)
    bye_ok = _sip("200 OK", cid, "2 BYE", f"-{cid}-b", True)
    if kind == "bye":
        return [(0, True, inv), (0.5, False, ok), (0.6, True, ack), (20, True, bye),
                (20.1, False, bye_ok)]  # fmt: skip
    if kind == "reject":
        busy = _sip("486 Busy Here", cid, "1 INVITE", f"-{cid}-1", True)
        return [(0, True, inv), (0.3, False, busy), (0.4, True, ack)]
    if kind == "challenge":
        auth = _sip("407 Proxy Authentication Required", cid, "1 INVITE", f"-{cid}-1", True)
        again = _sip("INVITE", cid, "2 INVITE", f"-{cid}-2", False, identity)
        ok2 = _sip("200 OK", cid, "2 INVITE", f"-{cid}-2", True)
        return [(0, True, inv), (0.2, False, auth), (0.3, True, ack), (3, True, again),
                (3.5, False, ok2), (40, True, bye), (40.1, False, bye_ok)]  # fmt: skip
    if kind == "cancel":
        ring = _sip("180 Ringing", cid, "1 INVITE", f"-{cid}-1", True)
        cancel = _sip("CANCEL", cid, "1 CANCEL", f"-{cid}-1", False)
        gone = _sip("487 Request Terminated", cid, "1 INVITE", f"-{cid}-1", True)
        return [(0, True, inv), (0.4, False, ring), (5, True, cancel), (5.1, False, gone)]
    if kind == "unanswered":  # emitted after the pending idle time (240 s)
        trying = _sip("100 Trying", cid, "1 INVITE", f"-{cid}-1", False)
        return [(0, True, inv), (0.1, False, trying)]
    if kind == "answered":  # no BYE: the answered idle time (1800 s) or the end of input
        return [(0, True, inv), (0.5, False, ok), (0.6, True, ack)]
    if kind == "retransmit":
        return [(0, True, inv), (0.5, True, inv), (1, False, ok), (1.1, True, ack),
                (9, True, bye), (9.1, False, bye_ok)]  # fmt: skip
    assert kind == "late"  # a message after the call was emitted (linger: 32 s)
    return [(0, True, inv), (0.5, False, ok), (2, True, bye), (50, False, bye_ok)]


def _capture(path: Path, seed: int, calls: int = 70, span_s: int = 2400) -> None:
    """A capture of ``calls`` calls of every kind over ``span_s`` seconds (times ascending,
    some equal), some signed (a few PASSporTs replayed on other Call-IDs, one INVITE of a
    replayed token retransmitted), a reused Call-ID, OPTIONS and messages without Call-ID."""
    rng = random.Random(seed)
    tokens = _tokens(6)
    events: list[tuple[int, int, bool, bytes]] = []
    for index in range(calls):
        kind = KINDS[index % len(KINDS)] if index < len(KINDS) else rng.choice(KINDS)
        if index == calls - 1:
            kind = "answered"  # open at the end of input
        cid = f"c{index}@p.test" if index != calls - 1 else "c3@p.test"  # reused at the end
        identity = rng.choice(tokens) if rng.random() < 0.4 else ""
        start = rng.randrange(0, span_s * 1000) * 1_000_000
        if index == calls - 1:
            start = (span_s + 2000) * NS  # after c3 ended
        for offset_s, forward, data in _call(kind, cid, identity):
            events.append((start + int(offset_s * NS), len(events), forward, data))
    for index in range(8):
        at = rng.randrange(0, span_s) * NS
        events.append(
            (at, len(events), True, _sip("OPTIONS", f"o{index}@p", "1 OPTIONS", "o", False))
        )
        events.append((at, len(events), True, _sip("MESSAGE", None, "1 MESSAGE", "m", False)))
    events.sort()
    out = io.BytesIO()
    writer = CAP.PcapWriter(out, CAP.LINKTYPE_ETHERNET)
    for ts, _order, forward, data in events:
        src, dst = (A, B) if forward else (B, A)
        writer.write(START_S * NS + ts, CAP.build_udp_ipv4_ethernet(src, 5060, dst, 5060, data))
    path.write_bytes(out.getvalue())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mixed") / "mixed.pcap"
    _capture(path, seed=8)
    return path


def _random_cuts(path: Path, rng: random.Random, count: int) -> list[int]:
    size = path.stat().st_size
    return sorted(rng.randrange(24, size) for _ in range(count))


@pytest.mark.parametrize(
    ("seed", "checked_first"),
    [pytest.param(1, False, id="1-streamed"), pytest.param(2, False, id="2-streamed"),
     pytest.param(3, True, id="3-checked-first"), pytest.param(4, True, id="4-checked-first")],
)  # fmt: skip
def test_random_cuts_give_the_single_process_run(
    mixed: Path, seed: int, checked_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamed (the shared calls tracked as the partitions come) or checked first (all of
    them tracked before writing, as a run with as many INVITEs as a limit is)."""
    if checked_first:
        monkeypatch.setattr(cluster_module, "may_bind", lambda *_args: True)
    rng = random.Random(seed)
    job = _same_as_single([mixed], cuts={0: _random_cuts(mixed, rng, rng.randrange(2, 9))})
    assert job.fallback is None
    assert job.merge_fallback is None
    assert job.partitions >= 2
    assert job.edge_calls > 0  # shared Call-IDs and replayed PASSporTs went through the merge
    expected, facts = _single([mixed])
    stats = facts["stats"]
    assert isinstance(stats, dict)
    assert stats["late_messages"] > 0
    assert stats["messages_without_call_id"] > 0
    assert stats["unmatched_messages"]
    lines = expected.splitlines()
    assert any(b'"replay":{' in line for line in lines)
    for end in (b"idle_timeout", b"end_of_input", b"final_response", b"cancel", b"bye"):
        assert any(end in line for line in lines), end


def test_one_partition_per_message_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cut possible (a partition per record): every call crosses partitions or is
    carried past one; the calls left to the main process fill chunks of two for the pool,
    and the output waits for at most three results."""
    monkeypatch.setattr(run_module, "CHUNK_CALLS", 1)
    monkeypatch.setattr(cluster_module, "DASK_CHUNK_FACTOR", 2)
    monkeypatch.setattr(cluster_module, "MAX_WAITING_RESULTS", 3)
    submitted: list[int] = []
    submit = DaskChunkPool.submit

    def counting(self: DaskChunkPool, chunk: list[Any], *args: Any) -> Any:
        submitted.append(len(chunk))
        return submit(self, chunk, *args)

    monkeypatch.setattr(DaskChunkPool, "submit", counting)
    path = tmp_path / "small.pcap"
    _capture(path, seed=5, calls=12, span_s=600)
    _header, records = _records(path)
    cuts, at = [], 24
    for record in records[:-1]:
        at += len(record)
        cuts.append(at)
    job = _same_as_single([path], cuts={0: cuts})
    assert job.partitions == len(records)
    assert job.merge_fallback is None
    assert job.edge_calls == 12
    assert submitted
    assert set(submitted) == {2}


def test_files_cut_and_split_give_the_single_process_run(mixed: Path, tmp_path: Path) -> None:
    _header, records = _records(mixed)
    third = len(records) // 3
    files = _split_files(mixed, tmp_path, [third, 2 * third + 7])
    rng = random.Random(4)
    cuts = {index: _random_cuts(path, rng, 2) for index, path in enumerate(files)}
    job = _same_as_single([files[1], files[2], files[0]], cuts={k: cuts[k] for k in (0, 1)})
    assert job.merge_fallback is None
    assert job.partitions >= 5


def test_times_going_backwards_track_every_call_here(tmp_path: Path) -> None:
    """Idle calls of several trackers would leave in another order: the main process tracks
    every call from the scans (the previous partitioned mode), with the same bytes."""
    path = tmp_path / "mixed.pcap"
    _capture(path, seed=9, calls=20, span_s=900)
    header, records = _records(path)
    records[10], records[11] = records[11], records[10]
    path.write_bytes(header + b"".join(records))
    job = _same_as_single([path], cuts={0: [path.stat().st_size // 2]})
    assert job.fallback is None
    assert job.partitions == 2
    assert job.merge_fallback == "capture times go backwards"


def test_late_messages_past_the_remembered_call_ids_fall_back(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a late message is late depends on every tracker's ended calls once the run
    has more calls than the tracker remembers ended."""
    monkeypatch.setattr(parttrack, "MAX_CLOSED_CALL_IDS", 10)
    job = _same_as_single([mixed], cuts={0: [mixed.stat().st_size // 3]})
    assert job.merge_fallback is not None
    assert "late messages" in job.merge_fallback


def test_open_call_limit_falls_back(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a limit the run could reach, eviction depends on every tracker at once."""
    original = CallTracker.__init__

    def small(self: CallTracker, **kwargs: int) -> None:
        original(self, **{**kwargs, "max_open_calls": 8})

    monkeypatch.setattr(CallTracker, "__init__", small)
    job = _same_as_single([mixed], cuts={0: [mixed.stat().st_size // 2]})
    assert job.merge_fallback is not None
    assert "open-call limit" in job.merge_fallback


# -- the keyed tracker -------------------------------------------------------------------------


def _messages(seed: int, count: int) -> Iterator[ObservedMessage]:
    """Random messages of a few Call-IDs, times ascending with ties (no capture needed)."""
    rng = random.Random(seed)
    ts = START_S * NS
    texts = [
        ("INVITE", "1 INVITE", "-1", False), ("INVITE", "2 INVITE", "-2", False),
        ("100 Trying", "1 INVITE", "-1", False), ("200 OK", "1 INVITE", "-1", True),
        ("486 Busy Here", "2 INVITE", "-2", True), ("BYE", "3 BYE", "-b", True),
        ("CANCEL", "1 CANCEL", "-1", False), ("ACK", "1 ACK", "-a", True),
    ]  # fmt: skip
    for frame in range(1, count + 1):
        ts += rng.choice([0, NS // 10, 3 * NS, 40 * NS, 300 * NS])
        first, cseq, branch, to_tag = rng.choice(texts)
        raw = _sip(first, f"k{rng.randrange(6)}", cseq, branch, to_tag)
        keys = scan_keys(raw)
        assert keys is not None
        yield ObservedMessage.scanned(raw, keys, ts, frame, (frame,), A, 5060, B, 5060, "udp")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 80))
def test_keyed_tracker_is_the_call_tracker(seed: int, count: int) -> None:
    plain, keyed = CallTracker(), KeyedTracker()
    expected, got = [], []
    for position, obs in enumerate(_messages(seed, count)):
        expected += plain.feed(obs)
        got += keyed.feed_at(obs, position)
    expected += plain.flush()
    got += keyed.flush()
    assert got == expected
    assert plain.stats == keyed.stats
    assert len(keyed.keys) == len(got)
    assert keyed.keys == sorted(keyed.keys)  # emission order is key order
    assert len(set(keyed.keys)) == len(keyed.keys)


def test_sum_stats_adds_every_count() -> None:
    one, two = CallTracker(), CallTracker()
    for position, obs in enumerate(_messages(3, 40)):
        (one if position % 2 else two).feed(obs)
    total = sum_stats([one.stats, two.stats])
    assert total.messages == one.stats.messages + two.stats.messages == 40
    assert total.unmatched == one.stats.unmatched + two.stats.unmatched


def test_records_api_gives_the_same_records(mixed: Path) -> None:
    """Without a renderer the workers send the records themselves."""
    single = [r.to_json() for r in AnalyzeJob([str(mixed)], OPTIONS).records()]
    factory = DaskPoolFactory(ClusterSpec(local_workers=2), processes=False)
    job = PartitionedJob([str(mixed)], OPTIONS, factory, cuts={0: [mixed.stat().st_size // 2]})
    assert [r.to_json() for r in job.records()] == single
    assert job.merge_fallback is None
    assert job.partitions == 2
