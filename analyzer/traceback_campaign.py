"""Campaigns: traceback candidates grouped by signer SPC + origid and by calling-number pattern.

The ITG targets high-volume campaigns (TRACEBACK.md section 1.2); a stable ``origid`` under one
SPC is the signer's own handle on an origination point, so it is a strong clustering key
(section 2.2), and spoofing campaigns rotate calling numbers inside one NPA-NXX, so the
calling number with its last four digits masked (``+1202555XXXX``) is the second key. A group
becomes a campaign when it holds at least ``min_calls`` candidates; each campaign has a
summary (count, first/last seen, signers, attestation mix, verdicts, upstream peers, replays)
and each candidate lists the campaigns it belongs to. Deterministic: campaigns are sorted by
(kind, -count, id), candidate ids within by call time.

TRACEBACK.md section 2.2 (origid) and section 5.2 (per-signer summary).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from analyzer.traceback_facts import iso_ms

# Digits masked at the end of a calling number for the pattern key: the line number of a NANP
# number (NPA-NXX-XXXX), where neighbour-spoofing campaigns rotate.
MASKED_DIGITS = 4
# A group needs this many candidates to be a campaign (a single call is not a campaign).
DEFAULT_MIN_CALLS = 2
# Candidate ids listed per campaign (the count is always complete).
MAX_LISTED_CANDIDATES = 1000
NO_ORIGID = "-"
NO_ATTEST = "none"


class CampaignKind(StrEnum):
    SIGNER_ORIGID = "signer_origid"
    CALLING_PATTERN = "calling_pattern"


def calling_pattern(number: str | None) -> str | None:
    """``+12025550143`` -> ``+1202555XXXX`` (None when there is no number to mask)."""
    if not number or len(number.lstrip("+")) <= MASKED_DIGITS:
        return None
    return number[:-MASKED_DIGITS] + "X" * MASKED_DIGITS


def _signer(candidate: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((h for h in candidate["hops"] if h["role"] == "signer"), None)


def campaign_keys(candidate: Mapping[str, Any]) -> list[tuple[CampaignKind, str]]:
    """The campaign ids a candidate falls into (before the ``min_calls`` cut)."""
    keys = []
    summary = candidate["stir_shaken"]["summary"]
    spc = summary.get("signer_spc")
    if spc:
        origid = summary.get("origid") or NO_ORIGID
        keys.append((CampaignKind.SIGNER_ORIGID, f"signer:{spc}:origid:{origid}"))
    pattern = calling_pattern(candidate["call"].get("calling_number"))
    if pattern:
        keys.append((CampaignKind.CALLING_PATTERN, f"calling:{pattern}"))
    return keys


@dataclass(slots=True)
class Campaign:
    """A group of candidates and its running summary (TRACEBACK.md section 5.2)."""

    campaign_id: str
    kind: CampaignKind
    count: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    calling_numbers: set[str] = field(default_factory=set)
    signers: Counter[str] = field(default_factory=Counter)
    attestation: Counter[str] = field(default_factory=Counter)
    verstat: Counter[str] = field(default_factory=Counter)
    upstream: Counter[str] = field(default_factory=Counter)
    origids: set[str] = field(default_factory=set)
    replays: int = 0
    members: list[tuple[int, str]] = field(default_factory=list)

    def add(self, candidate: Mapping[str, Any]) -> None:
        call = candidate["call"]
        summary = candidate["stir_shaken"]["summary"]
        start = int(call["start_ns"])
        self.count += 1
        self.first_ns = start if self.first_ns is None else min(self.first_ns, start)
        self.last_ns = start if self.last_ns is None else max(self.last_ns, start)
        if call.get("calling_number"):
            self.calling_numbers.add(call["calling_number"])
        signer = _signer(candidate)
        if signer is not None:
            provider = signer.get("provider") or {}
            label = provider.get("spc") or "?"
            if provider.get("name"):
                label += f" ({provider['name']})"
            self.signers[label] += 1
        else:
            self.signers["unsigned"] += 1
        self.attestation[summary.get("attest") or NO_ATTEST] += 1
        self.verstat[summary.get("verstat") or "error"] += 1
        peer = (candidate["hops"][1].get("provider") or {}).get("name")
        self.upstream[peer or "(unmapped)"] += 1
        if summary.get("origid"):
            self.origids.add(summary["origid"])
        if candidate.get("replay"):
            self.replays += 1
        self.members.append((start, candidate["candidate_id"]))

    def to_json(self) -> dict[str, object]:
        members = [cid for _, cid in sorted(self.members)]
        _, _, rest = self.campaign_id.partition(":")
        key: dict[str, object]
        if self.kind is CampaignKind.SIGNER_ORIGID:
            spc, _, origid = rest.partition(":origid:")
            key = {"signer_spc": spc, "origid": None if origid == NO_ORIGID else origid}
        else:
            key = {"calling_pattern": rest}
        return {
            "campaign_id": self.campaign_id,
            "kind": self.kind.value,
            "key": key,
            "count": self.count,
            "first_seen": iso_ms(self.first_ns or 0),
            "last_seen": iso_ms(self.last_ns or 0),
            "distinct_calling_numbers": len(self.calling_numbers),
            "distinct_origids": len(self.origids),
            "signers": _ranked(self.signers),
            "attestation": dict(sorted(self.attestation.items())),
            "verstat": dict(sorted(self.verstat.items())),
            "upstream_peers": _ranked(self.upstream),
            "possible_replays": self.replays,
            "candidate_ids": members[:MAX_LISTED_CANDIDATES],
        }


def _ranked(counter: Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def group_campaigns(
    candidates: Sequence[Mapping[str, Any]], min_calls: int = DEFAULT_MIN_CALLS
) -> tuple[list[Campaign], dict[str, list[str]]]:
    """Campaigns with at least ``min_calls`` candidates, and candidate id -> campaign ids."""
    groups: dict[str, Campaign] = {}
    for candidate in candidates:
        for kind, cid in campaign_keys(candidate):
            groups.setdefault(cid, Campaign(cid, kind)).add(candidate)
    kept = [c for c in groups.values() if c.count >= min_calls]
    kept.sort(key=lambda c: (c.kind.value, -c.count, c.campaign_id))
    membership: dict[str, list[str]] = {}
    for campaign in kept:
        for _, cid in sorted(campaign.members):
            membership.setdefault(cid, []).append(campaign.campaign_id)
    return kept, membership
