"""The evidence manifest written with every analysis: what was read, with what, and what came out.

It ties the records to their inputs (SHA-256 and size of each capture, hashed as it was read),
to the tool (version), to the trust anchors (``TrustStore.fingerprint``), to the configuration
(``VerifierConfig.to_json``) and to the verification-time policy (each call as of its packet
time, or one fixed time), with the counts of the run. It holds no wall-clock time, so the same
inputs and configuration give the same manifest.

ARCHITECTURE.md section 2 (evidence); ATIS-1000080 (trust anchors).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from analyzer.records import Summary, iso_datetime
from analyzer.run import InputInfo, RunStats
from analyzer.verifying import VerifierConfig
from analyzer.version import __version__
from shaken.trust import TrustStore

MANIFEST_VERSION = 1


def time_policy(at_override: datetime | None) -> dict[str, object]:
    """How verification time was chosen (ARCHITECTURE.md section 1 rule 4)."""
    if at_override is None:
        return {"mode": "packet_timestamp", "at": None}
    return {"mode": "fixed", "at": iso_datetime(at_override)}


def build_manifest(
    *,
    inputs: Sequence[InputInfo],
    trust: TrustStore,
    config: VerifierConfig,
    at_override: datetime | None,
    summary: Summary,
    stats: RunStats,
    output_format: str,
) -> dict[str, object]:
    """The manifest as a JSON-ready dict (keys in a fixed order)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "tool": {"name": "stirscope", "version": __version__},
        "inputs": [i.to_json() for i in inputs],
        "trust_store": {
            "fingerprint_sha256": trust.fingerprint,
            "anchors": len(trust),
            "subjects": sorted(a.x509.subject.rfc4514_string() for a in trust.anchors),
        },
        "configuration": config.to_json(),
        "verification_time": time_policy(at_override),
        "output_format": output_format,
        "counts": {**stats.to_json(), "summary": summary.to_json()},
    }
