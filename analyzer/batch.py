"""Bulk verification: JSON Lines of SIP values in, one verification result per line out, in order.

Input lines carry ``identity`` (a string or a list), ``from``, ``to`` and optionally ``pai``,
``date``, ``request_uri``, ``at`` (epoch seconds or ISO 8601) and ``id`` (echoed). Theory of
operation: lines are grouped in chunks; with one worker they are verified in this process, with
N workers each worker process builds its own verifier (and certificate cache) once and chunks
are dispatched with a bounded window so memory stays flat whatever the input size, while the
output keeps the input order. A bad line becomes an ``error`` record, never a crash.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from analyzer.extract import ExtractError, request_from_headers
from analyzer.records import compact_json
from analyzer.verifying import VerifierConfig, build_verifier
from shaken.verifier import Verifier

# Lines per chunk handed to a worker: large enough that inter-process overhead (pickling a list
# of strings, ~µs per line) is small against verification (~100 µs per line).
CHUNK_LINES = 256
# Chunks in flight per worker: keeps both cores fed without reading the whole input.
WINDOW_PER_WORKER = 4


@dataclass(slots=True)
class BatchSummary:
    lines: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        rate = self.lines / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.lines} lines: {self.passed} passed, {self.failed} not passed, "
            f"{self.errors} unreadable ({rate:.0f} lines/s)"
        )


def _parse_at(value: object, default: float | None, clock: Callable[[], float]) -> datetime:
    if value is None:
        return datetime.fromtimestamp(default if default is not None else clock(), UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, str):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except ValueError:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    raise ValueError(f"'at' must be epoch seconds or ISO 8601, not {type(value).__name__}")


def _str_or_none(obj: dict[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string")
    return value


def verify_line(
    verifier: Verifier,
    number: int,
    line: str,
    default_at: float | None,
    clock: Callable[[], float],
) -> dict[str, object]:
    """One input line to one output record (never raises for bad input)."""
    try:
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("a line must be a JSON object")
        identity = obj.get("identity")
        if isinstance(identity, str):
            identities = [identity]
        elif isinstance(identity, list) and all(isinstance(v, str) for v in identity):
            identities = list(identity)
        else:
            raise ValueError("'identity' must be a string or a list of strings")
        from_ = _str_or_none(obj, "from")
        to = _str_or_none(obj, "to")
        if from_ is None or to is None:
            raise ValueError("'from' and 'to' are required")
        request = request_from_headers(
            identities=identities,
            from_=from_,
            to=to,
            pai=_str_or_none(obj, "pai"),
            date=_str_or_none(obj, "date"),
            request_uri=_str_or_none(obj, "request_uri"),
        )
        at = _parse_at(obj.get("at"), default_at, clock)
    except (ValueError, ExtractError) as exc:
        return {"line": number, "error": {"reason": "bad_input_line", "detail": str(exc)}}
    record: dict[str, object] = {"line": number}
    if "id" in obj:
        record["id"] = obj["id"]
    record.update(verifier.verify(request, at=at).to_json())
    return record


# -- worker process state --------------------------------------------------------------------

_WORKER: Verifier | None = None


def _init_worker(config: VerifierConfig) -> None:
    global _WORKER
    _WORKER = build_verifier(config)


def _work(
    chunk: list[tuple[int, str]], default_at: float | None, clock: Callable[[], float]
) -> list[str]:
    assert _WORKER is not None
    return [compact_json(verify_line(_WORKER, n, line, default_at, clock)) for n, line in chunk]


def _chunks(lines: Iterable[str]) -> Iterator[list[tuple[int, str]]]:
    chunk: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        chunk.append((number, line))
        if len(chunk) >= CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_batch(
    lines: Iterable[str],
    out: TextIO,
    *,
    config: VerifierConfig,
    default_at: datetime | None = None,
    workers: int = 1,
    clock: Callable[[], float] = time.time,
) -> BatchSummary:
    """Verify every line, writing one JSON result per line to ``out`` in input order."""
    summary = BatchSummary()
    started = time.perf_counter()
    at = default_at.timestamp() if default_at is not None else None

    def emit(text: str) -> None:
        out.write(text + "\n")
        summary.lines += 1
        if '"error":{"reason":"bad_input_line"' in text[:200]:
            summary.errors += 1
        elif '"verstat":"TN-Validation-Passed"' in text:
            summary.passed += 1
        else:
            summary.failed += 1

    if workers == 1:
        with build_verifier(config, clock=clock) as verifier:
            for chunk in _chunks(lines):
                for n, line in chunk:
                    emit(compact_json(verify_line(verifier, n, line, at, clock)))
    else:
        with ProcessPoolExecutor(
            max_workers=workers, initializer=_init_worker, initargs=(config,)
        ) as pool:
            pending: deque[Future[list[str]]] = deque()
            for chunk in _chunks(lines):
                pending.append(pool.submit(_work, chunk, at, clock))
                while len(pending) >= workers * WINDOW_PER_WORKER:
                    for text in pending.popleft().result():
                        emit(text)
            while pending:
                for text in pending.popleft().result():
                    emit(text)
    summary.seconds = time.perf_counter() - started
    return summary
