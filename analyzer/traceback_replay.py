"""Replay detection: the same PASSporT (by its signature) on several calls, or seen too late.

A PASSporT is bound to one call attempt by its ``iat`` and its identities, not by the SIP
Call-ID, so an attacker who captured a validly signed INVITE can send the same Identity header
again on new calls until the verifier's freshness window rejects it (RFC 8224 section 12.1:
"replay protection"; RFC 8225 section 5.1.1: ``iat``). A replayed header carries byte-identical
signature bytes, so the signature (base64url text as received) identifies a PASSporT across
calls. Two signals are flagged:

* ``different_call_id``: one signature on calls with different Call-IDs.
* ``outside_freshness``: a sighting more than the freshness window after the PASSporT's
  ``iat`` while its signature verified (a genuine PASSporT reused late), or the same signature
  seen again later than the window.

Both are *possible* replays, never proof: a B2BUA that changes the Call-ID but passes the
Identity header unaltered (47 CFR 64.6302) shows the same PASSporT on two Call-IDs within the
same second when both sides are captured; a signer with a slow clock looks stale.

Two forms: ``ReplayDetector`` (a small state machine the streaming analyzer feeds in emission
order, bounded memory, flags the later sightings) and ``find_replays`` (a batch pass over a
whole set of calls for traceback candidates, flags every sighting of a shared PASSporT).
RFC 8224 section 12.1, RFC 8225 section 5.1.1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

NS_PER_S = 1_000_000_000
# Signatures remembered by the streaming detector (about 200 bytes each: ~13 MB). A replay
# campaign reuses a PASSporT within minutes; 65,536 calls is ~7 minutes of a 150 cps trunk,
# the same bound the call tracker uses for closed Call-IDs.
MAX_REMEMBERED = 65_536
# Call-IDs listed per replay flag (the count is always complete).
MAX_LISTED_CALL_IDS = 20
# Sightings of one PASSporT closer than this are likely one call seen on both sides of a
# B2BUA (typical SBC transit delay is milliseconds; one second is generous).
SAME_CALL_WINDOW_NS = NS_PER_S

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ReplayKind(StrEnum):
    """Why a PASSporT looks replayed (RFC 8224 section 12.1)."""

    DIFFERENT_CALL_ID = "different_call_id"
    OUTSIDE_FRESHNESS = "outside_freshness"


@dataclass(frozen=True, slots=True)
class ReplayFlag:
    """A possible replay on one call: which PASSporT, why, and where it was first seen.

    RFC 8224 section 12.1.
    """

    signature_sha256: str
    kinds: tuple[ReplayKind, ...]
    first_call_id: str
    first_seen_ns: int
    sightings: int
    call_ids: tuple[str, ...]
    iat: int | None = None
    first: bool = False
    near_simultaneous: bool = False

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> ReplayFlag:
        """Back from ``to_json`` (a call record's ``replay``); ``ValueError`` if malformed."""
        first_seen = datetime.strptime(str(obj["first_seen"]), "%Y-%m-%dT%H:%M:%S.%fZ")
        delta = first_seen.replace(tzinfo=UTC) - _EPOCH
        kinds = obj["kinds"]
        call_ids = obj.get("call_ids") or []
        iat = obj.get("iat")
        if not isinstance(kinds, list) or not isinstance(call_ids, list):
            raise ValueError("kinds and call_ids must be arrays")
        return cls(
            signature_sha256=str(obj["signature_sha256"]),
            kinds=tuple(ReplayKind(k) for k in kinds),
            first_call_id=str(obj["first_call_id"]),
            first_seen_ns=(delta // timedelta(microseconds=1)) * 1000,
            sightings=int(str(obj.get("sightings", 1))),
            call_ids=tuple(str(c) for c in call_ids),
            iat=iat if isinstance(iat, int) else None,
            first=obj.get("first") is True,
            near_simultaneous=obj.get("near_simultaneous") is True,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "suspected": True,
            "kinds": [k.value for k in self.kinds],
            "signature_sha256": self.signature_sha256,
            "first_call_id": self.first_call_id,
            "first_seen": _iso_ms(self.first_seen_ns),
            "sightings": self.sightings,
            "call_ids": list(self.call_ids),
            "iat": self.iat,
            "first": self.first,
            "near_simultaneous": self.near_simultaneous,
        }


def _iso_ms(ts_ns: int) -> str:
    moment = _EPOCH + timedelta(microseconds=ts_ns // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _token(identity: str) -> str:
    return identity.split(";", 1)[0].strip()


def signature_digest(identity: str) -> str | None:
    """SHA-256 (hex) of the JWS signature text of an Identity header value, or None when the
    value has no signature part (RFC 7515 section 7.1, compact serialization)."""
    parts = _token(identity).split(".")
    if len(parts) != 3 or not parts[2]:
        return None
    return hashlib.sha256(parts[2].encode("utf-8", "backslashreplace")).hexdigest()


def passport_iat(identity: str) -> int | None:
    """The ``iat`` claim of a full-form PASSporT, read without verifying (RFC 8225 section
    5.1.1); None when absent or unreadable."""
    parts = _token(identity).split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    iat = payload.get("iat") if isinstance(payload, dict) else None
    return iat if isinstance(iat, int) and not isinstance(iat, bool) else None


def is_stale(start_ns: int, iat: int | None, freshness_s: int) -> bool:
    """True when the call arrived more than ``freshness_s`` after ``iat`` (RFC 8224 section
    6.2 step 4)."""
    return iat is not None and start_ns - iat * NS_PER_S > freshness_s * NS_PER_S


@dataclass(slots=True)
class _Seen:
    call_id: str
    start_ns: int
    call_ids: list[str]
    sightings: int = 1


class ReplayDetector:
    """Streaming replay detection over calls in emission order (bounded memory).

    Theory of operation: the first sighting of a signature is remembered (Call-ID, time); a
    later sighting on another Call-ID, or on any call more than the freshness window after
    the first, is flagged with a reference to the first. The first call is not flagged
    retroactively (its record is already written); ``find_replays`` flags every sighting.
    Memory: at most ``MAX_REMEMBERED`` signatures, the oldest forgotten first.
    RFC 8224 section 12.1.
    """

    def __init__(self, freshness_s: int, max_remembered: int = MAX_REMEMBERED) -> None:
        self.freshness_s = freshness_s
        self.max_remembered = max_remembered
        self._seen: OrderedDict[str, _Seen] = OrderedDict()

    def observe(self, call_id: str, start_ns: int, identities: Sequence[str]) -> ReplayFlag | None:
        """Record a call's Identity values; a flag when one of them was seen before."""
        flag: ReplayFlag | None = None
        for identity in identities:
            digest = signature_digest(identity)
            if digest is None:
                continue
            seen = self._seen.get(digest)
            if seen is None:
                self._seen[digest] = _Seen(call_id, start_ns, [call_id])
                if len(self._seen) > self.max_remembered:
                    self._seen.popitem(last=False)
                continue
            seen.sightings += 1
            if call_id not in seen.call_ids and len(seen.call_ids) < MAX_LISTED_CALL_IDS:
                seen.call_ids.append(call_id)
            kinds = []
            if any(c != call_id for c in seen.call_ids):
                kinds.append(ReplayKind.DIFFERENT_CALL_ID)
            iat = passport_iat(identity)
            late = start_ns - seen.start_ns > self.freshness_s * NS_PER_S
            if late or is_stale(start_ns, iat, self.freshness_s):
                kinds.append(ReplayKind.OUTSIDE_FRESHNESS)
            if kinds and flag is None:
                flag = ReplayFlag(
                    signature_sha256=digest,
                    kinds=tuple(kinds),
                    first_call_id=seen.call_id,
                    first_seen_ns=seen.start_ns,
                    sightings=seen.sightings,
                    call_ids=tuple(seen.call_ids),
                    iat=iat,
                    near_simultaneous=abs(start_ns - seen.start_ns) < SAME_CALL_WINDOW_NS,
                )
        return flag


def stale_flag(
    call_id: str, start_ns: int, digest: str | None, iat: int | None, freshness_s: int
) -> ReplayFlag | None:
    """A single sighting of a validly signed PASSporT outside its freshness window (the call
    record's own evidence: its signature verified, its ``iat`` was too old)."""
    if digest is None or not is_stale(start_ns, iat, freshness_s):
        return None
    return ReplayFlag(
        signature_sha256=digest,
        kinds=(ReplayKind.OUTSIDE_FRESHNESS,),
        first_call_id=call_id,
        first_seen_ns=start_ns,
        sightings=1,
        call_ids=(call_id,),
        iat=iat,
        first=True,
    )


def merge_flags(a: ReplayFlag | None, b: ReplayFlag | None) -> ReplayFlag | None:
    """One flag from the cross-call flag ``a`` and the single-call flag ``b``."""
    if a is None or b is None:
        return a or b
    kinds = tuple(k for k in ReplayKind if k in a.kinds or k in b.kinds)
    iat = a.iat if a.iat is not None else b.iat
    return ReplayFlag(
        a.signature_sha256, kinds, a.first_call_id, a.first_seen_ns, a.sightings, a.call_ids,
        iat, a.first, a.near_simultaneous,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sighting:
    """One call's PASSporT as the batch pass sees it: signature digest, ``iat``, validity."""

    call_id: str
    start_ns: int
    signature_sha256: str
    iat: int | None
    signature_valid: bool


def find_replays(sightings: Sequence[Sighting | None], freshness_s: int) -> list[ReplayFlag | None]:
    """Flags parallel to ``sightings`` (one per call): every call whose PASSporT is shared
    with another Call-ID, or was seen outside its freshness window with a valid signature.

    Deterministic: sightings of one signature are ordered by (time, Call-ID). RFC 8224 section
    12.1.
    """
    groups: dict[str, list[int]] = {}
    for index, s in enumerate(sightings):
        if s is not None:
            groups.setdefault(s.signature_sha256, []).append(index)
    flags: list[ReplayFlag | None] = [None] * len(sightings)
    for digest, members in groups.items():
        ordered = sorted(members, key=lambda i: _key(sightings[i]))
        first = sightings[ordered[0]]
        assert first is not None
        call_ids = sorted({s.call_id for i in ordered if (s := sightings[i]) is not None})
        spread = _key(sightings[ordered[-1]])[0] - first.start_ns
        for position, index in enumerate(ordered):
            s = sightings[index]
            assert s is not None
            kinds = []
            if len(call_ids) > 1:
                kinds.append(ReplayKind.DIFFERENT_CALL_ID)
            late = s.start_ns - first.start_ns > freshness_s * NS_PER_S
            if (s.signature_valid and is_stale(s.start_ns, s.iat, freshness_s)) or late:
                kinds.append(ReplayKind.OUTSIDE_FRESHNESS)
            if not kinds:
                continue
            flags[index] = ReplayFlag(
                signature_sha256=digest,
                kinds=tuple(kinds),
                first_call_id=first.call_id,
                first_seen_ns=first.start_ns,
                sightings=len(ordered),
                call_ids=tuple(call_ids[:MAX_LISTED_CALL_IDS]),
                iat=s.iat,
                first=position == 0,
                near_simultaneous=len(ordered) > 1 and spread < SAME_CALL_WINDOW_NS,
            )
    return flags


def _key(s: Sighting | None) -> tuple[int, str]:
    assert s is not None
    return (s.start_ns, s.call_id)
