"""`stirscope analyze` end to end: formats, determinism, usage errors, every input feature."""

from __future__ import annotations

import gzip
import io
import json
import random
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest

from analyzer import run as run_module
from analyzer.assess import assess_call
from analyzer.calls import CallTracker
from analyzer.capture import ObservedMessage, iter_messages, messages_from_segments
from analyzer.pcapfile import iter_segments
from analyzer.verifying import VerifierConfig, build_verifier
from service.cli import main
from shaken.result import Verstat
from sip import Request
from tests.conftest import FIXTURES, load_script

DEMO = FIXTURES / "demo" / "demo.pcap"
CAPTURES = FIXTURES / "captures"
TRUST = ["--trust", str(FIXTURES / "pki" / "trust"), "--certs", str(FIXTURES / "certs")]
REQUIRED_KEYS = {
    "call_id", "start", "start_ns", "src", "dst", "transport", "frames", "request_uri", "from",
    "to", "pai", "final_status", "verstat", "status_code", "passports", "anomalies",
}  # fmt: skip
DEMO_CALLS = 13


def analyze(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["analyze", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_default_table_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = analyze(capsys, str(DEMO), *TRUST)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("start (UTC)")
    assert sum(1 for line in lines if line.startswith("2026-01-15 ")) == DEMO_CALLS
    assert f"{DEMO_CALLS} calls in 1 capture(s)" in out
    for label in ("verdicts:", "attestation:", "top signers:", "anomalies:", "trust store:"):
        assert label in out
    assert "TLS flow(s) seen" in out


def test_jsonl_one_object_per_call_with_contract_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = analyze(capsys, str(DEMO), *TRUST, "--format", "jsonl")
    assert code == 0
    records = jsonl(out)
    assert len(records) == DEMO_CALLS
    for record in records:
        assert set(record) >= REQUIRED_KEYS
        assert str(record["start"]).endswith("Z")
        assert len(str(record["start"])) == len("2026-01-15T12:00:00.000000Z")
    assert "calls in 1 capture(s)" in err  # the summary goes to stderr when records use stdout


def test_jsonl_is_byte_identical_across_runs_and_worker_counts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, first, _ = analyze(capsys, str(DEMO), *TRUST, "--format", "jsonl", "--workers", "1")
    _, second, _ = analyze(capsys, str(DEMO), *TRUST, "--format", "jsonl", "--workers", "1")
    monkeypatch.setattr(run_module, "INLINE_CALLS", 3)
    monkeypatch.setattr(run_module, "CHUNK_CALLS", 2)
    monkeypatch.setattr(run_module, "ProcessPoolExecutor", CountingPool)
    _, pooled, _ = analyze(capsys, str(DEMO), *TRUST, "--format", "jsonl", "--workers", "2")
    assert first == second
    assert pooled == first
    assert CountingPool.submitted == (DEMO_CALLS - 3 + 1) // 2  # chunks of 2 after 3 inline


class CountingPool(ProcessPoolExecutor):
    submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        CountingPool.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            [str(CAPTURES / "not_a_capture.pcap"), *TRUST], "not a pcap", id="not-capture"
        ),
        pytest.param([str(CAPTURES / "missing.pcap"), *TRUST], "cannot read", id="missing-file"),
        pytest.param([str(DEMO)], "no trust anchors", id="no-trust"),
        pytest.param([str(DEMO), *TRUST, "--at", "yesterday"], "--at", id="bad-at"),
        pytest.param([str(DEMO), *TRUST, "--workers", "0"], "--workers", id="bad-workers"),
        pytest.param(["-", "-", *TRUST], "stdin", id="stdin-twice"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = analyze(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err


def test_truncated_capture_is_analysed_up_to_the_damage(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = DEMO.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3 + 7])
    code, out, _ = analyze(capsys, str(cut), *TRUST, "--json")
    assert code == 0
    document = json.loads(out)
    assert 0 < document["summary"]["calls"] < DEMO_CALLS
    assert document["summary"]["anomalies"]["truncated_record"] == 1
    manifest = document["manifest"]
    assert manifest["inputs"][0]["size"] == cut.stat().st_size


def test_gzip_and_stdin_give_the_same_records(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, plain, _ = analyze(capsys, str(DEMO), *TRUST, "--format", "jsonl")
    packed = gzip.compress(DEMO.read_bytes(), mtime=0)
    gz = tmp_path / "demo.pcap.gz"
    gz.write_bytes(packed)
    _, from_gz, _ = analyze(capsys, str(gz), *TRUST, "--format", "jsonl")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(packed)))
    _, from_stdin, _ = analyze(capsys, "-", *TRUST, "--format", "jsonl")
    assert from_gz == plain
    assert from_stdin == plain


def test_several_captures_are_merged_in_time_order(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The same traffic captured twice (two taps): one call each, the copies as retransmissions
    # (SIP retransmissions over UDP; over TCP the second copy of each segment is a TCP
    # retransmission of the one connection, and the reassembly keeps the first copy).
    copy = tmp_path / "tap2.pcap"
    copy.write_bytes(DEMO.read_bytes())
    _, out, _ = analyze(capsys, str(DEMO), str(copy), *TRUST, "--format", "jsonl")
    records = jsonl(out)
    assert len(records) == DEMO_CALLS
    for record in records:
        sources = set(cast(list[int], record.get("frame_sources", [0])))
        assert sources == ({0, 1} if record["transport"] == "udp" else {0})
    assert {r["transport"] for r in records} == {"udp", "tcp"}


def test_manifest_written_beside_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_path = tmp_path / "calls.jsonl"
    code, out, _ = analyze(capsys, str(DEMO), *TRUST, "--format", "jsonl", "-o", str(out_path))
    assert code == 0
    assert "calls in 1 capture(s)" in out
    assert len(out_path.read_text().splitlines()) == DEMO_CALLS
    manifest = json.loads((tmp_path / "calls.jsonl.manifest.json").read_text())
    assert manifest["counts"]["calls"] == DEMO_CALLS


# -- every input feature of the capture layers, through the whole pipeline -------------------

# fixture -> (calls, INVITE messages, SIP messages, anomaly kinds, transport/encapsulation)
FEATURES = {
    "udp_le_us.pcap": (1, 1, 4, set(), "udp"),
    "udp_be_us.pcap": (1, 1, 4, set(), "udp"),
    "udp_le_ns.pcap": (1, 1, 4, set(), "udp"),
    "udp_be_ns.pcap": (1, 1, 4, set(), "udp"),
    "udp_le_us.pcap.gz": (1, 1, 4, set(), "udp"),
    "two_ifaces_le.pcapng": (1, 1, 4, set(), "udp"),
    "two_ifaces_be.pcapng": (1, 1, 4, set(), "udp"),
    "vlan_qinq.pcap": (1, 3, 3, set(), "udp"),
    "sll.pcap": (1, 2, 2, set(), "udp"),
    "raw_ip.pcap": (1, 2, 2, set(), "udp"),
    "raw_ipv4.pcap": (1, 1, 1, set(), "udp"),
    "null_loopback.pcap": (1, 4, 4, set(), "udp"),
    "loop.pcap": (1, 1, 1, set(), "udp"),
    "ipv6_ext.pcap": (1, 1, 1, set(), "udp"),
    "tunnels.pcap": (1, 3, 3, set(), "udp"),
    "frag_udp.pcap": (1, 2, 2, {"fragment_timeout"}, "udp"),
    "tcp_split.pcap": (1, 1, 2, {"tcp_gap", "sip_framing"}, "tcp"),
    "hep.pcap": (1, 1, 3, {"hep_malformed"}, "hep/udp"),
    "rtp_flood.pcap": (1, 1, 2, set(), "udp"),
    "tls.pcap": (0, 0, 0, {"tls_flow"}, ""),
    "truncated.pcap": (1, 1, 3, {"truncated_record"}, "udp"),
}


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_input_features(capsys: pytest.CaptureFixture[str], name: str) -> None:
    calls, invites, messages, kinds, transport = FEATURES[name]
    code, out, _ = analyze(capsys, str(CAPTURES / name), *TRUST, "--json")
    assert code == 0
    document = json.loads(out)
    counts = document["manifest"]["counts"]
    assert counts["calls"] == calls
    assert counts["invite_messages"] == invites
    assert counts["sip_messages"] == messages
    assert set(document["summary"]["anomalies"]) == kinds
    if transport:
        assert document["summary"]["transports"] == {transport: 1}
    for anomaly in document["anomalies"]:
        assert anomaly["frame"] is None or anomaly["frame"] >= 1


# -- TCP: the signed INVITE split at every byte of its Identity header, segments shuffled ---


def _demo_invite() -> Request:
    for item in iter_messages(DEMO):
        message = item.message if isinstance(item, ObservedMessage) else None
        if isinstance(message, Request) and message.headers.get("identity"):
            return message
    raise AssertionError("no signed INVITE in the demo capture")


def _tcp_capture(raw: bytes, cuts: list[int], order: list[int], ts_ns: int) -> io.BytesIO:
    gen = load_script(FIXTURES / "gen_captures.py")
    a, b, isn = "198.51.100.10", "203.0.113.20", 1000
    buf = io.BytesIO()
    writer = gen.PcapWriter(buf, gen.LINKTYPE_ETHERNET)
    bounds = [0, *cuts, len(raw)]
    pieces = [(bounds[i], raw[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    packets = [gen.tcp(a, 40000, b, 5060, isn, gen.TCP_SYN, b"")]
    for index in order:
        offset, data = pieces[index]
        flags = gen.TCP_PSH | gen.TCP_ACK
        packets.append(gen.tcp(a, 40000, b, 5060, isn + 1 + offset, flags, data))
    for i, packet in enumerate(packets):
        writer.write(ts_ns + i * 1000, gen.ethernet(0x0800, gen.ipv4(a, b, 6, packet)))
    buf.seek(0)
    return buf


def test_tcp_split_at_every_byte_of_the_identity_header_shuffled() -> None:
    invite = _demo_invite()
    raw = invite.raw
    start = raw.index(b"\r\nIdentity:") + 2
    end = raw.index(b"\r\n", start) + 2
    verifier = build_verifier(
        VerifierConfig(trust=(FIXTURES / "pki" / "trust",), certs_dirs=(FIXTURES / "certs",))
    )
    ts_ns = 1_768_478_400 * 10**9
    rng = random.Random(8224)
    for cut in range(start, end + 1):
        cuts = [cut]
        if cut % 3 == 0:  # and a second cut elsewhere, three segments
            extra = rng.randrange(1, len(raw))
            cuts = sorted({cut, extra})
        order = list(range(len(cuts) + 1))
        rng.shuffle(order)
        capture = _tcp_capture(raw, cuts, order, ts_ns)
        tracker = CallTracker()
        invites = []
        for item in messages_from_segments(iter_segments(capture)):
            assert isinstance(item, ObservedMessage), (cut, order, item)
            invites.append(item)
            tracker.feed(item)
        assert [o.message.raw for o in invites] == [raw], (cut, order)
        assert sorted(invites[0].frames) == list(range(2, len(cuts) + 3)), (cut, order)
        (call,) = tracker.flush()
        record = assess_call(call, verifier)
        assert record.verstat == Verstat.PASSED.value, (cut, order)
