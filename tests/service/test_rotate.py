"""JSONL rotation (service/rotate.py): by size, by UTC-aligned time, keep N, whole lines only,
concurrent writers, option parsing, and ``stirscope listen`` option checks."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.cli import main
from service.rotate import RotatingWriter, parse_duration, parse_size
from tests.service.invites import TRUST

T0 = datetime(2026, 1, 15, 12, 59, 58, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines_of(paths: list[Path]) -> list[list[str]]:
    return [path.read_text().splitlines() for path in paths]


def test_rotate_by_size_keeps_lines_whole(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    writer = RotatingWriter(path, max_bytes=25, clock=Clock(T0))
    for n in range(5):
        writer.write(f'{{"n":{n},"pad":"xx"}}\n')  # 18 bytes: one per file
    writer.write("x" * 40 + "\n")  # longer than max_bytes: a file of its own, never split
    writer.close()
    rotated = writer.rotated()
    assert [p.name for p in rotated] == [
        "calls.20260115T125958Z.jsonl",
        *(f"calls.20260115T125958Z-{n}.jsonl" for n in range(1, 5)),
    ]
    assert lines_of([*rotated, path]) == [[f'{{"n":{n},"pad":"xx"}}'] for n in range(5)] + [
        ["x" * 40]
    ]
    assert (writer.rotations, writer.lines) == (5, 6)


def test_rotate_on_utc_boundaries_and_tick(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    clock = Clock(T0)
    writer = RotatingWriter(path, interval_s=3600, clock=clock)
    writer.write("a\n")
    clock.now = T0 + 1  # 12:59:59: same hour
    writer.write("b\n")
    clock.now = T0 + 2  # 13:00:00: a new hour starts a new file
    writer.tick()
    assert [p.name for p in writer.rotated()] == ["live.20260115T130000Z.jsonl"]
    clock.now = T0 + 3
    writer.write("c\n")
    clock.now = T0 + 3700  # next hour, nothing written since: tick rotates
    writer.tick()
    clock.now = T0 + 7400  # an empty hour: no empty file is made
    writer.tick()
    writer.close()
    assert lines_of([*writer.rotated(), path]) == [["a", "b"], ["c"], []]


def test_keep_removes_oldest(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    clock = Clock(T0)
    writer = RotatingWriter(path, max_bytes=2, keep=2, clock=clock)
    for n in range(5):
        clock.now = T0 + n
        writer.write(f"{n}\n")
    writer.close()
    assert lines_of([*writer.rotated(), path]) == [["2"], ["3"], ["4"]]


def test_appends_to_an_existing_file_and_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("old\n")
    writer = RotatingWriter(path, max_bytes=4096)

    def write(tag: str) -> None:
        for n in range(500):
            writer.write(f"{tag}-{n:04d}\n")

    threads = [threading.Thread(target=write, args=(t,)) for t in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    lines = [line for chunk in lines_of([*writer.rotated(), path]) for line in chunk]
    assert lines[0] == "old"
    assert sorted(lines[1:]) == sorted(f"{t}-{n:04d}" for t in "abcd" for n in range(500))
    assert all(p.stat().st_size <= 4096 for p in writer.rotated())
    with pytest.raises(ValueError, match="closed"):
        writer.write("late\n")


@pytest.mark.parametrize(
    ("text", "size"),
    [("100", 100), ("512k", 512 * 1024), ("100M", 100 << 20), ("1g", 1 << 30), ("1.5K", 1536)],
    ids=["bytes", "k", "M", "g", "fraction"],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("15m", 900.0), ("1h", 3600.0), ("1d", 86400.0)],
    ids=["plain", "s", "m", "h", "d"],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "M", "10X", "-1", "0", "0.5s", "1 hour"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|must"):
        parse_duration(text)
    with pytest.raises(ValueError, match=r"expected|must"):
        parse_size(text)


def test_listen_rotation_options_need_output(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["listen", "--hep", "udp:127.0.0.1:0", "--trust", str(TRUST), "--rotate-size", "1M"]
    assert main(args) == 2
    assert "apply to -o" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["listen", "--hep", "udp:127.0.0.1:0", "--rotate-interval", "soon"])
