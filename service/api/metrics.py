"""Prometheus metrics of the HTTP service and the request middleware that feeds them.

One ``CollectorRegistry`` per app (tests build many apps; the process-global registry would
collide). With ``--workers N`` every worker has its own registry, so a scrape sees the worker
that answered it: scrape each worker, or run one worker per port behind the balancer.
Certificate cache counters are read from the verifier at scrape time (no double counting).

Per request the middleware counts and times the request and writes the access log line, so it
keeps that work small. The counters and histograms are plain numbers (``CountedFamily``,
``CountedHistogram``) exposed at scrape time as the library's ``Counter`` and ``Histogram``
would expose them: the library's increment validates, checks observability and takes a lock
each time (nine calls for one observation), while every count here happens on the event loop
(the verification pool's results are counted back on the loop) and so does the scrape
(``/metrics`` is an async route). The request id, when the client sent none, comes from a
per-process PRNG seeded once rather than from ``uuid4`` (an ``os.urandom`` system call per
request). The id only correlates log lines and responses; it is not a secret.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import JsonFormatter, LineBatchingHandler
from service.metrics import CountedFamily, CountedHistogram
from shaken.verifier import Verifier

access_log = logging.getLogger("stirscope.access")
# The message of every access log record (its fields are ``extra``).
ACCESS_MESSAGE = "request"

# Latency buckets (seconds): a warm-cache verification is ~0.1-1 ms, a certificate fetch up to
# the HTTP source's timeout (seconds), so the buckets span 100 us to 10 s.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Correlation header of ATIS-1000082 (STANDARDS.md section 8.1), echoed on every response.
REQUEST_ID_HEADER = "x-requestid"
_REQUEST_ID_NAME = REQUEST_ID_HEADER.encode("latin-1")  # as ASGI servers give header names
# A client's request id is echoed only when short and printable (it goes into logs).
MAX_REQUEST_ID_CHARS = 128
# Bits of a generated request id: as many as a UUID's, shown as 32 hex digits like uuid4().hex.
REQUEST_ID_BITS = 128


class ApiMetrics:
    """The service's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = CountedFamily(
            "stirscope_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = CountedHistogram(
            "stirscope_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.verifications = CountedFamily(
            "stirscope_verifications",
            "Verifications by verstat and first reason (none when passed)",
            ["verstat", "reason"],
            registry=self.registry,
        )
        self.verification_latency = CountedHistogram(
            "stirscope_verification_duration_seconds",
            "Time spent in the verifier per request",
            (),
            LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.signings = CountedFamily(
            "stirscope_signings",
            "Signing requests by outcome",
            ["result"],
            registry=self.registry,
        )
        self._cache = _CacheCollector()
        self.registry.register(self._cache)
        self._jobs = _JobsCollector()
        self.registry.register(self._jobs)

    def count_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered: counter by method/route/status, latency by route."""
        key = (method, route, str(status))
        counts = self.requests.counts
        if key in counts:
            counts[key] += 1
        else:
            self.requests.inc(key)
        self.latency.observe((route,), seconds)

    def count_verification(self, verstat: str, reason: str, seconds: float) -> None:
        """One verification: counter by verstat/reason, time spent in the verifier."""
        key = (verstat, reason)
        counts = self.verifications.counts
        if key in counts:
            counts[key] += 1
        else:
            self.verifications.inc(key)
        self.verification_latency.observe((), seconds)

    def watch(self, verifier: Verifier | None) -> None:
        """Report this verifier's certificate caches (None: stop reporting)."""
        self._cache.verifier = verifier

    def watch_jobs(
        self,
        outcomes: Callable[[], Mapping[str, int]] | None,
        states: Callable[[], Mapping[str, int]] | None,
    ) -> None:
        """Report analysis jobs: this process's worker outcomes and the store's jobs by state."""
        self._jobs.outcomes = outcomes
        self._jobs.states = states


class _JobsCollector(Collector):
    """Analysis jobs, read at scrape time: worker outcomes (counter) and jobs by state (gauge)."""

    def __init__(self) -> None:
        self.outcomes: Callable[[], Mapping[str, int]] | None = None
        self.states: Callable[[], Mapping[str, int]] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.outcomes is not None:
            done = CounterMetricFamily(
                "stirscope_jobs_processed",
                "Analysis jobs run by this process's workers, by outcome",
                labels=["outcome"],
            )
            for outcome, count in sorted(self.outcomes().items()):
                done.add_metric([outcome], float(count))
            yield done
        if self.states is not None:
            try:
                counts = self.states()
            except Exception:  # a store outage must not break the scrape of everything else
                return
            gauge = GaugeMetricFamily(
                "stirscope_jobs", "Analysis jobs in the results store by state", labels=["state"]
            )
            for state, count in sorted(counts.items()):
                gauge.add_metric([state], float(count))
            yield gauge

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _CacheCollector(Collector):
    """Certificate source cache and credential cache counters, read at scrape time."""

    def __init__(self) -> None:
        self.verifier: Verifier | None = None

    def collect(self) -> Iterator[Metric]:
        verifier = self.verifier
        if verifier is None:
            return
        stats_of = getattr(verifier.source, "stats", None)
        if callable(stats_of):
            stats = stats_of()
            events = CounterMetricFamily(
                "stirscope_certificate_cache_events",
                "Certificate source cache lookups by outcome",
                labels=["event"],
            )
            for event in ("hits", "negative_hits", "misses", "coalesced", "evictions"):
                events.add_metric([event], float(getattr(stats, event)))
            yield events
            yield GaugeMetricFamily(
                "stirscope_certificate_cache_entries",
                "Entries in the certificate source cache",
                value=float(stats.entries),
            )
        judged = CounterMetricFamily(
            "stirscope_credential_cache_events",
            "Judged credential (chain, CRL) cache lookups by outcome",
            labels=["event"],
        )
        judged.add_metric(["hits"], float(verifier.credentials.stats.hits))
        judged.add_metric(["misses"], float(verifier.credentials.stats.misses))
        yield judged

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _client_request_id(scope: Scope) -> str | None:
    """The client's ``X-RequestID`` when short and printable (ATIS-1000082 correlation)."""
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_NAME:
            return usable_request_id(value.decode("latin-1"))
    return None


def usable_request_id(text: str | None) -> str | None:
    """``text`` (the first ``X-RequestID`` of a request, Latin-1) when it may be echoed."""
    if text is not None and 0 < len(text) <= MAX_REQUEST_ID_CHARS and text.isprintable():
        return text
    return None


class Observer:
    """Request ids, per-route counters and latency, and the JSON access log: what the
    observability middleware does around every request, and the direct verification path
    (``service.api.hotpath``) around the requests it answers without the middleware."""

    def __init__(self, metrics: ApiMetrics, *, access: bool) -> None:
        self.metrics = metrics
        self.access = access
        self._ids = random.Random()  # seeded from os.urandom once, here

    def request_id(self, scope: Scope) -> str:
        """The client's X-RequestID (when usable) or a new id."""
        return _client_request_id(scope) or self.new_request_id()

    def new_request_id(self) -> str:
        """A new id (the client sent none that is usable)."""
        return f"{self._ids.getrandbits(REQUEST_ID_BITS):032x}"

    def finish(self, scope: Scope, request_id: str, status: int, elapsed: float) -> None:
        """Count and log one answered request (``scope["route"]`` names its template)."""
        route: Any = scope.get("route")
        self.answered(
            scope.get("method", ""),
            getattr(route, "path", None) or "unmatched",
            scope.get("path", ""),
            request_id,
            status,
            elapsed,
        )

    def answered(
        self, method: str, template: str, path: str, request_id: str, status: int, elapsed: float
    ) -> None:
        """``finish`` for a request whose method, route template and path are known."""
        self.metrics.count_request(method, template, status, elapsed)
        if self.access and access_log.isEnabledFor(logging.INFO):
            duration_ms = round(elapsed * 1000, 3)
            handler = _plain_json_handler()
            if handler is not None and _write_access_line(
                handler, request_id, method, path, status, duration_ms
            ):
                return
            fields = _access_fields(request_id, method, path, status, duration_ms)
            # ``access_log.info`` without its search of the stack for the caller's file and
            # line (a sixth of the line's cost; no log format shows them).
            record = access_log.makeRecord(
                access_log.name, logging.INFO, "", 0, ACCESS_MESSAGE, (), None, extra=fields
            )
            access_log.handle(record)


def _plain_json_handler() -> logging.StreamHandler[Any] | None:
    """The one handler an access record reaches when logging is set up as ``serve`` sets it up
    (``service.config.logging_config``: no filters, the ``stirscope`` logger's stream handler,
    a ``LineBatchingHandler`` or a plain ``StreamHandler``, with the JSON formatter), else
    None. Checked per request: a reconfiguration is seen."""
    logger = access_log
    parent = logger.parent
    if (
        logger.handlers
        or logger.filters
        or logger.disabled
        or not logger.propagate
        or parent is None
        or parent.filters
        or parent.disabled
        or parent.propagate
        or len(parent.handlers) != 1
    ):
        return None
    handler = parent.handlers[0]
    if (
        not isinstance(handler, logging.StreamHandler)
        or (type(handler) is not LineBatchingHandler and type(handler) is not logging.StreamHandler)
        or handler.lock is None
        or handler.filters
        or handler.level > logging.INFO
        or type(handler.formatter) is not JsonFormatter
    ):
        return None
    return handler


# How ``JsonFormatter`` (``json.JSONEncoder(ensure_ascii=False)``, default separators) writes
# an access record, spelled out: the encoder's generic walk of the record's dict, and the dict,
# cost more than the rest of the line. Checked against ``JsonFormatter.access_line`` before it
# is used for a formatter's lines (``_checked``), so a change of that format is followed.
_LINE_STRING: Callable[[str], str] = json.encoder.encode_basestring
_LINE_START = f"{{{_LINE_STRING('time')}: "
_LINE_MIDDLE = (
    f", {_LINE_STRING('level')}: {_LINE_STRING('info')}"
    f", {_LINE_STRING('logger')}: {_LINE_STRING(access_log.name)}"
    f", {_LINE_STRING('message')}: {_LINE_STRING(ACCESS_MESSAGE)}"
    f", {_LINE_STRING('request_id')}: "
)
_LINE_METHOD = f", {_LINE_STRING('method')}: "
_LINE_PATH = f", {_LINE_STRING('path')}: "
_LINE_STATUS = f", {_LINE_STRING('status')}: "
_LINE_DURATION = f", {_LINE_STRING('duration_ms')}: "
# Characters of a line besides its request id and path, about (the time's 23, a method, a
# status, a duration): what a line deferred to its batch's write counts towards its bound.
_LINE_FIXED_CHARS = (
    len(_LINE_START + _LINE_MIDDLE + _LINE_METHOD + _LINE_PATH + _LINE_STATUS + _LINE_DURATION) + 40
)


class _Checked:
    """The last formatter the spelled-out line was checked against, and whether it matched."""

    __slots__ = ("formatter", "matches")

    def __init__(self) -> None:
        self.formatter: JsonFormatter | None = None
        self.matches = False


_checked = _Checked()


def _access_text(
    formatter: JsonFormatter,
    created: float,
    request_id: str,
    method: str,
    path: str,
    status: int,
    duration_ms: float,
) -> str:
    """``formatter.access_line(created, access_log.name, ACCESS_MESSAGE, fields)`` for the
    fields ``Observer.finish`` logs; spelled out when that gives the same text (above)."""
    checked = _checked.formatter is formatter
    if (
        (not checked or _checked.matches)
        and type(request_id) is str
        and type(method) is str
        and type(path) is str
        and type(status) is int
        and type(duration_ms) is float
    ):
        text = (
            # The time is digits and ``-:.+T``: a JSON string as it is.
            f'{_LINE_START}"{formatter.iso_time(created)}"'
            f"{_LINE_MIDDLE}{_LINE_STRING(request_id)}{_LINE_METHOD}{_LINE_STRING(method)}"
            f"{_LINE_PATH}{_LINE_STRING(path)}{_LINE_STATUS}{int.__repr__(status)}"
            f"{_LINE_DURATION}{float.__repr__(duration_ms)}}}"
        )
        if checked:
            return text
    else:
        text = None
    fields = _access_fields(request_id, method, path, status, duration_ms)
    line = formatter.access_line(created, access_log.name, ACCESS_MESSAGE, fields)
    if not checked and text is not None:
        _checked.formatter, _checked.matches = formatter, text == line
    return line


def _access_fields(
    request_id: str, method: str, path: str, status: int, duration_ms: float
) -> dict[str, object]:
    """The access line's fields, as the log record's ``extra`` carries them."""
    return {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
    }


def _write_access_line(
    handler: logging.StreamHandler[Any],
    request_id: str,
    method: str,
    path: str,
    status: int,
    duration_ms: float,
) -> bool:
    """The access line written as the handler would write its record (same bytes,
    ``JsonFormatter.access_line``), without the logging module's per-record work (the
    ``LogRecord``, the logger and handler walk: most of a line's cost). False, nothing
    written, when that fails: the record then goes the ordinary way (which reports errors).
    On the event loop a ``LineBatchingHandler`` (``serve``'s) gathers the lines of the loop's
    turn into one write and flush (a system call each, once per line otherwise), each made
    when the batch is written, from the fields and the time taken here; a plain
    ``StreamHandler`` with a lock (``_plain_json_handler``) gets what its ``handle``, ``emit``
    and ``flush`` would do, done here under its lock, without their calls."""
    formatter = handler.formatter
    assert isinstance(formatter, JsonFormatter)  # checked by _plain_json_handler
    created = time.time()
    if type(handler) is LineBatchingHandler and handler.write_soon_rendered(
        _access_text,
        (formatter, created, request_id, method, path, status, duration_ms),
        len(request_id) + len(path) + _LINE_FIXED_CHARS,
    ):
        return True
    try:
        line = _access_text(formatter, created, request_id, method, path, status, duration_ms)
        with handler.lock:  # type: ignore[union-attr]  # not None: _plain_json_handler
            stream = handler.stream
            stream.write(line + handler.terminator)
            if stream and hasattr(stream, "flush"):
                stream.flush()
    except Exception:  # the logging path handles and reports it
        return False
    return True


class ObservabilityMiddleware:
    """Pure ASGI middleware: request id, per-route counters and latency, JSON access log."""

    def __init__(self, app: ASGIApp, *, observer: Observer) -> None:
        self.app = app
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observer = self.observer
        request_id = observer.request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id  # request.state.request_id
        id_header = (REQUEST_ID_HEADER.encode("latin-1"), request_id.encode("latin-1"))
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            observer.finish(scope, request_id, status, time.perf_counter() - start)
