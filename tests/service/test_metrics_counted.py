"""``service.metrics.CountedFamily`` against the ``prometheus_client.Counter`` it stands in
for: the same exposition (names, labels, help, values and sample order; only the ``_created``
timestamps differ, being clock reads)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest

from service.metrics import CountedFamily, Metrics

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
