"""JSONL output rotated by size and/or time (``stirscope listen -o PATH --rotate-*``).

Theory of operation. ``RotatingWriter`` appends whole lines to ``PATH`` (UTF-8, opened in
append mode so a restart continues the same file). Before a write that would take the file
past ``max_bytes``, or once the wall clock crosses the next multiple of ``interval_s`` (UTC
aligned: hourly files start on the hour, as logrotate and most collectors do), the file is
closed and renamed ``STEM.YYYYmmddTHHMMSSZ.SUFFIX`` (the moment of rotation; ``-N`` added on a
clash) and a new ``PATH`` is started, so a reader tailing ``PATH`` never sees a line cut in
two and every rotated file is complete. With ``keep``, only that many rotated files are kept
(oldest removed). Writes come from several threads (listeners, verification workers): one
lock serialises them. A line longer than ``max_bytes`` gets a file of its own, never split.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

# Multipliers of --rotate-size suffixes (binary, as ls -h and logrotate's "size 100M").
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Multipliers of --rotate-interval suffixes.
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Smallest rotation interval: below a second, file names (second resolution) would clash.
MIN_INTERVAL_S = 1.0
_STAMP = "%Y%m%dT%H%M%SZ"
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]?)\s*$")


def parse_size(text: str) -> int:
    """``100M``, ``512k``, ``1G`` or plain bytes; ``ValueError`` when malformed or zero."""
    found = _NUMBER.match(text)
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in SIZE_UNITS:
        raise ValueError(f"{text!r}: expected a size such as 100M, 512k or 1G")
    size = int(float(found.group(1)) * SIZE_UNITS[unit])
    if size < 1:
        raise ValueError(f"{text!r}: size must be positive")
    return size


def parse_duration(text: str) -> float:
    """``15m``, ``1h``, ``1d`` or plain seconds; ``ValueError`` when malformed or < 1 s."""
    found = _NUMBER.match(text)
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in DURATION_UNITS:
        raise ValueError(f"{text!r}: expected a duration such as 30s, 15m, 1h or 1d")
    seconds = float(found.group(1)) * DURATION_UNITS[unit]
    if seconds < MIN_INTERVAL_S:
        raise ValueError(f"{text!r}: interval must be at least {MIN_INTERVAL_S:g} s")
    return seconds


class RotatingWriter:
    """Append lines to ``path``, rotating by ``max_bytes`` and/or ``interval_s`` (see the
    module docstring); ``clock`` returns seconds since the epoch (injectable for tests)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int | None = None,
        interval_s: float | None = None,
        keep: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if interval_s is not None and interval_s < MIN_INTERVAL_S:
            raise ValueError(f"interval_s must be at least {MIN_INTERVAL_S:g}")
        if keep is not None and keep < 0:
            raise ValueError("keep must be 0 or more")
        self.path = path
        self.max_bytes = max_bytes
        self.interval_s = interval_s
        self.keep = keep
        self._clock = clock
        self._lock = threading.Lock()
        self.rotations = 0
        self.lines = 0
        self._handle = open(path, "ab")  # noqa: SIM115 - held open; closed by close()
        self._size = self._handle.tell()
        self._deadline = self._next_deadline(clock())

    def _next_deadline(self, now: float) -> float | None:
        if self.interval_s is None:
            return None
        return (now // self.interval_s + 1) * self.interval_s

    def write(self, text: str) -> None:
        """Append ``text`` (whole lines, each ending in a newline) atomically with respect to
        rotation: the lines land in one file."""
        data = text.encode("utf-8", "surrogateescape")
        with self._lock:
            if self._handle.closed:
                raise ValueError(f"{self.path}: writer closed")
            self._maybe_rotate(len(data))
            self._handle.write(data)
            self._size += len(data)
            self.lines += text.count("\n")

    def tick(self) -> None:
        """Rotate on time even when nothing is written (called every second or so)."""
        with self._lock:
            if not self._handle.closed:
                self._maybe_rotate(0)

    def _maybe_rotate(self, incoming: int) -> None:
        now = self._clock()
        due = self._deadline is not None and now >= self._deadline
        full = self.max_bytes is not None and self._size + incoming > self.max_bytes
        if (due or full) and self._size > 0:
            self._rotate(now)
        if due:
            self._deadline = self._next_deadline(now)

    def _rotate(self, now: float) -> None:
        self._handle.close()
        stamp = datetime.fromtimestamp(now, UTC).strftime(_STAMP)
        target = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.stem}.{stamp}-{n}{self.path.suffix}")
            n += 1
        os.replace(self.path, target)
        self.rotations += 1
        self._handle = open(self.path, "ab")  # noqa: SIM115
        self._size = 0
        if self.keep is not None:
            for old in self.rotated()[: -self.keep or None]:
                old.unlink(missing_ok=True)

    def rotated(self) -> list[Path]:
        """Rotated files of ``path``, oldest first."""
        pattern = re.compile(
            re.escape(self.path.stem) + r"\.(\d{8}T\d{6}Z)(?:-(\d+))?" + re.escape(self.path.suffix)
        )
        found: list[tuple[str, int, Path]] = []
        for candidate in self.path.parent.iterdir():
            match = pattern.fullmatch(candidate.name)
            if match:
                found.append((match.group(1), int(match.group(2) or 0), candidate))
        return [path for _stamp, _n, path in sorted(found)]

    def flush(self) -> None:
        with self._lock:
            if not self._handle.closed:
                self._handle.flush()

    def close(self) -> None:
        with self._lock:
            if not self._handle.closed:
                self._handle.close()
