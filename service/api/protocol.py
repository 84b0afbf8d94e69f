"""uvicorn's httptools protocol, with one send per response and the hot route answered inline.

Theory of operation. Two costs of uvicorn's HTTP/1.1 protocol outweigh a warm-cache
verification, and this subclass of ``HttpToolsProtocol`` (given to uvicorn as its ``http``
class; the parser is still httptools) removes both without changing a byte on the wire:

* Coalesced writes. uvicorn writes a response in two ``transport.write`` calls, the head when
  the app sends ``http.response.start`` and the body with ``http.response.body``; the event
  loop sends each at once, so a small JSON answer costs two ``send`` system calls and two TCP
  segments that the client takes in two reads. ``CoalescingTransport`` gathers what is
  written during one turn of the event loop and passes it on in one ``write`` when the turn's
  I/O is done: one callback per turn for every connection written to (``TurnFlush``), which
  runs after the loop has read every connection that was ready, so the answers of one turn go
  out back to back (a client reading many connections is woken once for them, not once per
  answer: measured, ~10 us less system time per answer on a loaded server). What is written
  while the protocol reads a chunk of the request stream (the inline answers) is gathered
  without a callback per answer. Nothing waits longer than the current turn, order is kept,
  and ``close``, ``write_eof`` and ``set_protocol`` pass on what is gathered first; ``abort``
  discards it as the transport's own ``abort`` discards its buffer. The protocol stays the
  real transport's protocol, so flow control (``pause_writing``) still reaches uvicorn.
* The hot route inline. ``POST /stir/v1/verification`` is held back when uvicorn would start
  its ASGI task, until its body is complete, and ``service.api.hotpath.HotVerification``
  answers it synchronously: the requests of one event-loop turn together, by one callback
  once the loop has read every connection that was ready (``TurnAnswers``; the route takes
  each step for all of them in turn, see ``service.api.hotpath``), which then passes their
  answers on at once. The answer is written as the request's own
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
  is the ASGI path's answer. Pipelined requests keep uvicorn's order: a request read behind
  one not answered yet waits in uvicorn's pipeline, and is answered with the turn's answers
  after uvicorn starts it (one pipelined request a turn, as uvicorn's tasks take them).

Every Python call counts at this rate (tens of thousands of requests a second on one core),
so the per-request methods of uvicorn's protocol that run for every request --
``data_received``, ``on_response_complete`` -- are uvicorn's own with their small helpers
inline, the keep-alive timer is armed once per idle period rather than armed and cancelled
per request (``_keep_alive_due``), a held request's body is kept without waking a
``receive`` that does not exist yet, and the transport wrapper passes each transport method
on by name. The byte-for-byte tests
against plain uvicorn (tests/service/test_api_protocol.py) hold all of it to uvicorn's answers.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Coroutine
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from service.api.hotpath import Answer, HotVerification, hot_route

# Response headers that ``RequestResponseCycle.send`` interprets rather than just writes.
_INTERPRETED_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class TurnFlush:
    """The transports of one event loop written to during the current turn, passed on
    together by one callback when the turn's I/O is done (module docstring)."""

    __slots__ = ("__weakref__", "_loop", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: list[CoalescingTransport] = []

    def add(self, transport: CoalescingTransport) -> None:
        waiting = self._waiting
        if not waiting:
            self._loop.call_soon(self.run)
        waiting.append(transport)

    def run(self) -> None:
        waiting, self._waiting = self._waiting, []
        for transport in waiting:
            transport._queued = False
        _flush_all(waiting, None)


def _flush_all(transports: list[CoalescingTransport], failed: Exception | None) -> None:
    """Flush every transport, one's failure not holding the others'; then raise the first
    failure (``failed`` if given) to the loop's exception handler, as a callback's own goes."""
    for transport in transports:
        try:
            transport.flush()
        except Exception as exc:
            failed = failed or exc
    if failed is not None:
        raise failed


class TurnAnswers:
    """The hot-route requests of one event loop whose bodies completed during the current
    turn, answered together by one callback once the turn's reads are done (module
    docstring): each ``HotVerification`` answers its requests in one ``answer_all``, then
    the answers are written in the order the requests completed and passed on at once."""

    __slots__ = ("__weakref__", "_loop", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: list[tuple[StirHttpProtocol, RequestResponseCycle, Any]] = []

    def add(self, protocol: StirHttpProtocol, cycle: RequestResponseCycle, app: Any) -> None:
        waiting = self._waiting
        if not waiting:
            self._loop.call_soon(self.run)
        waiting.append((protocol, cycle, app))

    def run(self) -> None:
        waiting, self._waiting = self._waiting, []
        # Requests the protocol can no longer answer here go to the ASGI path (``_answered``
        # with no answer); the others are asked of their route, each route once.
        asked: dict[HotVerification, list[int]] = {}
        for index, (protocol, cycle, _) in enumerate(waiting):
            hot = protocol._hot
            if hot is not None and not cycle.disconnected and not cycle.flow.write_paused:
                asked.setdefault(hot, []).append(index)
        answers: list[Answer | None] = [None] * len(waiting)
        failed: Exception | None = None
        for hot, indexes in asked.items():
            requests = [(waiting[i][1].scope, bytes(waiting[i][1].body)) for i in indexes]
            try:
                found = hot.answer_all(requests)  # type: ignore[arg-type]
            except Exception as exc:  # none answered here: the ASGI path answers each (what
                # was counted before the failure may be counted again: a bug, reported)
                failed = failed or exc
                continue
            for index, answer in zip(indexes, found, strict=True):
                answers[index] = answer
        written: list[CoalescingTransport] = []
        for (protocol, cycle, app), answer in zip(waiting, answers, strict=True):
            wrapped = protocol._coalescing
            if wrapped is not None and not wrapped.holding:
                wrapped.holding = True  # gathered here, passed on below
                written.append(wrapped)
            try:
                protocol._answered(cycle, app, answer)
            except Exception as exc:  # one connection's failure must not hold the others'
                failed = failed or exc
        for wrapped in written:
            wrapped.holding = False
        _flush_all(written, failed)


# The ``TurnFlush`` and ``TurnAnswers`` of each event loop, made at its first connection.
_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[TurnFlush, TurnAnswers]] = (
    weakref.WeakKeyDictionary()
)


def _turn(loop: asyncio.AbstractEventLoop) -> tuple[TurnFlush, TurnAnswers]:
    found = _TURNS.get(loop)
    if found is None:
        found = _TURNS[loop] = (TurnFlush(loop), TurnAnswers(loop))
    return found


def turn_flush(loop: asyncio.AbstractEventLoop) -> TurnFlush:
    """The ``TurnFlush`` of ``loop``."""
    return _turn(loop)[0]


def turn_answers(loop: asyncio.AbstractEventLoop) -> TurnAnswers:
    """The ``TurnAnswers`` of ``loop``."""
    return _turn(loop)[1]


class CoalescingTransport:
    """A write transport that gathers the writes of one event-loop turn into one write of
    ``transport`` (module docstring). The rest of ``asyncio.Transport`` is the wrapped
    transport's, each method passed on by name: a ``__getattr__`` would make every attribute
    lookup on this object, its own included, go through the slower lookup of a class that
    has one."""

    __slots__ = ("_pending", "_queued", "_transport", "_turn", "holding")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._turn = turn_flush(loop)
        self._pending: list[bytes] = []
        # Whether the turn's flush will pass on this transport's writes.
        self._queued = False
        # Set while the protocol reads a chunk, which queues the flush when it is done.
        self.holding = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._queued and not self.holding:
            self._queued = True
            self._turn.add(self)
        self._pending.append(bytes(data))

    def queue(self) -> None:
        """Have the turn's flush pass on what is gathered (after a chunk read, ``holding``)."""
        if self._pending and not self._queued:
            self._queued = True
            self._turn.add(self)

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

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()


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
    _answers: TurnAnswers | None = None
    # The held request (hot route, body not complete yet) and the app uvicorn gave it.
    _held: tuple[RequestResponseCycle, Any] | None = None
    # The last default header list seen and its encoded head (None: ``send`` writes it).
    _head: tuple[object, bytes | None] = (None, None)
    # Loop time of the last answer while the connection has been idle since; None when busy.
    _idle_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = CoalescingTransport(transport, self.loop)
        self._coalescing = wrapped
        super().connection_made(wrapped)  # type: ignore[arg-type]
        self._hot = hot_route(self.app)
        self._answers = turn_answers(self.loop)

    def data_received(self, data: bytes) -> None:
        wrapped = self._coalescing
        if wrapped is None:  # pragma: no cover - uvicorn calls connection_made first
            super().data_received(data)
            return
        wrapped.holding = True
        try:
            # uvicorn's ``data_received``, but for the keep-alive timer, which it cancels:
            # here the connection is only marked busy (``_keep_alive_due``).
            self._idle_since = None
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
        finally:
            wrapped.holding = False
            wrapped.queue()

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
            # A pipelined request, read in full while queued (uvicorn starts it from the
            # previous answer's completion): answered with the next turn's answers.
            self._answer(cycle, app)

    # The held request's body and end are kept as uvicorn's ``on_body`` and
    # ``on_message_complete`` keep them, but for its ``message_event``: only the ASGI task's
    # ``receive`` waits for that, and the task starts later (``_start_held`` sets it then).

    def on_body(self, body: bytes) -> None:
        held = self._held
        cycle = self.cycle
        if held is None or held[0] is not cycle:
            super().on_body(body)
            return
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.body += body
        size = len(cycle.body)
        if size > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        hot = self._hot
        assert hot is not None  # a request is held
        if size > hot.max_body_bytes:
            self._release()  # too large to answer here: the ASGI path answers 413

    def on_message_complete(self) -> None:
        held = self._held
        cycle = self.cycle
        if held is None or held[0] is not cycle:
            super().on_message_complete()
            return
        if not (
            (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete
        ):
            cycle.more_body = False
        self._held = None
        self._answer(cycle, held[1])

    def on_response_complete(self) -> None:
        # uvicorn's, with its helpers inline (it runs once per response), but for the
        # keep-alive timer: see ``_keep_alive_due``.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        flow = self.flow
        if flow.read_paused:
            flow.resume_reading()
        if self.pipeline:
            self._idle_since = None
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = self.loop.time()
            if self.timeout_keep_alive_task is None:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self._keep_alive_due
                )

    def _keep_alive_due(self) -> None:
        """uvicorn closes a connection ``timeout_keep_alive`` seconds after its last answer
        unless data came in meanwhile, with a timer armed at every answer and cancelled at
        every read: two timer operations a request. Here one timer stays armed while the
        connection is in use, and when it runs it closes the connection if it has been idle
        that long, else runs again when it would have been (or at the next answer, when a
        request is being read or answered). ``connection_lost`` cancels it as uvicorn's."""
        self.timeout_keep_alive_task = None
        since = self._idle_since
        if since is None:
            return  # busy: the next answer arms the timer again
        remaining = since + self.timeout_keep_alive - self.loop.time()
        if remaining > 0:
            self.timeout_keep_alive_task = self.loop.call_later(remaining, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def shutdown(self) -> None:
        self._release()  # uvicorn's graceful shutdown waits for tasks, not for held requests
        super().shutdown()

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._start_held(*held)

    def _start_held(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Start the ASGI task of a request this protocol answers not, its ``message_event``
        set as uvicorn's ``on_body`` or ``on_message_complete`` would have left it."""
        if cycle.body or not cycle.more_body:
            cycle.message_event.set()
        super()._start_asgi_task(cycle, app)

    def _answer(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Answer ``cycle`` (its body complete) with the turn's other answers."""
        answers = self._answers
        assert answers is not None  # set with the hot route, at connection_made
        answers.add(self, cycle, app)

    def _answered(self, cycle: RequestResponseCycle, app: Any, answer: Answer | None) -> None:
        """Write ``answer`` for ``cycle``; None: the ASGI path answers it."""
        if answer is None:
            self._start_held(cycle, app)
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
        wrapped = self._coalescing
        if wrapped is not None and wrapped.holding:
            wrapped._pending.append(b"".join(parts))  # ``write``: queued by data_received
        else:
            self.transport.write(b"".join(parts))
        cycle.response_complete = True
        # ``send`` sets ``message_event`` here for the ASGI task's ``receive``: there is none.
        if not keep_alive:
            self.transport.close()
        cycle.on_response()
        return True
