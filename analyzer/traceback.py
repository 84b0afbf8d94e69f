"""Traceback candidates: one analysed call in, a pre-filled traceback record with hops out.

Theory of operation. For a selected call (``analyzer.traceback_select``) the record lists hops
from our network outward (TRACEBACK.md section 6.1-6.2):

1. ``terminating`` (us, position 0): we received the INVITE; our own observation.
2. ``immediate_upstream`` (position 1): the peer that delivered it, from the first leg's source
   address or the Request-URI trunk group mapped through ``--peers``; unmapped when no rule
   matches (the address is still evidence).
3. ``gap``: hops we cannot see, never invented; count unknown.
4. ``diverting_provider``: the signer of each ``div`` PASSporT (RFC 8946), nearest first.
5. ``signer``: the SHAKEN signer, as ``originating_provider_candidate`` (valid A/B),
   ``entry_point_candidate`` / ``gateway_candidate`` (valid C) or ``signer_unverified``.

Each hop carries an inferred status, a confidence, caveats and evidence items saying what
supports it (header, claim, certificate field, data file) and whether that is authenticated
(our own network observation, a verified signature, our own data file) or only asserted. The
``itg_prefill`` block answers for our own hop only: the provider we received the call from. The
tool never fills a traceback outcome (``itg_outcome`` stays null for people) and always sets
``review_required``. Output is deterministic: the candidate id is a UUIDv5 of the call's
identity and ``record_sha256`` hashes the canonical JSON of the rest.

TRACEBACK.md sections 0, 2 and 6; RFC 8588 (attest, origid); RFC 8946 (div).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from analyzer.traceback_campaign import DEFAULT_MIN_CALLS, Campaign, group_campaigns
from analyzer.traceback_directory import PeerMatch, WatchList, trunk_group
from analyzer.traceback_facts import (
    CallFacts,
    PassportFacts,
    e164,
    iso_ms,
    itg_number,
    local_ms,
    uri_tn,
)
from analyzer.traceback_hops import TracebackSettings, build_hops
from analyzer.traceback_limits import limitations
from analyzer.traceback_replay import ReplayFlag, Sighting, find_replays
from analyzer.traceback_select import CallContext, Selection

__all__ = ["TracebackSettings", "build_candidate", "make_candidates"]

SCHEMA_VERSION = "1.0"
SCHEMA_ID = "urn:stirscope:traceback-candidate:v1"
# Namespace of candidate ids (UUIDv5, RFC 9562 section 5.5): same call, same id.
CANDIDATE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, SCHEMA_ID)

Json = dict[str, Any]


def _identity(p: PassportFacts) -> Json:
    signer = p.signer
    return {
        "index": p.index, "ppt": p.ppt, "valid": p.valid, "reason": p.reason,
        "attest": p.attest, "origid": p.origid, "orig": p.orig, "dest": list(p.dest),
        "div": p.div, "iat": p.iat, "x5u": p.x5u, "signature_valid": p.signature_valid,
        "signature_sha256": p.signature_sha256,
        "certificate": None if signer is None else {
            "spc": signer.spc, "organization": signer.organization, "subject": signer.subject,
            "issuer": signer.issuer, "serial": signer.serial, "not_before": signer.not_before,
            "not_after": signer.not_after, "fingerprint_sha256": signer.fingerprint_sha256,
            "chain_trusted": signer.chain_trusted, "revocation": signer.revocation,
        },
    }  # fmt: skip


def attested_origin(facts: CallFacts) -> Json | None:
    """The signed origin data (attestation, origid, SPC, organisation, certificate
    fingerprint, x5u, verdict as of call time), or None for an unsigned call."""
    p = facts.shaken
    if p is None:
        return None
    signer = p.signer
    return {
        "attest": p.attest, "origid": p.origid, "orig": p.orig,
        "signer_spc": signer.spc if signer else None,
        "signer_organization": signer.organization if signer else None,
        "certificate_fingerprint_sha256": signer.fingerprint_sha256 if signer else None,
        "x5u": p.x5u, "valid": p.valid, "reason": p.reason, "verified_at": facts.at,
        "verstat": facts.verstat,
    }  # fmt: skip


def _call(facts: CallFacts, s: TracebackSettings) -> Json:
    shaken = facts.shaken
    called_tn = facts.to_tn or uri_tn(facts.request_uri)
    return {
        "calling_number": e164(facts.calling_tn),
        "calling_number_sources": {
            "from": facts.from_raw, "pai": facts.pai_raw,
            "passport_orig": shaken.orig if shaken else None,
        },
        "called_number": e164(called_tn),
        "called_number_sources": {
            "to": facts.to_raw, "request_uri": facts.request_uri,
            "passport_dest": list(shaken.dest) if shaken else [],
        },
        "start_utc": iso_ms(facts.start_ns),
        "start_ns": facts.start_ns,
        "start_local": local_ms(facts.start_ns, s.zone),
        "time_zone": s.time_zone,
        "final_status": facts.final_status,
        "state": facts.state,
        "sip_call_id": facts.call_id,
        "direction": "inbound",
        "transport": facts.transport,
        "legs": facts.legs,
    }  # fmt: skip


def _comment(facts: CallFacts, upstream: Json, hops: Sequence[Json]) -> str:
    ingress = upstream["ingress"]
    name = (upstream.get("provider") or {}).get("name") or "an unmapped peer (name it)"
    parts = [f"Received from {name} at {facts.src} over {ingress['transport']}"]
    if ingress.get("trunk_id"):
        parts[0] += f", trunk {ingress['trunk_id']}"
    parts[0] += "."
    signer = next((h for h in hops if h["role"] == "signer"), None)
    if signer is None:
        parts.append("No Identity header (unsigned).")
    else:
        provider = signer["provider"]
        who = f"SPC {provider.get('spc') or '?'}"
        if provider.get("certificate_organization"):
            who += f" (O={provider['certificate_organization']})"
        state = ("verified at call time" if signer["inferred_status"] != "signer_unverified"
                 else "NOT verified")  # fmt: skip
        parts.append(f"Identity: attest={signer.get('attest') or '-'}, signed by {who}, "
                     f"origid {signer.get('origid') or '-'}; {state}.")  # fmt: skip
    for hop in hops:
        if hop["role"] == "diverting_provider":
            parts.append(f"Diverted by SPC {hop['provider'].get('spc') or '?'} (div PASSporT).")
    return " ".join(parts)


def _prefill(facts: CallFacts, upstream: Json, hops: Sequence[Json], call: Json) -> Json:
    provider = upstream.get("provider") or {}
    known_source = facts.src is not None
    return {
        "calling_number": itg_number(call["calling_number"]),
        "called_number": itg_number(call["called_number"]),
        "call_datetime_utc": call["start_utc"],
        "call_datetime_local": call["start_local"],
        "time_zone": call["time_zone"],
        "hop_response": "upstream_provider" if known_source else "call_not_found",
        "received_from": provider if known_source else None,
        "received_from_unresolved": provider.get("name") is None,
        "comment": _comment(facts, upstream, hops),
        "review_required": True,
    }


def candidate_id(facts: CallFacts) -> str:
    """UUIDv5 of the call's identity in the capture: stable across runs (RFC 9562 5.5)."""
    first = facts.frames[0] if facts.frames else -1
    return str(
        uuid.uuid5(CANDIDATE_NAMESPACE, f"{facts.call_id}|{facts.start_ns}|{facts.src}|{first}")
    )


def build_candidate(
    facts: CallFacts,
    settings: TracebackSettings,
    *,
    upstream: PeerMatch | None,
    replay: ReplayFlag | None,
    selected_by: Sequence[str],
) -> Json:
    """One traceback candidate (schemas/traceback-candidate.schema.json), without
    ``campaign_ids`` and ``record_sha256`` (``finalize`` adds them). TRACEBACK.md section 6."""
    hops = build_hops(facts, upstream, settings, replay)
    call = _call(facts, settings)
    shaken = facts.shaken
    signer = shaken.signer if shaken else None
    return {
        "schema_version": SCHEMA_VERSION,
        "candidate_id": candidate_id(facts),
        "campaign_ids": [],
        "review_required": True,
        "selected_by": list(selected_by),
        "generator": {
            "tool": "stirscope",
            "version": settings.tool_version,
            "config_sha256": settings.config_sha256,
            "reference_time_policy": settings.reference_time_policy,
            "freshness_s": settings.freshness_s,
        },
        "evidence_source": {
            "kind": settings.evidence_kind,
            "inputs": [dict(i) for i in settings.inputs],
            "frames": list(facts.frames),
        },
        "call": call,
        "stir_shaken": {
            "summary": {
                "shaken_present": shaken is not None,
                "attest": shaken.attest if shaken else None,
                "signer_spc": signer.spc if signer else None,
                "origid": shaken.origid if shaken else None,
                "verified": bool(shaken and shaken.valid),
                "div_present": bool(facts.divs),
                "verstat": facts.verstat,
                "reason": facts.reason,
                "verified_at": facts.at,
            },
            "identities": [_identity(p) for p in facts.passports],
            "upstream_verstat": facts.observed_verstat,
        },
        "attested_origin": attested_origin(facts),
        "replay": replay.to_json() if replay is not None else None,
        "hops": hops,
        "itg_prefill": _prefill(facts, hops[1], hops, call),
        "limitations": limitations(facts, hops, replay, settings.peers is not None),
    }


def canonical(document: Mapping[str, object]) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 (TRACEBACK.md section 5.1 item 3)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def finalize(candidate: Json, campaign_ids: Sequence[str]) -> Json:
    """Attach campaign ids and the record hash (SHA-256 of the canonical JSON without it)."""
    candidate["campaign_ids"] = list(campaign_ids)
    candidate.pop("record_sha256", None)
    candidate["record_sha256"] = hashlib.sha256(canonical(candidate).encode()).hexdigest()
    return candidate


def _sighting(facts: CallFacts) -> Sighting | None:
    """The call's SHAKEN PASSporT as replay evidence (its signature digest), if recorded."""
    p = facts.shaken or (facts.passports[0] if facts.passports else None)
    if p is None or p.signature_sha256 is None:
        return None
    return Sighting(
        facts.call_id, facts.start_ns, p.signature_sha256, p.iat, bool(p.signature_valid)
    )


def _replay(facts: CallFacts, found: ReplayFlag | None) -> ReplayFlag | None:
    """The flag found across this set, else the one the analyzer recorded (it saw calls
    that may not be in this set)."""
    if found is not None or facts.recorded_replay is None:
        return found
    try:
        return ReplayFlag.from_json(facts.recorded_replay)
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class TracebackResult:
    """Candidates (finalized, in call-time order), campaigns and the counts of the run."""

    candidates: list[dict[str, Any]]
    campaigns: list[Campaign]
    calls: int
    selected: int

    def summary(self) -> dict[str, object]:
        return {
            "calls": self.calls,
            "candidates": self.selected,
            "campaigns": len(self.campaigns),
        }


def make_candidates(
    calls: Iterable[CallFacts],
    settings: TracebackSettings,
    selection: Selection,
    *,
    watch: WatchList | None = None,
    min_campaign_calls: int = DEFAULT_MIN_CALLS,
) -> TracebackResult:
    """Select calls, build their candidates, detect replays across the whole set, group
    campaigns. Output order is call time, then Call-ID (deterministic whatever the input
    order). TRACEBACK.md section 6."""
    facts = sorted(calls, key=lambda f: (f.start_ns, f.call_id, f.src or ""))
    replays = find_replays([_sighting(f) for f in facts], settings.freshness_s)
    candidates = []
    for f, found in zip(facts, replays, strict=True):
        replay = _replay(f, found)
        ip, port = f.ingress
        peer = (
            settings.peers.lookup(ip, port, trunk_group(f.request_uri)) if settings.peers else None
        )
        selected = selection.matches(f, CallContext(peer, watch, replay))
        if selected:
            candidates.append(
                build_candidate(f, settings, upstream=peer, replay=replay, selected_by=selected)
            )
    campaigns, membership = group_campaigns(candidates, min_campaign_calls)
    for candidate in candidates:
        finalize(candidate, membership.get(candidate["candidate_id"], []))
    return TracebackResult(candidates, campaigns, len(facts), len(candidates))
