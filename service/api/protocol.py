"""uvicorn's httptools protocol, with one send per response and the hot route answered inline.

Theory of operation. Two costs of uvicorn's HTTP/1.1 protocol outweigh a warm-cache
verification, and this subclass of ``HttpToolsProtocol`` (given to uvicorn as its ``http``
class; the parser is still httptools) removes both without changing a byte on the wire:

* Coalesced writes. uvicorn writes a response in two ``transport.write`` calls, the head when
  the app sends ``http.response.start`` and the body with ``http.response.body``; the event
  loop sends each at once, so a small JSON answer costs two ``send`` system calls and two TCP
  segments that the client takes in two reads. ``CoalescingTransport`` gathers what is
  written during one turn of the event loop and passes it on in one ``write`` at the end of
  that turn (``loop.call_soon``). Nothing waits longer than the current turn, order is kept,
  and ``close``, ``write_eof`` and ``set_protocol`` pass on what is gathered first; ``abort``
  discards it as the transport's own ``abort`` discards its buffer. The protocol stays the
  real transport's protocol, so flow control (``pause_writing``) still reaches uvicorn.
* The hot route inline. ``POST /stir/v1/verification`` is held back when uvicorn would start
  its ASGI task, until its body is complete, and ``service.api.hotpath.HotVerification``
  answers it synchronously; the answer goes out through the request's own
  ``RequestResponseCycle.send`` (uvicorn's headers, keep-alive and completion logic). When it
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

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.api.hotpath import HotVerification, hot_route


class CoalescingTransport:
    """A write transport that gathers the writes of one event-loop turn into one write of
    ``transport`` (module docstring). Every other attribute is the wrapped transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
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
    # The held request (hot route, body not complete yet) and the app uvicorn gave it.
    _held: tuple[RequestResponseCycle, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped: Any = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)
        self._hot = hot_route(self.app)

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
        _run_now(cycle.send({"type": "http.response.start", "status": 200, "headers": headers}))
        _run_now(cycle.send({"type": "http.response.body", "body": content}))
