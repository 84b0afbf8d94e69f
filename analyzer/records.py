"""Per-call records (JSONL and CSV shapes) and the streaming run summary.

A ``CallRecord`` is what `stirscope analyze` writes for one call: identities, verification
outcome (the ``passports`` array is the one of `stirscope verify --json`), SIP outcome, the
frames holding its messages and its anomalies. The JSON key set is a contract: extend it,
never rename a key. ``Summary`` folds records into the counts the terminal summary, the HTML
report and the evidence manifest show, in constant memory per distinct value.

STANDARDS.md section 9 (what to extract for the analyzer).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from analyzer.capture import AnyAnomaly
from analyzer.traceback_replay import ReplayFlag

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NS_PER_US = 1000
NS_PER_S = 1_000_000_000
# Time buckets for "verdicts over time": one per minute of capture time, merged at render time.
TIMELINE_BUCKET_NS = 60 * NS_PER_S
# Distinct keys kept per summary counter (signers, reasons...): bounded memory on hostile
# input; the rest is folded into "(other)".
MAX_DISTINCT = 10_000
OTHER = "(other)"
NO_ATTEST = "none"


def iso_ns(ts_ns: int) -> str:
    """ISO 8601 UTC with microseconds (``2026-01-15T12:00:00.123456Z``) for a capture time."""
    moment = _EPOCH + timedelta(microseconds=ts_ns // NS_PER_US)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_datetime(moment: datetime) -> str:
    """ISO 8601 UTC with microseconds for an aware datetime."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def datetime_ns(ts_ns: int) -> datetime:
    """The capture time as an aware datetime (microsecond precision)."""
    return _EPOCH + timedelta(microseconds=ts_ns // NS_PER_US)


def endpoint(addr: str, port: int) -> str:
    """``ip:port``, with IPv6 addresses in brackets (RFC 3986 section 3.2.2)."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True, slots=True)
class Identity:
    """A header as written and its canonical telephone number (RFC 8224 section 8.3)."""

    raw: str | None
    tn: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"raw": self.raw, "tn": self.tn}


@dataclass(frozen=True, slots=True)
class LegRecord:
    """One hop of the call with its own verification outcome."""

    src: str
    dst: str
    transport: str
    encapsulation: str
    frame: int
    at: str
    retransmissions: int
    attempts: int
    final_status: int | None
    verstat: str | None
    status_code: int | None
    reason: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "src": self.src,
            "dst": self.dst,
            "transport": self.transport,
            "encapsulation": self.encapsulation or None,
            "frame": self.frame,
            "at": self.at,
            "retransmissions": self.retransmissions,
            "attempts": self.attempts,
            "final_status": self.final_status,
            "verstat": self.verstat,
            "status_code": self.status_code,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class CallDigest:
    """What the run summary needs of a record (small: crosses the process boundary)."""

    start_ns: int
    verstat: str | None
    attest: str | None
    signer_spc: str | None
    signer_org: str | None
    reason: str | None
    final_status: int | None
    state: str
    transport: str
    encapsulation: str
    anomaly_kinds: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[type[CallDigest], tuple[object, ...]]:
        # One per call comes back from the worker processes: constructor arguments pickle
        # and load several times faster than the dataclass default.
        return CallDigest, (
            self.start_ns, self.verstat, self.attest, self.signer_spc, self.signer_org,
            self.reason, self.final_status, self.state, self.transport, self.encapsulation,
            self.anomaly_kinds,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call as written by `stirscope analyze` (JSONL object, CSV row, report row).

    ``verstat``/``status_code``/``reason`` are the verifier's outcome for the primary leg's
    INVITE (RFC 8224 section 6.2.2, 3GPP TS 24.229 section 7.2A.20); ``final_status`` is the
    SIP final response to the INVITE. ``attest``/``origid``/``signer_*``/``x5u`` come from the
    PASSporT that decided the outcome. STANDARDS.md section 9.
    """

    call_id: str
    start_ns: int
    src: str
    dst: str
    transport: str
    encapsulation: str
    frames: tuple[int, ...]
    frame_sources: tuple[int, ...]
    request_uri: str | None
    from_: Identity
    to: Identity
    pai: Identity
    date: str | None
    final_status: int | None
    state: str
    end: str
    verstat: str | None
    status_code: int | None
    reason: str | None
    at: str
    passports: tuple[dict[str, object], ...]
    anomalies: tuple[dict[str, object], ...]
    legs: tuple[LegRecord, ...] = ()
    attest: str | None = None
    origid: str | None = None
    signer_spc: str | None = None
    signer_org: str | None = None
    x5u: str | None = None
    observed_verstat: str | None = None
    provisional: tuple[int, ...] = ()
    messages: int = 0
    retransmissions: int = 0
    error: str | None = None
    # SHA-256 of each Identity value's signature, parallel to ``passports`` (replay evidence),
    # and the possible-replay flag (analyzer.traceback_replay; RFC 8224 section 12.1).
    signatures: tuple[str | None, ...] = ()
    replay: ReplayFlag | None = None

    @property
    def start(self) -> str:
        return iso_ns(self.start_ns)

    def to_json(self) -> dict[str, object]:
        """The JSONL object (a fixed contract: extend, never rename)."""
        out: dict[str, object] = {
            "call_id": self.call_id,
            "start": self.start,
            "start_ns": self.start_ns,
            "src": self.src,
            "dst": self.dst,
            "transport": self.transport,
            "encapsulation": self.encapsulation or None,
            "frames": list(self.frames),
        }
        if any(self.frame_sources):
            out["frame_sources"] = list(self.frame_sources)
        out.update(
            {
                "request_uri": self.request_uri,
                "from": self.from_.to_json(),
                "to": self.to.to_json(),
                "pai": self.pai.to_json(),
                "date": self.date,
                "observed_verstat": self.observed_verstat,
                "final_status": self.final_status,
                "provisional": list(self.provisional),
                "state": self.state,
                "end": self.end,
                "verstat": self.verstat,
                "status_code": self.status_code,
                "reason": self.reason,
                "at": self.at,
                "attest": self.attest,
                "origid": self.origid,
                "signer": {"spc": self.signer_spc, "organization": self.signer_org},
                "x5u": self.x5u,
                "passports": list(self.passports),
                "legs": [leg.to_json() for leg in self.legs],
                "messages": self.messages,
                "retransmissions": self.retransmissions,
                "anomalies": list(self.anomalies),
                "error": self.error,
                "signatures": list(self.signatures),
                "replay": self.replay.to_json() if self.replay is not None else None,
            }
        )
        return out

    def digest(self) -> CallDigest:
        return CallDigest(
            self.start_ns, self.verstat, self.attest, self.signer_spc, self.signer_org,
            self.reason, self.final_status, self.state, self.transport, self.encapsulation,
            tuple(str(a.get("kind")) for a in self.anomalies),
        )  # fmt: skip

    def to_row(self) -> list[str]:
        """The CSV row, in ``CSV_FIELDS`` order (empty string for null)."""
        return ["" if v is None else str(v) for v in self.flat_values()]

    def flat_values(self) -> list[str | int | None]:
        """The flat fields, in ``CSV_FIELDS`` order, typed (None for null): the CSV row before
        it becomes text, and the typed columns of a Parquet part (``analyzer.outputdir``)."""
        values: list[str | int | None] = [
            self.call_id, self.start, self.start_ns, self.src, self.dst, self.transport,
            self.encapsulation, self.request_uri, self.from_.raw, self.from_.tn, self.to.raw,
            self.to.tn, self.pai.raw, self.pai.tn, self.final_status, self.state, self.end,
            self.verstat, self.status_code, self.reason, self.attest, self.origid,
            self.signer_spc, self.signer_org, self.x5u, len(self.passports), len(self.legs),
            " ".join(map(str, self.frames)),
            ";".join(str(a.get("kind")) for a in self.anomalies), self.error,
        ]  # fmt: skip
        return values


# The JSONL encoder, made once (``json.dumps`` with options builds one per call): compact,
# UTF-8 kept as is. No circular-reference check: a record is a tree of fresh dicts and lists,
# and the check (a dict of every container's id) was a third of the encoding time.
_JSONL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
# ``json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`` for a fresh tree of dicts and
# lists (a JSON Lines line without its newline): call records here, ``verify --batch`` results.
compact_json = _JSONL.encode


def jsonl_line(record: CallRecord) -> str:
    """One JSONL line with its newline (compact, fixed key order: byte-identical output)."""
    return compact_json(record.to_json()) + "\n"


def csv_line(record: CallRecord) -> str:
    """One CSV row with its newline (RFC 4180 quoting, ``\n`` line ends)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(record.to_row())
    return buf.getvalue()


CSV_FIELDS = (
    "call_id", "start", "start_ns", "src", "dst", "transport", "encapsulation", "request_uri",
    "from", "from_tn", "to", "to_tn", "pai", "pai_tn", "final_status", "state", "end",
    "verstat", "status_code", "reason", "attest", "origid", "signer_spc", "signer_org", "x5u",
    "passports", "legs", "frames", "anomalies", "error",
)  # fmt: skip


def _bump(counter: Counter[str], key: str, n: int = 1) -> None:
    if key not in counter and len(counter) >= MAX_DISTINCT:
        key = OTHER
    counter[key] += n


@dataclass(slots=True)
class Summary:
    """Counts over a run, folded record by record (bounded by ``MAX_DISTINCT`` per counter)."""

    calls: int = 0
    verstat: Counter[str] = field(default_factory=Counter)
    attest: Counter[str] = field(default_factory=Counter)
    signers: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    final_status: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    transports: Counter[str] = field(default_factory=Counter)
    anomalies: Counter[str] = field(default_factory=Counter)
    timeline: dict[int, Counter[str]] = field(default_factory=dict)
    first_ns: int | None = None
    last_ns: int | None = None

    def add(self, record: CallRecord | CallDigest) -> None:
        # Once per call of a run, in the process that writes the output: each count is bumped
        # in place when its key is already counted (nearly always), ``_bump`` (the bound)
        # only for a new key.
        if isinstance(record, CallRecord):
            record = record.digest()
        self.calls += 1
        verdict = record.verstat or "error"
        transport = record.transport
        for counter, key in (
            (self.verstat, verdict),
            (self.attest, record.attest or NO_ATTEST),
            (self.final_status, str(record.final_status or "none")),
            (self.states, record.state),
            (
                self.transports,
                f"{record.encapsulation}/{transport}" if record.encapsulation else transport,
            ),
        ):
            if key in counter:
                counter[key] += 1
            else:
                _bump(counter, key)
        if record.signer_spc or record.signer_org:
            _bump(self.signers, signer_label(record.signer_spc, record.signer_org))
        if record.reason:
            _bump(self.reasons, record.reason)
        for kind in record.anomaly_kinds:
            _bump(self.anomalies, kind)
        start = record.start_ns
        bucket = start // TIMELINE_BUCKET_NS
        timeline = self.timeline
        counts = timeline.get(bucket)
        if counts is None:
            if len(timeline) >= MAX_DISTINCT:
                counts = timeline[max(timeline)]
            else:
                counts = timeline[bucket] = Counter()
        counts[verdict] += 1
        if self.first_ns is None or start < self.first_ns:
            self.first_ns = start
        if self.last_ns is None or start > self.last_ns:
            self.last_ns = start

    def add_anomaly(self, item: AnyAnomaly) -> None:
        _bump(self.anomalies, item.kind.value)

    def to_json(self) -> dict[str, object]:
        return {
            "calls": self.calls,
            "first_call": iso_ns(self.first_ns) if self.first_ns is not None else None,
            "last_call": iso_ns(self.last_ns) if self.last_ns is not None else None,
            "verstat": dict(sorted(self.verstat.items())),
            "attest": dict(sorted(self.attest.items())),
            "signers": dict(self.signers.most_common()),
            "reasons": dict(self.reasons.most_common()),
            "final_status": dict(sorted(self.final_status.items())),
            "states": dict(sorted(self.states.items())),
            "transports": dict(sorted(self.transports.items())),
            "anomalies": dict(sorted(self.anomalies.items())),
        }


def signer_label(spc: str | None, org: str | None) -> str:
    """How a signer is shown: ``SPC (Organization)``."""
    if spc and org:
        return f"{spc} ({org})"
    return spc or org or "unknown"
