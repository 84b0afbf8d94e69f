"""Traceback candidates from the generated capture: hops, statuses, selection, campaigns,
replays, provider names, incident data, schema and determinism."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

import jsonschema
import pytest

from analyzer.run import AnalyzeJob, AnalyzeOptions
from analyzer.traceback import TracebackSettings, canonical, make_candidates
from analyzer.traceback_directory import PeerMap, ProviderDirectory, WatchList
from analyzer.traceback_facts import CallFacts, e164, itg_number, uri_tn
from analyzer.traceback_select import Selection, SelectionError
from analyzer.verifying import VerifierConfig
from tests.conftest import FIXTURES, ROOT

TB = FIXTURES / "traceback"
SCHEMA = json.loads((ROOT / "schemas" / "traceback-candidate.schema.json").read_text("utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
CAMPAIGN_VALIDATOR = jsonschema.Draft202012Validator(
    {"$schema": SCHEMA["$schema"], "$ref": "#/$defs/campaign", "$defs": SCHEMA["$defs"]}
)


@cache
def records() -> tuple[str, ...]:
    """The generated capture analysed once (JSONL lines, as `analyze` writes them)."""
    config = VerifierConfig(trust=(FIXTURES / "pki" / "trust",), certs_dirs=(FIXTURES / "certs",))
    job = AnalyzeJob([str(TB / "traceback.pcap")], AnalyzeOptions(config))
    return tuple(json.dumps(r.to_json()) for r in job.records())


def facts() -> list[CallFacts]:
    return [CallFacts.from_json(json.loads(line)) for line in records()]


def settings(**kw: Any) -> TracebackSettings:
    base: dict[str, Any] = {
        "network": "Our Telco",
        "peers": PeerMap.load(str(TB / "peers.csv")),
        "providers": ProviderDirectory.load(str(TB / "providers.csv")),
        "time_zone": "America/New_York",
        "tool_version": "test",
    }
    base.update(kw)
    return TracebackSettings(**base)


def candidates(select: str = "all", **kw: Any) -> dict[str, dict[str, Any]]:
    watch = WatchList.load(str(TB / "watchlist.txt"))
    result = make_candidates(facts(), settings(**kw), Selection.parse(select), watch=watch)
    return {c["call"]["sip_call_id"].split("@")[0]: c for c in result.candidates}


def hops(candidate: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(h["role"], h["inferred_status"], h["confidence"]) for h in candidate["hops"]]


US = ("terminating", "self", "high")
GAP = ("gap", "unknown_gap", "none")


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("robo-00", [US, ("immediate_upstream", "upstream_identified", "high"), GAP,
                     ("signer", "gateway_candidate", "medium")]),
        ("clean-0", [US, ("immediate_upstream", "upstream_identified", "high"), GAP,
                     ("signer", "originating_provider_candidate", "high")]),
        ("unsigned-signing", [US, ("immediate_upstream", "upstream_identified", "high"),
                              ("gap", "unsigned_no_origin_evidence", "none")]),
        ("replay-first", [US, ("immediate_upstream", "upstream_identified", "high"), GAP,
                          ("signer", "originating_provider_candidate", "low")]),
        ("replay-late", [US, ("immediate_upstream", "upstream_unmapped", "medium"), GAP,
                         ("signer", "signer_unverified", "low")]),
        ("diverted-chain", [US, ("immediate_upstream", "upstream_identified", "medium"), GAP,
                            ("diverting_provider", "diverting_provider_candidate", "high"), GAP,
                            ("diverting_provider", "diverting_provider_candidate", "high"), GAP,
                            ("signer", "originating_provider_candidate", "high")]),
        ("untrusted", [US, ("immediate_upstream", "upstream_identified", "high"), GAP,
                       ("signer", "signer_unverified", "low")]),
    ],
    ids=["c-gateway", "a-valid", "unsigned", "replayed-valid", "replayed-stale", "div-chain",
         "untrusted"],
)  # fmt: skip
def test_hop_roles_statuses_and_confidence(call: str, expected: list[tuple[str, str, str]]) -> None:
    candidate = candidates()[call]
    assert hops(candidate) == expected
    assert [h["position"] for h in candidate["hops"]][:2] == [0, 1]
    assert all(h["itg_outcome"] is None for h in candidate["hops"])
    assert candidate["review_required"] is True
    assert candidate["itg_prefill"]["review_required"] is True


def test_entry_point_without_gateway_flag() -> None:
    plain = candidates(providers=None)["robo-00"]
    assert hops(plain)[-1] == ("signer", "entry_point_candidate", "medium")
    provider = plain["hops"][-1]["provider"]
    assert (provider["name"], provider["name_source"]) == (
        "Charlie Gateway",
        "certificate_organization",
    )


def test_unmapped_upstream_without_peers_file() -> None:
    candidate = candidates(peers=None)["clean-0"]
    upstream = candidate["hops"][1]
    assert upstream["inferred_status"] == "upstream_unmapped"
    assert candidate["itg_prefill"]["received_from_unresolved"] is True
    codes = [x["code"] for x in candidate["limitations"]]
    assert "no_peer_map" in codes


def test_div_chain_order_nearest_first() -> None:
    chain = candidates()["diverted-chain"]
    diverters = [h["provider"]["spc"] for h in chain["hops"] if h["role"] == "diverting_provider"]
    assert diverters == ["9012C", "5678B"]  # charlie retargeted last, bravo first
    assert chain["stir_shaken"]["summary"]["div_present"] is True
    assert chain["hops"][1]["ingress"]["trunk_id"] == "tg-three"
    assert "div_not_always_signed" in [x["code"] for x in chain["limitations"]]


def test_provider_names_record_their_source() -> None:
    c = candidates()
    robo = c["robo-00"]
    signer = robo["hops"][-1]
    assert signer["provider"]["name"] == "Charlie International Gateway Corp"
    assert signer["provider"]["name_source"] == "providers_file"
    assert signer["provider"]["certificate_organization"] == "Charlie Gateway"
    assert signer["provider"]["rmd_number"] == "RMD0009012"
    assert signer["same_as_hop"] == 1  # Gateway Two holds SPC 9012C in the peers file
    upstream = robo["hops"][1]["provider"]
    assert (upstream["name"], upstream["name_source"], upstream["spc"]) == (
        "Gateway Two", "peers_file", "9012C")  # fmt: skip
    assert robo["hops"][0]["provider"]["name_source"] == "network_option"
    untrusted = c["untrusted"]["hops"][-1]["provider"]
    assert (untrusted["name"], untrusted["name_source"]) == (
        "Whiskey Wireless",
        "certificate_organization",
    )


def test_evidence_marks_what_is_authenticated() -> None:
    c = candidates()
    valid = {
        (e["kind"], e.get("field")): e["authenticated"]
        for e in c["clean-0"]["hops"][-1]["evidence"]
    }
    assert valid[("verification_result", None)] is True
    assert valid[("certificate", "TNAuthList.spc")] is True
    assert valid[("passport_claim", "attest")] is True
    assert valid[("external_dataset", "spc")] is False
    bad = {
        (e["kind"], e.get("field")): e["authenticated"]
        for e in c["untrusted"]["hops"][-1]["evidence"]
    }
    assert bad[("verification_result", None)] is False
    assert bad[("certificate", "TNAuthList.spc")] is False
    trunk = c["diverted-chain"]["hops"][1]["evidence"]
    assert {(e["kind"], e["authenticated"]) for e in trunk} >= {
        ("network_layer", True), ("sip_header", False), ("trunk_map", True)}  # fmt: skip
    peer_line = next(e for e in c["clean-0"]["hops"][1]["evidence"] if e["kind"] == "trunk_map")
    assert peer_line["dataset"]["line"] == 5
    assert len(peer_line["dataset"]["sha256"]) == 64


def test_incident_data_and_prefill() -> None:
    robo = candidates()["robo-03"]
    call, prefill = robo["call"], robo["itg_prefill"]
    assert call["calling_number"] == "+13125550103"
    assert call["called_number"] == "+12025550199"
    assert call["start_utc"] == "2026-01-15T13:00:09.000Z"
    assert call["start_local"] == "2026-01-15T08:00:09.000-05:00"
    assert call["time_zone"] == "America/New_York"
    assert (prefill["calling_number"], prefill["called_number"]) == ("3125550103", "2025550199")
    assert prefill["hop_response"] == "upstream_provider"
    assert prefill["received_from"]["name"] == "Gateway Two"
    assert prefill["received_from_unresolved"] is False
    assert "SPC 9012C" in prefill["comment"]
    origin = robo["attested_origin"]
    assert origin["attest"] == "C"
    assert origin["signer_spc"] == "9012C"
    assert len(origin["certificate_fingerprint_sha256"]) == 64
    assert origin["verified_at"].startswith("2026-01-15T13:00:09")


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        ("failed", {"tampered", "untrusted", "replay-late"}),
        ("c-attest", {f"robo-{i:02d}" for i in range(12)}),
        ("unsigned-from-signing-peers", {"unsigned-signing"}),
        ("watch", {"clean-0", "clean-1", "clean-2"} | {f"robo-{i:02d}" for i in range(12)}),
        ("replay", {"replay-first", "replay-again", "replay-late"}),
        ("failed,unsigned-from-signing-peers", {"tampered", "untrusted", "replay-late",
                                                "unsigned-signing"}),
        ("failed+replay", {"replay-late"}),
        ("c-attest+watch", {f"robo-{i:02d}" for i in range(12)}),
        ("watch+replay", set()),
    ],
    ids=["failed", "c-attest", "unsigned-signing-peer", "watch", "replay", "union",
         "intersection", "c-and-watch", "empty-intersection"],
)  # fmt: skip
def test_selection_rules(select: str, expected: set[str]) -> None:
    chosen = candidates(select)
    assert set(chosen) == expected
    for candidate in chosen.values():
        assert candidate["selected_by"]


def test_all_selects_every_call() -> None:
    assert len(candidates("all")) == len(records()) == 23


@pytest.mark.parametrize("text", ["", "failed,", "nope", "failed+", "c_attest"])
def test_bad_selection(text: str) -> None:
    with pytest.raises(SelectionError):
        Selection.parse(text)


def test_replay_flags_in_candidates() -> None:
    c = candidates("replay")
    first, again, late = (
        c["replay-first"]["replay"],
        c["replay-again"]["replay"],
        c["replay-late"]["replay"],
    )
    assert first["first"] is True
    assert again["first"] is False
    assert first["kinds"] == ["different_call_id"]
    assert late["kinds"] == ["different_call_id", "outside_freshness"]
    assert {first["signature_sha256"]} == {again["signature_sha256"], late["signature_sha256"]}
    assert first["sightings"] == 3
    assert "replay_suspected" in [x["code"] for x in c["replay-again"]["limitations"]]


def test_campaigns_of_many_calls() -> None:
    result = make_candidates(facts(), settings(), Selection.parse("all"))
    by_id = {c.campaign_id: c.to_json() for c in result.campaigns}
    signer = by_id["signer:9012C:origid:2f0b7c4e-6b1a-4f53-9d2e-6a5e1c3b9a01"]
    pattern = by_id["calling:+1312555XXXX"]
    for campaign in (signer, pattern):
        assert campaign["count"] == 12
        assert campaign["first_seen"] == "2026-01-15T13:00:00.000Z"
        assert campaign["last_seen"] == "2026-01-15T13:00:33.000Z"
        assert campaign["attestation"] == {"C": 12}
        assert campaign["distinct_calling_numbers"] == 12
        assert campaign["signers"] == {"9012C (Charlie International Gateway Corp)": 12}
        assert campaign["upstream_peers"] == {"Gateway Two": 12}
        CAMPAIGN_VALIDATOR.validate(campaign)
    robo = next(c for c in result.candidates if c["call"]["sip_call_id"].startswith("robo-05"))
    assert set(robo["campaign_ids"]) == {signer["campaign_id"], pattern["campaign_id"]}
    alpha = by_id["signer:1234A:origid:2f0b7c4e-6b1a-4f53-9d2e-6a5e1c3b9a01"]
    assert alpha["attestation"] == {"A": 7, "B": 1}
    assert alpha["possible_replays"] == 3


def test_campaign_minimum() -> None:
    result = make_candidates(facts(), settings(), Selection.parse("all"), min_campaign_calls=12)
    assert [c.campaign_id for c in result.campaigns] == [
        "calling:+1312555XXXX",
        "signer:9012C:origid:2f0b7c4e-6b1a-4f53-9d2e-6a5e1c3b9a01",
    ]


def test_every_candidate_validates_against_the_schema() -> None:
    for candidate in candidates("all").values():
        errors = sorted(VALIDATOR.iter_errors(candidate), key=lambda e: list(e.path))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:3]]


def test_schema_rejects_a_claimed_outcome_shape() -> None:
    candidate = json.loads(json.dumps(candidates("all")["clean-0"]))
    candidate["review_required"] = False
    assert not VALIDATOR.is_valid(candidate)
    candidate["review_required"] = True
    candidate["hops"][2]["confidence"] = "high"  # a gap is never known
    assert not VALIDATOR.is_valid(candidate)


def test_deterministic_ids_and_hashes() -> None:
    one, two = candidates("all"), candidates("all")
    assert json.dumps(one) == json.dumps(two)
    shuffled = make_candidates(list(reversed(facts())), settings(), Selection.parse("all"))
    assert [c["record_sha256"] for c in shuffled.candidates] == [
        c["record_sha256"] for c in one.values()
    ]
    for candidate in one.values():
        body = {k: v for k, v in candidate.items() if k != "record_sha256"}
        assert hashlib.sha256(canonical(body).encode()).hexdigest() == candidate["record_sha256"]
    assert len({c["candidate_id"] for c in one.values()}) == len(one)


def test_records_without_signature_digests_say_so() -> None:
    line = json.loads(records()[12])  # clean-0
    del line["signatures"]
    del line["replay"]
    result = make_candidates([CallFacts.from_json(line)], settings(), Selection.parse("all"))
    codes = [x["code"] for x in result.candidates[0]["limitations"]]
    assert "replay_detection_unavailable" in codes


@pytest.mark.parametrize(
    ("tn", "plus", "itg"),
    [
        ("12025550101", "+12025550101", "2025550101"),
        ("2025550101", "+12025550101", "2025550101"),
        ("442071838750", "+442071838750", "+442071838750"),
        ("1234", None, None),
        ("anonymous", None, None),
    ],
    ids=["nanp-11", "nanp-10", "uk", "short-code", "not-a-number"],
)
def test_number_forms(tn: str, plus: str | None, itg: str | None) -> None:
    assert e164(tn) == plus
    assert itg_number(e164(tn)) == itg


def test_uri_tn() -> None:
    assert uri_tn("sip:+1-202-555-0143@x.example;user=phone") == "12025550143"
    assert uri_tn("tel:+12025550143;npdi") == "12025550143"
    assert uri_tn("sip:alice@x.example") is None


def test_bad_record_shape_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="call_id"):
        CallFacts.from_json({"start_ns": 1})
    with pytest.raises(ValueError, match="passports"):
        CallFacts.from_json({"call_id": "x", "start_ns": 1, "passports": {}})


def test_call_records_carry_streaming_replay_flags() -> None:
    """`analyze` flags later sightings in emission order; the first is not rewritten."""
    by_id = {r["call_id"].split("@")[0]: r for r in map(json.loads, records())}
    assert by_id["replay-first"]["replay"] is None
    again, late = by_id["replay-again"]["replay"], by_id["replay-late"]["replay"]
    assert again["first_call_id"] == late["first_call_id"] == "replay-first@t1.example"
    assert again["kinds"] == ["different_call_id"]
    assert late["kinds"] == ["different_call_id", "outside_freshness"]
    assert (again["sightings"], late["sightings"]) == (2, 3)
    assert by_id["clean-0"]["replay"] is None
    assert len(by_id["robo-00"]["signatures"]) == 1
    assert by_id["unsigned-quiet"]["signatures"] == []
