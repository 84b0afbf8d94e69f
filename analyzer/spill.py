"""Rendered call records handed from local workers to the main process through files.

Theory of operation. In partitioned cluster mode (``analyzer.cluster``) the workers finish most
calls and render their records; one output stream (``-o FILE`` or stdout) must then receive
every record in the single run's order, interleaved with the calls the main process finishes
itself. Sent back through Dask, the rendered lines (most of the output's bytes) cost the main
process a receive, an unpickle and a write each, on the cores the workers need. When the
workers run on this machine (``--cluster local:N``), each instead writes its partition's lines,
in its emission order, to a spill file (``SpillOutput.write``, under a temporary name renamed
when whole, so a task Dask runs again rewrites the same bytes) and sends back only where each
line is (``Spilled``: partition, offset, length). The main process merges as before and hands
each record's place to ``SpillWriter``, which joins adjacent places into runs and copies each
run into the output in the kernel (``os.sendfile``), after the text it wrote itself; a spill
file is removed as soon as its last byte is copied. The output receives the same bytes, in the
same order, as if the lines had travelled (the workers encode them as the output would:
UTF-8 with the output's error handler). ARCHITECTURE.md section 2; issue 8.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TextIO

# Bytes copied per sendfile call at most (Linux copies at most ~2 GiB per call anyway).
COPY_CHUNK = 1 << 30
# Bytes read and written per step where the kernel cannot copy into the output.
WRITE_CHUNK = 1 << 20


class Spilled(NamedTuple):
    """Where a worker wrote a call's rendered record: partition ``rank``'s spill file, from
    byte ``offset``, ``length`` bytes."""

    rank: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class SpillOutput:
    """The spill directory of a run (on this machine) and how lines are encoded there; small,
    sent to the workers with their tasks."""

    directory: str
    errors: str = "strict"

    def path(self, rank: int) -> str:
        return os.path.join(self.directory, f"spill-{rank:05d}")

    def write(self, rank: int, texts: Sequence[str]) -> list[Spilled]:
        """``texts`` written, in this order, to partition ``rank``'s spill file; where each
        one is."""
        places: list[Spilled] = []
        blocks: list[bytes] = []
        offset = 0
        errors = self.errors
        for text in texts:
            data = text.encode("utf-8", errors)
            blocks.append(data)
            places.append(Spilled(rank, offset, len(data)))
            offset += len(data)
        path = self.path(rank)
        temp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(temp, "wb") as spill:
                spill.write(b"".join(blocks))
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return places


def spillable(out: TextIO) -> str | None:
    """The error handler workers encode with when ``out`` can take spilled lines (a UTF-8
    stream over a file descriptor, lines written as they are), else None."""
    try:
        encoding = codecs.lookup(out.encoding or "").name
        out.fileno()
    except (LookupError, AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    if encoding != "utf-8" or os.linesep != "\n":
        return None
    return out.errors or "strict"


class SpillWriter:
    """Writes text and spilled records to ``out`` in the order given (module docstring):
    adjacent places of one spill file are copied as one run, each spill file is removed once
    its last byte is copied. ``finish`` copies what is pending, ``close`` closes the files."""

    def __init__(self, out: TextIO, spill: SpillOutput) -> None:
        self._out = out
        self._spill = spill
        self._files: dict[int, tuple[int, int]] = {}  # rank -> (descriptor, size)
        self._rank = -1
        self._start = 0
        self._end = 0

    def write(self, text: str) -> None:
        if self._end > self._start:
            self._copy()
        self._out.write(text)

    def copy(self, place: Spilled) -> None:
        rank, offset, length = place
        if rank == self._rank and offset == self._end:
            self._end += length
            return
        if self._end > self._start:
            self._copy()
        if rank not in self._files:
            # Opened at first sight: the run's end may remove the directory before the last
            # run is copied (an open file stays readable).
            descriptor = os.open(self._spill.path(rank), os.O_RDONLY)
            self._files[rank] = (descriptor, os.fstat(descriptor).st_size)
        self._rank, self._start, self._end = rank, offset, offset + length

    def finish(self) -> None:
        """What is pending copied: the output has every record given so far."""
        if self._end > self._start:
            self._copy()

    def close(self) -> None:
        """The spill files still open closed (after ``finish``, or on an error)."""
        for descriptor, _size in self._files.values():
            os.close(descriptor)
        self._files.clear()

    def _copy(self) -> None:
        rank, start, end = self._rank, self._start, self._end
        self._start = self._end
        descriptor, size = self._files[rank]
        if end > size:
            raise OSError(f"spill file of partition {rank} is shorter than its records")
        out = self._out
        out.flush()
        target = out.fileno()
        while start < end:
            try:
                sent = os.sendfile(target, descriptor, start, min(end - start, COPY_CHUNK))
            except OSError:
                # An output the kernel cannot copy into (some terminals and devices): the
                # bytes through this process instead (``out`` is flushed: nothing between).
                block = os.pread(descriptor, min(end - start, WRITE_CHUNK), start)
                sent = os.write(target, block) if block else 0
            if sent <= 0:
                raise OSError(f"spill file of partition {rank} ended early")
            start += sent
        if end == size:  # every record of this partition is out: its file goes
            del self._files[rank]
            os.close(descriptor)
            with contextlib.suppress(OSError):
                os.unlink(self._spill.path(rank))


def write_rendered(
    results: Iterable[tuple[object, object]],
    out: TextIO,
    spill: Callable[[], SpillOutput | None],
) -> int:
    """The rendered results of a run, ``(digest, text or Spilled)`` in order, written to
    ``out``; ``spill()`` is the run's spill output once places come. Returns how many."""
    writer: SpillWriter | None = None
    rows = 0
    try:
        for _digest, text in results:
            if type(text) is str:
                if writer is None:
                    out.write(text)
                else:
                    writer.write(text)
            else:
                if not isinstance(text, Spilled):
                    raise TypeError(f"a rendered result is text or a place, not {text!r}")
                if writer is None:
                    where = spill()
                    if where is None:
                        raise ValueError("a place in a spill file from a run that has none")
                    writer = SpillWriter(out, where)
                writer.copy(text)
            rows += 1
        if writer is not None:
            writer.finish()
    finally:
        if writer is not None:
            writer.close()
    return rows
