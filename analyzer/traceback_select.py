"""Which analysed calls become traceback candidates: ``--select`` rules.

``RULES`` is a comma-separated list of alternatives; a call is selected when any alternative
matches, and an alternative may join rules with ``+`` (all must match). ``failed,c-attest``
selects failed calls and C-attested ones; ``c-attest+watch`` only C-attested calls on the
watch list. Rules:

=============================  ==============================================================
rule                           matches
=============================  ==============================================================
failed                         verification failed (TN-Validation-Failed) or could not run
c-attest                       the SHAKEN PASSporT claims attestation C (gateway / entry point)
unsigned-from-signing-peers    no Identity header, delivered by a peer marked ``signs=yes``
watch                          calling number, signer SPC or origid on the ``--watch`` list
replay                         a possible PASSporT replay (``analyzer.traceback_replay``)
all                            every call
=============================  ==============================================================

TRACEBACK.md section 1.2 (sources of call examples) and section 2.1 (attestation levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from analyzer.traceback_directory import PeerMatch, WatchList
from analyzer.traceback_facts import CallFacts
from analyzer.traceback_replay import ReplayFlag


class Rule(StrEnum):
    """One selection rule (the ``--select`` vocabulary)."""

    FAILED = "failed"
    C_ATTEST = "c-attest"
    UNSIGNED_FROM_SIGNING_PEERS = "unsigned-from-signing-peers"
    WATCH = "watch"
    REPLAY = "replay"
    ALL = "all"


DEFAULT_RULES = "failed,c-attest,unsigned-from-signing-peers,replay"


class SelectionError(ValueError):
    """A ``--select`` value that does not parse."""


@dataclass(frozen=True, slots=True)
class CallContext:
    """What the rules need besides the call: its peer, the watch list, its replay flag."""

    peer: PeerMatch | None
    watch: WatchList | None
    replay: ReplayFlag | None


def rule_matches(rule: Rule, facts: CallFacts, ctx: CallContext) -> bool:
    """Whether one rule matches a call (module docstring)."""
    if rule is Rule.ALL:
        return True
    if rule is Rule.FAILED:
        return facts.failed
    if rule is Rule.C_ATTEST:
        shaken = facts.shaken
        return shaken is not None and shaken.attest == "C"
    if rule is Rule.UNSIGNED_FROM_SIGNING_PEERS:
        return not facts.is_signed and ctx.peer is not None and ctx.peer.peer.signs is True
    if rule is Rule.WATCH:
        if ctx.watch is None:
            return False
        shaken = facts.shaken
        spc = shaken.signer.spc if shaken and shaken.signer else None
        origid = shaken.origid if shaken else None
        return ctx.watch.has_number(facts.calling_tn) or ctx.watch.has_signer(spc, origid)
    return ctx.replay is not None


@dataclass(frozen=True, slots=True)
class Selection:
    """Alternatives of conjunctions of rules (``a+b,c`` = (a and b) or c)."""

    alternatives: tuple[tuple[Rule, ...], ...]

    @classmethod
    def parse(cls, text: str) -> Selection:
        alternatives = []
        for part in text.split(","):
            names = [n.strip().lower() for n in part.split("+")]
            if not part.strip() or any(not n for n in names):
                raise SelectionError(f"empty rule in {text!r}")
            try:
                rules = tuple(dict.fromkeys(Rule(n) for n in names))
            except ValueError as exc:
                known = ", ".join(r.value for r in Rule)
                raise SelectionError(f"unknown rule in {part.strip()!r} (known: {known})") from exc
            alternatives.append(rules)
        return cls(tuple(dict.fromkeys(alternatives)))

    @property
    def rules(self) -> frozenset[Rule]:
        return frozenset(r for alt in self.alternatives for r in alt)

    def __str__(self) -> str:
        return ",".join("+".join(r.value for r in alt) for alt in self.alternatives)

    def matches(self, facts: CallFacts, ctx: CallContext) -> tuple[str, ...]:
        """The rules that matched (in vocabulary order) when an alternative matches, else ()."""
        hit = {r: rule_matches(r, facts, ctx) for r in self.rules}
        if not any(all(hit[r] for r in alt) for alt in self.alternatives):
            return ()
        return tuple(r.value for r in Rule if hit.get(r))
