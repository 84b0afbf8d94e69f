"""The HEP collector over real loopback sockets (service/listen_hep.py, service/live_feed.py).

Each test runs the collector on an event loop thread of its own and sends HEP3 packets built
per the specification (tests/service/hep_packets.py) around the signed fixture calls, over UDP
and TCP: calls verified as of their HEP timestamps, heartbeats and unknown chunks counted,
garbage, truncated and oversized packets recorded as anomalies, a flood against a blocked
pipeline shed and counted with the queue never past its bound, TCP paused instead of shed,
in-progress calls written at shutdown, and ``stirscope listen --hep`` end to end next to the
SIP server. STANDARDS.md section 13.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from analyzer.assess import assess_call
from analyzer.calls import Call
from analyzer.live import LivePipeline
from analyzer.records import CallRecord
from analyzer.verifying import build_verifier
from service.listen_hep import HepCollector
from service.listen_sip import Endpoint, Transport
from service.live_feed import FeedLimits, LiveCollector, LiveFeed
from service.metrics import Metrics
from shaken.verifier import Verifier
from tests.analyzer.test_hep import SPEC_EXAMPLE
from tests.conftest import ROOT
from tests.service.hep_packets import NS, chunk, dialog_hep, heartbeat, hep3, ts_ns
from tests.service.invites import (
    CERTS,
    FIXTURE_AT,
    TRUST,
    fixture_call,
    fixture_config,
    fresh_invite,
)
from tests.service.test_listen_sip import contact_verstat, final_udp

TIMEOUT_S = 10.0
AT_NS = ts_ns(FIXTURE_AT)
LOCAL = [Endpoint(Transport.UDP, "127.0.0.1", 0), Endpoint(Transport.TCP, "127.0.0.1", 0)]


@pytest.fixture(scope="module")
def verifier() -> Iterator[Verifier]:
    with build_verifier(fixture_config()) as built:
        yield built


class ListSink:
    """Collects the JSON lines (thread-safe, like the JSONL sink)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []
        self._lock = threading.Lock()

    def write_json(self, obj: dict[str, object]) -> None:
        json.dumps(obj)  # what the JSONL sink would write must serialise
        with self._lock:
            self.lines.append(obj)

    def of(self, record: str) -> list[dict[str, object]]:
        with self._lock:
            return [line for line in self.lines if line["record"] == record]


@dataclass
class Harness:
    collector: HepCollector
    feed: LiveFeed
    sink: ListSink
    loop: asyncio.AbstractEventLoop
    udp: tuple[str, int]
    tcp: tuple[str, int]
    gate: threading.Event = field(default_factory=threading.Event)
    stopped: bool = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            future = asyncio.run_coroutine_threadsafe(self.collector.stop(), self.loop)
            future.result(TIMEOUT_S * 3)

    def calls(self) -> list[dict[str, object]]:
        return self.sink.of("call")

    def anomalies(self) -> list[str]:
        return sorted(str(line["kind"]) for line in self.sink.of("anomaly"))


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@contextmanager
def running(
    verifier: Verifier, *, limits: FeedLimits | None = None, gated: bool = False
) -> Iterator[Harness]:
    """A collector on loopback; with ``gated`` every verification waits for ``gate``."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gate = threading.Event()
    if not gated:
        gate.set()

    def assess(call: Call) -> CallRecord:
        gate.wait(TIMEOUT_S * 2)
        return assess_call(call, verifier)

    sink = ListSink()
    feed = LiveFeed("hep", LivePipeline(), assess, sink=sink, limits=limits)
    collector = HepCollector(LOCAL, feed)
    asyncio.run_coroutine_threadsafe(collector.start(), loop).result(TIMEOUT_S)
    udp, tcp = collector.endpoints
    harness = Harness(collector, feed, sink, loop, (udp.host, udp.port), (tcp.host, tcp.port), gate)
    try:
        yield harness
    finally:
        gate.set()
        harness.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT_S)
        loop.close()


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    with udp:
        yield udp


def call_with_id(invite: bytes, call_id: str) -> bytes:
    return invite.replace(b"a1b2c3d4-alpha-a", call_id.encode())


# -- UDP ------------------------------------------------------------------------------------


def test_udp_calls_heartbeats_and_bad_packets(verifier: Verifier, sock: socket.socket) -> None:
    with running(verifier) as h:
        packets = dialog_hep(fixture_call("alpha_a"), AT_NS)
        packets += dialog_hep(fixture_call("tampered"), AT_NS + NS)
        packets += [
            heartbeat(AT_NS),
            hep3(b"{}", AT_NS, proto_type=0x05, extra=chunk(0x42, b"x", vendor=7)),
            b"\x16\x03\x01 not HEP at all",  # garbage (a TLS hello on the wrong port)
            SPEC_EXAMPLE[:50],  # truncated
            SPEC_EXAMPLE,  # the specification's example: HEP fine, SIP payload cut short
            b"HEP3" + b"\xff" * 60000,  # oversized nonsense: length field past the datagram
        ]
        for packet in packets:
            sock.sendto(packet, h.udp)
        wait_for(lambda: h.feed.pipeline.stats.packets == len(packets))
        h.stop()
        verdicts = sorted((line["call_id"], line["verstat"]) for line in h.calls())
        assert verdicts == [
            ("a1b2c3d4-alpha-a", "TN-Validation-Passed"),
            ("e5f6a7b8-tampered", "TN-Validation-Failed"),
        ]
        call = next(line for line in h.calls() if line["call_id"] == "a1b2c3d4-alpha-a")
        assert (call["source"], call["encapsulation"], call["end"]) == ("hep", "hep", "bye")
        assert call["at"] == "2026-01-15T12:00:05.000000Z"  # the HEP capture time
        assert h.anomalies() == ["hep_malformed", "hep_malformed", "hep_malformed",
                                 "sip_unparseable"]  # fmt: skip
        stats = h.feed.pipeline.stats
        assert (stats.hep_payloads["heartbeat"], stats.hep_payloads["rtcp_json"]) == (1, 1)
        assert stats.hep_chunks["vendor"] == 1
        assert dict(stats.hep_errors) == {"bad_magic": 1, "bad_length": 2}
        assert h.feed.stats.shed == 0


def test_in_progress_calls_are_written_at_shutdown(verifier: Verifier, sock: socket.socket) -> None:
    with running(verifier) as h:
        invite_only = dialog_hep(fixture_call("alpha_a"), AT_NS)[:1]
        answered = dialog_hep(call_with_id(fixture_call("alpha_a"), "answered-1"), AT_NS)[:3]
        for packet in invite_only + answered:
            sock.sendto(packet, h.udp)
        wait_for(lambda: h.feed.pipeline.stats.packets == 4)
        assert h.calls() == []
        h.stop()
        ends = sorted((line["call_id"], line["state"], line["end"]) for line in h.calls())
        assert ends == [
            ("a1b2c3d4-alpha-a", "trying", "end_of_input"),
            ("answered-1", "answered", "end_of_input"),
        ]


def test_flood_against_a_blocked_pipeline_is_shed_and_bounded(
    verifier: Verifier, sock: socket.socket
) -> None:
    limits = FeedLimits(queue_items=20, workers=1, inflight=1)
    with running(verifier, limits=limits, gated=True) as h:
        # Call 1 completes when capture time passes its linger (call 2's INVITE, +40 s): its
        # verification holds the only slot. Call 2 completes at +80 s: the pipeline thread
        # waits for a slot, so everything after queues, then sheds.
        for n in range(3):
            invite = call_with_id(fixture_call("alpha_a"), f"flood-{n}")
            for packet in dialog_hep(invite, AT_NS + n * 40 * NS):
                sock.sendto(packet, h.udp)
        wait_for(lambda: h.feed.inflight == 1)
        sent = 18
        for batch in range(20):
            for n in range(50):
                sock.sendto(b"garbage %d %d" % (batch, n), h.udp)
            sent += 50
            time.sleep(0.002)
        wait_for(lambda: h.feed.stats.accepted + h.feed.stats.shed == sent)
        assert h.feed.depth[0] == limits.queue_items  # full, never past it
        assert h.feed.stats.shed == sent - h.feed.stats.accepted > 900
        h.gate.set()
        wait_for(lambda: h.feed.depth[0] == 0)
        # Still collecting after the flood.
        sock.sendto(hep3(call_with_id(fixture_call("alpha_a"), "after"), AT_NS + 200 * NS), h.udp)
        wait_for(lambda: h.feed.stats.accepted + h.feed.stats.shed == sent + 1)
        h.stop()
        assert sorted(str(line["call_id"]) for line in h.calls()) == [
            "after", "flood-0", "flood-1", "flood-2",
        ]  # fmt: skip
        assert h.feed.pipeline.stats.packets == h.feed.stats.accepted
        assert h.feed.stats.abandoned == 0


# -- TCP ------------------------------------------------------------------------------------


def test_tcp_streams_split_anywhere(verifier: Verifier) -> None:
    with running(verifier) as h:
        one = b"".join(dialog_hep(fixture_call("alpha_a"), AT_NS))
        two = b"".join(dialog_hep(call_with_id(fixture_call("alpha_a"), "second"), AT_NS))
        with socket.create_connection(h.tcp) as a, socket.create_connection(h.tcp) as b:
            for pos in range(0, max(len(one), len(two)), 333):
                a.sendall(one[pos : pos + 333])
                b.sendall(two[pos : pos + 333])
                time.sleep(0.001)
            b.sendall(hep3(b"cut", AT_NS)[:20])  # the connection closes inside a packet
        wait_for(lambda: h.feed.pipeline.stats.packets == 12)
        h.stop()
        assert sorted(str(line["call_id"]) for line in h.calls()) == [
            "a1b2c3d4-alpha-a", "second",
        ]  # fmt: skip
        assert {line["verstat"] for line in h.calls()} == {"TN-Validation-Passed"}
        assert h.anomalies() == ["hep_malformed"]


def test_tcp_is_paused_not_shed(verifier: Verifier) -> None:
    limits = FeedLimits(queue_items=8, workers=1, inflight=1)
    with running(verifier, limits=limits, gated=True) as h:
        packets = []
        for n in range(3):
            invite = call_with_id(fixture_call("alpha_a"), f"tcp-{n}")
            packets += dialog_hep(invite, AT_NS + n * 40 * NS)
        packets += [heartbeat(AT_NS + 100 * NS)] * 3000
        with socket.create_connection(h.tcp) as conn:
            conn.settimeout(TIMEOUT_S)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def send() -> None:
                for pos in range(0, len(packets), 10):  # many reads on the collector's side
                    conn.sendall(b"".join(packets[pos : pos + 10]))
                    time.sleep(0.0005)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            wait_for(lambda: bool(h.collector._paused))
            assert h.feed.stats.shed == 0
            h.gate.set()
            sender.join(TIMEOUT_S)
            assert not sender.is_alive()
        wait_for(lambda: h.feed.pipeline.stats.packets == len(packets))
        h.stop()
        assert h.feed.stats.shed == 0
        assert len(h.calls()) == 3


def test_connection_limit(verifier: Verifier) -> None:
    with running(verifier) as h:
        h.collector.max_connections = 1
        with socket.create_connection(h.tcp) as first:
            first.sendall(heartbeat(AT_NS))
            wait_for(lambda: h.feed.pipeline.stats.packets == 1)
            with socket.create_connection(h.tcp) as second:
                second.settimeout(TIMEOUT_S)
                assert second.recv(1) == b""  # refused: closed at once
        assert h.collector.connections_refused == 1


# -- metrics --------------------------------------------------------------------------------


def test_metrics_export(verifier: Verifier, sock: socket.socket) -> None:
    metrics = Metrics()
    collector = LiveCollector(metrics.registry)
    with running(verifier) as h:
        collector.add(h.feed)
        for packet in [*dialog_hep(fixture_call("alpha_a"), AT_NS), heartbeat(AT_NS), b"junk"]:
            sock.sendto(packet, h.udp)
        wait_for(lambda: h.feed.pipeline.stats.packets == 8)
        h.stop()
        assert metrics.value("stirscope_live_packets_total", {"source": "hep"}) == 8
        assert metrics.value("stirscope_hep_payloads_total", {"kind": "heartbeat"}) == 1
        assert metrics.value("stirscope_hep_errors_total", {"reason": "bad_magic"}) == 1
        assert (
            metrics.value(
                "stirscope_live_calls_total", {"source": "hep", "verstat": "TN-Validation-Passed"}
            )
            == 1
        )
        assert metrics.value("stirscope_live_shed_total", {"source": "hep"}) == 0


# -- the command ----------------------------------------------------------------------------


def start_listen_all(args: list[str], *, want: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Run ``stirscope listen`` in a child process; returns it and the ``want`` things it
    bound, keyed ``"hep udp"``, ``"sip tcp"``, ``"metrics"``..."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "listen", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    bound: dict[str, str] = {}
    while len(bound) < want:
        words = proc.stderr.readline().split()
        if not words:
            proc.kill()
            raise AssertionError(f"listen exited early: {proc.communicate()[1]}")
        if len(words) >= 4 and words[2] in ("sip", "hep"):
            bound[f"{words[2]} {words[3].split(':')[0]}"] = words[3]
        elif len(words) >= 4 and words[2] in ("metrics", "iface", "pcap"):
            bound[words[2]] = words[3]
    return proc, bound


def test_listen_hep_and_sip_end_to_end(tmp_path: Path, sock: socket.socket) -> None:
    out = tmp_path / "live.jsonl"
    args = ["--hep", "udp:127.0.0.1:0", "--hep", "tcp:127.0.0.1:0", "--sip", "udp:127.0.0.1:0"]
    args += ["--metrics", "127.0.0.1:0", "--trust", str(TRUST), "--certs", str(CERTS)]
    args += ["-o", str(out), "--rotate-size", "10M"]
    proc, bound = start_listen_all(args, want=4)
    try:
        udp, tcp = Endpoint.parse(bound["hep udp"]), Endpoint.parse(bound["hep tcp"])
        for packet in dialog_hep(fixture_call("alpha_a"), AT_NS):
            sock.sendto(packet, (udp.host, udp.port))
        sock.sendto(b"not hep", (udp.host, udp.port))
        with socket.create_connection((tcp.host, tcp.port)) as conn:
            invite = call_with_id(fixture_call("alpha_a"), "over-tcp")
            conn.sendall(b"".join(dialog_hep(invite, AT_NS)[:1]))  # in progress at shutdown
        # The SIP server answers in the same process.
        sip = Endpoint.parse(bound["sip udp"])
        sock.settimeout(TIMEOUT_S)
        sock.sendto(fresh_invite(datetime.now(UTC)), (sip.host, sip.port))
        response, _ = final_udp(sock)
        assert contact_verstat(response) == "TN-Validation-Passed"

        def scraped() -> str:
            with urllib.request.urlopen(bound["metrics"], timeout=TIMEOUT_S) as page:
                text: str = page.read().decode()
            return text

        wait_for(lambda: 'stirscope_live_packets_total{source="hep"} 8.0' in scraped())
        assert 'stirscope_hep_errors_total{reason="bad_magic"} 1.0' in scraped()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped; hep:" in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_kind = sorted((line["record"], line["source"]) for line in lines)
    assert by_kind == [
        ("anomaly", "hep"),
        ("call", "hep"),
        ("call", "hep"),
        ("verification", "sip"),
    ]
    calls = {line["call_id"]: line for line in lines if line["record"] == "call"}
    assert calls["a1b2c3d4-alpha-a"]["verstat"] == "TN-Validation-Passed"
    assert calls["a1b2c3d4-alpha-a"]["end"] == "bye"  # flushed while lingering at stop
    assert calls["over-tcp"]["state"] == "trying"
