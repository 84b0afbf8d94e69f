"""The SIP verification server of ``stirscope listen --sip``: asyncio UDP and TCP listeners.

Theory of operation. The event loop owns the sans-IO `SipServerCore`: it parses, decides and
answers. An INVITE becomes a `VerificationJob`. When the server has a ``verify_cached`` (a
verifier over a `LoopSafeSource`) the job is verified right there on the loop: with every
certificate and CRL it needs already cached, verification is CPU work of ~0.1 ms, and handing
it to a thread would cost more than it does (a queue, a wake-up, the GIL passed twice, a
self-pipe write to come back). The INVITEs of one read (a UDP batch, a TCP chunk) are
decided first, in arrival order, then verified one after another, then answered
(``hold``/``release``), each step's code staying in the processor's caches: ~20% less CPU
per call than one message's whole path at a time. When a job would need a fetch, the
cache-only verifier raises `WouldBlock` before any I/O; then, as for every job of a server
without ``verify_cached``, ``verify`` runs in a thread pool, so a slow fetch (up to the 2 s
fetch timeout) never blocks other calls, and the answer is built back on the loop. A 100
Trying goes out at once when a fetch may follow (an x5u not seen before, or not cached any
more), else after ``trying_delay_s`` if a pooled answer is still pending (RFC 3261 section
17.2.1).
Verifications queued or running in the pool are bounded (``queue_limit``): past it an INVITE
is answered ``503 Service Unavailable`` with Retry-After and counted as shed (never dropped
silently), and TCP connections stop being read until the queue drains to half
(backpressure); so is every INVITE while the outputs cannot take more records, and then the
core answers it 503 as soon as it is read, without making it a job (from its bytes, without
the parse, when their head has the plain shape of SBCs and sipp: a 503 must cost a fraction
of a verification, or an overloaded server spends its time refusing calls and answers none).

UDP is read by the server itself (``loop.add_reader``), not by an asyncio transport: each
wake-up reads a batch of up to ``UDP_READ_BATCH`` datagrams (until the socket would block),
decides for the batch as a whole, then handles its datagrams in arrival order; answers go out
with a direct ``sendto`` (a socket whose send buffer is full queues a few, bounded, flushed
when it is writable; past the bound they are counted as dropped). The decision follows the
backlog, the work waiting ahead of the batch's last datagram: the batch's own bytes (with the
kernel's per-datagram overhead) plus, when the batch was full (more is waiting), what the
kernel still holds, read once per full batch (``SO_MEMINFO``, one system call). A batch that
ends short has emptied the socket, so its bytes are the whole backlog. The loop, not the
verifier, is then what is behind, and every INVITE waiting ages towards its sender's
retransmission (T1 = 500 ms, RFC 3261 section 17.1.1.2), so:

* up to ``max_udp_backlog`` (tens of ms of work) everything is verified;
* between it and ``drop_threshold`` a share of the new INVITEs is shed (503), rising in
  proportion from 0 at ``max_udp_backlog`` to all of them at ``drop_threshold``; the share is
  taken exactly, INVITE by INVITE (a running credit, no randomness), so a backlog that grows
  sheds more of the next batch and one that shrinks sheds less, and the backlog settles where
  the share shed makes the work fit the loop: a server offered more than it can verify
  keeps verifying about what it can and sheds the rest, instead of all or nothing in turns;
* past ``drop_threshold`` even 503s cannot keep up (an INVITE flood several times what the
  loop can answer): the oldest datagrams of the excess over ``max_udp_backlog`` are read and
  dropped unparsed, counted (``stirscope_sip_dropped_total{reason="overload"}``), so the
  server is back to fresh INVITEs as soon as the flood ebbs.

Where ``SO_MEMINFO`` is missing the kernel backlog is polled every ``BACKLOG_POLL_S`` from
/proc/net/udp instead (the host's whole UDP table: too dear per batch), and full batches keep
the last poll's decision. ``stop()`` is graceful: no new connections, new INVITEs shed,
every queued verification answered (up to ``drain_timeout_s``), the queued UDP answers sent,
then sockets closed.

The verification time is the arrival time, read from ``clock`` (wall clock by default,
injectable for tests). RFC 3261 sections 17.2 and 18; RFC 8224 section 6.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any, cast

from analyzer.sipanswer import VerificationRecord
from analyzer.sipserver import (
    Action,
    Completion,
    Decision,
    SipServerCore,
    VerificationJob,
)
from service.loop_source import Verify, WouldBlock
from service.metrics import Metrics
from shaken.result import VerificationResult
from shaken.verifier import VerificationRequest
from sip import FramingError, Request, Response, StreamFramer

# Worker threads for verifications that may fetch (a cold x5u waits up to the 2 s fetch
# timeout): a few keep other fetches flowing; warm-cache verification runs on the loop.
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
# getsockopt(SOL_SOCKET, SO_MEMINFO) on Linux (include/uapi/asm-generic/socket.h; not in
# Python's socket module): u32 sk_meminfo[SK_MEMINFO_VARS], of which SK_MEMINFO_RMEM_ALLOC
# (0, what /proc/net/udp shows as rx_queue) and SK_MEMINFO_DROPS (8) are read.
SO_MEMINFO = 55
_MEMINFO_FORMAT = "9I"
_MEMINFO_BYTES = struct.calcsize(_MEMINFO_FORMAT)
_MEMINFO_RMEM_ALLOC = 0
_MEMINFO_DROPS = 8
# Backlog (bytes of datagrams waiting to be handled, as the kernel counts them) up to which
# every INVITE is verified; past it a share is shed (503), growing in proportion to the
# excess (module docstring). The kernel counts buffer overhead too (about 2 kB per 1.3 kB
# INVITE): 256 KiB is ~130 INVITEs, tens of milliseconds of work for warm calls (~0.25 ms
# each on the loop) and up to ~0.15 s for pooled ones, well under T1 = 500 ms; and below the
# ~416 KiB a default kernel grants (net.core.rmem_max 212,992, doubled), so shedding starts
# before kernel drops. Where SO_MEMINFO is missing it is polled every 20 ms (a /proc read).
MAX_UDP_BACKLOG_BYTES = 256 * 1024
BACKLOG_POLL_S = 0.02
# Backlog at which the shed share reaches all new INVITEs (it rises from 0 at
# ``MAX_UDP_BACKLOG_BYTES``), and past which even 503s cannot keep up (an INVITE flood
# several times what the loop can answer): the oldest datagrams, whose senders have
# retransmitted them by the time they would be read, are read and dropped unparsed (counted
# as ``overload``) until the backlog is back at ``MAX_UDP_BACKLOG_BYTES``; what follows is
# verified, or shed in proportion, again. 1 MiB is ~450 INVITEs, most of them answered 503
# by then (a fraction of a verification each). A quarter of the receive buffer the kernel
# grants above it at least, so that the kernel does not drop first
# (``ServerLimits.drop_udp_backlog`` caps it at three quarters of that buffer).
DROP_UDP_BACKLOG_BYTES = 1024 * 1024
# What the kernel charges a datagram beyond its payload (buffer head and alignment: ~1 kB on
# Linux, measured as rx_queue), to count a datagram's share of the backlog. Erring high drops
# fewer datagrams than the excess, never more.
DATAGRAM_OVERHEAD_BYTES = 1024
# Datagrams read per wake-up of a UDP socket before they are handled: one epoll wait and
# one backlog reading (when the batch is full) shared by up to 64 messages. At ~0.25 ms of
# work per INVITE a full batch is ~16 ms, the granularity at which shedding follows the
# backlog and timers and finished pool jobs wait at most.
UDP_READ_BATCH = 64
# Receive buffer of one datagram: the largest UDP payload (65,507 bytes over IPv4, 65,527
# over IPv6), so none is truncated; answers to anything above the core's maximum message
# size are its to decide (513, RFC 3261 section 18.1.1).
MAX_DATAGRAM_BYTES = 65_535
# Answers waiting for room in a UDP socket's send buffer (the kernel refused them, EAGAIN or
# ENOBUFS): a few hundred 302s of ~1.5 kB, the burst of a few ms. Past it an answer is
# dropped, counted (``stirscope_sip_dropped_total{reason="send_queue_full"}``): its sender
# retransmits the request and gets it from the transaction cache.
MAX_UDP_SEND_QUEUE = 256
# Graceful shutdown waits this long for the kernel to take the UDP answers still queued.
UDP_FLUSH_TIMEOUT_S = 1.0
# Graceful shutdown waits this long for queued verifications (two fetch timeouts + margin).
DRAIN_TIMEOUT_S = 5.0
# UDP peers whose answer path (`Link`) is kept between datagrams: an SBC talks from a handful
# of addresses; past this many (a scan, spoofed sources) the table starts afresh.
MAX_UDP_LINKS = 1024

Peer = tuple[str, int]
# A socket address as ``recvfrom`` gives it (IPv6 ones carry flow info and scope too).
SockAddr = tuple[Any, ...]


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


async def _udp_socket(
    loop: asyncio.AbstractEventLoop, endpoint: Endpoint, receive_buffer: int
) -> socket.socket:
    """A UDP socket bound to ``endpoint`` (the first address it resolves to that binds), its
    receive buffer enlarged. Bound here rather than by ``create_datagram_endpoint``: uvloop
    leaks a transport when its own bind fails."""
    infos = await loop.getaddrinfo(
        endpoint.host, endpoint.port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
    )
    error: OSError = OSError(f"{endpoint.host}: no address")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setblocking(False)
        return sock
    raise error


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
        sock = await _udp_socket(loop, endpoint, receive_buffer)
        try:
            handle, _ = await loop.create_datagram_endpoint(datagram, sock=sock)
        except BaseException:
            sock.close()
            raise
        sockname = sock.getsockname()
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
    drop_udp_backlog: int = DROP_UDP_BACKLOG_BYTES

    def __post_init__(self) -> None:
        if self.workers < 1 or self.queue_limit < 1 or self.max_connections < 1:
            raise ValueError("workers, queue_limit and max_connections must be at least 1")


@dataclass(frozen=True, slots=True)
class Link:
    """Where a request came from and how its answers go back (RFC 3261 section 18.2.2)."""

    transport: Transport
    peer: Peer
    local: Peer
    send: Callable[[bytes], None]
    # ``transport.value``, read once: a metric label of every request (an enum's ``value``
    # is a descriptor call each time).
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", self.transport.value)


@dataclass(frozen=True, slots=True)
class Answered:
    """One verified INVITE as answered, for the outputs: the answer and what it answered
    (``completion``), the verifier's input (``request``: parties with canonical numbers) and
    the link it came over."""

    completion: Completion
    request: VerificationRequest
    link: Link

    @property
    def record(self) -> VerificationRecord:
        """The JSONL record of the answer (``stirscope listen -o``)."""
        return self.completion.record


AnswerSink = Callable[[Answered], None]


def wall_clock() -> datetime:
    """The arrival time of a live request (the only clock read of the SIP server)."""
    return datetime.now(UTC)


# An INVITE the loop will verify (``hold``): its 100 Trying if the core made one, its job, its
# link and when its handling started.
_Held = tuple[bytes | None, VerificationJob, Link, float]
# One verified on the loop, to answer: its job, link, start, request, result and the seconds
# its verification took.
_Verified = tuple[VerificationJob, Link, float, VerificationRequest, VerificationResult, float]


@dataclass(slots=True)
class _Pending:
    job: VerificationJob
    link: Link
    started: float
    timer: asyncio.TimerHandle | None = None


class SipVerificationServer:
    """UDP and TCP listeners around one `SipServerCore` and one verifier.

    ``verify`` may block (it runs in the pool); ``verify_cached``, when given, never does: it
    raises `WouldBlock` where a fetch would be needed, and runs on the loop. ``on_answer``
    sees every verified INVITE before it is answered (nothing answered goes unrecorded);
    ``outputs_full`` says the outputs cannot take more for now (INVITEs are then shed).
    RFC 3261 sections 17.2 and 18; RFC 8224 section 6.2.
    """

    def __init__(
        self,
        core: SipServerCore,
        verify: Verify,
        *,
        verify_cached: Verify | None = None,
        metrics: Metrics | None = None,
        limits: ServerLimits | None = None,
        clock: Callable[[], datetime] = wall_clock,
        on_answer: AnswerSink | None = None,
        outputs_full: Callable[[], bool] | None = None,
    ) -> None:
        self.core = core
        self.metrics = metrics if metrics is not None else Metrics()
        self.limits = limits or ServerLimits()
        self._verify = verify
        self._verify_cached = verify_cached
        self._clock = clock
        self._on_answer = on_answer
        self._outputs_full = outputs_full
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="sip-verify")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: list[_SipDatagram] = []
        self._udp_inodes: set[str] = set()
        self._udp_sockets: list[socket.socket] = []  # for SO_MEMINFO (``kernel_queues``)
        self._meminfo = True  # SO_MEMINFO answers: the backlog is read per full batch
        self._kernel_drops_seen = 0
        self._udp_buffer = 0  # the smallest receive buffer the kernel granted a UDP socket
        self._drop_budget = 0  # backlog bytes still to drop unread (``_follow_backlog``)
        # The share of new INVITEs shed for the backlog (0 to 1) and the credit it accrues,
        # one share per INVITE read: an INVITE is shed while the credit is 1 or more.
        self._shed_share = 0.0
        self._shed_credit = 0.0
        self._tcp_servers: list[asyncio.Server] = []
        self._streams: set[_SipStream] = set()
        self._paused: set[_SipStream] = set()
        self._inflight = 0
        self._closing = False
        self._watcher: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None
        self.endpoints: list[Endpoint] = []
        self.shed = 0
        self.overload_drops = 0
        self.send_drops = 0  # UDP answers the kernel would not take (``_SipDatagram``)
        self.answered = 0
        self.answered_on_loop = 0
        self.internal_errors = 0
        self._held: list[_Held] | None = None  # ``hold``

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
            if not self._meminfo and Path(PROC_NET_UDP[0]).exists():
                self._watcher = loop.create_task(self._watch_backlog())
        return bound

    async def _bind(self, loop: asyncio.AbstractEventLoop, endpoint: Endpoint) -> Endpoint:
        if endpoint.transport is Transport.UDP:
            sock = await _udp_socket(loop, endpoint, UDP_RECEIVE_BUFFER)
            try:
                self._watch_udp(sock)
                reader = _SipDatagram(self, loop, sock)
                loop.add_reader(sock, reader.read_ready)
                self._udp.append(reader)
            except BaseException:
                sock.close()
                raise
            return Endpoint(endpoint.transport, endpoint.host, int(sock.getsockname()[1]))
        server = await loop.create_server(
            lambda: _SipStream(self), endpoint.host, endpoint.port, reuse_address=True
        )
        self._tcp_servers.append(server)
        return Endpoint(endpoint.transport, endpoint.host, int(server.sockets[0].getsockname()[1]))

    def _watch_udp(self, sock: socket.socket) -> None:
        """Note a UDP socket for the kernel queue readings (``kernel_queues``)."""
        self._udp_sockets.append(sock)
        with contextlib.suppress(OSError):
            self._udp_inodes.add(str(os.fstat(sock.fileno()).st_ino))
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self._udp_buffer = min(self._udp_buffer or granted, granted)
        try:
            sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_BYTES)
        except OSError:  # not Linux 4.6+: the backlog is polled from /proc instead
            self._meminfo = False

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
        await self._flush_udp()
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

    async def _flush_udp(self) -> None:
        """Stop reading UDP and give the answers still queued for the kernel up to
        ``UDP_FLUSH_TIMEOUT_S`` to go out (what is left then is counted as dropped)."""
        for udp in self._udp:
            udp.stop_reading()
        deadline = time.monotonic() + UDP_FLUSH_TIMEOUT_S
        while any(udp.unsent for udp in self._udp) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def kernel_queues(self) -> tuple[int, int]:
        """(bytes waiting, datagrams dropped) in the kernel for our UDP sockets: from
        ``SO_MEMINFO`` (Linux 4.6+: receive memory allocated and drops, one system call a
        socket), else from the ``rx_queue`` and ``drops`` columns of /proc/net/udp{,6}, which
        the kernel builds by walking every UDP socket of the host ((0, 0) elsewhere). Polled
        once per full batch of datagrams while serving (every ``BACKLOG_POLL_S`` from /proc)."""
        waiting = dropped = 0
        try:
            for sock in self._udp_sockets:
                if sock.fileno() < 0:  # closed (stop()): nothing waits; the drops seen stand
                    return 0, self._kernel_drops_seen
                info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_BYTES)
                fields = struct.unpack_from(_MEMINFO_FORMAT, info)
                waiting += fields[_MEMINFO_RMEM_ALLOC]
                dropped += fields[_MEMINFO_DROPS]
        except (OSError, struct.error):
            return self._proc_kernel_queues()
        self._kernel_drops_seen = dropped
        return waiting, dropped

    def _proc_kernel_queues(self) -> tuple[int, int]:
        inodes = self._udp_inodes
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
        """``_poll_backlog`` every ``BACKLOG_POLL_S``."""
        while True:
            await asyncio.sleep(BACKLOG_POLL_S)
            self._poll_backlog()

    @property
    def drop_threshold(self) -> int:
        """Unread bytes past which the oldest datagrams are dropped unread: the configured
        ``drop_udp_backlog``, capped at three quarters of the receive buffer the kernel granted
        (past that the kernel drops first), never under ``max_udp_backlog``."""
        limits = self.limits
        threshold = limits.drop_udp_backlog
        if self._udp_buffer:
            threshold = min(threshold, self._udp_buffer * 3 // 4)
        return max(threshold, limits.max_udp_backlog)

    def _poll_backlog(self) -> None:
        """``_follow_backlog`` with what the kernel holds: polled where a full batch cannot
        read it cheaply (no ``SO_MEMINFO``)."""
        self._follow_backlog(self.kernel_queues()[0])

    def _plan_batch(self, charge: int, full: bool) -> None:
        """Decide for a batch of datagrams just read, ``charge`` their bytes as the kernel
        counted them: a batch that ended short emptied its socket, so it is the whole
        backlog; behind a full one more waits, read from the kernel (one system call)."""
        if full:
            if not self._meminfo:
                return  # too dear to read per batch: the last /proc poll's decision stands
            charge += self.kernel_queues()[0]
        self._follow_backlog(charge)

    def _follow_backlog(self, backlog: int) -> None:
        """Set what the datagrams read next get from ``backlog``, the bytes of work waiting
        (module docstring): up to ``max_udp_backlog`` every INVITE is verified; past it a
        share of the new INVITEs is shed, in proportion to the excess, all of them at
        ``drop_threshold``; past that the excess over ``max_udp_backlog``, the oldest
        datagrams, is read and dropped unparsed (counted), so the server answers fresh
        INVITEs again as soon as the flood ebbs instead of working through requests already
        retransmitted (RFC 3261 section 17.1.1.2)."""
        target = self.limits.max_udp_backlog
        if backlog <= target:
            self._shed_share = self._shed_credit = 0.0
            self._drop_budget = 0
            return
        threshold = self.drop_threshold
        if backlog > threshold:
            # What is left once the excess is dropped is back at the target: verified.
            self._drop_budget = backlog - target
            self._shed_share = 0.0
        else:
            self._drop_budget = 0
            self._shed_share = (backlog - target) / (threshold - target)  # threshold > target

    def _drop_unread(self, size: int) -> None:
        """One datagram of the excess backlog dropped without a parse (``_follow_backlog``)."""
        self._drop_budget -= size + DATAGRAM_OVERHEAD_BYTES
        self.overload_drops += 1
        self.metrics.dropped.inc((Transport.UDP.value, "overload"))

    @property
    def inflight(self) -> int:
        """Verifications queued or running in the pool."""
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
            f"overload-dropped {self.overload_drops}  "
            f"send-dropped {self.send_drops}  "
            f"kernel-dropped {self.kernel_drops()}  "
            f"inflight {self._inflight}"
        )

    # -- requests --------------------------------------------------------------------------

    def handle(self, data: bytes | Request | Response, link: Link) -> None:
        """One datagram or framed message: decide, answer or queue. Never raises."""
        started = time.perf_counter()
        try:
            at = self._clock()
            shed = self._shedding()
            if isinstance(data, bytes):
                decision = self.core.receive(data, at=at, shed=shed)
            else:
                decision = self.core.receive_message(data, at=at, shed=shed)
            self._act(decision, link, started)
        except Exception:  # a bug must cost one message, never the listener
            self.internal_errors += 1
            self.metrics.errors.labels("sip_handle").inc()

    def _act(self, decision: Decision, link: Link, started: float) -> None:
        if decision.method is not None:
            self.metrics.requests.inc((link.label, decision.method))
        action = decision.action
        if action is Action.ABSORB:
            return
        if action is Action.VERIFY and decision.job is not None:
            self._dispatch(decision, decision.job, link, started)
        elif action is Action.REPLY and decision.response is not None:
            self._send(link, decision.response, decision.status)
        elif action is Action.RETRANSMIT:
            self.metrics.retransmissions.inc((link.label,))
            if decision.response is not None:
                link.send(decision.response)
        elif action is Action.SHED and decision.response is not None:
            self._shed_sent(link, decision.response)
        elif action is Action.DROP and decision.drop is not None:
            self.metrics.dropped.inc((link.label, decision.drop.value))

    def _send(self, link: Link, data: bytes, status: int | None) -> None:
        if status is not None:
            self.metrics.responses.inc((str(status),))
        link.send(data)

    def _shedding(self) -> bool:
        """No room for a verification whatever it needs: closing, the loop behind (this
        INVITE's turn in the share of a UDP backlog shed, ``_follow_backlog``) or the outputs
        full. The core then answers a new INVITE 503 straight away."""
        outputs_full = self._outputs_full
        return (
            self._closing
            or self._shed_credit >= 1.0
            or (outputs_full is not None and outputs_full())
        )

    def _shed(self, job: VerificationJob, link: Link) -> None:
        self._shed_sent(link, self.core.shed(job))

    def _shed_sent(self, link: Link, response: bytes) -> None:
        if self._shed_credit >= 1.0:  # this INVITE took its turn in the backlog's share
            self._shed_credit -= 1.0
        self.shed += 1
        self.metrics.shed.inc((link.label,))
        self._send(link, response, 503)

    def _dispatch(
        self, decision: Decision, job: VerificationJob, link: Link, started: float
    ) -> None:
        if self._shedding():
            self._shed(job, link)
            return
        if self._verify_cached is None:
            self._to_pool(decision.response, job, link, started, None)
            return
        item = (decision.response, job, link, started)
        held = self._held
        if held is not None:
            held.append(item)
        else:
            self._verify_on_loop((item,))

    def hold(self) -> None:
        """Until ``release``, the verifications the loop may do wait, decided but not done
        (the messages of one read: see ``release``)."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        """Verify and answer what waited since ``hold``. The messages of one read are each
        decided in arrival order, as ``handle`` does; then their verifications run one after
        another, then their answers are built and sent: each step's code stays in the
        processor's caches, where one message's whole path through parser, core, verifier and
        answer evicts the next step's (paired A/B on a loaded server: 284 -> 226 us of CPU per
        call). A message that relates to a held one (a retransmission of its INVITE, a
        CANCEL) meets its transaction still proceeding, as when the verification runs in the
        pool; whether to shed is judged as each is decided, so the outputs may take up to a
        read's records past ``outputs_full``, as they take the pool's. Never raises."""
        held, self._held = self._held, None
        if held:
            self._verify_on_loop(held)

    def _to_pool(
        self,
        trying: bytes | None,
        job: VerificationJob,
        link: Link,
        started: float,
        request: VerificationRequest | None,
    ) -> None:
        if self._inflight >= self.limits.queue_limit:
            self._shed(job, link)
            return
        if trying is None and self._verify_cached is not None:
            trying = self.core.trying(job)  # not cached: a fetch follows, say so at once
        if trying is not None:
            self._send(link, trying, 100)
        pending = _Pending(job, link, started)
        loop = self._loop
        assert loop is not None
        if trying is None:
            pending.timer = loop.call_later(self.limits.trying_delay_s, self._trying, pending)
        self._inflight += 1
        self.metrics.inflight.set(self._inflight)
        future = self._pool.submit(self._run_verify, job, request)
        future.add_done_callback(partial(self._from_worker, loop, pending))

    def _verify_on_loop(self, items: Iterable[_Held]) -> None:
        """Verify with the cache-only verifier, all of ``items`` first, then answer them; an
        item that needs a fetch (`WouldBlock`) goes to the pool with its extracted request.
        Never raises: an error costs its own message only."""
        verify = self._verify_cached
        assert verify is not None
        done: list[_Verified] = []
        for trying, job, link, started in items:
            began = time.perf_counter()
            try:
                request = job.verification_request()
                try:
                    result = verify(request, job.at)
                except WouldBlock:
                    self._pooled(trying, job, link, started, request)
                    continue
            except Exception:
                self._failed(job, link)
                continue
            done.append((job, link, started, request, result, time.perf_counter() - began))
        self.answered_on_loop += len(done)
        for answer in done:
            self._answer(*answer)

    def _pooled(
        self,
        trying: bytes | None,
        job: VerificationJob,
        link: Link,
        started: float,
        request: VerificationRequest,
    ) -> None:
        try:
            self._to_pool(trying, job, link, started, request)
        except Exception:  # as ``handle`` counts it
            self.internal_errors += 1
            self.metrics.errors.labels("sip_handle").inc()

    def _run_verify(
        self, job: VerificationJob, request: VerificationRequest | None
    ) -> tuple[VerificationRequest, VerificationResult, float]:
        began = time.perf_counter()
        if request is None:
            request = job.verification_request()
        result = self._verify(request, job.at)
        return request, result, time.perf_counter() - began

    def _from_worker(
        self,
        loop: asyncio.AbstractEventLoop,
        pending: _Pending,
        future: Future[tuple[VerificationRequest, VerificationResult, float]],
    ) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed: nothing left to answer
            loop.call_soon_threadsafe(self._done, pending, future)

    def _trying(self, pending: _Pending) -> None:
        pending.timer = None
        data = self.core.trying(pending.job)
        if data is not None:
            self._send(pending.link, data, 100)

    def _done(
        self,
        pending: _Pending,
        future: Future[tuple[VerificationRequest, VerificationResult, float]],
    ) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        self._inflight -= 1
        self.metrics.inflight.set(self._inflight)
        try:
            request, result, took = future.result()
        except Exception:
            self._failed(pending.job, pending.link)
        else:
            self._answer(pending.job, pending.link, pending.started, request, result, took)
        finally:
            self._after_done()

    def _failed(self, job: VerificationJob, link: Link) -> None:
        """The verifier itself broke (a bug, never a verdict): 500, counted."""
        self.internal_errors += 1
        self.metrics.errors.labels("verifier").inc()
        with contextlib.suppress(Exception):
            self._send(link, self.core.fail(job), 500)

    def _answer(
        self,
        job: VerificationJob,
        link: Link,
        started: float,
        request: VerificationRequest,
        result: VerificationResult,
        took: float,
    ) -> None:
        metrics = self.metrics
        try:
            completion = self.core.complete(job, result)
            if self._on_answer is not None:  # recorded before answered: nothing unlogged
                self._on_answer(Answered(completion, request, link))
            self._send(link, completion.response, completion.status)
            self.answered += 1
            metrics.verify_latency.observe(took)
            metrics.latency.observe(time.perf_counter() - started)
            reason = result.reason
            metrics.verifications.inc((result.verstat.value, reason.value if reason else ""))
        except Exception:
            self.internal_errors += 1
            metrics.errors.labels("sip_complete").inc()

    def _after_done(self) -> None:
        if self._paused and self._inflight <= self.limits.queue_limit // 2:
            for stream in list(self._paused):
                stream.resume()
        if self._inflight == 0 and self._closing and self._drained is not None:
            self._drained.set()

    @property
    def overloaded(self) -> bool:
        return self._inflight >= self.limits.queue_limit


def _peer(address: object) -> Peer:
    """(host, port) of a socket address (IPv6 ones carry flow info and scope too)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return ("", 0)


class _SipDatagram:
    """One UDP socket, read by the server itself (``loop.add_reader``): each wake-up reads a
    batch of up to ``UDP_READ_BATCH`` datagrams until the socket would block, has the server
    decide for the batch from the backlog it shows (``_plan_batch``), then handles them in
    arrival order. Each datagram is one message (RFC 3261 section 18.1.1), answered to its
    source (symmetric response routing, RFC 3581) with a direct ``sendto``; answers the
    kernel refuses (send buffer full) wait in a bounded queue flushed when the socket is
    writable. ICMP errors reported for earlier answers (peer gone) are counted, nothing to
    retry."""

    def __init__(
        self, server: SipVerificationServer, loop: asyncio.AbstractEventLoop, sock: socket.socket
    ) -> None:
        self._server = server
        self._loop = loop
        self._sock = sock
        self._local = _peer(sock.getsockname())
        self._links: dict[SockAddr, Link] = {}
        self._unsent: deque[tuple[bytes, SockAddr]] = deque()
        self._reading = True
        self._closed = False

    def read_ready(self) -> None:
        """The socket is readable: read a batch, decide for it, handle it."""
        server = self._server
        recvfrom = self._sock.recvfrom
        batch: list[tuple[bytes, SockAddr]] = []
        charge = 0
        full = True
        for _ in range(UDP_READ_BATCH):
            try:
                data, addr = recvfrom(MAX_DATAGRAM_BYTES)
            except BlockingIOError:
                full = False
                break
            except OSError:  # an ICMP error for an earlier answer, reported here
                self._icmp_error()
                continue
            batch.append((data, addr))
            charge += len(data)
        server._plan_batch(charge + len(batch) * DATAGRAM_OVERHEAD_BYTES, full)
        share = server._shed_share
        links = self._links
        handle = server.handle
        server.hold()
        try:
            for data, addr in batch:
                if server._drop_budget > 0:  # a flood even 503s cannot keep up with
                    server._drop_unread(len(data))
                    continue
                # The backlog's share of new INVITEs: one share of credit per INVITE, and one
                # is shed each time it adds up to a whole (``_shedding``, ``_shed_sent``).
                if share and server._shed_credit < 1.0 and data.startswith(b"INVITE"):
                    server._shed_credit += share
                link = links.get(addr)
                if link is None:
                    link = self._link(addr)
                handle(data, link)
        finally:
            server.release()

    def _link(self, addr: SockAddr) -> Link:
        links = self._links
        if len(links) >= MAX_UDP_LINKS:
            links.clear()
        link = links[addr] = Link(Transport.UDP, _peer(addr), self._local, partial(self.send, addr))
        return link

    def send(self, addr: SockAddr, data: bytes) -> None:
        """Send one answer to ``addr`` now, or queue it behind those the kernel refused (order
        kept); nothing once closed."""
        if self._closed:
            return
        if self._unsent:
            self._queue(data, addr)
            return
        try:
            self._sock.sendto(data, addr)
        except BlockingIOError:
            self._queue(data, addr)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # no room past the socket (a device queue)
                self._queue(data, addr)
            else:
                self._icmp_error()

    def _queue(self, data: bytes, addr: SockAddr) -> None:
        unsent = self._unsent
        if len(unsent) >= MAX_UDP_SEND_QUEUE:
            self._send_dropped("send_queue_full")
            return
        if not unsent:
            self._loop.add_writer(self._sock, self._flush)
        unsent.append((data, addr))

    def _flush(self) -> None:
        """Send what waits, oldest first, until the kernel refuses again."""
        unsent = self._unsent
        sendto = self._sock.sendto
        while unsent:
            data, addr = unsent[0]
            try:
                sendto(data, addr)
            except BlockingIOError:
                return  # still full: flushed again when writable
            except OSError as exc:
                # ENOBUFS twice: writability says nothing of a device queue, so waiting for
                # it would spin; this answer is lost (counted), its request retransmitted.
                if exc.errno == errno.ENOBUFS:
                    self._send_dropped("send_no_buffer")
                else:
                    self._icmp_error()
            unsent.popleft()
        self._loop.remove_writer(self._sock)

    @property
    def unsent(self) -> int:
        """Answers queued for the kernel."""
        return len(self._unsent)

    def stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._sock)

    def close(self) -> None:
        """Stop reading, send what is queued if the kernel takes it (what it refuses is
        counted as dropped), close the socket."""
        if self._closed:
            return
        self.stop_reading()
        if self._unsent:
            self._flush()
            if self._unsent:
                self._loop.remove_writer(self._sock)
                for _ in range(len(self._unsent)):
                    self._send_dropped("send_queue_full")
                self._unsent.clear()
        self._closed = True
        self._sock.close()

    def _send_dropped(self, reason: str) -> None:
        self._server.send_drops += 1
        self._server.metrics.dropped.inc((Transport.UDP.value, reason))

    def _icmp_error(self) -> None:
        self._server.metrics.errors.labels("udp_icmp").inc()


class _SipStream(asyncio.Protocol):
    """One TCP connection: Content-Length framing, answers on the same connection (RFC 3261
    section 18.2.2), paused while the verification queue is full."""

    def __init__(self, server: SipVerificationServer) -> None:
        self._server = server
        self._framer = StreamFramer(max_message_bytes=server.core.max_message_bytes)
        self._transport: asyncio.Transport | None = None
        self._link = Link(Transport.TCP, ("", 0), ("", 0), self._write)
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        self._transport = transport = cast(asyncio.Transport, transport)
        peer = _peer(transport.get_extra_info("peername"))
        local = _peer(transport.get_extra_info("sockname"))
        self._link = Link(Transport.TCP, peer, local, self._write)
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
        server.hold()
        try:
            for item in self._framer.feed(data):
                if isinstance(item, FramingError):
                    server.metrics.dropped.labels("tcp", item.reason.value).inc()
                    continue
                server.handle(item, self._link)
        finally:
            server.release()
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
