"""Hops of a traceback candidate, from our network outward, each with status and evidence.

``terminating`` (us), ``immediate_upstream`` (peers file), explicit ``gap`` hops (never
invented), ``diverting_provider`` (valid div PASSporTs, nearest first) and the ``signer``
(originating-provider, entry-point/gateway candidate or unverified). Evidence items say what
supports a hop and whether it is authenticated (our own observation, a verified signature,
our own data file) or only asserted. Confidence follows TRACEBACK.md section 6.2: high for our
own ingress mapped by the peers file, or a valid A/B signature with a trusted chain and good
revocation; medium for C, a trunk-group match, unknown revocation or the third-party-signing
era; low for unverified Identity; none for gaps.

TRACEBACK.md sections 2 and 6.2; RFC 8588; RFC 8946 section 4.2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from analyzer.traceback_directory import (
    DataFile,
    MatchBasis,
    PeerMap,
    PeerMatch,
    ProviderDirectory,
    trunk_group,
)
from analyzer.traceback_facts import CallFacts, PassportFacts
from analyzer.traceback_limits import FCC_24_120_EFFECTIVE
from analyzer.traceback_replay import ReplayFlag

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TracebackSettings:
    """Everything a candidate depends on besides the call: our network's name, the peers and
    providers files, the local time zone (IANA), the freshness window used for replays, and
    what ``generator``/``evidence_source`` record. TRACEBACK.md section 6.4."""

    network: str | None = None
    peers: PeerMap | None = None
    providers: ProviderDirectory | None = None
    time_zone: str = "UTC"
    freshness_s: int = 60
    tool_version: str = ""
    config_sha256: str = "0" * 64
    reference_time_policy: str = "packet_timestamp"
    evidence_kind: str = "capture"
    inputs: tuple[Mapping[str, object], ...] = ()
    zone: ZoneInfo = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", ZoneInfo(self.time_zone))


def _dataset(source: DataFile | None, line: int | None = None) -> Json:
    out: Json = {
        "name": source.name if source else None,
        "sha256": source.sha256 if source else None,
    }
    if line is not None:
        out["line"] = line
    return out


def _evidence(kind: str, authenticated: bool, detail: str, **extra: object) -> Json:
    item: Json = {"kind": kind, "authenticated": authenticated, "detail": detail}
    item.update({k: v for k, v in extra.items() if v is not None})
    return item


def _provider(
    name: str | None, source: str | None, spc: str | None = None, **extra: object
) -> Json:
    return {"name": name, "name_source": source if name else None, "spc": spc, **extra}


def _terminating(facts: CallFacts, s: TracebackSettings) -> Json:
    frames = list(facts.frames[:1])
    return {
        "position": 0,
        "role": "terminating",
        "inferred_status": "self",
        "confidence": "high",
        "provider": _provider(s.network, "network_option"),
        "caveats": [],
        "evidence": [
            _evidence(
                "network_layer", True,
                f"INVITE received at {facts.dst} over {facts.transport} (capture)",
                field="dst", value=facts.dst, frames=frames,
            )
        ],
        "itg_outcome": None,
    }  # fmt: skip


def _peer_provider(match: PeerMatch, s: TracebackSettings) -> Json:
    peer = match.peer
    listed = s.providers.lookup(peer.spc) if s.providers else None
    return _provider(
        peer.name, "peers_file", peer.spc,
        rmd_number=peer.rmd_number or (listed.rmd_number if listed else None),
        frn=peer.frn or (listed.frn if listed else None),
    )  # fmt: skip


def _upstream(facts: CallFacts, match: PeerMatch | None, s: TracebackSettings) -> Json:
    ip, port = facts.ingress
    dst_ip, dst_port = (facts.dst or "").rpartition(":")[::2] if facts.dst else (None, None)
    trunk = trunk_group(facts.request_uri)
    evidence = []
    if ip is not None:
        evidence.append(
            _evidence(
                "network_layer", True, f"INVITE source address {facts.src} at our ingress",
                field="src", value=facts.src, frames=list(facts.frames[:1]),
            )
        )  # fmt: skip
    if trunk is not None:
        evidence.append(
            _evidence(
                "sip_header", False, "trunk group in the Request-URI (RFC 4904), set upstream",
                field="Request-URI;tgrp", value=trunk,
            )
        )  # fmt: skip
    caveats: list[str] = []
    if match is not None:
        peer = match.peer
        evidence.append(
            _evidence(
                "trunk_map", True,
                f"{peer.match} -> {peer.name} (peers file, {match.basis.value} rule)",
                field="match", value=peer.match,
                dataset=_dataset(s.peers.source if s.peers else None, peer.line),
            )
        )  # fmt: skip
        status = "upstream_identified"
        confidence = "medium" if match.basis is MatchBasis.TRUNK else "high"
        provider: Json | None = _peer_provider(match, s)
        if match.basis is MatchBasis.TRUNK:
            caveats.append("matched by the trunk group the upstream put in the Request-URI")
    else:
        status = "upstream_unmapped"
        confidence = "medium" if ip is not None else "none"
        provider = _provider(None, None)
        caveats.append(
            "the source address is not in the peers file: name the provider before submitting"
            if s.peers is not None
            else "no peers file (--peers): the provider name is unknown"
        )
    if facts.observed_verstat:
        evidence.append(
            _evidence(
                "sip_header", False, "verstat added by an upstream verifier (its claim)",
                field="P-Asserted-Identity;verstat", value=facts.observed_verstat,
            )
        )  # fmt: skip
    return {
        "position": 1,
        "role": "immediate_upstream",
        "inferred_status": status,
        "confidence": confidence,
        "provider": provider,
        "ingress": {
            "src_ip": ip, "src_port": port, "dst_ip": dst_ip or None,
            "dst_port": int(dst_port) if dst_port and str(dst_port).isdigit() else None,
            "transport": facts.transport, "trunk_id": trunk,
        },
        "caveats": caveats,
        "evidence": evidence,
        "itg_outcome": None,
    }  # fmt: skip


def _gap(status: str, detail: str) -> Json:
    return {
        "position": None,
        "role": "gap",
        "inferred_status": status,
        "confidence": "none",
        "gap_hops": {"min": 0, "max": None},
        "caveats": [],
        "evidence": [_evidence("manual", False, detail)],
        "itg_outcome": None,
    }


def _signed_provider(p: PassportFacts, s: TracebackSettings) -> Json:
    """Name a signer: the providers file by SPC, else the certificate's O= (TRACEBACK.md 3.2:
    never overwrite O= with a directory name, report both)."""
    signer = p.signer
    spc = signer.spc if signer else None
    org = signer.organization if signer else None
    listed = s.providers.lookup(spc) if s.providers else None
    if listed is not None:
        return _provider(
            listed.name, "providers_file", spc, certificate_organization=org,
            rmd_number=listed.rmd_number, frn=listed.frn,
            gateway_provider=listed.gateway_provider,
            foreign_voice_provider=listed.foreign_voice_provider,
        )  # fmt: skip
    return _provider(org, "certificate_organization", spc, certificate_organization=org)


def _passport_evidence(p: PassportFacts, facts: CallFacts, s: TracebackSettings) -> list[Json]:
    signer = p.signer
    trusted = bool(signer and signer.chain_trusted and p.signature_valid)
    if p.valid:
        revocation = signer.revocation if signer else None
        detail = f"signature valid, chain trusted, revocation {revocation}, as of {facts.at}"
    else:
        detail = f"verification failed as of {facts.at}: {p.reason}"
    out = [_evidence("verification_result", p.valid, detail, identity_index=p.index)]
    for claim in ("attest", "origid", "orig", "div"):
        value = getattr(p, claim)
        if value is not None:
            out.append(
                _evidence(
                    "passport_claim", p.valid, f"PASSporT {claim} claim",
                    field=claim, value=value, identity_index=p.index,
                )
            )  # fmt: skip
    if signer is not None:
        out.append(
            _evidence(
                "certificate", trusted, "SPC from the signing certificate's TNAuthList",
                field="TNAuthList.spc", value=signer.spc, identity_index=p.index,
            )
        )  # fmt: skip
        out.append(
            _evidence(
                "certificate", trusted, "organisation in the signing certificate's subject",
                field="subject.O", value=signer.organization, identity_index=p.index,
            )
        )  # fmt: skip
    elif p.x5u:
        out.append(
            _evidence(
                "passport_claim", False, "x5u (certificate URL) named by the PASSporT",
                field="x5u", value=p.x5u, identity_index=p.index,
            )
        )  # fmt: skip
    listed = s.providers.lookup(signer.spc if signer else None) if s.providers else None
    if listed is not None and s.providers is not None:
        out.append(
            _evidence(
                "external_dataset", False, f"SPC {listed.spc} -> {listed.name} (providers file)",
                field="spc", value=listed.spc, dataset=_dataset(s.providers.source, listed.line),
            )
        )  # fmt: skip
    return out


def _signer_status(p: PassportFacts, listed_gateway: bool) -> tuple[str, str, list[str]]:
    """(inferred_status, confidence, caveats) of the SHAKEN signer (TRACEBACK.md 2.1, 6.2)."""
    if not p.valid:
        why = p.reason or "not verified"
        return "signer_unverified", "low", [f"Identity present but unverified ({why}): the SPC "
                                            "and claims are hints only"]  # fmt: skip
    revocation = p.signer.revocation if p.signer else None
    sure = revocation == "good"
    caveats = [] if sure else [f"certificate revocation status: {revocation}"]
    if p.attest in ("A", "B"):
        caveats.append(
            "A/B is the signer's claim to be the originating provider; in 2025 the ITG saw "
            "about 1,000 tracebacks with A/B applied by a downstream provider"
        )
        if p.attest == "B":
            caveats.append("B: the signer does not vouch for the calling number")
        return "originating_provider_candidate", "high" if sure else "medium", caveats
    if p.attest == "C":
        caveats.append("C: the signer is the entry point to its network; origin lies upstream")
        status = "gateway_candidate" if listed_gateway else "entry_point_candidate"
        return status, "medium", caveats
    caveats.append("no attestation claim: the signer states no relationship to the caller")
    return "entry_point_candidate", "low", caveats


def _signer_hop(
    p: PassportFacts, facts: CallFacts, upstream: PeerMatch | None, s: TracebackSettings
) -> Json:
    provider = _signed_provider(p, s)
    gateway = bool(provider.get("gateway_provider") or provider.get("foreign_voice_provider"))
    status, confidence, caveats = _signer_status(p, gateway and p.attest == "C")
    spc = provider.get("spc")
    same = upstream is not None and bool(spc) and upstream.peer.spc == spc
    when = datetime.fromtimestamp(facts.start_ns / 1e9, UTC)
    if p.valid and when < FCC_24_120_EFFECTIVE and not same:
        caveats.append(
            "signed before FCC 24-120 (18 Sept 2025): the SPC may be a third-party signer"
        )
        confidence = "medium" if confidence == "high" else confidence
    if same:
        caveats.append("the immediate upstream holds the signing SPC: likely the next hop")
    return {
        "position": None,
        "role": "signer",
        "inferred_status": status,
        "confidence": confidence,
        "provider": provider,
        "attest": p.attest,
        "origid": p.origid,
        "same_as_hop": 1 if same else None,
        "caveats": caveats,
        "evidence": _passport_evidence(p, facts, s),
        "itg_outcome": None,
    }


def _div_order(shaken: PassportFacts | None, divs: Sequence[PassportFacts]) -> list[PassportFacts]:
    """Div PASSporTs nearest us first: follow the chain from the SHAKEN ``dest`` through each
    ``div`` -> ``dest`` (RFC 8946 section 4.2); unchained ones follow in header order."""
    chain: list[PassportFacts] = []
    left = list(divs)
    target = set(shaken.dest) if shaken else set()
    while left:
        nxt = next((d for d in left if d.div in target), None)
        if nxt is None:
            break
        chain.append(nxt)
        left.remove(nxt)
        target = set(nxt.dest)
    return [*reversed(chain), *left]


def _div_hop(p: PassportFacts, facts: CallFacts, s: TracebackSettings) -> Json:
    status, confidence = ("diverting_provider_candidate", "high") if p.valid else (
        "signer_unverified", "low")  # fmt: skip
    caveats = ["the diverting provider retargeted the call: a likely intermediate hop"]
    if not p.valid:
        caveats.append(f"div PASSporT unverified ({p.reason})")
    return {
        "position": None,
        "role": "diverting_provider",
        "inferred_status": status,
        "confidence": confidence,
        "provider": _signed_provider(p, s),
        "caveats": caveats,
        "evidence": _passport_evidence(p, facts, s),
        "itg_outcome": None,
    }


def build_hops(
    facts: CallFacts,
    upstream: PeerMatch | None,
    s: TracebackSettings,
    replay: ReplayFlag | None = None,
) -> list[Json]:
    """Ordered hops from us outward, with explicit gaps (module docstring)."""
    hops = [_terminating(facts, s), _upstream(facts, upstream, s)]
    shaken = facts.shaken
    divs = _div_order(shaken, facts.divs)
    if not facts.is_signed:
        hops.append(
            _gap("unsigned_no_origin_evidence",
                 "no Identity header: nothing beyond the immediate upstream is known")
        )  # fmt: skip
        return hops
    for d in divs:
        hops.append(_gap("unknown_gap", "hops between the previous hop and the diverter"))
        hops.append(_div_hop(d, facts, s))
    hops.append(_gap("unknown_gap", "hops between the previous hop and the signer"))
    if shaken is None:
        shaken = next((p for p in facts.passports if not p.is_div), facts.passports[0])
    signer = _signer_hop(shaken, facts, upstream, s)
    if replay is not None:
        # A replayed PASSporT proves only that the signer signed *some* call once: it may not
        # be in this call's path at all (RFC 8224 section 12.1).
        signer["confidence"] = "low"
        signer["caveats"].append(
            "possible replay of this PASSporT: the signer may not be in this call's path"
        )
    hops.append(signer)
    return hops
