"""`stirscope listen`: stirscope as a live peer of the signalling network.

``--sip udp:HOST:PORT`` / ``tcp:HOST:PORT`` (repeatable) runs the SIP verification server: an
SBC sends an INVITE, stirscope verifies its Identity headers (verification time = arrival
time) and answers ``302 Moved Temporarily`` carrying ``verstat`` (or, with ``--reject``, the
RFC 8224 status of a failed verification); OPTIONS gets 200.

``--hep udp:HOST:PORT`` / ``tcp:HOST:PORT`` (repeatable) collects HEP v1/v2/v3 from capture
agents (heplify, Kamailio, OpenSIPS...): the SIP inside is tracked into calls and each call's
INVITE verified as of its HEP capture timestamp. ``--iface NAME`` captures one interface
(Linux, root or CAP_NET_RAW) with an optional ``--filter`` (tcpdump syntax) and keeps the raw
packets with ``--write-pcap PATH``. Both write one call record per finished call (the JSON
object of ``stirscope analyze``) and one anomaly record per malformed packet (rate limited).

``-o PATH.jsonl`` appends every record (``"record"``: verification, call or anomaly;
``"source"``: sip, hep or iface), rotated with ``--rotate-size``/``--rotate-interval``
(``--rotate-keep`` old files). ``--db URL`` (``sqlite:///PATH`` or a file path,
``postgresql://USER@HOST/DB``) records the session as one job of the results store that
`stirscope serve` reads: ``running`` while listening (its inputs are the listeners), the HEP
and capture call records, their anomalies and the SIP server's answered INVITEs (each a
one-leg call whose final response is the answer) written about every second, ``done`` after
a clean stop. Call records carry ``replay`` (the same PASSporT on an earlier call of the
session, RFC 8224 section 12.1) as in ``stirscope analyze``. ``--metrics HOST:PORT`` serves
Prometheus metrics. Trust and certificate options are those of ``stirscope verify``; all
listeners run in one process (the SIP server alone on uvloop's event loop when installed).
SIGINT/SIGTERM stop gracefully: queued verifications are answered, every call finished or
still open is verified and written before exit. Exit 0 after a clean stop, 2 on usage errors
(including an address that cannot be bound, an interface that cannot be captured or a
results store that cannot be opened), 1 when the results store fails during the session
(listening stops; the job is marked failed).

Every listener is an object with ``start``/``stop``/``summary``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from analyzer.assess import assess_call
from analyzer.calls import Call
from analyzer.live import LivePipeline
from analyzer.records import CallRecord, endpoint
from analyzer.sipanswer import call_record_of, ns_of
from analyzer.sipserver import SipServerCore
from analyzer.trustload import TrustLoadError
from analyzer.verifying import VerifierConfig, build_verifier
from service.cmd_verify import UsageError, add_verifier_options, config_from_args
from service.listen_hep import HepCollector
from service.listen_iface import CaptureError, InterfaceCapture
from service.listen_sip import (
    DEFAULT_QUEUE_LIMIT,
    DEFAULT_WORKERS,
    Answered,
    AnswerSink,
    Endpoint,
    ServerLimits,
    SipVerificationServer,
    wall_clock,
)
from service.live_feed import (
    DEFAULT_QUEUE_ITEMS,
    INFLIGHT_PER_WORKER,
    FeedLimits,
    LiveCollector,
    LiveFeed,
    ReplayWatch,
    encode_line,
)
from service.live_feed import DEFAULT_WORKERS as DEFAULT_LIVE_WORKERS
from service.loop_source import loop_safe, verify_functions
from service.metrics import Metrics
from service.rotate import RotatingWriter, parse_duration, parse_size
from shaken.verifier import Verifier

if TYPE_CHECKING:  # the store (SQLAlchemy, Alembic) is imported only when --db is used
    from service.listen_store import LiveStore

# How often the TTY summary line is redrawn and the JSONL output flushed (seconds).
TICK_S = 1.0


class Listener(Protocol):
    """One live input of ``listen``: SIP server, HEP collector or interface capture."""

    async def start(self) -> list[str]: ...

    async def stop(self) -> None: ...

    def summary(self) -> str: ...


class JsonlSink:
    """Appends one JSON object per line (verifications, call records, anomalies), from any
    thread; rotated by size/time when asked; flushed every tick and on close."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int | None = None,
        interval_s: float | None = None,
        keep: int | None = None,
    ) -> None:
        try:
            self._writer = RotatingWriter(
                path, max_bytes=max_bytes, interval_s=interval_s, keep=keep
            )
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
        self.written = 0

    def write(self, answered: Answered) -> None:
        """A SIP verification server answer (``--sip``)."""
        line = answered.record.to_json()
        link = answered.link
        line["transport"] = link.transport.value
        line["peer"] = f"{link.peer[0]}:{link.peer[1]}"
        line["record"] = "verification"
        line["source"] = "sip"
        self.write_json(line)

    def write_json(self, obj: dict[str, object]) -> None:
        self._writer.write(encode_line(obj))
        self.written += 1

    def flush(self) -> None:
        self._writer.tick()
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


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
        on_answer: AnswerSink | None,
        outputs_full: Callable[[], bool] | None = None,
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        self._endpoints = endpoints
        verify, verify_cached = verify_functions(verifier)
        self.server = SipVerificationServer(
            SipServerCore(reject=reject),
            verify,
            verify_cached=verify_cached,
            metrics=metrics,
            limits=limits,
            clock=clock,
            on_answer=on_answer,
            outputs_full=outputs_full,
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


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "listen",
        help="live verification: SIP verification server, HEP collector, interface capture",
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
        "--hep",
        action="append",
        type=_endpoint,
        default=[],
        metavar="udp|tcp:HOST:PORT",
        help="HEP collector endpoint (repeatable; HEP v1/v2/v3, conventionally port 9060)",
    )
    parser.add_argument(
        "--iface", metavar="NAME", help="capture SIP on this interface (Linux; root/CAP_NET_RAW)"
    )
    parser.add_argument(
        "--filter",
        dest="bpf",
        metavar="EXPR",
        help="capture filter for --iface, tcpdump syntax (e.g. 'port 5060 or port 5080')",
    )
    parser.add_argument(
        "--write-pcap", type=Path, metavar="PATH", help="keep the captured packets (--iface)"
    )
    parser.add_argument(
        "--metrics", type=_hostport, metavar="HOST:PORT", help="serve Prometheus /metrics"
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="PATH.jsonl",
        help="append verifications, call records and anomalies as JSONL",
    )
    output.add_argument(
        "--rotate-size", type=_size, metavar="SIZE", help="rotate -o past SIZE (e.g. 100M)"
    )
    output.add_argument(
        "--rotate-interval",
        type=_duration,
        metavar="DURATION",
        help="rotate -o every DURATION, on UTC boundaries (e.g. 1h, 15m, 1d)",
    )
    output.add_argument(
        "--rotate-keep", type=int, metavar="N", help="keep only the N newest rotated files"
    )
    output.add_argument(
        "--db",
        metavar="URL",
        help="record the session (HEP/capture calls, SIP answers) in this results store "
        "(sqlite:///PATH or postgresql://...)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"SIP server verification threads (default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=DEFAULT_QUEUE_LIMIT,
        metavar="N",
        help=f"SIP verifications queued before INVITEs are shed with 503 (default "
        f"{DEFAULT_QUEUE_LIMIT})",
    )
    parser.add_argument(
        "--live-workers",
        type=int,
        default=DEFAULT_LIVE_WORKERS,
        metavar="N",
        help=f"call verification threads per HEP/capture listener (default {DEFAULT_LIVE_WORKERS})",
    )
    parser.add_argument(
        "--live-queue",
        type=int,
        default=DEFAULT_QUEUE_ITEMS,
        metavar="N",
        help=f"HEP/capture packets queued before new ones are shed (default {DEFAULT_QUEUE_ITEMS})",
    )
    add_verifier_options(parser)
    parser.set_defaults(run=run)


def _check(args: argparse.Namespace) -> None:
    if not (args.sip or args.hep or args.iface):
        raise UsageError(
            "nothing to listen on: give --sip, --hep (udp|tcp:HOST:PORT) or --iface NAME"
        )
    if args.workers < 1 or args.queue < 1 or args.live_workers < 1 or args.live_queue < 1:
        raise UsageError("--workers, --queue, --live-workers and --live-queue must be >= 1")
    if (args.bpf or args.write_pcap) and not args.iface:
        raise UsageError("--filter and --write-pcap apply to --iface")
    rotating = args.rotate_size or args.rotate_interval or args.rotate_keep is not None
    if rotating and not args.output:
        raise UsageError("--rotate-size, --rotate-interval and --rotate-keep apply to -o")
    if args.rotate_keep is not None and args.rotate_keep < 0:
        raise UsageError("--rotate-keep must be 0 or more")


def _runner(args: argparse.Namespace) -> asyncio.Runner:
    """The event loop of ``listen``: for the SIP server alone, uvloop's when it is installed
    (its datagram and callback paths are C, and it reads every waiting datagram per wake-up
    where asyncio's selector loop polls again after each one); asyncio's own otherwise, and
    whenever the HEP collector or the capture run too (they are written and tested against
    asyncio's loop)."""
    if args.hep or args.iface:
        return asyncio.Runner()
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run(args: argparse.Namespace) -> int:
    try:
        _check(args)
        with _runner(args) as runner:
            return runner.run(_serve(args))
    except (UsageError, TrustLoadError) as exc:
        print(f"stirscope listen: {exc}", file=sys.stderr)
        return 2


class Outputs:
    """Where ``listen`` writes: the JSONL sink, the results store, the session's replay
    detector, and the live feeds made (for the store's manifest)."""

    def __init__(
        self, sink: JsonlSink | None, store: LiveStore | None, replay: ReplayWatch
    ) -> None:
        self.sink = sink
        self.store = store
        self.replay = replay
        self.feeds: list[LiveFeed] = []


def _live_feed(
    source: str,
    verifier: Verifier,
    args: argparse.Namespace,
    outputs: Outputs,
    collector: LiveCollector,
) -> LiveFeed:
    """A pipeline + queue + verification pool for one HEP or capture listener."""

    def assess(call: Call) -> CallRecord:
        return assess_call(call, verifier)  # as of each INVITE's packet/HEP timestamp

    workers = args.live_workers
    limits = FeedLimits(
        queue_items=args.live_queue, workers=workers, inflight=workers * INFLIGHT_PER_WORKER
    )
    feed = LiveFeed(
        source, LivePipeline(), assess, sink=outputs.sink, store=outputs.store,
        replay=outputs.replay, limits=limits,
    )  # fmt: skip
    collector.add(feed)
    outputs.feeds.append(feed)
    return feed


def _listeners(
    args: argparse.Namespace,
    verifier: Verifier,
    metrics: Metrics,
    outputs: Outputs,
) -> list[Listener]:
    listeners: list[Listener] = []
    if args.sip:
        limits = ServerLimits(workers=args.workers, queue_limit=args.queue)
        store = outputs.store
        listeners.append(
            SipListener(
                list(args.sip),
                verifier,
                reject=args.reject,
                metrics=metrics,
                limits=limits,
                on_answer=_answer_sink(outputs, verifier.policy.freshness_s),
                outputs_full=store.full if store is not None else None,
            )
        )
    if not (args.hep or args.iface):
        return listeners
    collector = LiveCollector(metrics.registry)
    if args.hep:
        feed = _live_feed("hep", verifier, args, outputs, collector)
        listeners.append(HepCollector(list(args.hep), feed))
    if args.iface:
        feed = _live_feed("iface", verifier, args, outputs, collector)
        capture = InterfaceCapture(args.iface, feed, bpf=args.bpf, write_pcap=args.write_pcap)
        collector.watch_kernel_drops(args.iface, lambda: capture.kernel_drops)
        listeners.append(capture)
    return listeners


def _answer_sink(outputs: Outputs, freshness_s: int) -> AnswerSink | None:
    """Where the SIP server's answers go: a JSONL line (``-o``) and a call of the results
    store (``--db``; its record is built by the store's flusher thread, off the loop)."""
    sink, store, replay = outputs.sink, outputs.store, outputs.replay
    if sink is None and store is None:
        return None

    def answered(answer: Answered) -> None:
        if sink is not None:
            sink.write(answer)
        if store is not None:
            store.add_deferred_call(partial(_sip_call, answer, replay, freshness_s), "sip")

    return answered


def _sip_call(answer: Answered, replay: ReplayWatch, freshness_s: int) -> CallRecord:
    """The results-store call of one SIP server answer (on the store's flusher thread, in
    answer order, so the session's replay detector sees the INVITEs in order)."""
    completion, link = answer.completion, answer.link
    job = completion.job
    request = job.request
    flag = replay.observe_values(request.call_id or "", ns_of(job.at), answer.request.identities)
    return call_record_of(
        request, answer.request, job.at, completion.result, completion.status,
        transport=link.transport.value, src=endpoint(*link.peer), dst=endpoint(*link.local),
        freshness_s=freshness_s, replay=flag,
    )  # fmt: skip


async def _serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    err = sys.stderr
    status = 0
    with contextlib.ExitStack() as stack:
        # One verifier for every listener, over a source that also serves cache-only
        # verification on the event loop (the SIP server's warm calls).
        verifier = loop_safe(stack.enter_context(build_verifier(config)))
        metrics = Metrics()
        metrics.watch_cache(verifier.source)
        sink = None
        if args.output:
            sink = JsonlSink(
                args.output,
                max_bytes=args.rotate_size,
                interval_s=args.rotate_interval,
                keep=args.rotate_keep,
            )
            stack.callback(sink.close)
        store = _open_store(args, stack)
        outputs = Outputs(sink, store, ReplayWatch(verifier.policy.freshness_s))
        listeners = _listeners(args, verifier, metrics, outputs)
        started: list[Listener] = []
        bound: list[str] = []
        try:
            for listener in listeners:
                for line in await listener.start():
                    print(f"stirscope listen: {line}", file=err, flush=True)
                    bound.append(line.replace(" ", ":", 1))
                started.append(listener)
            if args.metrics:
                served = metrics.serve(*args.metrics)
                stack.callback(served.close)
                print(
                    f"stirscope listen: metrics http://{served.host}:{served.port}/metrics",
                    file=err,
                    flush=True,
                )
        except (OSError, CaptureError) as exc:
            for listener in started:
                await listener.stop()
            if isinstance(exc, CaptureError):
                raise UsageError(str(exc)) from exc
            raise UsageError(f"cannot listen: {exc.strerror or exc}") from exc
        if store is not None:
            from service.listen_store import session_options

            options = session_options(args, config.to_json(), bound)
            job = await asyncio.to_thread(store.begin, bound, options)
            print(f"stirscope listen: db job {job} in {store.store.url}", file=err, flush=True)
        # What exists now (trust store, certificates, modules, metrics, the pipelines) lives as
        # long as the process: out of the collector's sight, a full collection no longer walks
        # it. Before, one paused the loop for ~60 ms under sipp at 4,500 INVITE/s: a backlog of
        # ~270 INVITEs, answered 503. Garbage cycles are collected first, not frozen; all is
        # handed back to the collector when listening ends (``listen`` run in-process). What
        # grows while serving is kept out of its sight too: the SIP server's transactions are
        # plain tuples (analyzer.sipserver), which it stops tracking.
        gc.collect()
        gc.freeze()
        stack.callback(gc.unfreeze)
        tty = err.isatty()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)
            if sink is not None:
                sink.flush()
            if store is not None and store.error is not None:
                print(f"\nstirscope listen: results store: {store.error}", file=err, flush=True)
                status = 1
                break
            if tty:
                line = "  |  ".join(listener.summary() for listener in listeners)
                err.write(f"\r\x1b[K{line}")
                err.flush()
        if tty:
            err.write("\r\x1b[Kstirscope listen: stopping, writing every call...\n")
            err.flush()
        # Each listener stops receiving, then drains: every call is verified and written.
        await asyncio.gather(*(listener.stop() for listener in listeners))
        if sink is not None:
            sink.flush()
        if store is not None and status == 0:
            status = await asyncio.to_thread(
                _complete, store, outputs, listeners, verifier, config, bound
            )
        for listener in listeners:
            print(f"stirscope listen: stopped; {listener.summary()}", file=err, flush=True)
    return status


def _open_store(args: argparse.Namespace, stack: contextlib.ExitStack) -> LiveStore | None:
    """``--db``: the results store, opened and migrated before anything is bound; on the way
    out an unfinished job is marked failed (an error) or interrupted (Ctrl-C, exit)."""
    if not args.db:
        return None
    from service.listen_store import LiveStore  # SQLAlchemy only when --db is given

    store = LiveStore.open(args.db)
    stack.callback(store.close)

    def on_exit(
        exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> bool:
        if not store.finished:
            interrupted = exc is not None and not isinstance(exc, Exception)
            error = f"{type(exc).__name__}: {exc}" if exc is not None else store.error
            store.fail(error or "ended before completion", interrupted=interrupted)
        return False

    stack.push(on_exit)
    return store


def _complete(
    store: LiveStore,
    outputs: Outputs,
    listeners: list[Listener],
    verifier: Verifier,
    config: VerifierConfig,
    bound: list[str],
) -> int:
    """Mark the session's job done with its manifest (1 if the store fails, job failed)."""
    from analyzer.storage import DatabaseError, StoreError
    from service.listen_store import live_manifest

    manifest = live_manifest(
        listeners=bound, trust=verifier.trust, config=config, feeds=outputs.feeds,
        statuses=[listener.summary() for listener in listeners], store=store,
    )  # fmt: skip
    try:
        store.complete(manifest)
    except (StoreError, DatabaseError) as exc:
        print(f"stirscope listen: results store: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
