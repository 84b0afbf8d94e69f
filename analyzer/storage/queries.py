"""Reading calls back: filters, keyset or offset pages, one call, counts by signer and attestation.

Filters are the ones the API offers (verstat, attestation, signer SPC, time range, calling and
called number, reason, Call-ID, job), each served by an index of ``models.CallRow``. Pages are
ordered by capture time then row id, a total order, so keyset pagination (``cursor``) is
stable while a job is still writing; offset pagination is there for page-number UIs. The
labels for missing values are those of the run summary (``analyzer.records.Summary``): no
verstat is ``error``, no attestation is ``none``.

ARCHITECTURE.md section 2 (storage); STANDARDS.md section 9.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, func, select, tuple_

from analyzer.records import NO_ATTEST
from analyzer.storage.engine import Database, StoreError
from analyzer.storage.models import AnomalyRow, CallRow, ManifestRow

# Largest page a caller may ask for: a page of full records (~4 kB each) stays a few MB.
MAX_PAGE = 1000
DEFAULT_PAGE = 100
# Label of calls without a verstat (the verifier raised an error), as in the run summary.
NO_VERSTAT = "error"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"(-?\d{1,20})\.(\d{1,20})")


class InvalidCursor(StoreError, ValueError):
    """A pagination cursor this store did not hand out."""


class CallOrder(StrEnum):
    """Page order: capture time, oldest or newest first (row id breaks ties)."""

    START = "start"
    START_DESC = "-start"


@dataclass(frozen=True, slots=True)
class CallFilter:
    """Which calls: every field set must match (``None`` means any). ``since`` is inclusive,
    ``until`` exclusive; numbers are canonical TNs (digits, RFC 8224 section 8.3)."""

    job_id: str | None = None
    verstat: str | None = None
    attest: str | None = None
    signer_spc: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    calling: str | None = None
    called: str | None = None
    reason: str | None = None
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredCall:
    """One stored call: the indexed columns, and the full JSONL ``record`` when asked for."""

    pk: int
    job_id: str
    seq: int
    call_id: str
    start_ns: int
    start: datetime
    src: str
    dst: str
    transport: str
    encapsulation: str | None
    calling_tn: str | None
    called_tn: str | None
    verstat: str | None
    status_code: int | None
    reason: str | None
    attest: str | None
    origid: str | None
    signer_spc: str | None
    signer_org: str | None
    x5u: str | None
    final_status: int | None
    state: str
    error: str | None
    passport_count: int
    anomaly_count: int
    replay: bool
    record: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CallPage:
    """A page of calls and the cursor of the next one (None on the last page)."""

    items: tuple[StoredCall, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class SignerCount:
    """Calls signed by one signer (SPC and organisation), by verdict and attestation."""

    spc: str | None
    organization: str | None
    calls: int
    verstat: dict[str, int] = field(default_factory=dict)
    attest: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "spc": self.spc,
            "organization": self.organization,
            "calls": self.calls,
            "verstat": self.verstat,
            "attest": self.attest,
        }


@dataclass(frozen=True, slots=True)
class CallCounts:
    """Counts over the calls matching a filter (the store's side of the run summary)."""

    calls: int
    verstat: dict[str, int]
    attest: dict[str, int]
    reasons: dict[str, int]
    signers: tuple[SignerCount, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "calls": self.calls,
            "verstat": self.verstat,
            "attest": self.attest,
            "reasons": self.reasons,
            "signers": [s.to_json() for s in self.signers],
        }


def time_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (the ``start_ns`` scale)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: pass an aware (UTC) datetime")
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _equals(column: Any, value: str, missing: str) -> ColumnElement[bool]:
    return column.is_(None) if value == missing else column == value  # type: ignore[no-any-return]


def conditions(f: CallFilter) -> list[ColumnElement[bool]]:
    """The SQL conditions of a filter."""
    out: list[ColumnElement[bool]] = []
    if f.job_id is not None:
        out.append(CallRow.job_id == f.job_id)
    if f.verstat is not None:
        out.append(_equals(CallRow.verstat, f.verstat, NO_VERSTAT))
    if f.attest is not None:
        out.append(_equals(CallRow.attest, f.attest, NO_ATTEST))
    if f.signer_spc is not None:
        out.append(CallRow.signer_spc == f.signer_spc)
    if f.since is not None:
        out.append(CallRow.start_ns >= time_ns(f.since))
    if f.until is not None:
        out.append(CallRow.start_ns < time_ns(f.until))
    if f.calling is not None:
        out.append(CallRow.calling_tn == f.calling)
    if f.called is not None:
        out.append(CallRow.called_tn == f.called)
    if f.reason is not None:
        out.append(CallRow.reason == f.reason)
    if f.call_id is not None:
        out.append(CallRow.call_id == f.call_id)
    return out


_COLUMNS = [c for c in CallRow.__table__.c if c.name != "record"]


def _stored(row: Row[*tuple[Any, ...]]) -> StoredCall:
    values = row._asdict()
    pk = values.pop("id")
    return StoredCall(pk=pk, **values)


def parse_cursor(cursor: str) -> tuple[int, int]:
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise InvalidCursor(f"bad cursor {cursor[:40]!r}")
    return int(match[1]), int(match[2])


def list_calls(
    db: Database,
    where: CallFilter = CallFilter(),
    *,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
    offset: int | None = None,
    order: CallOrder = CallOrder.START,
    with_record: bool = False,
) -> CallPage:
    """One page of matching calls; pass ``next_cursor`` back as ``cursor`` for the next."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    if cursor is not None and offset is not None:
        raise ValueError("use a cursor or an offset, not both")
    columns = [*_COLUMNS, CallRow.record] if with_record else _COLUMNS
    query: Select[Any] = select(*columns).where(*conditions(where))
    key = tuple_(CallRow.start_ns, CallRow.id)
    descending = order is CallOrder.START_DESC
    if cursor is not None:
        after = tuple_(*parse_cursor(cursor))
        query = query.where(key < after if descending else key > after)
    if descending:
        query = query.order_by(CallRow.start_ns.desc(), CallRow.id.desc())
    else:
        query = query.order_by(CallRow.start_ns, CallRow.id)
    if offset is not None:
        if offset < 0:
            raise ValueError("offset must not be negative")
        query = query.offset(offset)
    with db.read() as conn:
        rows = conn.execute(query.limit(limit + 1)).all()
    items = tuple(_stored(row) for row in rows[:limit])
    more = len(rows) > limit
    return CallPage(items, f"{items[-1].start_ns}.{items[-1].pk}" if more else None)


def iter_calls(
    db: Database,
    where: CallFilter = CallFilter(),
    *,
    page: int = MAX_PAGE,
) -> Iterator[StoredCall]:
    """Every matching call with its record, oldest first, a page at a time (for exports)."""
    cursor: str | None = None
    while True:
        result = list_calls(db, where, limit=page, cursor=cursor, with_record=True)
        yield from result.items
        if result.next_cursor is None:
            return
        cursor = result.next_cursor


def count_calls(db: Database, where: CallFilter = CallFilter()) -> int:
    with db.read() as conn:
        query = select(func.count()).select_from(CallRow).where(*conditions(where))
        return int(conn.execute(query).scalar_one())


def get_call(db: Database, pk: int) -> StoredCall | None:
    """One call with its full record (PASSporTs, certificate facts, findings, legs)."""
    with db.read() as conn:
        row = conn.execute(select(*_COLUMNS, CallRow.record).where(CallRow.id == pk)).first()
    return _stored(row) if row is not None else None


def summarize(db: Database, where: CallFilter = CallFilter()) -> CallCounts:
    """Counts by verdict, attestation, reason and signer over the matching calls."""
    cond = conditions(where)
    by = (CallRow.signer_spc, CallRow.signer_org, CallRow.verstat, CallRow.attest)
    total = 0
    verstat: dict[str, int] = {}
    attest: dict[str, int] = {}
    # per signer: calls, by verstat, by attestation
    signers: dict[tuple[str | None, str | None], tuple[list[int], dict[str, int], dict[str, int]]]
    signers = {}
    with db.read() as conn:
        grouped = conn.execute(select(*by, func.count()).where(*cond).group_by(*by)).all()
        reasons_rows = conn.execute(
            select(CallRow.reason, func.count())
            .where(*cond, CallRow.reason.is_not(None))
            .group_by(CallRow.reason)
        ).all()
    for spc, org, v, a, n in grouped:
        v_label, a_label = v or NO_VERSTAT, a or NO_ATTEST
        total += n
        verstat[v_label] = verstat.get(v_label, 0) + n
        attest[a_label] = attest.get(a_label, 0) + n
        if spc is None and org is None:
            continue
        calls, by_verstat, by_attest = signers.setdefault((spc, org), ([0], {}, {}))
        calls[0] += n
        by_verstat[v_label] = by_verstat.get(v_label, 0) + n
        by_attest[a_label] = by_attest.get(a_label, 0) + n
    ranked = sorted(
        (
            SignerCount(spc, org, calls[0], dict(sorted(bv.items())), dict(sorted(ba.items())))
            for (spc, org), (calls, bv, ba) in signers.items()
        ),
        key=lambda s: (-s.calls, s.spc or "", s.organization or ""),
    )
    return CallCounts(
        calls=total,
        verstat=dict(sorted(verstat.items())),
        attest=dict(sorted(attest.items())),
        reasons=dict(
            sorted(((str(r), int(n)) for r, n in reasons_rows), key=lambda kv: (-kv[1], kv[0]))
        ),
        signers=tuple(ranked),
    )


def job_anomalies(
    db: Database, job_id: str, *, run_only: bool = True, limit: int = DEFAULT_PAGE, offset: int = 0
) -> list[dict[str, Any]]:
    """A job's anomalies in write order (``run_only``: the run's list, not per-call copies)."""
    query = select(AnomalyRow.document).where(AnomalyRow.job_id == job_id)
    if run_only:
        query = query.where(AnomalyRow.call_pk.is_(None))
    with db.read() as conn:
        rows = conn.execute(query.order_by(AnomalyRow.id).limit(limit).offset(offset)).scalars()
        return [dict(r) for r in rows]


def get_manifest(db: Database, job_id: str) -> dict[str, Any] | None:
    """The evidence manifest of a finished job."""
    with db.read() as conn:
        query = select(ManifestRow.document).where(ManifestRow.job_id == job_id)
        document = conn.execute(query).scalar_one_or_none()
    return dict(document) if document is not None else None
