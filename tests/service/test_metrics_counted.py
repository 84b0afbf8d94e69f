"""``service.metrics.CountedFamily`` against the ``prometheus_client.Counter`` it stands in
for, and the HTTP service's ``ApiMetrics`` (``CountedFamily``, ``CountedHistogram``) against
the library's counters and histograms: the same exposition (names, labels, help, values and
sample order; only the ``_created`` timestamps differ, being clock reads)."""

from __future__ import annotations

import math
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from service.api.metrics import LATENCY_BUCKETS, ApiMetrics
from service.metrics import CountedFamily, CountedHistogram, Metrics

_CREATED = re.compile(rb"^(\S+_created(?:\{[^}]*\})?) \S+$", re.MULTILINE)


def _exposition(registry: CollectorRegistry) -> bytes:
    return _CREATED.sub(rb"\1 T", generate_latest(registry))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["udp", "tcp"]), st.sampled_from(["INVITE", "ACK", 'x"\\'])),
        max_size=12,
    )
)
def test_same_exposition_as_a_counter(incs: list[tuple[str, str]]) -> None:
    library, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("stirscope_sip_requests", "SIP requests", ["transport", "method"],
                      registry=library)  # fmt: skip
    family = CountedFamily("stirscope_sip_requests", "SIP requests", ["transport", "method"],
                           registry=ours)  # fmt: skip
    for i, labels in enumerate(incs):
        counter.labels(*labels).inc()
        if i % 2:
            family.inc(labels)
        else:
            family.labels(*labels).inc()
    assert _exposition(ours) == _exposition(library)
    for labels in set(incs):
        sample = dict(zip(("transport", "method"), labels, strict=True))
        assert ours.get_sample_value("stirscope_sip_requests_total", sample) == (
            library.get_sample_value("stirscope_sip_requests_total", sample)
        )


def test_metrics_names_unchanged() -> None:
    metrics = Metrics()
    metrics.requests.inc(("udp", "INVITE"))
    metrics.errors.labels("sip_handle").inc()
    assert (
        metrics.value("stirscope_sip_requests_total", {"transport": "udp", "method": "INVITE"}) == 1
    )
    assert metrics.total("stirscope_internal_errors_total") == 1
    text = metrics.render()[0].decode()
    for name in ("stirscope_sip_requests_total", "stirscope_sip_requests_created",
                 "stirscope_sip_shed_total", "stirscope_sip_dropped_total",
                 "stirscope_verifications_total", "stirscope_internal_errors_total"):  # fmt: skip
        assert f"# TYPE {name} " in text


# -- the HTTP service's metrics (service.api.metrics) against the library's own ---------------

_SECONDS = st.one_of(
    st.sampled_from([0.0, 0.0001, 0.00025, 0.001, 10.0, 10.5, -1.0, math.inf, math.nan]),
    st.floats(min_value=0, max_value=20, allow_nan=False),
)
_EVENTS = st.lists(
    st.one_of(
        st.tuples(
            st.just("request"),
            st.sampled_from(["GET", "POST"]),
            st.sampled_from(["/stir/v1/verification", "/metrics", "unmatched"]),
            st.sampled_from([200, 400, 503]),
            _SECONDS,
        ),
        st.tuples(
            st.just("verification"),
            st.sampled_from(["TN-Validation-Passed", "TN-Validation-Failed"]),
            st.sampled_from(["none", "stale_iat"]),
            _SECONDS,
        ),
        st.tuples(st.just("signing"), st.sampled_from(["signed", "rejected"])),
    ),
    max_size=25,
)


class _LibraryApiMetrics:
    """``ApiMetrics``' counters and histograms as the library's own, for comparison."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "stirscope_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "stirscope_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.verifications = Counter(
            "stirscope_verifications",
            "Verifications by verstat and first reason (none when passed)",
            ["verstat", "reason"],
            registry=self.registry,
        )
        self.verification_latency = Histogram(
            "stirscope_verification_duration_seconds",
            "Time spent in the verifier per request",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.signings = Counter(
            "stirscope_signings", "Signing requests by outcome", ["result"], registry=self.registry
        )


@settings(max_examples=150, deadline=None)
@given(_EVENTS)
def test_api_metrics_expose_as_the_library(events: list[tuple[Any, ...]]) -> None:
    ours, library = ApiMetrics(), _LibraryApiMetrics()
    for event in events:
        if event[0] == "request":
            _, method, route, status, seconds = event
            ours.count_request(method, route, status, seconds)
            library.requests.labels(method, route, str(status)).inc()
            library.latency.labels(route).observe(seconds)
        elif event[0] == "verification":
            _, verstat, reason, seconds = event
            ours.count_verification(verstat, reason, seconds)
            library.verifications.labels(verstat, reason).inc()
            library.verification_latency.observe(seconds)
        else:
            ours.signings.labels(event[1]).inc()
            library.signings.labels(event[1]).inc()
    assert _exposition(ours.registry) == _exposition(library.registry)
    sample = {"route": "/metrics", "le": "0.001"}
    assert ours.registry.get_sample_value(
        "stirscope_http_request_duration_seconds_bucket", sample
    ) == library.registry.get_sample_value("stirscope_http_request_duration_seconds_bucket", sample)


def test_counted_histogram_buckets_as_the_library() -> None:
    ours, library = CollectorRegistry(), CollectorRegistry()
    mine = CountedHistogram("h", "help", ["x"], [1, 2.5, math.inf], registry=ours)
    theirs = Histogram("h", "help", ["x"], buckets=[1, 2.5, math.inf], registry=library)
    for value in (0.5, 1.0, 1.0000001, 2.5, 3.0, -2.0, math.inf, math.nan):
        mine.observe(("a",), value)
        theirs.labels("a").observe(value)
    assert _exposition(ours) == _exposition(library)
