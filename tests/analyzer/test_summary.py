"""``Summary.add``: the counts of a run, folded call by call, are those of the plain definition
(every count bumped through the bound), also once a counter holds ``MAX_DISTINCT`` keys."""

from __future__ import annotations

from collections import Counter
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer import records
from analyzer.records import NO_ATTEST, TIMELINE_BUCKET_NS, CallDigest, Summary, signer_label

SMALL = 3  # MAX_DISTINCT in these tests: the bound binds after a few keys


def _plain(digests: list[CallDigest]) -> Summary:
    """The definition: every count through ``_bump``, the timeline bounded the same way."""
    summary = Summary()
    bump = records._bump
    for record in digests:
        summary.calls += 1
        verdict = record.verstat or "error"
        bump(summary.verstat, verdict)
        bump(summary.attest, record.attest or NO_ATTEST)
        if record.signer_spc or record.signer_org:
            bump(summary.signers, signer_label(record.signer_spc, record.signer_org))
        if record.reason:
            bump(summary.reasons, record.reason)
        bump(summary.final_status, str(record.final_status or "none"))
        bump(summary.states, record.state)
        label = (
            f"{record.encapsulation}/{record.transport}"
            if record.encapsulation
            else record.transport
        )
        bump(summary.transports, label)
        for kind in record.anomaly_kinds:
            bump(summary.anomalies, kind)
        bucket = record.start_ns // TIMELINE_BUCKET_NS
        if bucket not in summary.timeline and len(summary.timeline) >= records.MAX_DISTINCT:
            bucket = max(summary.timeline)
        summary.timeline.setdefault(bucket, Counter())[verdict] += 1
        first, last = summary.first_ns, summary.last_ns
        summary.first_ns = record.start_ns if first is None else min(first, record.start_ns)
        summary.last_ns = record.start_ns if last is None else max(last, record.start_ns)
    return summary


def _few(*values: str | None) -> st.SearchStrategy[str | None]:
    return st.sampled_from(values)


DIGESTS = st.builds(
    CallDigest,
    start_ns=st.integers(0, 6 * TIMELINE_BUCKET_NS),
    verstat=_few(None, "TN-Validation-Passed", "TN-Validation-Failed", "No-TN-Validation", "x"),
    attest=_few(None, "A", "B", "C", "D"),
    signer_spc=_few(None, "1234", "5678", "9abc", "def0"),
    signer_org=_few(None, "Alpha", "Beta"),
    reason=_few(None, "403", "436", "437", "438"),
    final_status=st.sampled_from([None, 0, 180, 200, 404, 486, 503]),
    state=st.sampled_from(["completed", "failed", "cancelled", "open", "timeout"]),
    transport=st.sampled_from(["udp", "tcp", "tls", "sctp"]),
    encapsulation=st.sampled_from(["", "hep3", "vxlan"]),
    anomaly_kinds=st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=3).map(tuple),
)


@pytest.mark.parametrize("bound", [SMALL, records.MAX_DISTINCT], ids=["bound-binds", "bound"])
@settings(max_examples=150, deadline=None)
@given(digests=st.lists(DIGESTS, max_size=40))
def test_add_counts_as_the_definition(bound: int, digests: list[CallDigest]) -> None:
    with mock.patch.object(records, "MAX_DISTINCT", bound):
        expected = _plain(digests)
        summary = Summary()
        for digest in digests:
            summary.add(digest)
    assert summary == expected
    assert summary.to_json() == expected.to_json()
