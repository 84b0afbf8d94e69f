"""The SIP verification server of ``stirscope listen --sip``: asyncio UDP and TCP listeners.

Theory of operation. The event loop owns the sans-IO `SipServerCore` and does only cheap work:
parse, decide, send. An INVITE becomes a `VerificationJob` that runs ``verify`` in a thread
pool, so a slow certificate fetch (up to the 2 s fetch timeout) never blocks other calls; the
answer is built back on the loop. A 100 Trying goes out at once when the INVITE names an x5u
not seen before, else after ``trying_delay_s`` if the answer is still pending (RFC 3261
section 17.2.1). Verifications queued or running are bounded (``queue_limit``): past it an
INVITE is answered ``503 Service Unavailable`` with Retry-After and counted as shed (never
dropped silently), and TCP connections stop being read until the queue drains to half
(backpressure). ``stop()`` is graceful: no new connections, new INVITEs shed, every queued
verification answered (up to ``drain_timeout_s``), then sockets closed.

The verification time is the arrival time, read from ``clock`` (wall clock by default,
injectable for tests). RFC 3261 sections 17.2 and 18; RFC 8224 section 6.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import cast

from analyzer.sipanswer import VerificationRecord
from analyzer.sipserver import (
    Action,
    Decision,
    SipServerCore,
    VerificationJob,
)
from service.metrics import Metrics
from shaken.result import VerificationResult
from shaken.verifier import VerificationRequest
from sip import FramingError, Request, Response, StreamFramer

# Worker threads for verification. Warm-cache verification is CPU work (cryptography releases
# the GIL while verifying, ARCHITECTURE.md section 5); a cold x5u waits up to the 2 s fetch
# timeout, so a few extra threads keep warm calls flowing while some fetch.
DEFAULT_WORKERS = 8
# Verifications queued or running before INVITEs are shed with 503. Queueing delay must stay
# well under T1 = 500 ms (RFC 3261 section 17.1.1.1), or every queued INVITE is retransmitted
# and the overload doubles: at ~1 ms of work per call on a busy core, 128 is ~0.13 s.
DEFAULT_QUEUE_LIMIT = 128
# RFC 3261 section 17.2.1: send 100 Trying if the answer will take longer than 200 ms.
TRYING_DELAY_S = 0.2
# Open TCP connections accepted at once (each holds a framer buffer of up to one maximum-size
# message, 64 KiB): 1,024 bound that memory to ~64 MiB. SBCs use a handful of connections.
MAX_TCP_CONNECTIONS = 1024
# A TCP peer that does not read its answers: past this many unsent bytes it is disconnected.
MAX_TCP_WRITE_BUFFER = 1024 * 1024
# Kernel receive buffer asked for on UDP sockets: a burst of ~750 INVITEs of 1.3 kB (about
# T1 = 500 ms of work) waits there while the loop is busy instead of being dropped; a longer
# backlog would only hold requests their senders have already retransmitted. The kernel caps
# the value at net.core.rmem_max; Linux defaults hold only ~150 such datagrams. What the
# kernel still drops is read back from /proc/net/udp (``kernel_drops``), never unseen.
UDP_RECEIVE_BUFFER = 1024 * 1024
PROC_NET_UDP = ("/proc/net/udp", "/proc/net/udp6")
# Unread bytes in the kernel past which INVITEs are shed (503) until the loop catches up.
# The kernel counts buffer overhead too (about 2 kB per 1.3 kB INVITE): 256 KiB is ~130
# INVITEs, ~0.1-0.2 s of work, well under T1 = 500 ms. Polled every 20 ms (a /proc read).
MAX_UDP_BACKLOG_BYTES = 256 * 1024
BACKLOG_POLL_S = 0.02
# Graceful shutdown waits this long for queued verifications (two fetch timeouts + margin).
DRAIN_TIMEOUT_S = 5.0

Verify = Callable[[VerificationRequest, datetime], VerificationResult]
Peer = tuple[str, int]


class Transport(StrEnum):
    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """``udp:HOST:PORT`` or ``tcp:HOST:PORT`` (IPv6 hosts in brackets). RFC 3261 section 18."""

    transport: Transport
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse an endpoint spec; ``ValueError`` with a readable message when malformed."""
        scheme, sep, rest = text.partition(":")
        if not sep or scheme.lower() not in ("udp", "tcp"):
            raise ValueError(f"{text!r}: expected udp:HOST:PORT or tcp:HOST:PORT")
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if not bracket or not tail.startswith(":"):
                raise ValueError(f"{text!r}: expected [IPv6]:PORT")
            port_text = tail[1:]
        else:
            host, sep, port_text = rest.rpartition(":")
            if not sep:
                raise ValueError(f"{text!r}: missing :PORT")
        if not host:
            raise ValueError(f"{text!r}: missing HOST")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: port must be 0-65535")
        return cls(Transport(scheme.lower()), host, int(port_text))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport.value}:{host}:{self.port}"


async def bind_endpoint(
    loop: asyncio.AbstractEventLoop,
    endpoint: Endpoint,
    *,
    datagram: Callable[[], asyncio.DatagramProtocol],
    stream: Callable[[], asyncio.Protocol],
    receive_buffer: int,
) -> tuple[Endpoint, asyncio.DatagramTransport | asyncio.Server]:
    """Bind one listener endpoint (UDP with a larger kernel receive buffer, or TCP) and return
    it with the port actually bound (0 asks for a free one) and its transport or server."""
    handle: asyncio.DatagramTransport | asyncio.Server
    if endpoint.transport is Transport.UDP:
        handle, _ = await loop.create_datagram_endpoint(
            datagram, local_addr=(endpoint.host, endpoint.port)
        )
        sock = handle.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sockname = handle.get_extra_info("sockname")
    else:
        handle = await loop.create_server(stream, endpoint.host, endpoint.port, reuse_address=True)
        sockname = handle.sockets[0].getsockname()
    return Endpoint(endpoint.transport, endpoint.host, int(sockname[1])), handle


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The bounds of one SIP verification server (each default's source is at its constant)."""

    workers: int = DEFAULT_WORKERS
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    trying_delay_s: float = TRYING_DELAY_S
    max_connections: int = MAX_TCP_CONNECTIONS
    max_write_buffer: int = MAX_TCP_WRITE_BUFFER
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    max_udp_backlog: int = MAX_UDP_BACKLOG_BYTES

    def __post_init__(self) -> None:
        if self.workers < 1 or self.queue_limit < 1 or self.max_connections < 1:
            raise ValueError("workers, queue_limit and max_connections must be at least 1")


RecordSink = Callable[[VerificationRecord, Transport, Peer], None]


def wall_clock() -> datetime:
    """The arrival time of a live request (the only clock read of the SIP server)."""
    return datetime.now(UTC)


@dataclass(slots=True)
class _Pending:
    job: VerificationJob
    send: Callable[[bytes], None]
    started: float
    transport: Transport
    peer: Peer
    timer: asyncio.TimerHandle | None = None


class SipVerificationServer:
    """UDP and TCP listeners around one `SipServerCore` and one verifier.

    RFC 3261 sections 17.2 and 18; RFC 8224 section 6.2.
    """

    def __init__(
        self,
        core: SipServerCore,
        verify: Verify,
        *,
        metrics: Metrics | None = None,
        limits: ServerLimits | None = None,
        clock: Callable[[], datetime] = wall_clock,
        on_record: RecordSink | None = None,
    ) -> None:
        self.core = core
        self.metrics = metrics if metrics is not None else Metrics()
        self.limits = limits or ServerLimits()
        self._verify = verify
        self._clock = clock
        self._on_record = on_record
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="sip-verify")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp_servers: list[asyncio.Server] = []
        self._streams: set[_SipStream] = set()
        self._paused: set[_SipStream] = set()
        self._inflight = 0
        self._closing = False
        self._backlogged = False
        self._watcher: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None
        self.endpoints: list[Endpoint] = []
        self.shed = 0
        self.answered = 0
        self.internal_errors = 0

    # -- life cycle ------------------------------------------------------------------------

    async def start(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """Bind every endpoint; returns them with the ports actually bound (for port 0)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._drained = asyncio.Event()
        bound: list[Endpoint] = []
        try:
            for endpoint in endpoints:
                bound.append(await self._bind(loop, endpoint))
        except BaseException:
            await self.stop()
            raise
        self.endpoints.extend(bound)
        if self._udp:
            self.metrics.watch_kernel_drops(self.kernel_drops)
            if Path(PROC_NET_UDP[0]).exists():
                self._watcher = loop.create_task(self._watch_backlog())
        return bound

    async def _bind(self, loop: asyncio.AbstractEventLoop, endpoint: Endpoint) -> Endpoint:
        bound, handle = await bind_endpoint(
            loop,
            endpoint,
            datagram=lambda: _SipDatagram(self),
            stream=lambda: _SipStream(self),
            receive_buffer=UDP_RECEIVE_BUFFER,
        )
        if isinstance(handle, asyncio.Server):
            self._tcp_servers.append(handle)
        else:
            self._udp.append(handle)
        return bound

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, answer what is queued, close sockets."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
        for server in self._tcp_servers:
            server.close()
        for stream in list(self._paused):
            stream.resume()
        if self._inflight and self._drained is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.limits.drain_timeout_s)
        for udp in self._udp:
            udp.close()
        for stream in list(self._streams):
            stream.close()
        for server in self._tcp_servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._udp.clear()
        self._tcp_servers.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def kernel_queues(self) -> tuple[int, int]:
        """(bytes waiting, datagrams dropped) in the kernel for our UDP sockets, from the
        ``rx_queue`` and ``drops`` columns of /proc/net/udp{,6} (Linux; (0, 0) elsewhere)."""
        inodes = set()
        for transport in self._udp:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    inodes.add(str(os.fstat(sock.fileno()).st_ino))
        waiting = dropped = 0
        for path in PROC_NET_UDP:
            try:
                lines = Path(path).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) >= 13 and fields[9] in inodes:
                    with contextlib.suppress(ValueError):
                        waiting += int(fields[4].partition(":")[2], 16)
                        dropped += int(fields[-1])
        return waiting, dropped

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped on our UDP sockets (receive buffer full)."""
        return self.kernel_queues()[1]

    async def _watch_backlog(self) -> None:
        """Shed while the kernel holds more unread datagrams than ``max_udp_backlog``: the
        event loop, not the verifier, is behind, and every INVITE waiting there ages towards
        its sender's retransmission (RFC 3261 section 17.1.1.2)."""
        while True:
            await asyncio.sleep(BACKLOG_POLL_S)
            self._backlogged = self.kernel_queues()[0] > self.limits.max_udp_backlog

    @property
    def inflight(self) -> int:
        """Verifications queued or running."""
        return self._inflight

    def summary(self) -> str:
        """One line of live counters (for a TTY status line)."""
        stats = self.core.stats
        verstat = stats.verstat
        dropped = sum(stats.drops.values())
        return (
            f"INVITE {stats.requests.get('INVITE', 0)}  "
            f"passed {verstat.get('TN-Validation-Passed', 0)}  "
            f"failed {verstat.get('TN-Validation-Failed', 0)}  "
            f"none {verstat.get('No-TN-Validation', 0)}  "
            f"retrans {stats.retransmissions}  shed {self.shed}  dropped {dropped}  "
            f"kernel-dropped {self.kernel_drops()}  "
            f"inflight {self._inflight}"
        )

    # -- requests --------------------------------------------------------------------------

    def handle(
        self,
        data: bytes | Request | Response,
        transport: Transport,
        peer: Peer,
        send: Callable[[bytes], None],
    ) -> None:
        """One datagram or framed message: decide, answer or queue. Never raises."""
        started = time.perf_counter()
        try:
            at = self._clock()
            if isinstance(data, bytes):
                decision = self.core.receive(data, at=at)
            else:
                decision = self.core.receive_message(data, at=at)
            self._act(decision, transport, peer, send, started)
        except Exception:  # a bug must cost one message, never the listener
            self.internal_errors += 1
            self.metrics.errors.labels("sip_handle").inc()

    def _act(
        self,
        decision: Decision,
        transport: Transport,
        peer: Peer,
        send: Callable[[bytes], None],
        started: float,
    ) -> None:
        metrics = self.metrics
        if decision.method is not None:
            metrics.requests.labels(transport.value, decision.method).inc()
        action = decision.action
        if action is Action.VERIFY and decision.job is not None:
            self._dispatch(decision, decision.job, transport, peer, send, started)
        elif action is Action.REPLY and decision.response is not None:
            self._send(send, decision.response, decision.status)
        elif action is Action.RETRANSMIT:
            metrics.retransmissions.labels(transport.value).inc()
            if decision.response is not None:
                send(decision.response)
        elif action is Action.DROP and decision.drop is not None:
            metrics.dropped.labels(transport.value, decision.drop.value).inc()

    def _send(self, send: Callable[[bytes], None], data: bytes, status: int | None) -> None:
        if status is not None:
            self.metrics.responses.labels(str(status)).inc()
        send(data)

    def _dispatch(
        self,
        decision: Decision,
        job: VerificationJob,
        transport: Transport,
        peer: Peer,
        send: Callable[[bytes], None],
        started: float,
    ) -> None:
        if self._closing or self._backlogged or self._inflight >= self.limits.queue_limit:
            self.shed += 1
            self.metrics.shed.labels(transport.value).inc()
            self._send(send, self.core.shed(job), 503)
            return
        if decision.response is not None:
            self._send(send, decision.response, 100)
        pending = _Pending(job, send, started, transport, peer)
        loop = self._loop
        assert loop is not None
        if decision.response is None:
            pending.timer = loop.call_later(self.limits.trying_delay_s, self._trying, pending)
        self._inflight += 1
        self.metrics.inflight.set(self._inflight)
        future = self._pool.submit(self._run_verify, job)
        future.add_done_callback(partial(self._from_worker, loop, pending))

    def _run_verify(self, job: VerificationJob) -> tuple[VerificationResult, float]:
        began = time.perf_counter()
        result = self._verify(job.verification_request(), job.at)
        return result, time.perf_counter() - began

    def _from_worker(
        self,
        loop: asyncio.AbstractEventLoop,
        pending: _Pending,
        future: Future[tuple[VerificationResult, float]],
    ) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed: nothing left to answer
            loop.call_soon_threadsafe(self._done, pending, future)

    def _trying(self, pending: _Pending) -> None:
        pending.timer = None
        data = self.core.trying(pending.job)
        if data is not None:
            self._send(pending.send, data, 100)

    def _done(self, pending: _Pending, future: Future[tuple[VerificationResult, float]]) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        self._inflight -= 1
        metrics = self.metrics
        metrics.inflight.set(self._inflight)
        try:
            try:
                result, took = future.result()
            except Exception:
                self.internal_errors += 1
                metrics.errors.labels("verifier").inc()
                self._send(pending.send, self.core.fail(pending.job), 500)
            else:
                completion = self.core.complete(pending.job, result)
                if self._on_record is not None:  # recorded before answered: nothing unlogged
                    self._on_record(completion.record, pending.transport, pending.peer)
                self._send(pending.send, completion.response, completion.status)
                self.answered += 1
                metrics.verify_latency.observe(took)
                metrics.latency.observe(time.perf_counter() - pending.started)
                metrics.verifications.labels(
                    result.verstat.value, result.reason.value if result.reason else ""
                ).inc()
        except Exception:
            self.internal_errors += 1
            metrics.errors.labels("sip_complete").inc()
        finally:
            self._after_done()

    def _after_done(self) -> None:
        if self._paused and self._inflight <= self.limits.queue_limit // 2:
            for stream in list(self._paused):
                stream.resume()
        if self._inflight == 0 and self._closing and self._drained is not None:
            self._drained.set()

    @property
    def overloaded(self) -> bool:
        return self._inflight >= self.limits.queue_limit


class _SipDatagram(asyncio.DatagramProtocol):
    """One UDP socket: each datagram is one message (RFC 3261 section 18.1.1)."""

    def __init__(self, server: SipVerificationServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Typed as BaseTransport by asyncio; a datagram endpoint always gets a datagram one.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        transport = self._transport
        if transport is None:
            return
        peer = (str(addr[0]), int(str(addr[1])))

        def send(response: bytes) -> None:
            # Answered to the datagram's source (symmetric response routing, RFC 3581).
            if not transport.is_closing():
                transport.sendto(response, addr)

        self._server.handle(data, Transport.UDP, peer, send)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier answers (peer gone): nothing to retry, count them.
        self._server.metrics.errors.labels("udp_icmp").inc()


class _SipStream(asyncio.Protocol):
    """One TCP connection: Content-Length framing, answers on the same connection (RFC 3261
    section 18.2.2), paused while the verification queue is full."""

    def __init__(self, server: SipVerificationServer) -> None:
        self._server = server
        self._framer = StreamFramer(max_message_bytes=server.core.max_message_bytes)
        self._transport: asyncio.Transport | None = None
        self._peer: Peer = ("", 0)
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        self._transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self._peer = (str(peer[0]), int(peer[1]))
        if server._closing or len(server._streams) >= server.limits.max_connections:
            server.metrics.dropped.labels("tcp", "connection_limit").inc()
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server._streams.add(self)
        server.metrics.connections.set(len(server._streams))

    def data_received(self, data: bytes) -> None:
        server = self._server
        for item in self._framer.feed(data):
            if isinstance(item, FramingError):
                server.metrics.dropped.labels("tcp", item.reason.value).inc()
                continue
            server.handle(item, Transport.TCP, self._peer, self._write)
        if server.overloaded and not self._paused and self._transport is not None:
            self._paused = True
            server._paused.add(self)
            self._transport.pause_reading()

    def _write(self, response: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self._server.limits.max_write_buffer:
            self._server.metrics.dropped.labels("tcp", "peer_not_reading").inc()
            transport.abort()
            return
        transport.write(response)

    def resume(self) -> None:
        self._server._paused.discard(self)
        if self._paused and self._transport is not None and not self._transport.is_closing():
            self._paused = False
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._server
        for item in self._framer.close():
            if isinstance(item, FramingError):
                server.metrics.dropped.labels("tcp", item.reason.value).inc()
        server._streams.discard(self)
        server._paused.discard(self)
        server.metrics.connections.set(len(server._streams))
