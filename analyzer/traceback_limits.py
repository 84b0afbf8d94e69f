"""The ``limitations`` of a traceback candidate: caveats as data, not prose in logs.

Each limitation has a stable ``code`` (snake_case, for filtering and tests), a sentence for
the reviewer and the source of the caveat. TRACEBACK.md section 6.1 rule 6, section 2.4
(signer versus originator), section 1.3 (Call-ID is local) and section 5.1 (clock quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from analyzer.traceback_facts import CallFacts
from analyzer.traceback_replay import ReplayFlag

# FCC 24-120 (third-party authentication) effective date (TRACEBACK.md section 1 (rules table)).
FCC_24_120_EFFECTIVE = datetime(2025, 9, 18, tzinfo=UTC)


class Limitation(StrEnum):
    """Stable limitation codes."""

    CALL_ID_LOCAL = "call_id_local"
    CAPTURE_CLOCK = "capture_clock"
    INTERMEDIATES_UNKNOWN = "intermediates_unknown"
    SIGNER_NOT_PROVEN_ORIGINATOR = "signer_not_proven_originator"
    ENTRY_POINT_NOT_ORIGIN = "entry_point_not_origin"
    IDENTITY_UNVERIFIED = "identity_unverified"
    UNSIGNED = "unsigned"
    NO_PEER_MAP = "no_peer_map"
    UPSTREAM_UNMAPPED = "upstream_unmapped"
    PEER_MAP_UNCHECKED = "peer_map_unchecked"
    THIRD_PARTY_SIGNING_ERA = "third_party_signing_era"
    REPLAY_SUSPECTED = "replay_suspected"
    REPLAY_DETECTION_UNAVAILABLE = "replay_detection_unavailable"
    DIV_NOT_ALWAYS_SIGNED = "div_not_always_signed"


TEXT: dict[Limitation, tuple[str, str]] = {
    Limitation.CALL_ID_LOCAL: (
        "The SIP Call-ID is local to our hop; upstream providers search by calling number, "
        "called number and time.", "TRACEBACK.md section 1.3"),
    Limitation.CAPTURE_CLOCK: (
        "Times are capture timestamps; their accuracy is the capture host's clock (search "
        "a window around them).", "TRACEBACK.md section 5.1"),
    Limitation.INTERMEDIATES_UNKNOWN: (
        "Hops beyond the immediate upstream are not visible in a capture; gaps are not "
        "counted or named.", "TRACEBACK.md section 0 item 3"),
    Limitation.SIGNER_NOT_PROVEN_ORIGINATOR: (
        "The signer's identity is cryptographic; its role as originating provider is its "
        "own claim (A/B).", "TRACEBACK.md section 2.4"),
    Limitation.ENTRY_POINT_NOT_ORIGIN: (
        "Attestation C names an entry point (gateway or intermediate), not the origin.",
        "TRACEBACK.md section 2.1"),
    Limitation.IDENTITY_UNVERIFIED: (
        "The Identity header did not verify: signer and claims are unauthenticated hints.",
        "TRACEBACK.md section 6.2"),
    Limitation.UNSIGNED: (
        "No Identity header: no signed origin anchor; the call may have crossed a non-IP "
        "link or had its Identity removed.", "TRACEBACK.md section 2.1"),
    Limitation.NO_PEER_MAP: (
        "No peers file was given: the immediate upstream is an address, not a provider.",
        "TRACEBACK.md section 6.3"),
    Limitation.UPSTREAM_UNMAPPED: (
        "The ingress address is not in the peers file: name the provider before submitting.",
        "TRACEBACK.md section 6.3"),
    Limitation.PEER_MAP_UNCHECKED: (
        "The immediate-upstream name comes from the operator's peers file, which the tool "
        "cannot check.", "TRACEBACK.md section 6.6"),
    Limitation.THIRD_PARTY_SIGNING_ERA: (
        "Signed before FCC 24-120 took effect (18 Sept 2025): the SPC may be a signing "
        "vendor or intermediate.", "TRACEBACK.md section 1, FCC 24-120"),
    Limitation.REPLAY_SUSPECTED: (
        "The same PASSporT was seen on other calls or outside its freshness window: a "
        "possible replay, so the signer may not be in this call's path.", "RFC 8224 12.1"),
    Limitation.REPLAY_DETECTION_UNAVAILABLE: (
        "The call records carry no signature digests (older analyze output): replays could "
        "not be checked.", "RFC 8224 section 12.1"),
    Limitation.DIV_NOT_ALWAYS_SIGNED: (
        "Not every diverting provider signs a div PASSporT: other diversions may be unseen.",
        "TRACEBACK.md section 2.5"),
}  # fmt: skip


def _item(code: Limitation) -> dict[str, str]:
    text, source = TEXT[code]
    return {"code": code.value, "text": text, "source": source}


def limitations(
    facts: CallFacts, hops: Sequence[dict[str, Any]], replay: ReplayFlag | None, peers: bool
) -> list[dict[str, str]]:
    """The limitations that apply to one candidate, in a fixed order."""
    codes = [Limitation.CALL_ID_LOCAL, Limitation.CAPTURE_CLOCK]
    codes.append(Limitation.INTERMEDIATES_UNKNOWN)
    upstream = hops[1]
    if not peers:
        codes.append(Limitation.NO_PEER_MAP)
    elif upstream["inferred_status"] == "upstream_unmapped":
        codes.append(Limitation.UPSTREAM_UNMAPPED)
    else:
        codes.append(Limitation.PEER_MAP_UNCHECKED)
    shaken = facts.shaken
    if not facts.is_signed:
        codes.append(Limitation.UNSIGNED)
    elif shaken is None or not shaken.valid:
        codes.append(Limitation.IDENTITY_UNVERIFIED)
    elif shaken.attest in ("A", "B"):
        codes.append(Limitation.SIGNER_NOT_PROVEN_ORIGINATOR)
    else:
        codes.append(Limitation.ENTRY_POINT_NOT_ORIGIN)
    when = datetime.fromtimestamp(facts.start_ns / 1e9, UTC)
    if facts.is_signed and when < FCC_24_120_EFFECTIVE:
        codes.append(Limitation.THIRD_PARTY_SIGNING_ERA)
    if facts.divs:
        codes.append(Limitation.DIV_NOT_ALWAYS_SIGNED)
    if replay is not None:
        codes.append(Limitation.REPLAY_SUSPECTED)
    elif facts.is_signed and not facts.has_signatures:
        codes.append(Limitation.REPLAY_DETECTION_UNAVAILABLE)
    return [_item(c) for c in codes]
