"""Rendered lines handed over through spill files (analyzer.spill): the output gets the same
bytes in the same order as written text would give, runs are copied whole, spill files go once
copied, and an output the kernel cannot copy into still gets every byte."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer import spill as spill_module
from analyzer.spill import Spilled, SpillOutput, spillable, write_rendered
from tests.analyzer.test_partition import _same_as_single

LINE = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=0, max_size=30).map(
    lambda text: text + "\n"
)


def _run(tmp: Path, plan: list[tuple[int | None, str]]) -> tuple[bytes, str, list[str]]:
    """``plan``: (rank or None, line) in output order; None lines are written by this
    process. Returns the output through spill files, the expected text, and the spill files
    left."""
    spill = SpillOutput(str(tmp / "spill"))
    os.mkdir(spill.directory)
    per_rank: dict[int, list[str]] = {}
    for rank, text in plan:
        if rank is not None:
            per_rank.setdefault(rank, []).append(text)
    places = {rank: iter(spill.write(rank, texts)) for rank, texts in per_rank.items()}
    results: list[tuple[object, object]] = [
        (None, text if rank is None else next(places[rank])) for rank, text in plan
    ]
    path = tmp / "out.txt"
    with open(path, "w", encoding="utf-8", newline="") as out:
        assert spillable(out) == "strict"
        out.write("header\n")
        assert write_rendered(results, out, lambda: spill) == len(plan)
    expected = "header\n" + "".join(text for _rank, text in plan)
    return path.read_bytes(), expected, sorted(os.listdir(spill.directory))


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 3)), LINE), max_size=40),
)
def test_output_is_the_lines_in_order(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[int | None, str]]
) -> None:
    got, expected, left = _run(tmp_path_factory.mktemp("spill"), plan)
    assert got == expected.encode("utf-8")
    assert left == []  # every spill file whose lines were copied is gone


def test_adjacent_places_are_copied_as_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    sendfile = os.sendfile

    def counting(out: int, src: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return sendfile(out, src, offset, count)

    monkeypatch.setattr(os, "sendfile", counting)
    plan: list[tuple[int | None, str]] = [
        (0, "a\n"), (0, "bb\n"), (0, "ccc\n"), (None, "main\n"), (1, "x\n"), (1, "y\n"),
        (0, "dddd\n"),
    ]  # fmt: skip
    got, expected, left = _run(tmp_path, plan)
    assert got == expected.encode()
    assert calls == [9, 4, 5]  # partition 0's first three lines in one copy
    assert left == []


def test_output_the_kernel_cannot_copy_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*_args: object) -> int:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refused)
    monkeypatch.setattr(spill_module, "WRITE_CHUNK", 3)  # several steps per run
    plan: list[tuple[int | None, str]] = [(0, "é" * 5 + "\n"), (None, "main\n"), (0, "zz\n")]
    got, expected, left = _run(tmp_path, plan)
    assert got == expected.encode()
    assert left == []


def test_a_truncated_spill_file_is_an_error(tmp_path: Path) -> None:
    spill = SpillOutput(str(tmp_path))
    place = spill.write(0, ["abc\n"])[0]
    with open(spill.path(0), "wb") as damaged:
        damaged.write(b"ab")
    out = open(tmp_path / "out", "w", encoding="utf-8")  # noqa: SIM115
    with out, pytest.raises(OSError, match="shorter than its records"):
        write_rendered([(None, place)], out, lambda: spill)


def test_places_without_a_spill_output_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="spill file"):
        write_rendered([(None, Spilled(0, 0, 1))], io.StringIO(), lambda: None)
    with pytest.raises(TypeError, match="text or a place"):
        write_rendered([(None, 42)], io.StringIO(), lambda: None)


def test_spillable_streams() -> None:
    assert spillable(io.StringIO()) is None  # no file descriptor
    latin = io.TextIOWrapper(io.BufferedWriter(io.FileIO(os.devnull, "w")), encoding="latin-1")
    with latin:
        assert spillable(latin) is None  # the workers write UTF-8
    utf8 = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(os.devnull, "w")), encoding="utf-8", errors="surrogateescape"
    )
    with utf8:
        assert spillable(utf8) == "surrogateescape"


def test_write_replaces_a_partial_file(tmp_path: Path) -> None:
    """A task run again rewrites the same file whole (under a temporary name first)."""
    spill = SpillOutput(str(tmp_path))
    first = spill.write(2, ["one\n", "two\n"])
    again = spill.write(2, ["one\n", "two\n"])
    assert first == again == [Spilled(2, 0, 4), Spilled(2, 4, 4)]
    assert os.listdir(tmp_path) == ["spill-00002"]
    assert Path(spill.path(2)).read_bytes() == b"one\ntwo\n"


def test_a_partition_that_cannot_spill_sends_its_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bench_capture: Path
) -> None:
    """A worker whose spill file cannot be written (a full disk) sends its lines back: the
    output is the same, partly copied, partly written."""
    write = SpillOutput.write

    def full_disk(self: SpillOutput, rank: int, texts: list[str]) -> list[Spilled]:
        if rank == 1:
            raise OSError(28, "No space left on device")
        return write(self, rank, texts)

    monkeypatch.setattr(SpillOutput, "write", full_disk)
    size = bench_capture.stat().st_size
    job = _same_as_single([bench_capture], partition_bytes=size // 3)
    assert job.partitions == 3
    assert job.spill is not None
