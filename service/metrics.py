"""Prometheus metrics of the live faces (``stirscope listen``), and the plain-number counter and
histogram (``CountedFamily``, ``CountedHistogram``) that they and the HTTP service's metrics
(``service.api.metrics``) count with on their event loops.

Each `Metrics` owns its own ``CollectorRegistry`` (no process-global state, so tests and
several servers in one process never collide). Names follow the Prometheus conventions
(``stirscope_`` prefix, ``_total`` counters, base units: seconds).
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shaken.source import CacheStats

# Latency buckets (seconds): the bar is p99 under 20 ms with a warm cache; a cold
# certificate fetch may take up to the 2 s fetch timeout (analyzer/certsource.py).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)


class StatsSource(Protocol):
    """Anything with cache counters (``shaken.source.CachingSource``)."""

    def stats(self) -> CacheStats: ...


class _CacheCollector(Collector):
    """Certificate cache counters read at scrape time (RFC 8224 section 7.2 caching)."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._source.stats()
        lookups = CounterMetricFamily(
            "stirscope_cert_cache_lookups",
            "Certificate/CRL cache lookups by outcome",
            labels=["outcome"],
        )
        lookups.add_metric(["hit"], stats.hits)
        lookups.add_metric(["negative_hit"], stats.negative_hits)
        lookups.add_metric(["miss"], stats.misses)
        lookups.add_metric(["coalesced"], stats.coalesced)
        yield lookups
        evictions = CounterMetricFamily(
            "stirscope_cert_cache_evictions", "Certificate/CRL cache entries evicted"
        )
        evictions.add_metric([], stats.evictions)
        yield evictions
        entries = GaugeMetricFamily("stirscope_cert_cache_entries", "Cached certificates/CRLs")
        entries.add_metric([], stats.entries)
        yield entries


class _KernelDropsCollector(Collector):
    """UDP datagrams dropped by the kernel (receive buffer full), read at scrape time."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        drops = CounterMetricFamily(
            "stirscope_sip_udp_kernel_drops",
            "SIP datagrams the kernel dropped before they were read (receive buffer full)",
        )
        drops.add_metric([], self._read())
        yield drops


class CountedFamily(Collector):
    """A labelled counter kept as plain integers and exposed at scrape time exactly as a
    ``prometheus_client.Counter`` of the same name, labels and help would be (``_total`` and,
    unless disabled, ``_created`` per label set, in first-counted order).

    A server counts several things per request; the library counter takes a lock and checks
    observability on every increment, which here is a dictionary update. Counting happens on
    one thread (the event loop); a scrape from the metrics thread copies the table first.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.counts: dict[tuple[str, ...], int] = {}
        self._created: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, key: tuple[str, ...]) -> None:
        """Count one for the label values ``key`` (in ``labelnames`` order)."""
        counts = self.counts
        if key in counts:
            counts[key] += 1
        else:
            # Created before counted: a scrape in between never sees a count without it.
            self._created[key] = time.time()
            counts[key] = 1

    def labels(self, *values: str) -> CountedChild:
        """The counter of one label set (``Counter.labels`` shape, for the colder paths)."""
        if len(values) != len(self.labelnames):
            raise ValueError("incorrect label count")
        return CountedChild(self, tuple(str(v) for v in values))

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = self._created
        with_created = prometheus_metrics._use_created  # the library's own switch
        for key, count in list(self.counts.items()):
            family.add_metric(key, float(count), created[key] if with_created else None)
        yield family


class CountedHistogram(Collector):
    """A histogram kept as plain numbers and exposed at scrape time exactly as a
    ``prometheus_client.Histogram`` of the same name, labels, help and buckets would be
    (``_bucket``, ``_count``, ``_sum`` and ``_created`` per label set, in first-observed order;
    without labels, its one series from the start). Observed on one thread (module docstring).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        *,
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)  # as the library completes them
        self.bounds = tuple(bounds)
        self._le = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]
        # Per label set: the count of each bucket (not cumulative), then the sum of the values.
        self.series: dict[tuple[str, ...], list[float]] = {}
        self._created: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self._add(())
        registry.register(self)

    def _add(self, key: tuple[str, ...]) -> list[float]:
        self._created[key] = time.time()  # before the series: a scrape never sees one without
        series: list[float] = [0] * len(self.bounds)
        series.append(0.0)
        self.series[key] = series
        return series

    def observe(self, key: tuple[str, ...], amount: float) -> None:
        """Observe ``amount`` for the label values ``key`` (in ``labelnames`` order)."""
        series = self.series.get(key)
        if series is None:
            series = self._add(key)
        bounds = self.bounds
        index = bisect_left(bounds, amount)
        # The library counts it in the first bucket whose bound is not below it; NaN in none.
        if index < len(bounds) and amount <= bounds[index]:
            series[index] += 1
        series[-1] += amount

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, "histogram")

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "histogram")
        name, labelnames, created = self.name, self.labelnames, self._created
        with_created = prometheus_metrics._use_created  # the library's own switch
        with_sum = self.bounds[0] >= 0
        for key, series in list(self.series.items()):
            labels = dict(zip(labelnames, key, strict=True))
            total = 0.0
            for le, count in zip(self._le, series, strict=False):  # the sum is not a bucket
                total += count
                metric.add_sample(f"{name}_bucket", {**labels, "le": le}, total)
            metric.add_sample(f"{name}_count", dict(labels), total)
            if with_sum:
                metric.add_sample(f"{name}_sum", dict(labels), series[-1])
            if with_created:
                metric.add_sample(f"{name}_created", dict(labels), created[key])
        yield metric


@dataclass(frozen=True, slots=True)
class CountedChild:
    """One label set of a `CountedFamily`."""

    family: CountedFamily
    key: tuple[str, ...]

    def inc(self) -> None:
        self.family.inc(self.key)


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint; ``close()`` stops it."""

    host: str
    port: int
    _server: object
    _thread: threading.Thread

    def close(self) -> None:
        shutdown = getattr(self._server, "shutdown", None)
        if callable(shutdown):
            shutdown()
        closer = getattr(self._server, "server_close", None)
        if callable(closer):
            closer()
        self._thread.join(timeout=5)


class Metrics:
    """Counters and histograms of the SIP verification server (shared by later faces)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = CountedFamily(
            "stirscope_sip_requests",
            "SIP requests received by transport and method",
            ["transport", "method"],
            registry=r,
        )
        self.responses = CountedFamily(
            "stirscope_sip_responses",
            "SIP responses sent by status code (retransmissions included)",
            ["status"],
            registry=r,
        )
        self.verifications = CountedFamily(
            "stirscope_verifications",
            "Verifications by verstat and reason code",
            ["verstat", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "stirscope_sip_answer_seconds",
            "Time from an INVITE's arrival to its final answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.verify_latency = Histogram(
            "stirscope_verify_seconds",
            "Time spent in the verifier per INVITE (on the event loop or a worker thread)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shed = CountedFamily(
            "stirscope_sip_shed",
            "INVITEs answered 503 because the verification queue was full or closing",
            ["transport"],
            registry=r,
        )
        self.dropped = CountedFamily(
            "stirscope_sip_dropped",
            "Messages that got no response, by reason",
            ["transport", "reason"],
            registry=r,
        )
        self.retransmissions = CountedFamily(
            "stirscope_sip_retransmissions",
            "Retransmitted requests answered from the transaction cache",
            ["transport"],
            registry=r,
        )
        self.inflight = Gauge(
            "stirscope_sip_inflight", "Verifications queued or running", registry=r
        )
        self.connections = Gauge(
            "stirscope_sip_tcp_connections", "Open SIP TCP connections", registry=r
        )
        self.errors = CountedFamily(
            "stirscope_internal_errors",
            "Unexpected exceptions contained by a listener (a bug if non-zero)",
            ["where"],
            registry=r,
        )

    def watch_cache(self, source: object) -> None:
        """Export a certificate cache's counters when ``source`` has ``stats()``."""
        if callable(getattr(source, "stats", None)):
            self.registry.register(_CacheCollector(source))  # type: ignore[arg-type]

    def watch_kernel_drops(self, read: Callable[[], int]) -> None:
        """Export datagrams the kernel dropped before a listener could read them."""
        self.registry.register(_KernelDropsCollector(read))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (for an HTTP handler)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (0 when absent); for tests and summary lines."""
        found = self.registry.get_sample_value(name, labels or {})
        return found if found is not None else 0.0

    def total(self, name: str) -> float:
        """Sum of every sample of ``name`` over all label values."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    total += sample.value
        return total

    def serve(self, host: str, port: int) -> MetricsServer:
        """Start ``/metrics`` on ``host:port`` in a background thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        bound = server.server_address[1]
        return MetricsServer(host, int(bound), server, thread)
