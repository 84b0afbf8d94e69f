"""`analyze --output-dir`: the call records as a dataset directory of part files.

A run's records can outgrow one stream, and a cluster run should not have to send every record
back to one process to write it (issue 8). So the records can go to ``DIR/part-NNNNN.jsonl``
(JSON Lines, the bytes of ``--format jsonl``) or ``DIR/part-NNNNN.parquet`` (typed columns for
query engines). The parts are an unordered set: their union is the run's record set, each part
in emission order; concatenating a single-process run's parts by name gives the ``-o`` bytes.

Who writes which part: a single process (and ``--workers N``) writes ``part-00000``,
``part-00001``... starting a new part every ``ROWS_PER_PART`` records. In partitioned cluster
mode each worker writes the calls it finished inside its partition to ``part-<rank>`` (``rank``:
the partition's place in capture order, one part per partition, none when it has no such call)
and the main process writes the calls it tracked itself (across partitions, possible replays) to
``part-main-NNNNN``. Every part is written under a temporary name and renamed when complete, so
a part present under its name is whole (a task Dask runs again rewrites the same bytes).

Parquet columns: the flat fields of the CSV format (``CSV_FIELDS``; integers as int64, text as
strings, null where the JSON has null) plus ``record``, the JSONL line without its newline, so
nothing of the record is lost. pyarrow is an optional dependency (``stirscope[parquet]``),
imported on use. ARCHITECTURE.md section 2 (analyzer pipeline, reports).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from analyzer.records import CSV_FIELDS, CallRecord, jsonl_line

FORMATS = ("jsonl", "parquet")
# Records per part of the main process: parts stay small enough to open, hash and ship one by
# one (100,000 calls are ~200 MB of JSONL).
ROWS_PER_PART = 100_000
# Rows buffered before a Parquet row group is written (bounded memory, useful group size).
PARQUET_BATCH_ROWS = 10_000
# The CSV fields that are integers (the others are text).
_INT_FIELDS = frozenset({"start_ns", "final_status", "status_code", "passports", "legs"})
# The result text of a call a worker wrote to its own part (``analyzer.parttrack``): only its
# digest comes back, for the summary. A rendered record is never empty (it ends in a newline).
WRITTEN = ""
_HASH_BLOCK = 1 << 20


class OutputDirError(Exception):
    """The output directory cannot be used (a usage error before the run)."""


@dataclass(frozen=True, slots=True)
class PartFile:
    """A complete part: its file name in the directory, records, size and SHA-256."""

    name: str
    records: int
    size: int
    sha256: str

    def to_json(self, directory: str) -> dict[str, object]:
        return {
            "name": os.path.join(directory, self.name),
            "records": self.records,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True, slots=True)
class PartOutput:
    """Where the parts go and in which format (small: sent to the workers with their task)."""

    directory: str
    fmt: str

    def part_name(self, prefix: str, number: int) -> str:
        return f"{prefix}-{number:05d}.{self.fmt}"

    def write_part(self, name: str, records: Sequence[CallRecord]) -> PartFile:
        """One whole part of ``records`` (in this order) named ``name``."""
        writer = _PartWriter(self, name)
        try:
            for record in records:
                writer.add(record, jsonl_line(record))
        except BaseException:
            writer.abort()
            raise
        return writer.close()


def prepare(directory: str, fmt: str) -> PartOutput:
    """The output of ``--output-dir DIRECTORY --format FMT``: the directory created if need be;
    ``OutputDirError`` when it is not a directory, not empty (parts of another run would mix
    with this one's), cannot be created, or the format needs a missing library."""
    if fmt not in FORMATS:
        raise OutputDirError(f"--output-dir writes {' or '.join(FORMATS)}, not {fmt}")
    if fmt == "parquet":
        require_pyarrow()
    path = Path(directory)
    try:
        if path.exists():
            if not path.is_dir():
                raise OutputDirError(f"--output-dir {directory}: not a directory")
            if any(path.iterdir()):
                raise OutputDirError(f"--output-dir {directory}: not empty")
        else:
            path.mkdir(parents=True)
    except OSError as exc:
        raise OutputDirError(f"--output-dir {directory}: {exc.strerror or exc}") from exc
    return PartOutput(directory, fmt)


def require_pyarrow() -> Any:
    """The ``pyarrow`` module (``OutputDirError`` when it is not installed)."""
    try:
        return importlib.import_module("pyarrow")
    except ImportError as exc:
        raise OutputDirError("--format parquet needs pyarrow (install stirscope[parquet])") from exc


def parquet_schema() -> Any:
    """The Parquet schema of a part: the CSV fields typed, then ``record``."""
    pa = require_pyarrow()
    columns = [(f, pa.int64() if f in _INT_FIELDS else pa.string()) for f in CSV_FIELDS]
    return pa.schema([*columns, ("record", pa.string())])


class DatasetWriter:
    """The main process's parts: ``<prefix>-00000``, ``<prefix>-00001``..., a new one every
    ``rows_per_part`` records (default ``ROWS_PER_PART``), opened on the first record."""

    def __init__(
        self, output: PartOutput, prefix: str = "part", rows_per_part: int | None = None
    ) -> None:
        self.output = output
        self.prefix = prefix
        self.rows_per_part = ROWS_PER_PART if rows_per_part is None else rows_per_part
        self.parts: list[PartFile] = []
        self._current: _PartWriter | None = None

    def add(self, record: CallRecord | None, line: str) -> None:
        """One record: ``line`` its JSONL line; ``record`` itself (needed for Parquet)."""
        current = self._current
        if current is None:
            name = self.output.part_name(self.prefix, len(self.parts))
            current = self._current = _PartWriter(self.output, name)
        current.add(record, line)
        if current.records >= self.rows_per_part:
            self.parts.append(current.close())
            self._current = None

    def close(self) -> list[PartFile]:
        """The parts written, the last one completed."""
        if self._current is not None:
            self.parts.append(self._current.close())
            self._current = None
        return self.parts

    def abort(self) -> None:
        """Drop the part being written (its temporary file)."""
        if self._current is not None:
            self._current.abort()
            self._current = None


class _PartWriter:
    """One part, written to a temporary name and renamed into place by ``close``."""

    def __init__(self, output: PartOutput, name: str) -> None:
        self.name = name
        self.path = Path(output.directory) / name
        self._temp = self.path.with_name(f".{name}.{os.getpid()}.tmp")
        self.records = 0
        self._text: TextIO | None = None
        self._parquet: Any = None
        self._rows: list[tuple[CallRecord | None, str]] = []
        if output.fmt == "jsonl":
            self._text = open(self._temp, "w", encoding="utf-8", newline="")  # noqa: SIM115
        else:
            parquet = importlib.import_module("pyarrow.parquet")
            self._parquet = parquet.ParquetWriter(str(self._temp), parquet_schema())

    def add(self, record: CallRecord | None, line: str) -> None:
        self.records += 1
        if self._text is not None:
            self._text.write(line)
            return
        self._rows.append((record, line))
        if len(self._rows) >= PARQUET_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        pa = require_pyarrow()
        schema = parquet_schema()
        columns: list[list[object]] = [[] for _ in range(len(CSV_FIELDS) + 1)]
        for record, line in self._rows:
            assert record is not None, "a Parquet part needs the records themselves"
            values = [*record.flat_values(), line.rstrip("\n")]
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        self._rows = []
        table = pa.Table.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)],
            schema=schema,
        )
        self._parquet.write_table(table)

    def close(self) -> PartFile:
        if self._text is not None:
            self._text.close()
        else:
            self._flush()
            self._parquet.close()
        os.replace(self._temp, self.path)
        digest = hashlib.sha256()
        size = 0
        with open(self.path, "rb") as part:
            while block := part.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
        return PartFile(self.name, self.records, size, digest.hexdigest())

    def abort(self) -> None:
        try:
            if self._text is not None:
                self._text.close()
            elif self._parquet is not None:
                self._parquet.close()
        finally:
            self._temp.unlink(missing_ok=True)


def write_empty(output: PartOutput) -> PartFile:
    """``part-00000`` without records: a run without calls still leaves a readable dataset
    (a Parquet reader takes its schema from it)."""
    return output.write_part(output.part_name("part", 0), [])


def remove_parts(output: PartOutput, names: Sequence[str]) -> None:
    """Remove parts (those the workers wrote, when the main process writes every call after
    all: no record may be in two parts)."""
    for name in names:
        (Path(output.directory) / name).unlink(missing_ok=True)
