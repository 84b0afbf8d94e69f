"""`stirscope analyze --cluster local:1` vs `local:2` (Dask), both cluster modes, same captures.

Reuses ``bench_analyze``'s generator (``BENCH_SCALE_CALLS`` signed calls with RTP, BYE,
40,000 by default, ~590 MB; generated in a temporary directory, or ``BENCH_FILE``) and its
child-process timer. Two capture sets: the generated file alone (the partitioned run cuts it at
record boundaries, up to 32 MB a partition), and the same records in four rotated files (calls
cut across each pair). A cluster is for captures far larger than one machine reads in a few
seconds, so the sets are large enough for the cluster's fixed start-up (~0.8 s) to weigh what
it does on real work; a last row shows the ratio on a quarter of the set (one rotated file),
where it weighs four times as much. Rows, side by side for each set:

* ``--workers 1``: the single-process baseline (no pool, no cluster);
* ``verify local:1`` / ``local:2`` (``--cluster-mode verify``): this process reads the captures
  and tracks the calls, the workers only verify (ARCHITECTURE.md 5: the scan is the limit);
* ``partition local:1`` / ``local:2`` (``--cluster-mode partition``): the workers read the
  partitions and track, verify and render the calls only their partition sees; this process
  tracks the calls across partitions (and files) and merges the results in emission order.

A LocalCluster's start-up (~1 s, worker processes importing stirscope and dask) is included,
as a user waits for it; a ``start-up`` row (a one-record capture through the same command)
measures it, and the ratios are also given with it taken out. The ``cpu s`` column of a
cluster row is the main process only: a local cluster's workers are forked by a server process
the run does not wait for, so their CPU time is not reported. Each row is the median of
``BENCH_REPEAT`` runs; local:1 and local:2 runs alternate, and the scaling ratio local:2 /
local:1 of each mode (goal 1.7x on 2 cores, issue 8) is the median of the ratios of
neighbouring runs, since the machine's speed drifts. It also prints, as the ceiling of that
ratio on this machine, what two ``--workers 1`` runs of the same capture started together take
against one alone (on a VM, two busy vCPUs can each run slower than one: measured 1.55-2.08x).
The main process of the partitioned mode shares the two cores with the workers (the merge,
the calls across partitions, Dask's client and scheduler), so on two cores the ratio stays
below 2; its ``cpu s`` is the number to compare on a busy machine.
Measurement only: it never fails on a number.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# Ratio of local:2 over local:1 throughput the issue asks for (issue 8, 2 cores).
GOAL_RATIO = 1.7
# Rotated files of the second capture set.
FILES = 4
# Calls of the generated capture: 40,000 (~590 MB) takes a single process ~16 s here.
SCALE_CALLS = int(os.environ.get("BENCH_SCALE_CALLS", "40000"))
# The smallest capture of the fixtures, for the start-up row (one record, one unsigned call).
TINY = ROOT / "fixtures" / "captures" / "udp_le_us.pcap"
PCAP_HEADER = 24
T = TypeVar("T")


def _bench_analyze() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_analyze", HERE / "bench_analyze.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_analyze"] = module
    spec.loader.exec_module(module)
    return module


def _rotate(path: Path, folder: Path, parts: int) -> list[Path]:
    """The records of a little-endian classic pcap in ``parts`` consecutive files."""
    data = path.read_bytes()
    header, offsets, at = data[:PCAP_HEADER], [], PCAP_HEADER
    while at < len(data):
        offsets.append(at)
        at += 16 + struct.unpack_from("<I", data, at + 8)[0]
    offsets.append(len(data))
    out = []
    records = len(offsets) - 1
    for k in range(parts):
        first, last = offsets[k * records // parts], offsets[(k + 1) * records // parts]
        target = folder / f"rotated-{k}.pcap"
        target.write_bytes(header + data[first:last])
        out.append(target)
    return out


def main() -> int:
    ba = _bench_analyze()
    with tempfile.TemporaryDirectory() as tmp:
        given = os.environ.get("BENCH_FILE")
        path = Path(given) if given else Path(tmp) / "bench.pcap"
        if given:
            calls = SCALE_CALLS
            print(f"using {path} ({calls} calls assumed, BENCH_SCALE_CALLS)")
        else:
            t0 = time.perf_counter()
            packets, calls = _generate(path, SCALE_CALLS)
            print(f"generated {calls} calls, {packets} packets in "
                  f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        size = path.stat().st_size
        rotated = _in_child(_rotate, path, Path(tmp), FILES)
        print(f"capture: {size / 1e6:.1f} MB, and the same in {FILES} files; "
              f"{ba.REPEAT} runs per row (median); {os.cpu_count()} CPUs")  # fmt: skip
        fixtures = ROOT / "fixtures"
        options = ["--trust", str(fixtures / "pki" / "trust"), "--certs",
                   str(fixtures / "certs"), "--format", "jsonl"]  # fmt: skip
        command = [sys.executable, "-m", "service.cli", "analyze"]
        print(f"{'':26} {'seconds':>8} {'cpu s':>7} {'calls/s':>9} {'MB/s':>7} {'peak MB':>8}"
              "  output")  # fmt: skip
        startup = {}
        for n in (1, 2):
            argv = [*command, str(TINY), *options, "--cluster", f"local:{n}",
                    "--cluster-mode", "partition"]  # fmt: skip
            startup[n] = _median(ba, argv)
            ba._row(f"start-up local:{n}", startup[n], 1, TINY.stat().st_size)
        for label, inputs in (("1 file", [path]), (f"{FILES} files", rotated)):
            base = [*command, *map(str, inputs), *options]
            rows = [("--workers 1", [*base, "--workers", "1"])]
            for mode in ("verify", "partition"):
                for n in (1, 2):
                    rows.append((f"{mode} local:{n}", [*base, "--cluster", f"local:{n}",
                                                         "--cluster-mode", mode]))  # fmt: skip
            print(f"-- {label}")
            single_run = _median(ba, rows[0][1])
            ba._row(f"{label}: --workers 1"[:26], single_run, calls, size)
            single = single_run.seconds
            if label == "1 file":
                ceiling = _ceiling(ba, rows[0][1])
                print(f"{label}: two --workers 1 runs at once against one alone (median of "
                      f"{ba.REPEAT} alternations): this machine's two cores give two "
                      f"independent processes {ceiling:.2f}x the work of one (the ceiling of "
                      "local:2 / local:1)")  # fmt: skip
            for mode in ("verify", "partition"):
                one_argv = dict(rows)[f"{mode} local:1"]
                two_argv = dict(rows)[f"{mode} local:2"]
                one, two, ratio, net = _alternated(ba, one_argv, two_argv, startup)
                ba._row(f"{label}: {mode} local:1"[:26], one, calls, size)
                ba._row(f"{label}: {mode} local:2"[:26], two, calls, size)
                verdict = "meets" if ratio >= GOAL_RATIO else "below"
                print(f"{label}, {mode}: local:2 / local:1 {ratio:.2f}x ({verdict} the "
                      f"{GOAL_RATIO}x goal), {net:.2f}x without start-up; local:2 vs single "
                      f"process {single / two.seconds:.2f}x")  # fmt: skip
        quarter = rotated[0]
        label = "quarter"
        print(f"-- a {label}: the first of the {FILES} files ({quarter.stat().st_size / 1e6:.1f} "
              f"MB, ~{calls // FILES} calls)")  # fmt: skip
        base = [*command, str(quarter), *options, "--cluster-mode", "partition", "--cluster"]
        one, two, ratio, net = _alternated(ba, [*base, "local:1"], [*base, "local:2"], startup)
        ba._row(f"{label}: partition local:1"[:26], one, calls // FILES, quarter.stat().st_size)
        ba._row(f"{label}: partition local:2"[:26], two, calls // FILES, quarter.stat().st_size)
        print(f"{label}, partition: local:2 / local:1 {ratio:.2f}x, {net:.2f}x without "
              "start-up (the same fixed start-up over a quarter of the work)")  # fmt: skip
    return 0


def _generate(path: Path, calls: int) -> tuple[int, int]:
    """``bench_analyze.build`` of ``calls`` calls into ``path``, in a child process (see
    ``_in_child``): (packets, calls)."""
    packets, made = _in_child(_build, path, calls)
    return packets, made


def _build(path: Path, calls: int) -> tuple[int, int]:
    built: tuple[int, int] = _bench_analyze().build(path, calls)
    return built


def _in_child(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a child process (fork): generating 40,000 calls takes ~1 GB and
    rotating them holds the capture, and a child's peak RSS as ``wait4`` reports it starts
    from its parent's (Linux keeps the high-water mark across fork and exec), so every row's
    ``peak MB`` would otherwise be this process's."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        return pool.submit(function, *args).result()


def _ceiling(ba: ModuleType, argv: list[str]) -> float:
    """What the cores give two processes that share nothing: the median over ``BENCH_REPEAT``
    alternations of twice the seconds of one ``argv`` alone over the seconds until two copies
    started together have both finished (on a VM two busy vCPUs may each run slower than one
    alone). Alternated, so that a drift of the machine's speed hits both sides alike."""
    ratios = []
    for _ in range(ba.REPEAT):
        alone: float = ba.timed(argv).seconds
        with ThreadPoolExecutor(2) as pool:
            both: float = max(run.seconds for run in pool.map(ba.timed, [argv, argv]))
        ratios.append(2 * alone / both)
    return statistics.median(ratios)


def _alternated(
    ba: ModuleType, one_argv: list[str], two_argv: list[str], startup: dict[int, Any]
) -> tuple[Any, Any, float, float]:
    """``local:1`` and ``local:2`` runs alternated ``BENCH_REPEAT`` times: the median run of
    each, and the medians over the alternations of the ratio local:1 / local:2 seconds, with
    and without the start-up rows' seconds. The machine's speed drifts over minutes (seen here:
    the same local:1 run 7.3 s, then 9.5 s), so each ratio is taken between neighbours."""
    ones, twos, ratios, nets = [], [], [], []
    for _ in range(ba.REPEAT):
        one, two = ba.timed(one_argv), ba.timed(two_argv)
        ones.append(one)
        twos.append(two)
        ratios.append(one.seconds / two.seconds)
        net_two = max(1e-9, two.seconds - startup[2].seconds)
        nets.append((one.seconds - startup[1].seconds) / net_two)
    ones.sort(key=lambda r: r.seconds)
    twos.sort(key=lambda r: r.seconds)
    middle = len(ones) // 2
    return ones[middle], twos[middle], statistics.median(ratios), statistics.median(nets)


def _median(ba: ModuleType, argv: list[str]) -> Any:
    runs = sorted((ba.timed(argv) for _ in range(ba.REPEAT)), key=lambda r: r.seconds)
    return runs[len(runs) // 2]


if __name__ == "__main__":
    sys.exit(main())
