"""SIP verification server throughput: sipp on loopback against ``stirscope listen --sip``.

Side by side in one run:
1. in-process: parse + extract + ``Verifier.verify`` of the same INVITE in one thread with a
   warm certificate cache (what the server does per call, minus the network and the answer);
2. the server (a child process, UDP, warm cache) driven by sipp with the committed scenario
   ``tests/service/sipp/uac_identity.xml`` at fixed rates (``-r``, ``-m``): calls answered per
   second, per core of server CPU time, and the p50/p99 of sipp's per-call response times
   (``-trace_rtt``, millisecond resolution), failures and retransmissions.

First, without sipp: HEP packets per second through the live pipeline alone (no
verification) and through a HEP collector on loopback UDP that verifies every call (warm
cache), with what it shed or the kernel dropped.

The goal (issue 7): at least half of the in-process rate per core, with p99 under 20 ms at
that rate. Ratios matter, not absolutes: the machine is shared and noisy. Skipped (exit 0)
when sipp is not installed.
"""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analyzer.assess import assess_call  # noqa: E402
from analyzer.calls import Call  # noqa: E402
from analyzer.extract import request_from_sip_bytes  # noqa: E402
from analyzer.live import LivePipeline  # noqa: E402
from analyzer.records import CallRecord  # noqa: E402
from analyzer.verifying import build_verifier  # noqa: E402
from service.listen_hep import HepCollector  # noqa: E402
from service.listen_sip import Endpoint, Transport  # noqa: E402
from service.live_feed import LiveFeed  # noqa: E402
from tests.service.hep_packets import NS, dialog_hep, ts_ns  # noqa: E402
from tests.service.invites import (  # noqa: E402
    ALPHA_X5U,
    CERTS,
    DEST,
    FIXTURE_AT,
    ORIG,
    TRUST,
    fixture_call,
    fixture_config,
    fresh_invite,
    sign_identity,
    sip_date,
)

SCENARIO = ROOT / "tests" / "service" / "sipp" / "uac_identity.xml"
IN_PROCESS_N = 2000
# Calls sent to the HEP collector (6 packets each): a few seconds of work.
HEP_CALLS = 2000
RUN_SECONDS = 5
# Rates as fractions of the in-process rate: the goal point (0.5) and around it.
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Run:
    rate: int
    calls: int
    ok: int
    failed: int
    seconds: float
    cpu_seconds: float
    p50_ms: float
    p99_ms: float
    retransmissions: int


def in_process_rate() -> float:
    data = fresh_invite(datetime.now(UTC))
    with build_verifier(fixture_config()) as verifier:
        now = datetime.now(UTC)
        verifier.verify(request_from_sip_bytes(data), at=now)  # warm the caches
        rates = []
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(IN_PROCESS_N):
                verifier.verify(request_from_sip_bytes(data), at=now)
            rates.append(IN_PROCESS_N / (time.perf_counter() - started))
    return statistics.median(rates)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_server(workdir: Path) -> tuple[subprocess.Popen[str], str]:
    args = ["--sip", "udp:127.0.0.1:0", "--trust", str(TRUST), "--certs", str(CERTS)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "listen", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    words = proc.stderr.readline().split()
    if len(words) < 4 or words[2] != "sip":
        proc.kill()
        raise SystemExit(f"server did not start: {' '.join(words)}")
    return proc, words[3].partition(":")[2]


def injection(path: Path) -> Path:
    now = datetime.now(UTC)
    token = sign_identity(now).split(";", 1)[0]
    path.write_text(f"SEQUENTIAL\n{token};{ALPHA_X5U};{ORIG};{DEST};{sip_date(now)};\n")
    return path


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def drive(sipp: str, target: str, rate: int, calls: int, workdir: Path, pid: int) -> Run:
    for old in workdir.glob("*.csv"):
        old.unlink()
    inf = injection(workdir / "inject.txt")
    command = [sipp, target, "-sf", str(SCENARIO), "-inf", str(inf), "-t", "u1"]
    command += ["-i", "127.0.0.1", "-p", "0", "-r", str(rate), "-m", str(calls)]
    command += ["-timeout", f"{RUN_SECONDS * 6}s", "-nostdin", "-trace_rtt", "-trace_stat"]
    command += ["-rtt_freq", "1", "-fd", "1", "-max_recv_loops", "10000"]
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    subprocess.run(command, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    times: list[float] = []
    for path in workdir.glob("*_rtt.csv"):
        with path.open() as handle:
            for row in csv.DictReader(handle, delimiter=";"):
                times.append(float(row["response_time_ms"]))
    ok = failed = retrans = 0
    stats = sorted(p for p in workdir.glob("*.csv") if not p.name.endswith("_rtt.csv"))
    stats = [p for p in stats if p.name != "inject.txt"]
    for path in stats:
        rows = list(csv.DictReader(path.open(), delimiter=";"))
        if rows:
            last = rows[-1]
            ok = int(last.get("SuccessfulCall(C)", 0) or 0)
            failed = int(last.get("FailedCall(C)", 0) or 0)
            retrans = int(last.get("Retransmissions(C)", 0) or 0)
    return Run(
        rate,
        calls,
        ok,
        failed,
        seconds,
        cpu,
        percentile(times, 0.5),
        percentile(times, 0.99),
        retrans,
    )


def hep_packets(calls: int) -> list[bytes]:
    """``calls`` fixture dialogs (6 HEP3 packets each, distinct Call-IDs), 1 s apart."""
    invite = fixture_call("alpha_a")
    packets: list[bytes] = []
    for n in range(calls):
        one = invite.replace(b"a1b2c3d4-alpha-a", f"bench-{n}".encode())
        packets += dialog_hep(one, ts_ns(FIXTURE_AT) + n * NS)
    return packets


def hep_rates() -> None:
    """HEP packets per second: the live pipeline alone (decode, SIP keys, calls; no
    verification), then a HEP collector on loopback UDP with verification (warm cache),
    counting what it shed."""
    packets = hep_packets(HEP_CALLS)
    pipeline = LivePipeline()
    started = time.perf_counter()
    for packet in packets:
        pipeline.feed_hep(packet, 0)
    pipeline.flush()
    scan = len(packets) / (time.perf_counter() - started)
    print(f"HEP live pipeline (1 thread, no verify): {scan:,.0f} packets/s")
    with build_verifier(fixture_config()) as verifier:

        def assess(call: Call) -> CallRecord:
            return assess_call(call, verifier)

        feed = LiveFeed("hep", LivePipeline(), assess)
        collector = HepCollector([Endpoint(Transport.UDP, "127.0.0.1", 0)], feed)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(collector.start(), loop).result(10)
        target = (collector.endpoints[0].host, collector.endpoints[0].port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            started = time.perf_counter()
            for n, packet in enumerate(packets):
                sock.sendto(packet, target)
                if n % 64 == 63:
                    time.sleep(0)  # let the collector's loop read
            asyncio.run_coroutine_threadsafe(collector.stop(), loop).result(120)
            seconds = time.perf_counter() - started
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    stats = feed.stats
    print(
        f"HEP collector over UDP (verify, warm): {feed.pipeline.stats.packets / seconds:,.0f} "
        f"packets/s, {stats.calls_written / seconds:,.0f} calls/s; sent {len(packets)}, "
        f"shed {stats.shed}, kernel/other loss {len(packets) - stats.accepted - stats.shed}"
    )


def main() -> int:
    hep_rates()
    sipp = shutil.which("sipp")
    if sipp is None:
        print("bench_listen: sipp not installed (apt-get install sip-tester); skipped")
        return 0
    inproc = in_process_rate()
    print(f"in-process parse+extract+verify (1 thread, warm): {inproc:,.0f} INVITE/s")
    with tempfile.TemporaryDirectory(prefix="stirscope-bench-listen-") as tmp:
        workdir = Path(tmp)
        proc, target = start_server(workdir)
        try:
            drive(sipp, target, 200, 400, workdir, proc.pid)  # warm-up: caches, 100 Trying
            print(
                f"{'rate/s':>7} {'answered/s':>10} {'per core':>9} {'cores':>6} "
                f"{'p50 ms':>7} {'p99 ms':>7} {'failed':>6} {'retrans':>7}"
            )
            runs = []
            for fraction in FRACTIONS:
                rate = max(50, int(inproc * fraction))
                run = drive(sipp, target, rate, rate * RUN_SECONDS, workdir, proc.pid)
                runs.append(run)
                answered = run.ok / run.seconds
                cores = run.cpu_seconds / run.seconds
                per_core = run.ok / run.cpu_seconds if run.cpu_seconds else float("nan")
                print(
                    f"{rate:>7} {answered:>10,.0f} {per_core:>9,.0f} {cores:>6.2f} "
                    f"{run.p50_ms:>7.1f} {run.p99_ms:>7.1f} {run.failed:>6} "
                    f"{run.retransmissions:>7}",
                    flush=True,
                )
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    best = max(runs, key=lambda r: r.ok / r.cpu_seconds if r.cpu_seconds else 0)
    per_core = best.ok / best.cpu_seconds if best.cpu_seconds else 0.0
    print(f"server per core / in-process: {per_core / inproc:.2f} (goal >= 0.50)")
    goal = next((r for r in runs if r.rate == max(50, int(inproc * 0.5))), None)
    if goal is not None:
        print(f"p99 at half the in-process rate: {goal.p99_ms:.1f} ms (goal < 20 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
