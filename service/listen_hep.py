"""The HEP collector of ``stirscope listen --hep``: asyncio UDP and TCP listeners.

Theory of operation. Capture agents (heplify, Kamailio/OpenSIPS siptrace, FreeSWITCH, rtpengine)
mirror signalling as HEP: one packet per UDP datagram, or HEP3 packets back to back on a TCP
connection. The event loop only receives: each datagram (or TCP read) becomes one input of the
listener's ``LiveFeed``, whose pipeline thread decodes HEPv1/v2/v3 (gzip/zlib payloads
included), counts heartbeats, unknown chunks and non-SIP payloads, turns undecodable packets
into anomaly records, tracks calls with the agent's capture timestamps and hands finished calls
to the verification threads (each INVITE judged as of its HEP timestamp).

Overload: a datagram that does not fit the bounded queue is shed and counted. TCP bytes are
never shed (that would corrupt the stream): the connection stops being read while the queue is
over its limit and resumes when it drains to half (the agent's socket buffer fills, and the
agent sees backpressure). Connections are limited (``max_connections``).

``stop()`` closes the sockets, then drains the feed: every queued packet is processed and every
call, finished or still open, is verified and written.

STANDARDS.md section 13 (HEP3 specification rev. 37: UDP and TCP transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import cast

from service.listen_sip import Endpoint, bind_endpoint
from service.live_feed import LiveFeed

# HEP-over-TCP connections at once: agents keep one connection each, so 256 is far beyond a
# real deployment while bounding memory (each holds up to one 64 KiB HEP packet in its framer,
# plus what the queue holds).
MAX_HEP_CONNECTIONS = 256
# Kernel receive buffer asked for on UDP sockets: agents send in bursts (a busy SBC mirrors
# every message of every call); 4 MiB holds ~3,000 typical 1.3 kB HEP packets while the loop
# is busy. The kernel caps it at net.core.rmem_max.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def _origin(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


class HepCollector:
    """``--hep``: HEP over UDP and TCP into one ``LiveFeed``. STANDARDS.md section 13."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        feed: LiveFeed,
        *,
        max_connections: int = MAX_HEP_CONNECTIONS,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.feed = feed
        self.max_connections = max_connections
        self.endpoints: list[Endpoint] = []
        self.connections_refused = 0
        self._requested = list(endpoints)
        self._wall_ns = wall_ns
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.Server] = []
        self._streams: set[_HepStream] = set()
        self._paused: set[_HepStream] = set()
        self._closing = False

    async def start(self) -> list[str]:
        """Bind every endpoint and start the feed; returns ``hep ENDPOINT`` lines."""
        loop = asyncio.get_running_loop()
        self._loop = loop

        def on_room() -> None:  # on the pipeline thread: resume paused streams on the loop
            loop.call_soon_threadsafe(self._resume)

        self.feed.on_room = on_room
        try:
            for endpoint in self._requested:
                self.endpoints.append(await self._bind(loop, endpoint))
        except BaseException:
            self._close_sockets()
            raise
        self.feed.start()
        return [f"hep {endpoint}" for endpoint in self.endpoints]

    async def _bind(self, loop: asyncio.AbstractEventLoop, endpoint: Endpoint) -> Endpoint:
        bound, handle = await bind_endpoint(
            loop,
            endpoint,
            datagram=lambda: _HepDatagram(self),
            stream=lambda: _HepStream(self),
            receive_buffer=UDP_RECEIVE_BUFFER,
        )
        if isinstance(handle, asyncio.Server):
            self._servers.append(handle)
        else:
            self._udp.append(handle)
        return bound

    def _close_sockets(self) -> None:
        for udp in self._udp:
            udp.close()
        for server in self._servers:
            server.close()
        for stream in list(self._streams):
            stream.close()

    async def stop(self) -> None:
        """Stop receiving, then process everything queued and write every call."""
        self._closing = True
        self._close_sockets()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        await asyncio.sleep(0)  # let connection_lost run for the streams just closed
        await asyncio.to_thread(self.feed.stop)

    def _resume(self) -> None:
        for stream in list(self._paused):
            stream.resume()

    def summary(self) -> str:
        return f"hep: {self.feed.summary()}"

    # -- called by the protocols (event loop) ------------------------------------------------

    def datagram(self, data: bytes, addr: object) -> None:
        pipeline = self.feed.pipeline
        work = partial(pipeline.feed_hep, data, self._wall_ns(), _origin(addr))
        self.feed.offer(work, len(data))

    def stream_data(self, stream: _HepStream, data: bytes) -> bool:
        """Queue TCP bytes; ``True`` when the stream should pause (queue over its limit)."""
        pipeline = self.feed.pipeline
        work = partial(pipeline.feed_hep_stream, stream, data, self._wall_ns(), stream.origin)
        return self.feed.force(work, len(data))

    def stream_closed(self, stream: _HepStream) -> None:
        self._streams.discard(stream)
        self._paused.discard(stream)
        pipeline = self.feed.pipeline
        self.feed.force(
            partial(pipeline.close_hep_stream, stream, self._wall_ns(), stream.origin), 0
        )


class _HepDatagram(asyncio.DatagramProtocol):
    """One UDP socket: each datagram is one HEP packet (STANDARDS.md section 13)."""

    def __init__(self, collector: HepCollector) -> None:
        self._collector = collector

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._collector.datagram(data, addr)


class _HepStream(asyncio.Protocol):
    """One TCP connection: HEP3 packets framed by their length, read with backpressure."""

    def __init__(self, collector: HepCollector) -> None:
        self._collector = collector
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self.origin = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        collector = self._collector
        self._transport = cast(asyncio.Transport, transport)
        self.origin = _origin(transport.get_extra_info("peername"))
        if collector._closing or len(collector._streams) >= collector.max_connections:
            collector.connections_refused += 1
            self._transport.abort()
            self._transport = None
            return
        collector._streams.add(self)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        if self._collector.stream_data(self, data) and not self._paused:
            self._paused = True
            self._collector._paused.add(self)
            self._transport.pause_reading()

    def resume(self) -> None:
        self._collector._paused.discard(self)
        transport = self._transport
        if self._paused and transport is not None and not transport.is_closing():
            self._paused = False
            transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport = None
            self._collector.stream_closed(self)
