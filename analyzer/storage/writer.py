"""Writing a run's results into the store: call records in batches, anomalies, heartbeats.

Theory of operation. ``RunWriter`` buffers at most ``BATCH_CALLS`` records and writes each
batch in one transaction that first checks the lease (``jobs.fenced_update``), so memory stays
bounded whatever the capture size, a worker that lost its job writes nothing more, and the
job's ``progress_calls`` moves with what is committed. Starting a writer deletes what an
earlier, interrupted attempt of the same job left, so a retried job ends with exactly one copy
of each call. ``Heartbeat`` renews the lease from a daemon thread while the analysis runs
(a long stretch of capture without calls writes no batch but must keep its lease).

The columns are taken from the JSONL object (``CallRecord.to_json``, the contract of
`stirscope analyze --format jsonl`), which is also stored whole in ``calls.record``.
STANDARDS.md section 9.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, delete, insert

from analyzer.records import CallRecord, datetime_ns
from analyzer.storage.engine import Database, clean_text
from analyzer.storage.jobs import Lease, LeaseLost, fenced_update
from analyzer.storage.models import (
    CALL_ID_LEN,
    ENDPOINT_LEN,
    ORG_LEN,
    SHA256_HEX_LEN,
    SHORT_LEN,
    SPC_LEN,
    TN_LEN,
    URL_LEN,
    AnomalyRow,
    CallRow,
    PassportRow,
)

# Calls per transaction: large enough that commit overhead is small (a few ms per commit
# against ~0.1 ms per row), small enough that a batch of big records (PASSporTs with their
# certificate details, ~4 kB each) stays around a megabyte in memory.
BATCH_CALLS = 500
# Batches queued for the background writer thread: one being written, one waiting; the
# analysis blocks beyond that (bounded memory when the database is slower than the capture).
BATCHES_IN_FLIGHT = 2
# Anomalies per insert statement (run-level anomalies are capped by the analyzer anyway).
BATCH_ANOMALIES = 1000


def _s(value: object, size: int) -> str | None:
    """A text column value: None stays None, anything else is made storable and cut to size."""
    if value is None:
        return None
    return clean_text(str(value))[:size]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _obj(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def call_columns(job_id: str, seq: int, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``calls`` row of one JSONL object. The calling number is the P-Asserted-Identity's
    when present, else the From's (STANDARDS.md section 1.2, RFC 8224 section 8)."""
    start_ns = int(doc["start_ns"])
    pai, from_, to = _obj(doc.get("pai")), _obj(doc.get("from")), _obj(doc.get("to"))
    signer = _obj(doc.get("signer"))
    return {
        "job_id": job_id,
        "seq": seq,
        "call_id": _s(doc.get("call_id"), CALL_ID_LEN) or "",
        "start_ns": start_ns,
        "start": datetime_ns(start_ns),
        "src": _s(doc.get("src"), ENDPOINT_LEN) or "",
        "dst": _s(doc.get("dst"), ENDPOINT_LEN) or "",
        "transport": _s(doc.get("transport"), 16) or "",
        "encapsulation": _s(doc.get("encapsulation"), 16),
        "calling_tn": _s(pai.get("tn") or from_.get("tn"), TN_LEN),
        "called_tn": _s(to.get("tn"), TN_LEN),
        "verstat": _s(doc.get("verstat"), SHORT_LEN),
        "status_code": _int(doc.get("status_code")),
        "reason": _s(doc.get("reason"), SHORT_LEN),
        "attest": _s(doc.get("attest"), 8),
        "origid": _s(doc.get("origid"), SHORT_LEN),
        "signer_spc": _s(signer.get("spc"), SPC_LEN),
        "signer_org": _s(signer.get("organization"), ORG_LEN),
        "x5u": _s(doc.get("x5u"), URL_LEN),
        "final_status": _int(doc.get("final_status")),
        "state": _s(doc.get("state"), SHORT_LEN) or "",
        "error": _s(doc.get("error"), 1 << 16),
        "passport_count": len(_list(doc.get("passports"))),
        "anomaly_count": len(_list(doc.get("anomalies"))),
        "replay": doc.get("replay") is not None,
        "record": dict(doc),
    }


def passport_columns(job_id: str, call_pk: int, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``passports`` rows of one JSONL object (``signatures`` runs parallel to them)."""
    signatures = _list(doc.get("signatures"))
    rows = []
    for n, item in enumerate(_list(doc.get("passports"))):
        p = _obj(item)
        orig = p.get("orig")
        signature = signatures[n] if n < len(signatures) else None
        valid = p.get("valid")
        rows.append(
            {
                "call_pk": call_pk,
                "job_id": job_id,
                "position": n,
                "ppt": _s(p.get("ppt"), SHORT_LEN),
                "attest": _s(p.get("attest"), 8),
                "origid": _s(p.get("origid"), SHORT_LEN),
                "orig_tn": _s(orig, TN_LEN) if isinstance(orig, str) else None,
                "iat": _int(p.get("iat")),
                "x5u": _s(p.get("x5u"), URL_LEN),
                "signer_spc": _s(_obj(p.get("signer")).get("spc"), SPC_LEN),
                "valid": valid if isinstance(valid, bool) else None,
                "reason": _s(p.get("reason"), SHORT_LEN),
                "signature_sha256": _s(signature, SHA256_HEX_LEN),
            }
        )
    return rows


def anomaly_columns(job_id: str, call_pk: int | None, doc: Mapping[str, Any]) -> dict[str, Any]:
    """An ``anomalies`` row from the JSON shape of ``analyzer.capture.anomaly_to_json``."""
    return {
        "job_id": job_id,
        "call_pk": call_pk,
        "kind": _s(doc.get("kind"), SHORT_LEN) or "unknown",
        "frame": _int(doc.get("frame")),
        "detail": _s(doc.get("detail"), 1 << 16),
        "document": dict(doc),
    }


class RunWriter:
    """Writes one attempt's results under its lease (see the module docstring).

    With ``background=True`` batches are written by one helper thread while the caller goes
    on analysing (the database's work, JSON encoding included, overlaps the analysis); at
    most ``BATCHES_IN_FLIGHT`` batches wait, so memory stays bounded, and an error of the
    helper (``LeaseLost``, a database error) is raised by the next ``add``/``flush``/``close``.
    Call ``close()`` before completing the job; use the writer as a context manager (or call
    ``abort()``) so the helper thread ends on every path.
    """

    def __init__(
        self,
        db: Database,
        lease: Lease,
        *,
        batch_calls: int = BATCH_CALLS,
        background: bool = False,
    ) -> None:
        if batch_calls < 1:
            raise ValueError("batch_calls must be at least 1")
        self._db = db
        self.lease = lease
        self._batch = batch_calls
        self._pending: list[Mapping[str, Any]] = []
        self._queued = 0  # calls handed to _write (their seq numbers are taken)
        self.written = 0  # calls committed
        self._pool = ThreadPoolExecutor(1, "stirscope-store") if background else None
        self._in_flight: deque[Future[None]] = deque()
        with db.write() as conn:
            fenced_update(conn, lease, progress_calls=0)
            for table in (AnomalyRow, PassportRow, CallRow):
                conn.execute(delete(table).where(table.job_id == lease.job_id))

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.abort()

    def add(self, record: CallRecord) -> None:
        self.add_json(record.to_json())

    def add_json(self, doc: Mapping[str, Any]) -> None:
        """Queue one JSONL object (``CallRecord.to_json`` shape); writes a full batch."""
        self._pending.append(doc)
        if len(self._pending) >= self._batch:
            self.flush()

    def flush(self) -> None:
        """Write the queued records (one transaction, fenced on the lease); in background
        mode, hand them to the helper thread (waiting while too many batches are queued)."""
        self._raise_done()
        if not self._pending:
            return
        docs, first = self._pending, self._queued
        self._pending = []
        self._queued += len(docs)
        if self._pool is None:
            self._write(docs, first)
            return
        while len(self._in_flight) >= BATCHES_IN_FLIGHT:
            self._in_flight.popleft().result()
        self._in_flight.append(self._pool.submit(self._write, docs, first))

    def close(self) -> None:
        """Write everything queued and wait for it (raises the helper's error, if any)."""
        self.flush()
        try:
            while self._in_flight:
                self._in_flight.popleft().result()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop the helper thread, dropping what it has not written (after an error)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._in_flight.clear()

    def _raise_done(self) -> None:
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft().result()

    def _write(self, docs: list[Mapping[str, Any]], first: int) -> None:
        job_id = self.lease.job_id
        with self._db.write() as conn:
            fenced_update(conn, self.lease, progress_calls=first + len(docs))
            rows = [call_columns(job_id, first + n, doc) for n, doc in enumerate(docs)]
            ids = conn.execute(
                insert(CallRow).returning(CallRow.id, sort_by_parameter_order=True), rows
            ).scalars().all()  # fmt: skip
            passports: list[dict[str, Any]] = []
            anomalies: list[dict[str, Any]] = []
            for pk, doc in zip(ids, docs, strict=True):
                passports.extend(passport_columns(job_id, pk, doc))
                anomalies.extend(
                    anomaly_columns(job_id, pk, _obj(a)) for a in _list(doc.get("anomalies"))
                )
            _insert(conn, PassportRow, passports)
            _insert(conn, AnomalyRow, anomalies)
        self.written = first + len(docs)

    def add_anomalies(self, docs: Iterable[Mapping[str, Any]]) -> None:
        """Write run-level anomalies (``anomaly_to_json`` shape), fenced on the lease."""
        rows = [anomaly_columns(self.lease.job_id, None, doc) for doc in docs]
        for start in range(0, len(rows), BATCH_ANOMALIES):
            with self._db.write() as conn:
                fenced_update(conn, self.lease)
                _insert(conn, AnomalyRow, rows[start : start + BATCH_ANOMALIES])


def _insert(conn: Connection, table: type[Any], rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(table), rows)


class Heartbeat:
    """Calls ``renew`` every ``interval_s`` on a daemon thread until stopped (a context
    manager). A ``LeaseLost`` stops it and is kept in ``lost`` for the runner to act on; other
    errors (a database blip) are kept in ``last_error`` and retried at the next beat."""

    def __init__(self, renew: Callable[[], object], interval_s: float) -> None:
        self._renew = renew
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stirscope-heartbeat", daemon=True)
        self.lost: LeaseLost | None = None
        self.last_error: Exception | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._renew()
            except LeaseLost as exc:
                self.lost = exc
                return
            except Exception as exc:  # a transient database error: try again next beat
                self.last_error = exc

    def start(self) -> None:
        self._thread.start()

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
