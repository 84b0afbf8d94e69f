"""The service's HTTP protocol (service.api.protocol) against uvicorn's own httptools protocol:
the same bytes for every request, the verification route answered inline when it can be.

Both protocols are driven in-process over a recording transport, each with its own app (its own
verifier, cold at first), by the same byte streams: single requests of every kind the route
answers (passes, failures, each ATIS error, 3GPP, a certificate not cached yet), a body cut
across reads, chunked or not, past the size limit or not, pipelined requests, a client
expecting 100 Continue, ``Connection: close``, bytes that are not HTTP.
Answers are compared byte for byte except the Date header and generated request ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from fastapi import FastAPI
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.api.app import create_app
from service.api.hotpath import HotVerification, hot_route
from service.api.protocol import CoalescingTransport, StirHttpProtocol
from tests.service.api_client import KEYS, atis_body, fixture_call, gpp_body, make_config

VERIFY = b"/stir/v1/verification"
# Calls of the fixtures: a pass, a diversion, a failure (a tampered PASSporT).
CALLS = ("invite_alpha_a.sip", "invite_diverted.sip", "invite_tampered.sip")


class RecordingTransport:
    """What uvicorn's protocol needs of a transport; keeps what is written, and each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    @property
    def output(self) -> bytes:
        return b"".join(self.writes)


def _request(
    body: bytes,
    *,
    path: bytes = VERIFY,
    key: str | None = "verifier",
    extra: Sequence[bytes] = (),
    content_type: bytes = b"application/json",
) -> bytes:
    head = [b"POST " + path + b" HTTP/1.1", b"Host: stirscope.test"]
    head.append(b"Content-Type: " + content_type)
    if key is not None:
        head.append(b"Authorization: Bearer " + KEYS[key][0].encode())
    head.extend(extra)
    head.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _chunked(body: bytes, pieces: int) -> bytes:
    """A request whose body is sent in ``pieces`` chunks (``Transfer-Encoding: chunked``)."""
    head = [b"POST " + VERIFY + b" HTTP/1.1", b"Host: stirscope.test"]
    head.append(b"Content-Type: application/json")
    head.append(b"Authorization: Bearer " + KEYS["verifier"][0].encode())
    head.append(b"Transfer-Encoding: chunked")
    size = -(-len(body) // pieces)
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return b"\r\n".join(head) + b"\r\n\r\n" + chunks


def _thirds(data: bytes) -> list[bytes]:
    third = len(data) // 3
    return [data[:third], data[third : 2 * third], data[2 * third :]]


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _responses(stream: bytes) -> list[tuple[bytes, bytes]]:
    """(head without Date and generated ids, body) of each response in ``stream``."""
    found = []
    while stream:
        end = stream.index(b"\r\n\r\n") + 4
        head, stream = stream[:end], stream[end:]
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        size = int(length.group(1)) if length else 0
        body, stream = stream[:size], stream[size:]
        head = re.sub(rb"(?im)^date: [^\r]*\r\n", b"", head)
        head = re.sub(rb"(?im)^(x-requestid: )[0-9a-f]{32}\r\n", rb"\1<generated>\r\n", head)
        found.append((head, body))
    return found


async def _drive(
    app: FastAPI,
    http: type[HttpToolsProtocol] | str,
    chunks: Sequence[bytes],
    answers: int,
    default_headers: Sequence[tuple[bytes, bytes]] = (),
    access_log: bool = False,
) -> RecordingTransport:
    """``chunks`` fed to a new connection of ``http``; ``access_log``: uvicorn's own access
    log on (off as ``serve`` runs it: the route's answers are then written inline, without
    ``send``; on, every answer goes through ``send``)."""
    config = Config(
        app=app,
        http=http,
        lifespan="off",
        log_config=None,
        server_header=False,
        access_log=access_log,
    )
    config.load()
    state = ServerState()
    state.default_headers = list(default_headers)
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=state, app_state={}
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        protocol.data_received(chunk)
        await asyncio.sleep(0)
    for _ in range(2000):  # a fetch in the pool takes a few turns of the loop
        if len([h for h, _ in _responses(transport.output) if b" 100 " not in h]) >= answers:
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0)  # the coalesced write of the last answer
    return transport


def _scenarios() -> list[tuple[str, list[bytes], int]]:
    """(name, byte chunks as the client sends them, answers expected). Each runs after a
    first verification has warmed the certificate cache, except the one named cold."""
    atis = [_json(atis_body(fixture_call(name))) for name in CALLS]
    tn_form = _json(atis_body(fixture_call(CALLS[0]), tn_form=True))
    gpp = [_json(gpp_body(fixture_call(name))) for name in CALLS[:2]]
    one = _request(atis[0], extra=[b"X-RequestID: client-1"])
    return [
        ("cold", [_request(atis[0])], 1),
        *((f"atis-{i}", [_request(body)], 1) for i, body in enumerate(atis)),
        ("tn-form", [_request(tn_form)], 1),
        ("3gpp", [_request(gpp[0])], 1),
        ("3gpp-two-signers", [_request(gpp[1])], 1),
        ("flavour-query", [_request(atis[0], path=VERIFY + b"?flavour=3gpp")], 1),
        ("bad-flavour", [_request(atis[0], path=VERIFY + b"?flavour=x")], 1),
        ("client-request-id", [one], 1),
        ("no-key", [_request(atis[0], key=None)], 1),
        ("sign-only-key", [_request(atis[0], key="signer")], 1),
        ("not-json", [_request(b"{", content_type=b"application/json")], 1),
        ("wrong-media", [_request(atis[0], content_type=b"text/plain")], 1),
        ("not-acceptable", [_request(atis[0], extra=[b"Accept: text/html"])], 1),
        ("empty", [_request(b"")], 1),
        ("missing-member", [_request(_json({"verificationRequest": {"to": {"tn": "1"}}}))], 1),
        ("too-large", [_request(b" " * 70_000 + atis[0])], 1),
        ("split-body", [one[:-40], one[-40:-10], one[-10:]], 1),
        ("pipelined", [_request(atis[0]) + _request(b"{") + _request(atis[2])], 3),
        ("expect-100", [_request(atis[0], extra=[b"Expect: 100-continue"])], 1),
        ("close", [_request(atis[0], extra=[b"Connection: close"])], 1),
        ("not-http", [b"NOT HTTP\r\n\r\n"], 1),
        ("chunked", _thirds(_chunked(atis[0], 3)), 1),
        ("chunked-too-large", _thirds(_chunked(b" " * 70_000 + atis[0], 4)), 1),
        ("split-too-large", _thirds(_request(b" " * 70_000 + atis[0])), 1),
    ]


SCENARIOS = _scenarios()
WARM_UP = _request(_json(atis_body(fixture_call(CALLS[0]))))


# Scenarios with a warm 200 of the verification route (the others: a certificate to load,
# an error, a client waiting for 100 Continue, bytes that are not a complete request).
INLINE_SCENARIOS = {"atis-0", "atis-1", "atis-2", "tn-form", "3gpp", "flavour-query",
                    "client-request-id", "split-body", "pipelined", "close"}  # fmt: skip


@pytest.fixture
def uvicorn_access_logger() -> Iterator[None]:
    """uvicorn's access logger as it was before the test (``Config(access_log=False)``
    detaches it, process-wide)."""
    logger = logging.getLogger("uvicorn.access")
    handlers, propagate = list(logger.handlers), logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.propagate = propagate


@pytest.mark.usefixtures("uvicorn_access_logger")
@pytest.mark.parametrize("access_log", [False, True], ids=["inline", "uvicorn-access-log"])
@pytest.mark.parametrize(
    ("chunks", "answers"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_same_bytes_as_uvicorn(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    chunks: list[bytes],
    answers: int,
    access_log: bool,
) -> None:
    """Without uvicorn's access log (as ``serve`` runs) the warm answers are written inline;
    with it, through ``send``: the same bytes either way."""
    outputs = []
    inline: list[bool] = []
    write_ok = StirHttpProtocol._write_ok

    def counted(self: StirHttpProtocol, *args: Any) -> bool:
        done = write_ok(self, *args)
        inline.append(done)
        return done

    for http in ("httptools", StirHttpProtocol):
        config = make_config(tmp_path, max_body_bytes=64 * 1024)
        app = create_app(config)

        async def run(app: FastAPI = app, http: Any = http) -> RecordingTransport:
            async with app.router.lifespan_context(app):
                if request.node.callspec.params["chunks"] is not SCENARIOS[0][1]:
                    await _drive(app, http, [WARM_UP], 1, access_log=access_log)
                return await _drive(app, http, chunks, answers, access_log=access_log)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(StirHttpProtocol, "_write_ok", counted)
            transport = asyncio.run(run())
        outputs.append((_responses(transport.output), transport.closed))
    assert outputs[0] == outputs[1]
    assert len([h for h, _ in outputs[0][0] if b" 100 " not in h]) == answers
    if access_log:
        assert not any(inline)  # every answer through ``send``
    elif request.node.callspec.id.split("-inline")[0] in INLINE_SCENARIOS:
        assert any(inline)  # the warm 200s written inline


# uvicorn's default headers (the server's Date and Server, ``--header`` ones): written as
# ``send`` writes them, or left to ``send`` when it interprets or rejects one.
DEFAULT_HEADERS = [
    [(b"date", b"Sun, 29 Nov 2026 10:00:00 GMT"), (b"server", b"uvicorn")],
    [(b"X-Deployment", b"blue")],
    [(b"connection", b"close")],
]


@pytest.mark.parametrize("default_headers", DEFAULT_HEADERS, ids=["date", "case", "close"])
def test_same_bytes_with_default_headers(
    tmp_path: Path, default_headers: list[tuple[bytes, bytes]]
) -> None:
    chunks = [_request(_json(atis_body(fixture_call(CALLS[0])))) * 2]
    outputs: list[object] = []
    for http in ("httptools", StirHttpProtocol):
        app = create_app(make_config(tmp_path))

        async def run(app: FastAPI = app, http: Any = http) -> RecordingTransport:
            async with app.router.lifespan_context(app):
                await _drive(app, http, [WARM_UP], 1, default_headers)
                return await _drive(app, http, chunks, 2, default_headers)

        transport = asyncio.run(run())
        outputs.append((transport.output.count(b"HTTP/1.1 200 OK"), transport.closed))
        outputs.append(_responses(transport.output))
    assert outputs[0] == outputs[2]
    assert outputs[1] == outputs[3]


def test_warm_verifications_are_answered_inline_in_one_write(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path))
    bodies = [_request(_json(atis_body(fixture_call(name)))) for name in CALLS]

    async def run() -> tuple[list[RecordingTransport], list[bool]]:
        async with app.router.lifespan_context(app):
            hot = hot_route(app)
            assert isinstance(hot, HotVerification)
            inline: list[bool] = []
            answer_all = hot.answer_all

            def counted(requests: Any) -> Any:
                answers = answer_all(requests)
                inline.extend(answer is not None for answer in answers)
                return answers

            hot.answer_all = counted  # type: ignore[method-assign]
            cold = await _drive(app, StirHttpProtocol, bodies, len(bodies))
            warm = await _drive(app, StirHttpProtocol, bodies, len(bodies))
            return [cold, warm], inline

    (cold, warm), inline = asyncio.run(run())
    # The first request needed its certificate loaded (the pool); the rest were inline.
    assert inline == [False, True, True, True, True, True]
    answers = _responses(warm.output)
    assert [b"200 OK" in head for head, _ in answers] == [True, True, True]
    assert len(warm.writes) == 3  # head and body of each answer in one write
    assert _responses(cold.output)[1:] == answers[1:]
    metrics = asyncio.run(_metrics(app))
    assert 'stirscope_http_requests_total{method="POST",route="/stir/v1/verification"' in metrics


async def _keep_alive_timeline(app: FastAPI, http: Any) -> list[bool]:
    """Whether the connection is closed at points of a keep-alive timeout of 0.3 s: 0.2 s
    after an answer, 0.2 s after a second one (0.4 s after the first), 0.5 s after it; then,
    on a new connection, 0.6 s after an answer followed by half a request."""
    config = Config(app=app, http=http, lifespan="off", log_config=None)
    config.timeout_keep_alive = 0.3  # type: ignore[assignment]  # seconds: any number works
    config.load()
    timeline = []
    for partial in (False, True):
        protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=ServerState(), app_state={}
        )
        transport = RecordingTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for answers in (1, 2):
            protocol.data_received(WARM_UP)
            while len(_responses(transport.output)) < answers:
                await asyncio.sleep(0.001)
            if partial:
                protocol.data_received(WARM_UP[:40])
                await asyncio.sleep(0.6)
                timeline.append(transport.closed)
                break
            await asyncio.sleep(0.2)
            timeline.append(transport.closed)
        else:
            await asyncio.sleep(0.3)
            timeline.append(transport.closed)
        protocol.connection_lost(None)
    return timeline


def test_idle_connections_close_as_uvicorn_closes_them(tmp_path: Path) -> None:
    timelines = []
    for http in ("httptools", StirHttpProtocol):
        app = create_app(make_config(tmp_path))

        async def run(app: FastAPI = app, http: Any = http) -> list[bool]:
            async with app.router.lifespan_context(app):
                await _drive(app, http, [WARM_UP], 1)
                return await _keep_alive_timeline(app, http)

        timelines.append(asyncio.run(run()))
    assert timelines[0] == timelines[1] == [False, False, True, False]


async def _metrics(app: FastAPI) -> str:
    async with app.router.lifespan_context(app):
        transport = await _drive(
            app, StirHttpProtocol, [b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"], 1
        )
    return _responses(transport.output)[0][1].decode()


def test_coalescing_transport_keeps_order_and_flushes_before_close() -> None:
    async def run() -> RecordingTransport:
        inner = RecordingTransport()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"a")
        transport.write(b"")
        transport.writelines([b"b", bytearray(b"c")])
        assert inner.writes == []
        assert transport.get_write_buffer_size() == 3
        await asyncio.sleep(0)
        assert inner.writes == [b"abc"]
        transport.write(b"d")
        transport.close()  # what was gathered goes first
        assert inner.writes == [b"abc", b"d"]
        assert inner.closed
        transport.write(b"e")
        await asyncio.sleep(0)
        assert inner.writes == [b"abc", b"d"]  # nothing after close
        return inner

    asyncio.run(run())


def test_answers_of_one_turn_go_out_together_after_its_reads(tmp_path: Path) -> None:
    """Requests read in one turn of the loop are answered together after the last read, by
    one callback that also passes the answers on, one write a connection; a request that
    came behind an unanswered one on its connection (pipelined) is answered by the next
    callback. Each connection's bytes and order are kept."""
    app = create_app(make_config(tmp_path))
    request = _request(_json(atis_body(fixture_call(CALLS[0]))))

    async def run() -> tuple[list[RecordingTransport], list[list[int]], list[str]]:
        async with app.router.lifespan_context(app):
            await _drive(app, StirHttpProtocol, [request], 1)  # the certificate, cached
            config = Config(app=app, http=StirHttpProtocol, lifespan="off", log_config=None)
            config.load()
            loop = asyncio.get_running_loop()
            scheduled: list[str] = []
            call_soon = loop.call_soon

            def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
                scheduled.append(getattr(callback, "__qualname__", ""))
                return call_soon(callback, *args, **kwargs)

            transports = [RecordingTransport() for _ in range(3)]
            protocols = []
            for transport in transports:
                protocol = config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=ServerState(), app_state={}
                )
                protocol.connection_made(transport)  # type: ignore[arg-type]
                protocols.append(protocol)
            loop.call_soon = counting  # type: ignore[method-assign,assignment]
            try:
                writes = []
                for protocol in [*protocols, protocols[0]]:  # the first connection twice
                    protocol.data_received(request)
                    writes.append([len(t.writes) for t in transports])
                await asyncio.sleep(0)
                writes.append([len(t.writes) for t in transports])
                await asyncio.sleep(0)
                writes.append([len(t.writes) for t in transports])
            finally:
                loop.call_soon = call_soon  # type: ignore[method-assign]
            return transports, writes, scheduled

    transports, writes, scheduled = asyncio.run(run())
    # Nothing answered while the turn reads; then one write each; then the pipelined one.
    assert writes == [[0, 0, 0]] * 4 + [[1, 1, 1], [2, 1, 1]]
    assert [name for name in scheduled if name.startswith("Turn")] == ["TurnAnswers.run"] * 2
    answers = [_responses(t.output) for t in transports]
    assert [len(a) for a in answers] == [2, 1, 1]
    assert all(b"200 OK" in head for a in answers for head, _ in a)
    assert answers[0][0][1] == answers[0][1][1] == answers[1][0][1]


def test_requests_of_a_turn_are_verified_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route's steps run for every request of the turn in turn (all checked and mapped,
    then all verified, then all answered), each request counted and logged as it would be
    alone; a request the turn cannot answer (a bad body) goes to the ASGI path and leaves the
    others' answers as they are."""
    from service.api import hotpath

    app = create_app(make_config(tmp_path))
    calls: list[str] = []
    for name in ("prepare_verification", "verification_answer"):
        original = getattr(hotpath, name)

        def traced(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(hotpath, name, traced)
    bodies = [_request(_json(atis_body(fixture_call(name)))) for name in CALLS]
    bodies.insert(1, _request(b'{"verificationRequest": 3}'))

    async def run() -> list[RecordingTransport]:
        async with app.router.lifespan_context(app):
            await _drive(app, StirHttpProtocol, bodies[:1], 1)  # the certificates, cached
            await _drive(app, StirHttpProtocol, bodies[2:], 2)
            state = app.state.stirscope
            verify = state.verify_cached

            def traced_verify(*args: Any) -> Any:
                calls.append("verify")
                return verify(*args)

            state.verify_cached = traced_verify
            calls.clear()
            config = Config(app=app, http=StirHttpProtocol, lifespan="off", log_config=None)
            config.load()
            transports = [RecordingTransport() for _ in bodies]
            for transport, body in zip(transports, bodies, strict=True):
                protocol = config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=ServerState(), app_state={}
                )
                protocol.connection_made(transport)  # type: ignore[arg-type]
                protocol.data_received(body)
            for _ in range(200):
                await asyncio.sleep(0.001)
                if all(t.writes for t in transports):
                    break
            return transports

    transports = asyncio.run(run())
    metrics = asyncio.run(_metrics(app))
    steps = ["prepare_verification", "verify", "verification_answer"]
    assert calls == [step for step in steps for _ in range(4 if step == steps[0] else 3)]
    heads = [_responses(t.output)[0][0].split(b"\r\n")[0] for t in transports]
    assert heads == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request", *[b"HTTP/1.1 200 OK"] * 2]
    counted = re.findall(r"stirscope_verifications_total\{[^}]*\} ([0-9.e+]+)", metrics)
    assert sum(float(n) for n in counted) == 3 + 3  # the warm-up's and this turn's


def _depth() -> int:
    frame: FrameType | None = sys._getframe(1)
    depth = 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def test_many_pipelined_requests_behind_an_asgi_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests queued behind one the ASGI path answers are answered one by one as uvicorn
    starts them, each from the event loop, not nested in the answer before (the stack would
    grow with the pipeline)."""
    depths: list[int] = []
    answer = StirHttpProtocol._answer

    def measured(self: StirHttpProtocol, cycle: Any, app: Any) -> None:
        depths.append(_depth())
        answer(self, cycle, app)

    monkeypatch.setattr(StirHttpProtocol, "_answer", measured)
    app = create_app(make_config(tmp_path))
    count = 300
    stream = _request(b"{") + WARM_UP * count

    async def run() -> RecordingTransport:
        async with app.router.lifespan_context(app):
            await _drive(app, StirHttpProtocol, [WARM_UP], 1)
            return await _drive(app, StirHttpProtocol, [stream], count + 1)

    answers = _responses(asyncio.run(run()).output)
    assert [head.split(b"\r\n")[0] for head, _ in answers] == [
        b"HTTP/1.1 400 Bad Request",
        *([b"HTTP/1.1 200 OK"] * count),
    ]
    assert len(depths) == count + 2  # the warm-up and the bad request too
    assert max(depths) < 100


def test_a_failed_pass_on_does_not_hold_the_turns_other_connections() -> None:
    """A transport whose write fails in the turn's flush: the other connections written to in
    that turn still get their bytes, the error goes to the loop's exception handler, and the
    failed connection is flushed again at its next write."""

    class Failing(RecordingTransport):
        fail = True

        def write(self, data: bytes) -> None:
            if self.fail:
                self.fail = False
                raise OSError("broken pipe")
            super().write(data)

    async def run() -> tuple[RecordingTransport, RecordingTransport, list[Any]]:
        loop = asyncio.get_running_loop()
        errors: list[Any] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
        failing, fine = Failing(), RecordingTransport()
        first = CoalescingTransport(failing, loop)  # type: ignore[arg-type]
        second = CoalescingTransport(fine, loop)  # type: ignore[arg-type]
        first.write(b"lost")
        second.write(b"kept")
        await asyncio.sleep(0)
        first.write(b"again")
        await asyncio.sleep(0)
        return failing, fine, errors

    failing, fine, errors = asyncio.run(run())
    assert fine.writes == [b"kept"]
    assert failing.writes == [b"again"]
    assert [type(e) for e in errors] == [OSError]


def test_a_failed_answer_does_not_hold_the_turns_other_answers(tmp_path: Path) -> None:
    """Two connections answered in one turn, the first one's transport failing as its answer
    is passed on: the second still gets its answer, and the error goes to the loop's
    exception handler."""
    app = create_app(make_config(tmp_path))
    request = _request(_json(atis_body(fixture_call(CALLS[0]))))

    class Failing(RecordingTransport):
        def write(self, data: bytes) -> None:
            raise OSError("broken pipe")

    async def run() -> tuple[RecordingTransport, list[Any]]:
        async with app.router.lifespan_context(app):
            await _drive(app, StirHttpProtocol, [request], 1)  # the certificate, cached
            loop = asyncio.get_running_loop()
            errors: list[Any] = []
            loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
            config = Config(app=app, http=StirHttpProtocol, lifespan="off", log_config=None)
            config.load()
            fine = RecordingTransport()
            for transport in (Failing(), fine):
                protocol = config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=ServerState(), app_state={}
                )
                protocol.connection_made(transport)  # type: ignore[arg-type]
                protocol.data_received(request)
            await asyncio.sleep(0)
            return fine, errors

    fine, errors = asyncio.run(run())
    assert [b"200 OK" in head for head, _ in _responses(fine.output)] == [True]
    assert [type(e) for e in errors] == [OSError]


async def _drive_together(
    app: FastAPI,
    http: type[HttpToolsProtocol] | str,
    scenarios: Sequence[tuple[str, list[bytes], int]],
) -> list[RecordingTransport]:
    """Each scenario on its own connection of ``http``, all read in the same turns of the loop
    (the first chunk of every scenario, then the second of those that have one, ...)."""
    config = Config(app=app, http=http, lifespan="off", log_config=None, server_header=False)
    config.load()
    state = ServerState()
    connections = []
    for _ in scenarios:
        protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=state, app_state={}
        )
        transport = RecordingTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        connections.append((protocol, transport))
    for turn in range(max(len(chunks) for _, chunks, _ in scenarios)):
        for (protocol, _), (_, chunks, _) in zip(connections, scenarios, strict=True):
            if turn < len(chunks):
                protocol.data_received(chunks[turn])
        await asyncio.sleep(0)

    def done() -> bool:
        return all(
            len([h for h, _ in _responses(t.output) if b" 100 " not in h]) >= answers
            for (_, t), (_, _, answers) in zip(connections, scenarios, strict=True)
        )

    for _ in range(2000):
        if done():
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0)
    return [transport for _, transport in connections]


def test_same_bytes_as_uvicorn_for_a_turn_of_many_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every scenario at once, each on its own connection, read in the same turns: the
    verification route answers the turn's requests together (passes, failures and errors
    mixed, pipelined and split ones among them), and each connection gets the bytes uvicorn
    gives it."""
    scenarios = [s for s in SCENARIOS if s[0] != "cold"]
    sizes: list[int] = []
    answer_all = HotVerification.answer_all

    def counted(self: HotVerification, requests: Any) -> Any:
        sizes.append(len(requests))
        return answer_all(self, requests)

    monkeypatch.setattr(HotVerification, "answer_all", counted)
    outputs = []
    for http in ("httptools", StirHttpProtocol):
        app = create_app(make_config(tmp_path, max_body_bytes=64 * 1024))

        async def run(app: FastAPI = app, http: Any = http) -> list[RecordingTransport]:
            async with app.router.lifespan_context(app):
                for call in CALLS:  # every certificate the scenarios need, cached
                    await _drive(app, http, [_request(_json(atis_body(fixture_call(call))))], 1)
                return await _drive_together(app, http, scenarios)

        transports = asyncio.run(run())
        outputs.append([(_responses(t.output), t.closed) for t in transports])
    assert max(sizes) >= 10  # the first turn's requests, answered together
    for (name, _, answers), ours, theirs in zip(scenarios, outputs[1], outputs[0], strict=True):
        assert ours == theirs, name
        assert len([h for h, _ in ours[0] if b" 100 " not in h]) == answers, name


def test_a_turn_whose_answers_fail_goes_to_the_asgi_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the route's ``answer_all`` fails for a turn, every request of that turn still gets
    its answer (the ASGI path's), and the error goes to the loop's exception handler."""
    app = create_app(make_config(tmp_path))
    request = _request(_json(atis_body(fixture_call(CALLS[0]))))

    def failing(self: HotVerification, requests: Any) -> Any:
        raise RuntimeError("metrics backend gone")

    async def run() -> tuple[list[RecordingTransport], list[Any]]:
        async with app.router.lifespan_context(app):
            await _drive(app, StirHttpProtocol, [request], 1)  # the certificate, cached
            loop = asyncio.get_running_loop()
            errors: list[Any] = []
            loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
            monkeypatch.setattr(HotVerification, "answer_all", failing)
            transports = await _drive_together(app, StirHttpProtocol, [("", [request], 1)] * 3)
            return transports, errors

    transports, errors = asyncio.run(run())
    heads = [head.split(b"\r\n")[0] for t in transports for head, _ in _responses(t.output)]
    assert heads == [b"HTTP/1.1 200 OK"] * 3
    assert [type(e) for e in errors] == [RuntimeError]
