"""The SIP verification server over real loopback sockets (service/listen_sip.py).

Each test starts the asyncio server in a thread of its own, talks to it with plain UDP and TCP
sockets, and checks answers and counters: signed fixture calls (clock injected at their signing
time), retransmissions, garbage, truncated and oversized input, a flood against a small queue
(503 + Retry-After, counted), TCP pipelining and backpressure, 100 Trying, graceful shutdown,
and the ``stirscope listen`` command end to end. RFC 3261 sections 17.2 and 18; RFC 8224.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import os
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
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.extract import request_from_sip_bytes
from analyzer.sipanswer import VerificationRecord
from analyzer.sipserver import SipServerCore
from analyzer.verifying import build_verifier
from service.cli import main
from service.listen_sip import (
    DATAGRAM_OVERHEAD_BYTES,
    DROP_UDP_BACKLOG_BYTES,
    MAX_UDP_SEND_QUEUE,
    UDP_READ_BATCH,
    Answered,
    Endpoint,
    ServerLimits,
    SipVerificationServer,
    Transport,
    _SipDatagram,
)
from service.loop_source import WouldBlock, loop_safe, verify_functions
from service.metrics import Metrics
from shaken.result import VerificationResult
from shaken.verifier import VerificationRequest, Verifier
from sip import Response, StreamFramer, parse_message
from tests.conftest import ROOT
from tests.service.invites import (
    CERTS,
    FIXTURE_AT,
    TRUST,
    fixture_call,
    fixture_config,
    fresh_invite,
    with_branch,
)

TIMEOUT_S = 5.0
LOCAL = [Endpoint(Transport.UDP, "127.0.0.1", 0), Endpoint(Transport.TCP, "127.0.0.1", 0)]


@pytest.fixture(scope="module")
def verifier() -> Iterator[Verifier]:
    with build_verifier(fixture_config()) as built:
        yield built


@dataclass
class Harness:
    """A server running on its own event loop thread, and what it recorded."""

    server: SipVerificationServer
    loop: asyncio.AbstractEventLoop
    udp: tuple[str, int]
    tcp: tuple[str, int]
    calls: list[float] = field(default_factory=list)
    records: list[VerificationRecord] = field(default_factory=list)
    on_loop: list[str] = field(default_factory=list)
    loop_thread: str = ""

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(TIMEOUT_S * 2)


@contextmanager
def running(
    verifier: Verifier,
    *,
    core: SipServerCore | None = None,
    limits: ServerLimits | None = None,
    delay_s: float = 0.0,
    loop_delay_s: float = 0.0,
    outputs_full: Callable[[], bool] | None = None,
) -> Iterator[Harness]:
    """Start a server on loopback ports; ``delay_s`` slows every pooled verification down.
    A verifier made by ``loop_safe`` also verifies warm calls on the loop (``on_loop`` gets
    the name of the thread each of those ran on), each slowed by ``loop_delay_s``."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    calls: list[float] = []
    on_loop: list[str] = []
    records: list[VerificationRecord] = []
    pooled, cached = verify_functions(verifier)

    def verify(request: VerificationRequest, at: datetime) -> VerificationResult:
        calls.append(time.monotonic())
        if delay_s:
            time.sleep(delay_s)
        return pooled(request, at)

    def verify_cached(request: VerificationRequest, at: datetime) -> VerificationResult:
        assert cached is not None
        result = cached(request, at)  # WouldBlock: not counted, the pool verifies it
        on_loop.append(threading.current_thread().name)
        if loop_delay_s:
            time.sleep(loop_delay_s)
        return result

    def record(answered: Answered) -> None:
        records.append(answered.record)

    server = SipVerificationServer(
        core or SipServerCore(),
        verify,
        verify_cached=verify_cached if cached is not None else None,
        metrics=Metrics(),
        limits=limits,
        clock=lambda: FIXTURE_AT,
        on_answer=record,
        outputs_full=outputs_full,
    )
    bound = asyncio.run_coroutine_threadsafe(server.start(LOCAL), loop).result(TIMEOUT_S)
    harness = Harness(
        server,
        loop,
        (bound[0].host, bound[0].port),
        (bound[1].host, bound[1].port),
        calls,
        records,
        on_loop,
        thread.name,
    )
    try:
        yield harness
    finally:
        harness.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT_S)
        loop.close()


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    """A UDP client socket with room for a flood of answers."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(TIMEOUT_S)
    with udp:
        yield udp


def recv_response(sock: socket.socket) -> Response:
    message = parse_message(sock.recv(65535))
    assert isinstance(message, Response)
    return message


def final_udp(sock: socket.socket) -> tuple[Response, list[int]]:
    """Read until a final response; returns it and the provisional statuses seen first."""
    provisional: list[int] = []
    while True:
        response = recv_response(sock)
        if response.status >= 200:
            return response, provisional
        provisional.append(response.status)


def contact_verstat(response: Response) -> str | None:
    contact = response.headers.get("contact") or ""
    marker = "verstat%3D"
    if marker not in contact:
        return None
    return contact.split(marker, 1)[1].split("%", 1)[0]


class TcpClient:
    """A blocking TCP client reading framed responses."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT_S)
        self.framer = StreamFramer()
        self.pending: list[Response] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> Response:
        while not self.pending:
            chunk = self.sock.recv(65535)
            assert chunk, "server closed the connection"
            for item in self.framer.feed(chunk):
                assert isinstance(item, Response), item
                self.pending.append(item)
        return self.pending.pop(0)

    def final(self) -> Response:
        while True:
            response = self.response()
            if response.status >= 200:
                return response

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TcpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


UDP_CASES = [
    ("alpha_a", 302, "TN-Validation-Passed", []),
    ("charlie_c", 302, "TN-Validation-Passed", []),
    ("tampered", 302, "TN-Validation-Failed", ["STIR;cause=438"]),
    ("unsigned", 302, "No-TN-Validation", ["STIR;cause=428"]),
]


@contextmanager
def loop_verifier(clock: Callable[[], float] = time.time) -> Iterator[Verifier]:
    """A verifier of its own (a cold certificate cache, ``clock`` its clock) that can also
    verify on the event loop (``loop_safe``)."""
    with build_verifier(fixture_config(), clock=clock) as built:
        yield loop_safe(built, clock=clock)


@contextmanager
def verifier_for(mode: str, shared: Verifier) -> Iterator[Verifier]:
    """``pool``: the module's verifier (every call in the pool); ``loop``: warm calls on the
    event loop."""
    if mode == "pool":
        yield shared
    else:
        with loop_verifier() as built:
            yield built


MODES = ["pool", "loop"]


@pytest.mark.parametrize("mode", MODES)
def test_udp_fixture_calls(verifier: Verifier, sock: socket.socket, mode: str) -> None:
    with verifier_for(mode, verifier) as chosen, running(chosen) as h:
        for name, status, verstat, reasons in UDP_CASES:
            sock.sendto(fixture_call(name), h.udp)
            response, provisional = final_udp(sock)
            assert response.status == status, name
            assert contact_verstat(response) == verstat, name
            assert [r.split(";text")[0] for r in response.headers.get_all("reason")] == reasons
            assert set(provisional) <= {100}
        assert [r.verstat.value for r in h.records] == [c[2] for c in UDP_CASES]
        assert h.records[0].signer_spc == "1234A"
        metrics = h.server.metrics
        invites = {"transport": "udp", "method": "INVITE"}
        assert metrics.value("stirscope_sip_requests_total", invites) == len(UDP_CASES)
        assert metrics.value("stirscope_sip_responses_total", {"status": "302"}) == len(UDP_CASES)
        # On the loop: tampered (alpha's x5u, cached by alpha_a) and unsigned (nothing to fetch);
        # alpha_a and charlie_c named an x5u not cached yet, so the pool fetched it.
        assert h.server.answered_on_loop == (2 if mode == "loop" else 0)
        assert set(h.on_loop) <= {h.loop_thread}


def test_warm_calls_are_answered_on_the_loop(sock: socket.socket) -> None:
    """A call whose certificate and CRLs are cached is verified on the event loop (no 100
    Trying, no thread); once the cache lets them expire the pool fetches again (100 at once),
    and the answers are the same either way. RFC 3261 section 17.2.1."""
    now = [FIXTURE_AT.timestamp()]
    with loop_verifier(clock=lambda: now[0]) as chosen, running(chosen) as h:
        data = fixture_call("alpha_a")
        sock.sendto(data, h.udp)
        pooled, provisional = final_udp(sock)
        assert (provisional, len(h.calls), h.on_loop) == ([100], 1, [])
        for n in range(3):
            sock.sendto(with_branch(data, f"z9hG4bK-warm{n}"), h.udp)
            answer, provisional = final_udp(sock)
            assert provisional == []
            assert answer.headers.get("contact") == pooled.headers.get("contact")
            assert answer.headers.get_all("p-asserted-identity") == pooled.headers.get_all(
                "p-asserted-identity"
            )
        assert (len(h.calls), h.on_loop) == (1, [h.loop_thread] * 3)
        assert h.server.answered_on_loop == 3
        now[0] += 2 * 86_400  # past the cache's lifetime (24 h floor, STANDARDS.md 6.2)
        sock.sendto(with_branch(data, "z9hG4bK-expired"), h.udp)
        assert final_udp(sock)[1] == [100]
        sock.sendto(with_branch(data, "z9hG4bK-rewarmed"), h.udp)
        assert final_udp(sock)[1] == []
        assert (len(h.calls), h.server.answered_on_loop) == (2, 4)
        assert [r.verstat.value for r in h.records] == ["TN-Validation-Passed"] * 6


def test_full_outputs_shed_invites(verifier: Verifier, sock: socket.socket) -> None:
    """Outputs that cannot take more records (the results store behind): INVITEs get 503, so
    no INVITE is answered without its record. RFC 3261 section 21.5.4."""
    full = [True]
    with running(verifier, outputs_full=lambda: full[0]) as h:
        data = fixture_call("alpha_a")
        sock.sendto(data, h.udp)
        response = recv_response(sock)
        assert (response.status, response.headers.get("retry-after")) == (503, "5")
        full[0] = False
        sock.sendto(with_branch(data, "z9hG4bK-room"), h.udp)
        assert final_udp(sock)[0].status == 302
        assert (h.server.shed, len(h.records), len(h.calls)) == (1, 1, 1)


def test_udp_reject_policy(verifier: Verifier, sock: socket.socket) -> None:
    with running(verifier, core=SipServerCore(reject=True)) as h:
        for name, status in (("tampered", 438), ("revoked", 437), ("unsigned", 428)):
            sock.sendto(fixture_call(name), h.udp)
            response, _ = final_udp(sock)
            assert response.status == status, name


def test_udp_retransmission_verified_once(verifier: Verifier, sock: socket.socket) -> None:
    with running(verifier, delay_s=0.1) as h:
        data = fixture_call("alpha_a")
        sock.sendto(data, h.udp)
        sock.sendto(data, h.udp)  # retransmitted while the verifier works
        first, provisional = final_udp(sock)
        assert provisional == [100, 100]  # 100 at once (cold x5u), again for the retransmission
        sock.sendto(data, h.udp)  # retransmitted after the answer
        again = recv_response(sock)
        assert again.raw == first.raw
        assert len(h.calls) == 1
        assert (
            h.server.metrics.value("stirscope_sip_retransmissions_total", {"transport": "udp"}) == 2
        )


def test_options_ack_and_keepalive(verifier: Verifier, sock: socket.socket) -> None:
    options = (
        b"OPTIONS sip:stirscope@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-opt\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:sbc@127.0.0.1>;tag=1\r\nTo: <sip:stirscope@127.0.0.1>\r\n"
        b"Call-ID: health-1\r\nCSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    with running(verifier) as h:
        sock.sendto(b"\r\n\r\n", h.udp)
        sock.sendto(
            options.replace(b"OPTIONS sip", b"ACK sip").replace(b"7 OPTIONS", b"7 ACK"), h.udp
        )
        sock.sendto(options, h.udp)
        response = recv_response(sock)  # the ACK and the keep-alive got nothing back
        assert response.status == 200
        assert response.headers.get("call-id") == "health-1"
        dropped = h.server.metrics.value(
            "stirscope_sip_dropped_total", {"transport": "udp", "reason": "keepalive"}
        )
        assert dropped == 1


def test_bad_input_keeps_the_server_answering(verifier: Verifier, sock: socket.socket) -> None:
    core = SipServerCore(max_message_bytes=8_000)
    with running(verifier, core=core) as h:
        data = fixture_call("alpha_a")
        garbage = [
            os.urandom(300),
            b"\x00" * 1200,
            data[:200],  # truncated before the Via: nothing to answer from
            b"SIP/2.0 200 OK\r\n\r\n",
        ]
        for datagram in garbage:
            sock.sendto(datagram, h.udp)
        # Truncated in the headers or in the body: 400 (RFC 3261 section 18.3).
        sock.sendto(with_branch(data, "z9hG4bK-t1")[: len(data) // 2], h.udp)
        assert recv_response(sock).status == 400
        sock.sendto(with_branch(data, "z9hG4bK-t2")[:-40], h.udp)
        assert recv_response(sock).status == 400
        oversized = data + b"a=x-pad:" + b"x" * 20_000 + b"\r\n"
        sock.sendto(with_branch(oversized, "z9hG4bK-big"), h.udp)
        assert recv_response(sock).status == 513
        sock.sendto(with_branch(data, "z9hG4bK-after"), h.udp)
        assert final_udp(sock)[0].status == 302
        metrics = h.server.metrics
        assert metrics.total("stirscope_sip_dropped_total") == len(garbage)
        assert metrics.value("stirscope_internal_errors_total", {"where": "sip_handle"}) == 0


def test_tcp_pipelined_split_and_oversized(verifier: Verifier, sock: socket.socket) -> None:
    with running(verifier) as h:
        with TcpClient(h.tcp) as client:
            calls = [with_branch(fixture_call("alpha_a"), f"z9hG4bK-tcp{n}") for n in range(3)]
            client.send(b"".join(calls))  # three messages in one segment
            finals = [client.final() for _ in calls]
            assert [r.status for r in finals] == [302, 302, 302]
            one = with_branch(fixture_call("tampered"), "z9hG4bK-split")
            for i in range(0, len(one), 97):  # one message over many segments
                client.send(one[i : i + 97])
                time.sleep(0.001)
            assert client.final().headers.get_all("reason")[0].startswith("STIR;cause=438")
            # Over the framer's limit: skipped and counted; the connection keeps working.
            huge = fixture_call("alpha_a").replace(b"Content-Length: 166", b"Content-Length: 70000")
            client.send(huge + b"x" * (70_000 - 166))
            client.send(with_branch(fixture_call("charlie_c"), "z9hG4bK-tcp-after"))
            assert contact_verstat(client.final()) == "TN-Validation-Passed"
        too_large = {"transport": "tcp", "reason": "message_too_large"}
        assert h.server.metrics.value("stirscope_sip_dropped_total", too_large) == 1


def test_udp_flood_sheds_with_503_and_stays_bounded(
    verifier: Verifier, sock: socket.socket
) -> None:
    """Every INVITE of a flood is answered (302 or 503 + Retry-After) or, when the host's
    receive buffer is small (net.core.rmem_max), counted as dropped by the kernel."""
    limits = ServerLimits(workers=2, queue_limit=8)
    flood = 150
    with running(verifier, limits=limits, delay_s=0.02) as h:
        base = fixture_call("alpha_a")
        for n in range(flood):
            sock.sendto(with_branch(base, f"z9hG4bK-flood{n}"), h.udp)
        finals: dict[str, int] = {}
        retry_after = set()
        sock.settimeout(0.5)
        deadline = time.monotonic() + TIMEOUT_S * 2
        while len(finals) + h.server.kernel_drops() < flood:
            assert time.monotonic() < deadline, (len(finals), h.server.kernel_drops())
            try:
                response = recv_response(sock)
            except TimeoutError:
                continue
            if response.status >= 200:
                assert response.via
                finals[response.via[0].branch or ""] = response.status
                if response.status == 503:
                    retry_after.add(response.headers.get("retry-after"))
        received = flood - h.server.kernel_drops()
        statuses = list(finals.values())
        shed = statuses.count(503)
        assert shed > 0
        assert statuses.count(302) + shed == received
        assert retry_after == {"5"}
        assert h.server.shed == shed
        assert h.server.metrics.value("stirscope_sip_shed_total", {"transport": "udp"}) == shed
        assert len(h.calls) == received - shed  # shed INVITEs were never verified
        assert h.server.inflight == 0
        assert h.server.core.transactions == received  # one per INVITE, bounded by the table


def test_kernel_drops_are_counted(verifier: Verifier, sock: socket.socket) -> None:
    """A loop that cannot read in time: what the kernel drops shows up in the metrics."""
    with running(verifier) as h:
        blocked = threading.Event()

        def block() -> None:
            blocked.set()
            time.sleep(1.0)

        h.loop.call_soon_threadsafe(block)
        assert blocked.wait(TIMEOUT_S)
        junk = b"\x00" * 1400
        for _ in range(4000):  # ~5.6 MB against a ~2 MB receive buffer
            sock.sendto(junk, h.udp)
        deadline = time.monotonic() + TIMEOUT_S
        while h.server.metrics.total("stirscope_sip_dropped_total") < 100:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        drops = h.server.kernel_drops()
        assert drops > 0
        assert h.server.metrics.value("stirscope_sip_udp_kernel_drops_total") == drops
        read = h.server.metrics.total("stirscope_sip_dropped_total")
        assert read + drops <= 4000


@pytest.mark.parametrize("mode", MODES)
def test_udp_backlog_is_shed_not_left_to_age(
    verifier: Verifier, sock: socket.socket, mode: str
) -> None:
    """INVITEs piled up in the kernel while the loop was stuck: some are answered 503 at once
    instead of all waiting their turn; every one is answered (verified in the pool, or on the
    loop itself once the certificate is cached)."""
    count = 300
    limits = ServerLimits(queue_limit=10_000)
    with verifier_for(mode, verifier) as chosen, running(chosen, limits=limits) as h:
        # Warm the certificate cache with the backlog's own signer: with loop verification the
        # backlog is then answered on the loop, whatever the timing (a cold signer's calls
        # would race the pool's first fetch).
        sock.sendto(fixture_call("charlie_c"), h.udp)
        final_udp(sock)
        blocked = threading.Event()

        def block() -> None:
            blocked.set()
            time.sleep(0.3)

        h.loop.call_soon_threadsafe(block)
        assert blocked.wait(TIMEOUT_S)
        base = fixture_call("charlie_c")
        for n in range(count):
            sock.sendto(with_branch(base, f"z9hG4bK-backlog{n}"), h.udp)
        statuses: list[int] = []
        sock.settimeout(0.5)
        deadline = time.monotonic() + TIMEOUT_S * 2
        # Drops (kernel or overload): hosts whose net.core.rmem_max grants a small buffer.
        while len(statuses) + h.server.kernel_drops() + h.server.overload_drops < count:
            assert time.monotonic() < deadline
            with contextlib.suppress(TimeoutError):
                response = recv_response(sock)
                if response.status >= 200:
                    statuses.append(response.status)
        if h.server.drop_threshold >= DROP_UDP_BACKLOG_BYTES:  # ~700 kB is under it: none
            assert h.server.overload_drops == 0
        assert set(statuses) == {302, 503}
        assert statuses.count(503) == h.server.shed
        if mode == "loop":  # the pool verified the warm-up only
            assert len(h.calls) == 1
            assert h.server.answered_on_loop == statuses.count(302) > 0


def test_udp_flood_past_the_drop_threshold_is_dropped_and_counted(
    verifier: Verifier, sock: socket.socket
) -> None:
    """A backlog past the drop threshold (a flood even 503s cannot keep up with): its oldest
    datagrams are dropped unread, counted in the metrics (never silently), the rest answered
    302 or 503, and once the flood is read new INVITEs are verified again."""
    count = 300  # ~690 kB of kernel backlog, well past the 128 kB drop threshold
    limits = ServerLimits(
        queue_limit=10_000, max_udp_backlog=64 * 1024, drop_udp_backlog=128 * 1024
    )
    with running(verifier, limits=limits) as h:
        sent = threading.Event()

        def block() -> None:  # the loop is stuck while the flood arrives, then looks
            assert sent.wait(TIMEOUT_S)
            time.sleep(0.1)
            h.server._poll_backlog()

        h.loop.call_soon_threadsafe(block)
        base = fixture_call("charlie_c")
        for n in range(count):
            sock.sendto(with_branch(base, f"z9hG4bK-drop{n}"), h.udp)
        sent.set()
        answered: dict[str, int] = {}
        sock.settimeout(0.5)
        deadline = time.monotonic() + TIMEOUT_S * 2
        while len(answered) + h.server.kernel_drops() + h.server.overload_drops < count:
            assert time.monotonic() < deadline
            with contextlib.suppress(TimeoutError):
                response = recv_response(sock)
                if response.status >= 200:
                    answered[response.via[0].branch or ""] = response.status
        dropped = h.server.overload_drops
        assert dropped > 0
        overload = {"transport": "udp", "reason": "overload"}
        assert h.server.metrics.value("stirscope_sip_dropped_total", overload) == dropped
        assert set(answered.values()) <= {302, 503}
        assert list(answered.values()).count(503) == h.server.shed
        if h.server.kernel_drops() == 0:  # the oldest were dropped, the newest answered
            assert set(answered) == {f"z9hG4bK-drop{n}" for n in range(dropped, count)}
        status, n = 503, 0
        while status != 302:  # the backlog read, the server verifies again
            assert time.monotonic() < deadline
            sock.sendto(with_branch(base, f"z9hG4bK-after{n}"), h.udp)
            status, n = final_udp(sock)[0].status, n + 1
        assert h.server.overload_drops == dropped


OPTIONS_PING = (
    b"OPTIONS sip:stirscope@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-ping\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:sbc@127.0.0.1>;tag=1\r\nTo: <sip:stirscope@127.0.0.1>\r\n"
    b"Call-ID: ping\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def ping(name: str) -> bytes:
    """An OPTIONS of its own transaction and Call-ID (answered 200 without a verification)."""
    return with_branch(OPTIONS_PING, f"z9hG4bK-{name}").replace(
        b"Call-ID: ping", b"Call-ID: " + name.encode()
    )


def test_udp_burst_is_read_in_batches_and_answered_to_each_peer(verifier: Verifier) -> None:
    """Datagrams waiting when the loop gets to them are read a batch per wake-up (not one
    each), and every one is answered to the address it came from (RFC 3581)."""
    peers = 3
    each = 40  # 120 datagrams: one full batch of 64 and one short one
    with running(verifier) as h, contextlib.ExitStack() as stack:
        clients = []
        for _ in range(peers):
            client = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            client.bind(("127.0.0.1", 0))
            client.settimeout(TIMEOUT_S)
            clients.append(client)
        batches: list[int] = []
        plan = h.server._plan_batch

        def counted(charge: int, full: bool) -> None:
            batches.append(charge)
            plan(charge, full)

        blocked, release = threading.Event(), threading.Event()

        def block() -> None:
            h.server._plan_batch = counted  # type: ignore[method-assign]
            blocked.set()
            release.wait(TIMEOUT_S)

        h.loop.call_soon_threadsafe(block)
        assert blocked.wait(TIMEOUT_S)
        for n in range(each):
            for p, client in enumerate(clients):
                client.sendto(ping(f"peer{p}-{n}"), h.udp)
        time.sleep(0.05)
        release.set()
        for p, client in enumerate(clients):
            call_ids = set()
            for _ in range(each):
                response = recv_response(client)
                assert response.status == 200
                call_ids.add(response.headers.get("call-id"))
            assert call_ids == {f"peer{p}-{n}" for n in range(each)}
        assert len(batches) == math.ceil(peers * each / UDP_READ_BATCH)
        assert (
            h.server.metrics.value(
                "stirscope_sip_requests_total", {"transport": "udp", "method": "OPTIONS"}
            )
            == peers * each
        )


def test_udp_flood_above_capacity_is_shed_in_part(sock: socket.socket) -> None:
    """A burst of INVITEs far above what a slow loop verifies in time: a share of them is
    shed (503), the rest verified (302), the oldest included (all-or-nothing shedding would
    shed every INVITE read while the backlog is over the target), and every one is
    accounted for (answered, shed or counted as dropped)."""
    count = 120  # ~280 kB as the kernel counts it, under the drop threshold of any host
    limits = ServerLimits(
        queue_limit=10_000, max_udp_backlog=32 * 1024, drop_udp_backlog=512 * 1024
    )
    with loop_verifier() as chosen, running(chosen, limits=limits, loop_delay_s=0.002) as h:
        base = fixture_call("charlie_c")
        sock.sendto(base, h.udp)  # warm: then every call is verified on the (slow) loop
        final_udp(sock)
        blocked = threading.Event()

        def block() -> None:
            blocked.set()
            time.sleep(0.2)

        h.loop.call_soon_threadsafe(block)
        assert blocked.wait(TIMEOUT_S)
        for n in range(count):
            sock.sendto(with_branch(base, f"z9hG4bK-part{n}"), h.udp)
        finals: dict[int, int] = {}
        sock.settimeout(0.5)
        deadline = time.monotonic() + TIMEOUT_S * 4
        server = h.server
        while len(finals) + server.kernel_drops() + server.overload_drops < count:
            assert time.monotonic() < deadline, (len(finals), server.overload_drops)
            with contextlib.suppress(TimeoutError):
                response = recv_response(sock)
                if response.status >= 200:
                    finals[int((response.via[0].branch or "").removeprefix("z9hG4bK-part"))] = (
                        response.status
                    )
        statuses = list(finals.values())
        answered, shed = statuses.count(302), statuses.count(503)
        assert answered > 0
        assert shed > 0
        assert answered + shed + server.overload_drops + server.kernel_drops() == count
        assert shed == server.shed
        assert server.answered_on_loop == answered
        if server.kernel_drops() == server.overload_drops == 0:
            oldest = [finals[n] for n in range(count // 4)]
            assert 302 in oldest
            assert 503 in oldest


# -- the UDP reader against a stand-in socket ------------------------------------------------


class FakeUdpSocket:
    """A non-blocking UDP socket stand-in: ``recvfrom`` takes from ``inbox`` then would block;
    ``sendto`` records into ``sent``, or raises ``error`` while ``refuse`` counts down."""

    def __init__(self, inbox: list[tuple[bytes, tuple[str, int]]] | None = None) -> None:
        self.inbox = list(inbox or [])
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.refuse = 0
        self.error: OSError = BlockingIOError(errno.EAGAIN, "would block")
        self.closed = False

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:
            raise BlockingIOError(errno.EAGAIN, "would block")
        return self.inbox.pop(0)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        if self.refuse:
            self.refuse -= 1
            raise self.error
        self.sent.append((data, addr))
        return len(data)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 5060)

    def fileno(self) -> int:
        return -1 if self.closed else 1000

    def close(self) -> None:
        self.closed = True


class FakeLoop:
    """The loop calls of the UDP reader: the writer callback registered, if any."""

    def __init__(self) -> None:
        self.writer: Callable[[], None] | None = None
        self.reading = True

    def add_writer(self, sock: object, callback: Callable[[], None]) -> None:
        assert self.writer is None
        self.writer = callback

    def remove_writer(self, sock: object) -> None:
        self.writer = None

    def remove_reader(self, sock: object) -> None:
        self.reading = False

    @property
    def writing(self) -> bool:
        return self.writer is not None

    def writable(self) -> None:
        """The socket became writable: run the writer callback."""
        assert self.writer is not None
        self.writer()


@pytest.fixture(scope="module")
def canned(verifier: Verifier) -> VerificationResult:
    """The verdict on the warm charlie_c call, returned at once by ``loop_free_server``."""
    return verifier.verify(request_from_sip_bytes(fixture_call("charlie_c")), at=FIXTURE_AT)


def loop_free_server(
    result: VerificationResult, limits: ServerLimits | None = None
) -> SipVerificationServer:
    """A server whose every INVITE is verified at once on the caller's thread (no loop)."""

    def verify(request: VerificationRequest, at: datetime) -> VerificationResult:
        return result

    return SipVerificationServer(
        SipServerCore(),
        verify,
        verify_cached=verify,
        metrics=Metrics(),
        limits=limits,
        clock=lambda: FIXTURE_AT,
    )


def reader_on(server: SipVerificationServer, sock: FakeUdpSocket, loop: FakeLoop) -> _SipDatagram:
    return _SipDatagram(
        server, cast(asyncio.AbstractEventLoop, loop), cast(socket.socket, cast(Any, sock))
    )


def statuses_of(sent: list[tuple[bytes, tuple[str, int]]]) -> list[int]:
    return [int(data.split(b" ", 2)[1]) for data, _ in sent]


TARGET = 16 * 1024
THRESHOLD = 200 * 1024
KINDS = ("INVITE", "ACK", "OPTIONS")


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=UDP_READ_BATCH),
    pad=st.lists(st.integers(0, 3000), min_size=UDP_READ_BATCH, max_size=UDP_READ_BATCH),
    waiting=st.integers(0, 2 * THRESHOLD),
)
def test_batch_sheds_and_drops_the_backlogs_share(
    canned: VerificationResult, kinds: list[str], pad: list[int], waiting: int
) -> None:
    """One batch against the policy's definition, with the kernel's backlog read from a
    stand-in: the backlog is the batch's bytes (each with the kernel's overhead) plus, behind
    a full batch only, what the kernel holds; past the threshold the oldest datagrams are
    dropped until the excess over the target is covered; between target and threshold
    ``floor(n * share)`` of the n INVITEs are shed (give or take one for rounding); all
    else answered or absorbed, nothing silent."""
    server = loop_free_server(
        canned, ServerLimits(max_udp_backlog=TARGET, drop_udp_backlog=THRESHOLD)
    )
    reads: list[int] = []

    def kernel_queues() -> tuple[int, int]:
        reads.append(waiting)
        return waiting, 0

    server.kernel_queues = kernel_queues  # type: ignore[method-assign]
    invite = fixture_call("charlie_c")
    ack = invite.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"ACK sip", 1) + b"\r\n\r\n"
    inbox = []
    for n, kind in enumerate(kinds):
        base = {"INVITE": invite, "ACK": ack, "OPTIONS": ping(f"o{n}")}[kind]
        data = with_branch(base, f"z9hG4bK-b{n}")
        if kind == "INVITE":
            data = data.replace(
                b"Content-Length: 166\r\n",
                b"X-Pad: " + b"p" * pad[n] + b"\r\nContent-Length: 166\r\n",
            )
        inbox.append((data, ("192.0.2.1", 5060 + n % 3)))
    sock = FakeUdpSocket(inbox)
    reader_on(server, sock, FakeLoop()).read_ready()

    full = len(kinds) == UDP_READ_BATCH
    charges = [len(data) + DATAGRAM_OVERHEAD_BYTES for data, _ in inbox]
    backlog = sum(charges) + (waiting if full else 0)
    assert reads == ([waiting] if full else [])  # a short batch emptied the socket: no read
    dropped = 0
    if backlog > THRESHOLD:  # the oldest dropped until the excess is covered
        excess = backlog - TARGET
        while dropped < len(charges) and sum(charges[:dropped]) < excess:
            dropped += 1
        share = 0.0
    else:
        share = max(0.0, (backlog - TARGET) / (THRESHOLD - TARGET))
    assert server.overload_drops == dropped
    handled = kinds[dropped:]
    invites = handled.count("INVITE")
    statuses = statuses_of(sock.sent)
    shed = statuses.count(503)
    assert abs(shed - math.floor(invites * share)) <= 1
    assert shed <= invites
    if share == 0.0:
        assert shed == 0
    assert statuses.count(302) == invites - shed == server.answered
    assert statuses.count(200) == handled.count("OPTIONS")
    assert len(statuses) == invites + handled.count("OPTIONS")  # ACKs get nothing
    answered_to = {addr for _, addr in sock.sent}
    assert answered_to <= {addr for _, addr in inbox}


def test_without_meminfo_full_batches_keep_the_polled_decision(
    canned: VerificationResult,
) -> None:
    """No SO_MEMINFO (the kernel's backlog only from /proc, polled): a full batch does not
    read the kernel and keeps the last poll's share; a short one (the socket emptied)
    decides from its own bytes."""
    limits = ServerLimits(max_udp_backlog=TARGET, drop_udp_backlog=THRESHOLD)
    server = loop_free_server(canned, limits)
    server._meminfo = False
    reads: list[int] = []

    def kernel_queues() -> tuple[int, int]:
        reads.append(1)
        return (TARGET + THRESHOLD) // 2, 0  # the share halfway: every other INVITE shed

    server.kernel_queues = kernel_queues  # type: ignore[method-assign]
    server._poll_backlog()
    assert (reads, server._shed_share) == ([1], 0.5)
    invite = fixture_call("charlie_c")
    peer = ("192.0.2.1", 5060)
    inbox = [(with_branch(invite, f"z9hG4bK-p{n}"), peer) for n in range(UDP_READ_BATCH)]
    sock = FakeUdpSocket(inbox)
    reader = reader_on(server, sock, FakeLoop())
    reader.read_ready()  # full: no kernel read, half shed
    assert reads == [1]
    assert statuses_of(sock.sent).count(503) == UDP_READ_BATCH // 2
    sock.sent.clear()
    sock.inbox = [(with_branch(invite, "z9hG4bK-short"), peer)]
    reader.read_ready()  # short: its ~2.4 kB are the whole backlog, under the target
    assert (reads, statuses_of(sock.sent), server._shed_share) == ([1], [302], 0.0)


def test_reader_queues_refused_answers_and_flushes_them(canned: VerificationResult) -> None:
    """Answers the kernel refuses (EAGAIN, ENOBUFS) wait in order and go out when the
    socket is writable; past the queue's bound they are dropped and counted; a close
    sends what it can and counts the rest."""
    server = loop_free_server(canned)
    loop = FakeLoop()
    sock = FakeUdpSocket()
    reader = reader_on(server, sock, loop)
    peer = ("192.0.2.7", 5070)
    sock.refuse = 2
    for n in range(5):
        reader.send(peer, b"answer%d" % n)
    assert (sock.sent, reader.unsent, loop.writing) == ([], 5, True)
    loop.writable()  # writable, but refused once more: still queued, in order
    assert (sock.sent, reader.unsent) == ([], 5)
    loop.writable()
    assert [data for data, _ in sock.sent] == [b"answer%d" % n for n in range(5)]
    assert {addr for _, addr in sock.sent} == {peer}
    assert (reader.unsent, loop.writing) == (0, False)
    sock.sent.clear()
    sock.refuse, sock.error = 1, OSError(errno.ENOBUFS, "no buffer space")
    reader.send(peer, b"nobufs")
    assert reader.unsent == 1
    sock.refuse = 1  # ENOBUFS again at the flush: lost, counted, no spinning on writability
    loop.writable()
    assert (reader.unsent, loop.writing, server.send_drops) == (0, False, 1)
    sock.refuse, sock.error = 10**6, BlockingIOError(errno.EAGAIN, "would block")
    for n in range(MAX_UDP_SEND_QUEUE + 10):
        reader.send(peer, b"x%d" % n)
    assert (reader.unsent, server.send_drops) == (MAX_UDP_SEND_QUEUE, 11)
    sock.refuse = 0
    reader.close()  # the kernel takes them now: all sent before the socket closes
    assert len(sock.sent) == MAX_UDP_SEND_QUEUE
    assert (sock.closed, loop.reading) == (True, False)
    assert (reader.unsent, loop.writing) == (0, False)
    dropped = server.metrics.value
    assert (
        dropped("stirscope_sip_dropped_total", {"transport": "udp", "reason": "send_queue_full"})
        == 10
    )
    assert (
        dropped("stirscope_sip_dropped_total", {"transport": "udp", "reason": "send_no_buffer"})
        == 1
    )
    reader.send(peer, b"after close")  # nothing once closed
    assert len(sock.sent) == MAX_UDP_SEND_QUEUE


def test_reader_close_counts_what_the_kernel_still_refuses(canned: VerificationResult) -> None:
    server = loop_free_server(canned)
    loop = FakeLoop()
    sock = FakeUdpSocket()
    reader = reader_on(server, sock, loop)
    sock.refuse = 10**6
    for n in range(3):
        reader.send(("192.0.2.7", 5070), b"a%d" % n)
    reader.close()
    assert (sock.sent, server.send_drops, loop.writing, sock.closed) == ([], 3, False, True)


class StepLog:
    """A server whose verifications on the loop, and a socket whose sends, are written to
    one list in the order they happen; ``verdicts`` maps an INVITE's name (``invite_named``)
    to what its verification on the loop does: "" the canned result, "cold" `WouldBlock` (the
    pool then verifies it), "error" a verifier bug. Stands in for the loop of the pool's
    answers: ``callbacks`` collects them."""

    def __init__(self, result: VerificationResult, verdicts: dict[str, str]) -> None:
        self.steps: list[str] = []
        self.callbacks: list[Callable[[], None]] = []
        self.sock = FakeUdpSocket()
        steps = self.steps

        def on_loop(request: VerificationRequest, at: datetime) -> VerificationResult:
            name = name_of(request)
            steps.append(f"verify {name}")
            if verdicts[name] == "cold":
                raise WouldBlock
            if verdicts[name] == "error":
                raise RuntimeError("a verifier bug")
            return result

        def pooled(request: VerificationRequest, at: datetime) -> VerificationResult:
            return result

        self.server = SipVerificationServer(
            SipServerCore(),
            pooled,
            verify_cached=on_loop,
            metrics=Metrics(),
            clock=lambda: FIXTURE_AT,
        )
        record = self.sock.sendto

        def sendto(data: bytes, addr: tuple[str, int]) -> int:
            steps.append(f"send {data.split(b' ', 2)[1].decode()} {addr[1]}")
            return record(data, addr)

        self.sock.sendto = sendto  # type: ignore[method-assign]

    def call_soon_threadsafe(self, callback: Callable[..., None], *args: object) -> None:
        self.callbacks.append(lambda: callback(*args))


def invite_named(name: str) -> bytes:
    """The warm charlie_c call as a transaction and Call-ID of its own, its name in an extra
    parameter of its Identity header (``name_of``)."""
    data = with_branch(fixture_call("charlie_c"), f"z9hG4bK-{name}")
    data = data.replace(b"Call-ID: ", f"Call-ID: {name}-".encode(), 1)
    return data.replace(b';ppt="shaken"', f';ppt="shaken";test-name={name}'.encode(), 1)


def name_of(request: VerificationRequest) -> str:
    return request.identities[0].rsplit(";test-name=", 1)[1]


def test_a_reads_invites_are_verified_together_then_answered(canned: VerificationResult) -> None:
    """The INVITEs of one read are decided in arrival order (an OPTIONS among them answered
    as it is decided), then verified one after another, then answered, each to its own
    peer, in arrival order."""
    log = StepLog(canned, {"a": "", "b": "", "c": ""})
    log.sock.inbox = [
        (invite_named("a"), ("192.0.2.1", 5001)),
        (ping("p"), ("192.0.2.1", 5002)),
        (invite_named("b"), ("192.0.2.1", 5003)),
        (invite_named("c"), ("192.0.2.1", 5004)),
    ]
    reader_on(log.server, log.sock, FakeLoop()).read_ready()
    assert log.steps == [
        "send 200 5002",
        "verify a",
        "verify b",
        "verify c",
        "send 302 5001",
        "send 302 5003",
        "send 302 5004",
    ]
    assert (log.server.answered, log.server.answered_on_loop, log.server._held) == (3, 3, None)


def test_a_retransmission_read_with_its_invite_meets_it_proceeding(
    canned: VerificationResult,
) -> None:
    """An INVITE and its retransmission in one read: the retransmission finds the
    transaction still proceeding (as when the pool verifies) and gets its provisional answer
    (a first x5u for this core: a 100 Trying was made), so the INVITE is verified and
    answered once; a later retransmission gets the final answer again. RFC 3261 17.2.1."""
    log = StepLog(canned, {"r": ""})
    peer = ("192.0.2.1", 5001)
    data = invite_named("r")
    log.sock.inbox = [(data, peer), (data, peer)]
    reader = reader_on(log.server, log.sock, FakeLoop())
    reader.read_ready()
    assert log.steps == ["send 100 5001", "verify r", "send 302 5001"]
    log.sock.inbox = [(data, peer)]
    reader.read_ready()
    assert log.steps[3:] == ["send 302 5001"]
    assert log.server.answered == 1
    assert (
        log.server.metrics.value("stirscope_sip_retransmissions_total", {"transport": "udp"}) == 2
    )


def test_a_reads_cold_and_broken_verifications_cost_only_their_own_call(
    canned: VerificationResult,
) -> None:
    """Among the INVITEs of one read, one that needs a fetch goes to the pool (100 Trying at
    once, its 302 when the pool is done) and one whose verification breaks gets its 500;
    the others are answered from the loop as usual."""
    log = StepLog(canned, {"a": "", "cold": "cold", "bad": "error", "d": ""})
    log.server._loop = cast(asyncio.AbstractEventLoop, log)
    log.sock.inbox = [
        (invite_named(name), ("192.0.2.1", 5001 + n))
        for n, name in enumerate(["a", "cold", "bad", "d"])
    ]
    reader_on(log.server, log.sock, FakeLoop()).read_ready()
    assert log.steps == [
        "verify a",
        "verify cold",
        "send 100 5002",
        "verify bad",
        "send 500 5003",
        "verify d",
        "send 302 5001",
        "send 302 5004",
    ]
    deadline = time.monotonic() + TIMEOUT_S
    while not log.callbacks and time.monotonic() < deadline:
        time.sleep(0.01)
    for callback in log.callbacks:
        callback()
    assert log.steps[-1] == "send 302 5002"
    server = log.server
    assert (server.answered, server.answered_on_loop, server.internal_errors) == (3, 2, 1)
    assert server.metrics.value("stirscope_internal_errors_total", {"where": "verifier"}) == 1
    server._pool.shutdown(wait=True)


def test_reader_counts_icmp_errors(canned: VerificationResult) -> None:
    """ICMP errors for earlier answers (recvfrom or sendto): counted, the batch goes on."""
    server = loop_free_server(canned)

    class Refused(FakeUdpSocket):
        def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
            if len(self.inbox) == 1 and not self.closed:
                self.closed = True  # once
                raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
            return super().recvfrom(size)

        def fileno(self) -> int:
            return 1000

    sock = Refused([(ping("a"), ("192.0.2.1", 5060)), (ping("b"), ("192.0.2.1", 5060))])
    reader = reader_on(server, sock, FakeLoop())
    reader.read_ready()
    assert statuses_of(sock.sent) == [200, 200]
    sock.refuse, sock.error = 1, ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    reader.send(("192.0.2.1", 5060), b"lost")
    assert reader.unsent == 0
    assert server.metrics.value("stirscope_internal_errors_total", {"where": "udp_icmp"}) == 2


def test_stop_sends_the_queued_udp_answers(verifier: Verifier, sock: socket.socket) -> None:
    """An answer the kernel refused while the server stops is still sent before the socket
    closes (graceful stop), and nothing is counted as dropped."""

    class Refusing:
        """The server's real socket, whose ``sendto`` refuses ``refuse`` more times."""

        def __init__(self, real: socket.socket) -> None:
            self.real = real
            self.refuse = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
            if self.refuse:
                self.refuse -= 1
                raise BlockingIOError(errno.EAGAIN, "would block")
            return self.real.sendto(data, addr)

    with running(verifier, delay_s=0.3) as h:
        reader = h.server._udp[0]
        refusing = Refusing(reader._sock)
        sock.sendto(fixture_call("alpha_a"), h.udp)
        assert recv_response(sock).status == 100  # cold x5u: 100 Trying at once
        refusing.refuse = 3  # the 302, and two flushes of it
        h.loop.call_soon_threadsafe(setattr, reader, "_sock", cast(Any, refusing))
        stopper = threading.Thread(target=h.stop)
        stopper.start()
        response, _ = final_udp(sock)
        assert response.status == 302
        stopper.join(TIMEOUT_S)
        assert refusing.refuse == 0
        assert h.server.send_drops == 0
        assert refusing.real.fileno() == -1  # closed after the flush


def test_tcp_backpressure_answers_everything(verifier: Verifier, sock: socket.socket) -> None:
    limits = ServerLimits(workers=2, queue_limit=4)
    count = 40
    with running(verifier, limits=limits, delay_s=0.01) as h:
        with TcpClient(h.tcp) as client:
            base = fixture_call("alpha_a")
            client.send(b"".join(with_branch(base, f"z9hG4bK-bp{n}") for n in range(count)))
            statuses = [client.final().status for _ in range(count)]
        assert set(statuses) <= {302, 503}
        assert statuses.count(302) == len(h.calls)
        assert h.server.inflight == 0


def test_trying_after_delay_when_warm(verifier: Verifier, sock: socket.socket) -> None:
    limits = ServerLimits(trying_delay_s=0.05)
    with running(verifier, limits=limits, delay_s=0.3) as h:
        data = fixture_call("alpha_a")
        sock.sendto(data, h.udp)
        assert final_udp(sock)[1] == [100]  # cold: 100 at once
        sock.sendto(with_branch(data, "z9hG4bK-warm"), h.udp)
        response, provisional = final_udp(sock)
        assert provisional == [100]  # warm but slow: 100 after the delay
        assert response.status == 302


def test_graceful_stop_answers_queued_invites(verifier: Verifier, sock: socket.socket) -> None:
    with running(verifier, delay_s=0.3) as h, TcpClient(h.tcp) as client:
        sock.sendto(fixture_call("alpha_a"), h.udp)
        client.send(fixture_call("charlie_c"))
        time.sleep(0.05)
        stopper = threading.Thread(target=h.stop)
        stopper.start()
        assert final_udp(sock)[0].status == 302
        assert client.final().status == 302
        stopper.join(TIMEOUT_S)
        assert len(h.records) == 2


# -- the command ------------------------------------------------------------------------------


def test_listen_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["listen", "--trust", str(TRUST)]) == 2
    assert "--sip" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["listen", "--sip", "sctp:127.0.0.1:5060", "--trust", str(TRUST)])
    assert main(["listen", "--sip", "udp:127.0.0.1:0"]) == 2  # no trust anchors
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        args = ["listen", "--sip", f"udp:127.0.0.1:{port}", "--trust", str(TRUST)]
        assert main(args) == 2
        assert "cannot listen" in capsys.readouterr().err
    finally:
        taken.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:127.0.0.1:5060", Endpoint(Transport.UDP, "127.0.0.1", 5060)),
        ("TCP:0.0.0.0:0", Endpoint(Transport.TCP, "0.0.0.0", 0)),
        ("udp:[::1]:5070", Endpoint(Transport.UDP, "::1", 5070)),
    ],
    ids=["udp", "tcp-upper", "ipv6"],
)
def test_endpoint_parse(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text) == expected
    assert Endpoint.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text", ["udp:5060", "tls:h:5061", "udp:h:99999", "udp:[::1]5060", "udp::5060"]
)
def test_endpoint_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|port|HOST|missing"):
        Endpoint.parse(text)


def start_listen(args: list[str]) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Run ``stirscope listen`` in a child process; returns it and what it bound."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "listen", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    bound: dict[str, str] = {}
    deadline = time.monotonic() + 20
    while len(bound) < 3 and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        words = line.split()
        if len(words) >= 4 and words[2] == "sip":
            bound[words[3].split(":")[0]] = words[3]
        elif len(words) >= 4 and words[2] == "metrics":
            bound["metrics"] = words[3]
    return proc, bound


def test_listen_command_end_to_end(tmp_path: Path, sock: socket.socket) -> None:
    out = tmp_path / "calls.jsonl"
    args = ["--sip", "udp:127.0.0.1:0", "--sip", "tcp:127.0.0.1:0", "--metrics", "127.0.0.1:0"]
    args += ["--trust", str(TRUST), "--certs", str(CERTS), "-o", str(out)]
    proc, bound = start_listen(args)
    try:
        assert set(bound) == {"udp", "tcp", "metrics"}, bound
        udp = Endpoint.parse(bound["udp"])
        tcp = Endpoint.parse(bound["tcp"])
        now = datetime.now(UTC)
        sock.sendto(fresh_invite(now), (udp.host, udp.port))
        response, _ = final_udp(sock)
        assert contact_verstat(response) == "TN-Validation-Passed"
        with TcpClient((tcp.host, tcp.port)) as client:
            client.send(fresh_invite(now, transport="TCP"))
            assert contact_verstat(client.final()) == "TN-Validation-Passed"
        with urllib.request.urlopen(bound["metrics"], timeout=TIMEOUT_S) as page:
            text = page.read().decode()
        assert 'stirscope_sip_requests_total{method="INVITE",transport="udp"} 1.0' in text
        assert "stirscope_cert_cache_lookups_total" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped" in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["verstat"], r["signer_spc"], r["transport"]) for r in lines] == [
        ("TN-Validation-Passed", "1234A", "udp"),
        ("TN-Validation-Passed", "1234A", "tcp"),
    ]


def test_kernel_queues_from_meminfo_match_proc(verifier: Verifier, sock: socket.socket) -> None:
    """The backlog and drops read with SO_MEMINFO are what /proc/net/udp shows (Linux)."""
    if not Path("/proc/net/udp").exists():
        pytest.skip("no /proc/net/udp")
    with running(verifier) as h:
        blocked, release = threading.Event(), threading.Event()

        def block() -> None:
            blocked.set()
            release.wait(TIMEOUT_S)

        h.loop.call_soon_threadsafe(block)
        assert blocked.wait(TIMEOUT_S)
        try:
            for n in range(20):
                sock.sendto(with_branch(fixture_call("charlie_c"), f"z9hG4bK-meminfo{n}"), h.udp)
            time.sleep(0.05)
            waiting, dropped = h.server.kernel_queues()
            assert waiting > 20 * 1000  # the 20 INVITEs and their buffer overhead
            assert (waiting, dropped) == h.server._proc_kernel_queues()
        finally:
            release.set()
