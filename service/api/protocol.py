"""uvicorn's httptools protocol, with one send per response and the hot route answered inline.

Theory of operation. Two costs of uvicorn's HTTP/1.1 protocol outweigh a warm-cache
verification, and this subclass of ``HttpToolsProtocol`` (given to uvicorn as its ``http``
class; the parser is still httptools) removes both without changing a byte on the wire:

* Coalesced writes. uvicorn writes a response in two ``transport.write`` calls, the head when
  the app sends ``http.response.start`` and the body with ``http.response.body``; the event
  loop sends each at once, so a small JSON answer costs two ``send`` system calls and two TCP
  segments that the client takes in two reads. ``CoalescingTransport`` gathers what is
  written during one turn of the event loop and passes it on in one ``write`` at the end of
  that turn (``loop.call_soon``), or, for what is written while the protocol reads a chunk
  of the request stream (the inline answers), as soon as that chunk is read: one write for
  every answer the chunk held, without a callback scheduled per answer. Nothing waits longer
  than the current turn, order is kept, and ``close``, ``write_eof`` and ``set_protocol`` pass
  on what is gathered first; ``abort`` discards it as the transport's own ``abort`` discards
  its buffer. The protocol stays the real transport's protocol, so flow control
  (``pause_writing``) still reaches uvicorn.
* The hot route inline. ``POST /stir/v1/verification`` is held back when uvicorn would start
  its ASGI task, until its body is complete, and ``service.api.hotpath.HotVerification``
  answers it synchronously. The answer is written as the request's own
  ``RequestResponseCycle.send`` would write a 200 with its headers (uvicorn's default
  headers, ``connection: close`` when the connection is not kept alive), the cycle left as
  ``send`` leaves it, and uvicorn's completion callback run, without the two ``send``
  coroutines and their per-header checks: the default headers are checked and encoded once
  per list (uvicorn builds a new one when the Date changes), the route's own are fixed but
  the request id, which is checked per request. Whatever ``send`` would treat otherwise
  (uvicorn's access log on, a default header it interprets) goes through ``send``. When it
  cannot answer (an error to report, a certificate to fetch, a body over the limit, a client
  that expects ``100 Continue``, a write side paused by flow control, a server shutting
  down), the request gets its ordinary ASGI task with the body already read, so every answer
  is the ASGI path's answer. Pipelined requests keep uvicorn's order: a held request is
  answered before the parser reads the next one, and a request queued behind an unfinished
  one is answered when uvicorn starts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from service.api.hotpath import HotVerification, hot_route

# Response headers that ``RequestResponseCycle.send`` interprets rather than just writes.
_INTERPRETED_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class CoalescingTransport:
    """A write transport that gathers the writes of one event-loop turn into one write of
    ``transport`` (module docstring). Every other attribute is the wrapped transport's."""

    __slots__ = ("_loop", "_pending", "_transport", "holding")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        # Set while the protocol reads a chunk, which flushes when it is done (no callback).
        self.holding = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending and not self.holding:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Pass on what was written since the last flush (nothing when it was already)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return  # a closing transport drops writes; so do we
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(p) for p in self._pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _run_now(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that does not suspend (``RequestResponseCycle.send`` with the write
    side not paused) to its end, here."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("the response send suspended")  # pragma: no cover - checked before


class StirHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with coalesced writes and the hot route answered inline."""

    _hot: HotVerification | None = None
    _coalescing: CoalescingTransport | None = None
    # The held request (hot route, body not complete yet) and the app uvicorn gave it.
    _held: tuple[RequestResponseCycle, Any] | None = None
    # The last default header list seen and its encoded head (None: ``send`` writes it).
    _head: tuple[object, bytes | None] = (None, None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = CoalescingTransport(transport, self.loop)
        self._coalescing = wrapped
        super().connection_made(wrapped)  # type: ignore[arg-type]
        self._hot = hot_route(self.app)

    def data_received(self, data: bytes) -> None:
        wrapped = self._coalescing
        if wrapped is None:  # pragma: no cover - uvicorn calls connection_made first
            super().data_received(data)
            return
        wrapped.holding = True
        try:
            super().data_received(data)
        finally:
            wrapped.holding = False
            wrapped.flush()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        hot = self._hot
        if (
            hot is None
            or app is not self.app  # uvicorn's 503 app (limit_concurrency)
            or cycle.waiting_for_100_continue  # the ASGI receive() sends the 100 Continue
            or not hot.takes(cycle.scope)  # type: ignore[arg-type]
        ):
            super()._start_asgi_task(cycle, app)
        elif cycle.more_body:
            self._held = (cycle, app)  # answered when the body is complete
        else:
            # A pipelined request, read in full while queued: uvicorn starts it from the
            # previous answer's completion, so answering here would nest each queued answer in
            # the one before (a deep stack for a long pipeline). Next turn of the loop instead.
            self.loop.call_soon(self._answer, cycle, app)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        held = self._held
        if held is not None and held[0] is self.cycle and len(self.cycle.body) > self._limit():
            self._release()  # too large to answer here: the ASGI path answers 413

    def on_message_complete(self) -> None:
        super().on_message_complete()
        held = self._held
        if held is not None and held[0] is self.cycle:
            self._held = None
            self._answer(*held)

    def shutdown(self) -> None:
        self._release()  # uvicorn's graceful shutdown waits for tasks, not for held requests
        super().shutdown()

    def _limit(self) -> int:
        hot = self._hot
        assert hot is not None
        return hot.max_body_bytes

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            super()._start_asgi_task(*held)

    def _answer(self, cycle: RequestResponseCycle, app: Any) -> None:
        hot = self._hot
        assert hot is not None
        answer = None
        if not cycle.disconnected and not cycle.flow.write_paused:
            answer = hot.answer(cycle.scope, bytes(cycle.body))  # type: ignore[arg-type]
        if answer is None:
            super()._start_asgi_task(cycle, app)
            return
        headers, content = answer
        if not self._write_ok(cycle, headers, content):
            _run_now(cycle.send({"type": "http.response.start", "status": 200, "headers": headers}))
            _run_now(cycle.send({"type": "http.response.body", "body": content}))

    def _default_head(self, cycle: RequestResponseCycle) -> bytes | None:
        """The status line of a 200 and ``cycle``'s default headers as ``send`` writes them,
        or None when ``send`` must write them (it would log, interpret or reject one)."""
        defaults = cycle.default_headers
        seen, head = self._head
        if seen is defaults:
            return head
        head = None
        parts = [STATUS_LINE[200]]
        for name, value in defaults:
            name = name.lower()
            if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                break
            if name in _INTERPRETED_HEADERS:
                break
            parts.extend((name, b": ", value, b"\r\n"))
        else:
            head = b"".join(parts)
        self._head = (defaults, head)
        return head

    def _write_ok(
        self, cycle: RequestResponseCycle, headers: list[tuple[bytes, bytes]], content: bytes
    ) -> bool:
        """Write the 200 of ``cycle`` (``headers``: the hot route's, ``content-length`` first)
        as ``send`` would, and complete the cycle as ``send`` does; False, nothing done, when
        ``send`` must (module docstring)."""
        if cycle.access_log or cycle.response_started:
            return False
        head = self._default_head(cycle)
        if head is None:
            return False
        parts = [head]
        for name, value in headers:
            if HEADER_VALUE_RE.search(value):
                return False
            parts.extend((name, b": ", value, b"\r\n"))
        keep_alive = cycle.keep_alive
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.extend((b"\r\n", content))
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        cycle.chunked_encoding = False
        cycle.expected_content_length = 0
        self.transport.write(b"".join(parts))
        cycle.response_complete = True
        cycle.message_event.set()
        if not keep_alive:
            self.transport.close()
        cycle.on_response()
        return True
