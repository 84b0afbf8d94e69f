"""assess_call: calls from the bundled demo capture to records; errors become data."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from analyzer.assess import assess_call
from analyzer.calls import Call, CallTracker
from analyzer.capture import ObservedMessage, iter_messages
from analyzer.records import CallRecord, iso_ns
from analyzer.verifying import VerifierConfig, build_verifier
from shaken.errors import Reason
from shaken.result import Verstat
from shaken.verifier import VerificationRequest, Verifier
from sip import Request

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo" / "demo.pcap"
CONFIG = VerifierConfig(
    trust=(ROOT / "fixtures" / "pki" / "trust",), certs_dirs=(ROOT / "fixtures" / "certs",)
)


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return build_verifier(CONFIG)


@pytest.fixture(scope="module")
def calls() -> dict[str, Call]:
    tracker = CallTracker()
    found: list[Call] = []
    for item in iter_messages(DEMO):
        if isinstance(item, ObservedMessage):
            found.extend(tracker.feed(item))
    found.extend(tracker.flush())
    return {c.call_id.split("@")[0]: c for c in found}


# call -> (verstat, SIP status of the verifier, reason, attest, signer SPC, final status)
EXPECTED = {
    "demo-01-alpha-udp": (Verstat.PASSED, None, None, "A", "1234A", 200),
    "demo-02-bravo-tcp": (Verstat.PASSED, None, None, "B", "5678B", 200),
    "demo-03-charlie-frag": (Verstat.PASSED, None, None, "C", "9012C", 486),
    "demo-04-alpha-hep": (Verstat.PASSED, None, None, "A", "1234A", 487),
    "demo-05-tampered": (Verstat.FAILED, 438, Reason.SIGNATURE_INVALID, "B", "1234A", 603),
    "demo-06-untrusted": (Verstat.FAILED, 437, Reason.CHAIN_UNTRUSTED, "A", "1357W", 200),
    "demo-07-revoked": (Verstat.FAILED, 437, Reason.CERT_REVOKED, "A", "5678B", 200),
    "demo-08-unsigned": (Verstat.NO_VALIDATION, 428, Reason.NO_IDENTITY_HEADER, None, None, 200),
    "demo-09-stale": (Verstat.FAILED, 403, Reason.STALE_DATE, "A", "1234A", 403),
    "demo-10-diverted": (Verstat.PASSED, None, None, "A", "1234A", 200),
    "demo-11-two-hops": (Verstat.PASSED, None, None, "B", "5678B", 200),
    "demo-12-retransmitted": (Verstat.PASSED, None, None, "B", "1234A", 200),
    # The token is unreadable but its info URL still names the certificate: the signer shows.
    "demo-13-malformed-identity": (Verstat.FAILED, 438, Reason.MALFORMED_TOKEN, None, "1234A", 200),
}


def test_demo_has_exactly_the_expected_calls(calls: dict[str, Call]) -> None:
    assert sorted(calls) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_demo_call_verdicts(name: str, calls: dict[str, Call], verifier: Verifier) -> None:
    record = assess_call(calls[name], verifier)
    verstat, status, reason, attest, spc, final = EXPECTED[name]
    assert record.verstat == verstat.value
    assert record.status_code == status
    assert record.reason == (reason.value if reason else None)
    assert record.attest == attest
    assert record.signer_spc == spc
    assert record.final_status == final
    assert record.error is None
    # Verified as of the INVITE's packet time (the primary leg's).
    assert record.at == iso_ns(calls[name].primary.invite.ts_ns)


def test_each_leg_verified_as_of_its_own_packet(calls: dict[str, Call], verifier: Verifier) -> None:
    record = assess_call(calls["demo-11-two-hops"], verifier)
    assert [leg.verstat for leg in record.legs] == [Verstat.PASSED.value] * 2
    assert record.legs[0].at != record.legs[1].at  # 2 ms apart
    assert record.legs[1].src.startswith("[2001:db8:")


def test_at_override_is_used_for_every_leg(calls: dict[str, Call], verifier: Verifier) -> None:
    later = datetime(2031, 1, 1, tzinfo=UTC)  # after the alpha certificate's notAfter
    record = assess_call(calls["demo-01-alpha-udp"], verifier, later)
    assert record.at == "2031-01-01T00:00:00.000000Z"
    assert record.verstat == Verstat.FAILED.value
    findings = [cast(list[dict[str, object]], p["findings"]) for p in record.passports]
    reasons = {f["reason"] for found in findings for f in found}
    assert Reason.CERT_EXPIRED.value in reasons


def test_malformed_identity_is_an_anomaly_with_its_frame(
    calls: dict[str, Call], verifier: Verifier
) -> None:
    call = calls["demo-13-malformed-identity"]
    record = assess_call(call, verifier)
    assert [a["kind"] for a in record.anomalies] == ["malformed_identity"]
    assert record.anomalies[0]["frame"] == call.primary.invite.frame


class ExplodingVerifier:
    def verify(self, request: VerificationRequest, *, at: datetime) -> object:
        raise RuntimeError("boom")


def test_verifier_errors_become_data(calls: dict[str, Call]) -> None:
    record = assess_call(calls["demo-01-alpha-udp"], ExplodingVerifier())  # type: ignore[arg-type]
    assert isinstance(record, CallRecord)
    assert record.verstat is None
    assert record.error == "RuntimeError: boom"
    assert record.passports == ()
    assert record.to_json()["error"] == "RuntimeError: boom"


def test_identities_raw_and_canonical(calls: dict[str, Call], verifier: Verifier) -> None:
    record = assess_call(calls["demo-01-alpha-udp"], verifier)
    assert record.from_.tn == "12025550101"
    assert record.from_.raw is not None
    assert record.from_.raw.startswith('"Alpha Caller"')
    assert record.to.tn == "12025550199"
    assert record.pai.raw is None
    message = calls["demo-01-alpha-udp"].primary.invite.message
    assert isinstance(message, Request)
    assert record.request_uri == message.uri_text


def test_pai_canonical_tn_and_observed_verstat(verifier: Verifier) -> None:
    invite = Request.build(
        "INVITE",
        "sip:+12025550199@b.example",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKpai"),
            ("Max-Forwards", "70"),
            ("From", "<sip:anonymous@anonymous.invalid>;tag=1"),
            ("To", "<sip:+12025550199@b.example>"),
            ("Call-ID", "pai-1"),
            ("CSeq", "1 INVITE"),
            ("P-Asserted-Identity", "<sip:alice@a.example>"),
            ("P-Asserted-Identity", "<tel:+1-202-555-0101;verstat=No-TN-Validation>"),
        ],
    )  # fmt: skip
    obs = ObservedMessage(invite, 1_768_478_400 * 10**9, 1, (1,), "192.0.2.1", 5060,
                          "192.0.2.2", 5060, "udp")  # fmt: skip
    tracker = CallTracker()
    tracker.feed(obs)
    (call,) = tracker.flush()
    record = assess_call(call, verifier)
    assert record.pai.tn == "12025550101"
    assert record.pai.raw is not None
    assert "tel:+1-202-555-0101" in record.pai.raw
    assert record.observed_verstat == "No-TN-Validation"
    assert record.verstat == Verstat.NO_VALIDATION.value
