"""Interface capture (service/listen_iface.py) on the loopback interface.

The capture tests need root or CAP_NET_RAW and are skipped otherwise: a real SIP dialog is
sent over UDP between two loopback sockets, captured through an AF_PACKET socket with a BPF
filter (traffic on other ports must not get through), turned into a verified call record, and
kept in a pcap that ``analyzer.pcapfile`` reads back with the same frame numbers. Filter
compilation and ``tcpdump -dd`` parsing need no privileges. Linux ``packet(7)``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from analyzer.assess import assess_call
from analyzer.calls import Call
from analyzer.capture import ObservedMessage, iter_messages
from analyzer.linklayer import LINKTYPE_ETHERNET, LINKTYPE_RAW
from analyzer.live import LivePipeline
from analyzer.pcapfile import read_records
from analyzer.records import CallRecord
from analyzer.verifying import build_verifier
from service.listen_iface import (
    CaptureError,
    InterfaceCapture,
    compile_filter,
    interface_linktype,
    parse_dd,
)
from service.live_feed import LiveFeed
from shaken.verifier import Verifier
from tests.service.hep_packets import dialog
from tests.service.invites import CERTS, TRUST, fixture_config, fresh_invite
from tests.service.test_listen_hep import ListSink, start_listen_all, wait_for


def _can_capture() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except (PermissionError, AttributeError):
        return False
    return True


needs_capture = pytest.mark.skipif(
    not _can_capture(), reason="interface capture needs Linux and root or CAP_NET_RAW"
)


@pytest.fixture(scope="module")
def verifier() -> Iterator[Verifier]:
    with build_verifier(fixture_config()) as built:
        yield built


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A caller and a callee UDP socket on loopback."""
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    callee.bind(("127.0.0.1", 0))
    with caller, callee:
        yield caller, callee


def send_dialog(caller: socket.socket, callee: socket.socket) -> str:
    """A freshly signed call, requests caller -> callee and responses back; its Call-ID."""
    messages = dialog(fresh_invite(datetime.now(UTC)))
    for message in messages:
        if message.startswith(b"SIP/2.0"):
            callee.sendto(message, caller.getsockname())
        else:
            caller.sendto(message, callee.getsockname())
        time.sleep(0.002)
    head = messages[0].split(b"\r\n")
    return next(line for line in head if line.startswith(b"Call-ID:")).split(b" ", 1)[1].decode()


# -- capture --------------------------------------------------------------------------------


@needs_capture
def test_capture_on_lo_with_filter_and_pcap(
    verifier: Verifier, pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    caller, callee = pair
    port = callee.getsockname()[1]
    pcap = tmp_path / "evidence.pcap"
    sink = ListSink()

    def assess(call: Call) -> CallRecord:
        return assess_call(call, verifier)  # as of each packet's capture time (now)

    feed = LiveFeed("iface", LivePipeline(), assess, sink=sink)
    capture = InterfaceCapture("lo", feed, bpf=f"udp port {port}", write_pcap=pcap)

    async def scenario() -> str:
        lines = await capture.start()
        assert lines == [f"iface lo filter 'udp port {port}'", f"pcap {pcap}"]
        # Noise on another port: the kernel filter keeps it out of the capture.
        caller.sendto(b"INVITE noise", ("127.0.0.1", caller.getsockname()[1]))
        call_id = await asyncio.to_thread(send_dialog, caller, callee)
        await asyncio.to_thread(wait_for, lambda: feed.pipeline.stats.packets == 6)
        await capture.stop()
        return call_id

    call_id = asyncio.run(scenario())
    (record,) = sink.of("call")
    assert (record["call_id"], record["verstat"], record["source"]) == (
        call_id,
        "TN-Validation-Passed",
        "iface",
    )
    assert record["frames"] == [1, 2, 3, 4, 5, 6]  # the pcap's frame numbers
    assert capture.received == 6
    assert capture.skipped_outgoing == 6  # loopback frames seen leaving are not doubled
    assert sink.of("anomaly") == []
    # The evidence file is a capture of exactly those frames.
    records = [r for r in read_records(str(pcap)) if isinstance(r, tuple)]
    assert [(r[0], r[2]) for r in records] == [(n, LINKTYPE_ETHERNET) for n in range(1, 7)]
    messages = [m for m in iter_messages(str(pcap)) if isinstance(m, ObservedMessage)]
    assert [m.frame for m in messages] == [1, 2, 3, 4, 5, 6]
    assert {m.keys.call_id for m in messages} == {call_id}


@needs_capture
def test_listen_iface_end_to_end(pair: tuple[socket.socket, socket.socket], tmp_path: Path) -> None:
    caller, callee = pair
    port = callee.getsockname()[1]
    out, pcap = tmp_path / "calls.jsonl", tmp_path / "lo.pcap"
    args = ["--iface", "lo", "--filter", f"udp port {port}", "--write-pcap", str(pcap)]
    args += ["--trust", str(TRUST), "--certs", str(CERTS), "-o", str(out)]
    proc, bound = start_listen_all(args, want=2)
    try:
        assert bound == {"iface": "lo", "pcap": str(pcap)}
        call_id = send_dialog(caller, callee)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped; iface lo:" in err
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert (line["record"], line["source"], line["call_id"], line["verstat"]) == (
        "call",
        "iface",
        call_id,
        "TN-Validation-Passed",
    )
    assert len([r for r in read_records(str(pcap)) if isinstance(r, tuple)]) == 6


# -- filters, interfaces and errors (no privileges needed) ----------------------------------


def test_interface_linktype() -> None:
    if not Path("/sys/class/net/lo").exists():
        pytest.skip("no /sys/class/net (not Linux)")
    assert interface_linktype("lo") == LINKTYPE_ETHERNET
    with pytest.raises(CaptureError, match="no such interface"):
        interface_linktype("no-such-if0")


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_RAW], ids=["ethernet", "raw"])
def test_compile_filter(linktype: int) -> None:
    try:
        program = compile_filter("udp port 5060 or tcp port 5060", linktype, "lo")
    except CaptureError as exc:
        pytest.skip(str(exc))  # neither libpcap nor tcpdump installed
    assert 4 < len(program) < 100
    assert program[-1][0] == 0x06  # BPF_RET
    with pytest.raises(CaptureError, match="bad filter"):
        compile_filter("udp port banana", linktype, "lo")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{ 0x28, 0, 0, 0x0000000c },\n{ 0x6, 0, 0, 0x00040000 },\n",
         [(0x28, 0, 0, 12), (0x06, 0, 0, 0x40000)]),
        ("{ 0x15, 0, 8, 0x000086dd },", [(0x15, 0, 8, 0x86DD)]),
        ("\n", []),
    ],
    ids=["two", "jump", "empty"],
)  # fmt: skip
def test_parse_dd(text: str, expected: list[tuple[int, int, int, int]]) -> None:
    assert parse_dd(text) == expected


@pytest.mark.parametrize("text", ["(000) ldh [12]", "{ 0x28, 0, 0 }"], ids=["-d", "short"])
def test_parse_dd_rejects(text: str) -> None:
    with pytest.raises(CaptureError):
        parse_dd(text)


def test_listen_iface_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    base = ["listen", "--trust", str(TRUST)]
    assert main([*base, "--filter", "udp", "--hep", "udp:127.0.0.1:0"]) == 2
    assert "--filter" in capsys.readouterr().err
    assert main([*base, "--iface", "no-such-if0"]) == 2
    assert "no such interface" in capsys.readouterr().err
