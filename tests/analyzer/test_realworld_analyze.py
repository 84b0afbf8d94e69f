"""Real captures through the whole analyze pipeline: no crash, INVITE counts as tshark's.

The expected counts are the ones of ``test_realworld_pcap.py`` (tshark 4.0.17 and ours, with
the documented difference on the fuzzed capture). Here an INVITE is a parsed SIP request with
method INVITE, counted by the call tracker, retransmissions included, as tshark counts packets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from analyzer.records import CallRecord
from analyzer.run import AnalyzeJob, AnalyzeOptions
from analyzer.verifying import VerifierConfig
from tests.analyzer.test_realworld_pcap import EXPECTED

pytestmark = pytest.mark.realworld

ROOT = Path(__file__).resolve().parents[2]
CONFIG = VerifierConfig(trust=(ROOT / "fixtures" / "pki" / "trust",))


def _analyze(path: Path) -> tuple[AnalyzeJob, list[CallRecord]]:
    job = AnalyzeJob([str(path)], AnalyzeOptions(CONFIG))
    return job, list(job.records())


def test_every_real_capture_is_analysed_without_a_crash(realworld: Path) -> None:
    files = sorted((realworld / "pcap").iterdir())
    assert files
    for path in files:
        job, records = _analyze(path)
        assert job.summary.calls == len(records), path.name
        for record in records:
            assert record.error is None, (path.name, record.call_id, record.error)
            assert record.frames, path.name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invite_count_matches_tshark(realworld: Path, name: str) -> None:
    path = realworld / "pcap" / name
    if not path.is_file():
        pytest.skip(f"{name} not in this corpus")
    job, records = _analyze(path)
    tshark, ours = EXPECTED[name]
    assert job.stats.tracker.invites == ours
    assert abs(job.stats.tracker.invites - tshark) <= 1
    assert (len(records) > 0) == (ours > 0)


def test_real_signed_invite_is_verified_and_attributed(realworld: Path) -> None:
    _job, records = _analyze(realworld / "pcap" / "derived_real_neustar_invite_udp_ipfrag.pcap")
    (record,) = records
    assert record.frames == (1, 2)
    assert record.passports  # the real Identity header was extracted and judged
    assert record.verstat == "TN-Validation-Failed"  # not signed by our test trust anchor
