"""`stirscope listen`: stirscope as a live peer of the signalling network.

``--sip udp:HOST:PORT`` / ``tcp:HOST:PORT`` (repeatable) runs the SIP verification server: an
SBC sends an INVITE, stirscope verifies its Identity headers (verification time = arrival
time) and answers ``302 Moved Temporarily`` carrying ``verstat`` (or, with ``--reject``, the
RFC 8224 status of a failed verification); OPTIONS gets 200. ``--metrics HOST:PORT`` serves
Prometheus metrics; ``-o PATH.jsonl`` appends one JSON line per verification. Trust and
certificate options are those of ``stirscope verify``. SIGINT/SIGTERM stop gracefully: queued
verifications are answered and written before exit. Exit 0 after a clean stop, 2 on usage
errors (including an address that cannot be bound).

Every listener is an object with ``start``/``stop``/``summary``; further kinds of listener
(HEP collector, interface capture) join the same list and run in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Protocol, TextIO

from analyzer.sipanswer import VerificationRecord
from analyzer.sipserver import SipServerCore
from analyzer.trustload import TrustLoadError
from analyzer.verifying import build_verifier
from service.cmd_verify import UsageError, add_verifier_options, config_from_args
from service.listen_sip import (
    DEFAULT_QUEUE_LIMIT,
    DEFAULT_WORKERS,
    Endpoint,
    Peer,
    ServerLimits,
    SipVerificationServer,
    Transport,
    wall_clock,
)
from service.metrics import Metrics
from shaken.result import VerificationResult
from shaken.verifier import VerificationRequest, Verifier

# How often the TTY summary line is redrawn and the JSONL output flushed (seconds).
TICK_S = 1.0


class Listener(Protocol):
    """One live input of ``listen`` (SIP server now; HEP collector and capture later)."""

    async def start(self) -> list[str]: ...

    async def stop(self) -> None: ...

    def summary(self) -> str: ...


class JsonlSink:
    """Appends one JSON object per verification; flushed every tick and on close."""

    def __init__(self, path: Path) -> None:
        try:
            self._handle: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
        self.written = 0

    def write(self, record: VerificationRecord, transport: Transport, peer: Peer) -> None:
        line = record.to_json()
        line["transport"] = transport.value
        line["peer"] = f"{peer[0]}:{peer[1]}"
        self._handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.written += 1

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class SipListener:
    """``--sip``: the SIP verification server on its endpoints (RFC 8224 section 6.2)."""

    def __init__(
        self,
        endpoints: list[Endpoint],
        verifier: Verifier,
        *,
        reject: bool,
        metrics: Metrics,
        limits: ServerLimits,
        sink: JsonlSink | None,
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        self._endpoints = endpoints

        def verify(request: VerificationRequest, at: datetime) -> VerificationResult:
            return verifier.verify(request, at=at)

        self.server = SipVerificationServer(
            SipServerCore(reject=reject),
            verify,
            metrics=metrics,
            limits=limits,
            clock=clock,
            on_record=sink.write if sink is not None else None,
        )

    async def start(self) -> list[str]:
        bound = await self.server.start(self._endpoints)
        return [f"sip {endpoint}" for endpoint in bound]

    async def stop(self) -> None:
        await self.server.stop()

    def summary(self) -> str:
        return f"sip: {self.server.summary()}"


def _endpoint(text: str) -> Endpoint:
    try:
        return Endpoint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host or "127.0.0.1", int(port)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "listen",
        help="live verification: SIP verification server (302 with verstat)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sip",
        action="append",
        type=_endpoint,
        default=[],
        metavar="udp|tcp:HOST:PORT",
        help="SIP verification server endpoint (repeatable)",
    )
    parser.add_argument(
        "--reject",
        action="store_true",
        help="policy: answer failed verifications with their RFC 8224 code, not a 302",
    )
    parser.add_argument(
        "--metrics", type=_hostport, metavar="HOST:PORT", help="serve Prometheus /metrics"
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="PATH.jsonl", help="append verifications as JSONL"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"verification threads (default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=DEFAULT_QUEUE_LIMIT,
        metavar="N",
        help=f"verifications queued before INVITEs are shed with 503 (default "
        f"{DEFAULT_QUEUE_LIMIT})",
    )
    add_verifier_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        if not args.sip:
            raise UsageError("nothing to listen on: give --sip udp|tcp:HOST:PORT")
        if args.workers < 1 or args.queue < 1:
            raise UsageError("--workers and --queue must be at least 1")
        return asyncio.run(_serve(args))
    except (UsageError, TrustLoadError) as exc:
        print(f"stirscope listen: {exc}", file=sys.stderr)
        return 2


async def _serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    err = sys.stderr
    with contextlib.ExitStack() as stack:
        verifier = stack.enter_context(build_verifier(config))
        metrics = Metrics()
        metrics.watch_cache(verifier.source)
        sink = JsonlSink(args.output) if args.output else None
        if sink is not None:
            stack.callback(sink.close)
        limits = ServerLimits(workers=args.workers, queue_limit=args.queue)
        listeners: list[Listener] = [
            SipListener(
                list(args.sip),
                verifier,
                reject=args.reject,
                metrics=metrics,
                limits=limits,
                sink=sink,
            )
        ]
        started: list[Listener] = []
        try:
            for listener in listeners:
                for line in await listener.start():
                    print(f"stirscope listen: {line}", file=err, flush=True)
                started.append(listener)
            if args.metrics:
                served = metrics.serve(*args.metrics)
                stack.callback(served.close)
                print(
                    f"stirscope listen: metrics http://{served.host}:{served.port}/metrics",
                    file=err,
                    flush=True,
                )
        except OSError as exc:
            for listener in started:
                await listener.stop()
            raise UsageError(f"cannot listen: {exc.strerror or exc}") from exc
        tty = err.isatty()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)
            if sink is not None:
                sink.flush()
            if tty:
                line = "  |  ".join(listener.summary() for listener in listeners)
                err.write(f"\r\x1b[K{line}")
                err.flush()
        for listener in listeners:
            await listener.stop()
        if sink is not None:
            sink.flush()
        if tty:
            err.write("\n")
        for listener in listeners:
            print(f"stirscope listen: stopped; {listener.summary()}", file=err, flush=True)
    return 0
