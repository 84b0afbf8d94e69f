"""HTTP verification service throughput and latency, side by side with the in-process verifier.

1. in-process ``Verifier.verify`` of the same request (warm certificate cache): the ceiling;
2. the same request through the service's own JSON and model mapping (``json_object``,
   ``verification_input``, ``verification_json`` of ``service.api.stir``), still in-process:
   what the HTTP layer adds before any socket is involved;
3. ``stirscope serve`` on 127.0.0.1 with 1 and 2 worker processes, driven by a keep-alive
   HTTP/1.1 load generator on loopback, CONCURRENCY connections, warm cache: requests/s and
   p50/p99 latency. The generator is ``wrk`` (C, Debian's package ``wrk``) where installed,
   with a Lua script that counts every response that is not a 200 with a passing verdict;
   otherwise our own (asyncio, raw sockets, connections opened STAGGER_S apart: a pure-Python
   client such as httpx would be the bottleneck here). The generator shares the machine's two
   cores with the server, and a busy second vCPU slows the first (measured: ECDSA verify 0.78x
   with the other vCPU verifying too), so the lighter the generator, the less it takes from
   the server. ``BENCH_GENERATOR=python`` forces ours.

The token is signed at start with the fixture key and the server runs with a wide freshness
window, so every request is a full, passing verification against the server clock. The load
generator shares the machine's cores with the server: on a 2-core machine the 2-worker figure
is bounded by that. So the server runs also report CPU time per request (user + system, from
/proc on Linux) of the server's processes and of the load generator: while the generator's is
a fraction of the server's and far from a core of its own, the generator is not what limits
the rate. The in-process rates are the best of REPEATS runs. The servers run side by side:
all started first, then ROUNDS rounds in which each configuration takes one load run, in an
order rotated from round to round; an HTTP row gives each figure's median over its runs, and
its ratio is the median of its runs' rates over the in-process rate measured right before and
after each run (the speed of a shared machine drifts over minutes and swings from second to
second: one run in one stretch says little). Ratios matter, not absolutes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: E402

from analyzer.atis import AtisIdentity, verification_request  # noqa: E402
from analyzer.verifying import VerifierConfig, build_verifier  # noqa: E402
from service.api.auth import hash_api_key  # noqa: E402
from service.api.stir import json_object, verification_input, verification_json  # noqa: E402
from shaken.policy import Policy  # noqa: E402
from shaken.signing import identity_header_value, shaken_payload, sign_passport  # noqa: E402

FIXTURES = ROOT / "fixtures"
X5U = "https://certs.alpha.example/alpha.pem"
API_KEY = "bench-key-0123456789abcdefghijklmnopqrstuvwxyz"
QUICK = os.environ.get("BENCH_QUICK") is not None
CONCURRENCY = 16
# Seconds between the openings of the load's connections (all within the warm-up). uvicorn's
# workers share one listening socket and each accepts whatever is pending when it looks: 16
# connections opened at once often all land on one worker, which then serves alone. Opened
# while the load runs, each goes more likely to a worker that is not busy.
STAGGER_S = 0.005
REPEATS = 3
# Rounds of HTTP runs: each round runs every server configuration once, in a rotated order.
ROUNDS = 3 if QUICK else 7
WARMUP_S = 1.0
MEASURE_S = 2.0 if QUICK else 3.0
IN_PROCESS_N = 2000 if QUICK else 5000
# Verifications of the in-process rate measured before and after each HTTP run (~0.3 s).
PROBE_N = 2000
# The load generator: wrk where installed (unless BENCH_GENERATOR=python), else ours.
WRK = None if os.environ.get("BENCH_GENERATOR") == "python" else shutil.which("wrk")
# wrk's script: the request, a check of every response, and one summary line at the end
# (latencies in microseconds; a thread's counter is read through thread:get).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["Authorization"] = %(authorization)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) failures = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, "TN-Validation-Passed", 1, true) then
    failures = failures + 1
  end
end
function done(summary, latency, requests)
  local failed = 0
  for _, thread in ipairs(threads) do failed = failed + thread:get("failures") end
  io.write(string.format("STIRSCOPE %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.duration, failed, latency:percentile(50), latency:percentile(99)))
end
"""
# Freshness wide enough for the whole run (the token is signed once, at start).
FRESHNESS_S = 3600


def _fresh_identity(now: int) -> str:
    key = load_pem_private_key((FIXTURES / "pki/keys/alpha.key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    payload = shaken_payload(
        attest="A",
        orig_tn="12025550101",
        dest_tns=["12025550199"],
        iat=now,
        origid=str(uuid.uuid4()),
    )
    return identity_header_value(sign_passport(key, x5u=X5U, payload=payload), x5u=X5U)


def _body(identity: str, now: int) -> dict[str, object]:
    return {
        "verificationRequest": {
            "from": {"tn": "+12025550101"},
            "to": {"tn": ["12025550199"]},
            "time": now,
            "identity": identity,
        }
    }


class InProcess:
    """The in-process verifier of the same request (warm cache): ``core`` is Verifier.verify
    alone, ``mapped`` with the ATIS request/response mapping around it (requests/s)."""

    def __init__(self, identity: str, now: int) -> None:
        config = VerifierConfig(
            trust=(FIXTURES / "pki/trust",),
            certs_dirs=(FIXTURES / "certs",),
            policy=Policy(freshness_s=FRESHNESS_S),
        )
        self._raw = json.dumps(_body(identity, now)).encode()
        self._at = datetime.fromtimestamp(now, UTC)
        self._verifier = build_verifier(config)
        self._request = verification_request(
            identities=[identity],
            orig=AtisIdentity(tn=("+12025550101",)),
            to=AtisIdentity(tn=("12025550199",)),
            time=now,
        )
        assert self._verifier.verify(self._request, at=self._at).passed

    def close(self) -> None:
        self._verifier.close()

    def core(self, n: int = IN_PROCESS_N) -> float:
        verifier, request, at = self._verifier, self._request, self._at
        started = time.perf_counter()
        for _ in range(n):
            verifier.verify(request, at=at)
        return n / (time.perf_counter() - started)

    def mapped(self, n: int = IN_PROCESS_N) -> float:
        verifier, raw, at = self._verifier, self._raw, self._at
        started = time.perf_counter()
        for _ in range(n):
            mapped, flavour, request_id = verification_input(json_object(raw, "application/json"))
            verification_json(verifier.verify(mapped, at=at), flavour, request_id)
        return n / (time.perf_counter() - started)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(workers: int, tmp: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    keys = tmp / "keys"
    keys.write_text(f"bench:{hash_api_key(API_KEY)}:verify\n")
    argv = [
        sys.executable, "-m", "service.cli", "serve", "--port", str(port),
        "--workers", str(workers), "--trust", str(FIXTURES / "pki/trust"),
        "--certs", str(FIXTURES / "certs"), "--api-keys", str(keys),
        "--freshness", str(FRESHNESS_S), "--data-dir", str(tmp / "data"), *extra,
    ]  # fmt: skip
    log = (tmp / "serve.log").open("wb")
    process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process, port
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start: " + (tmp / "serve.log").read_text()[-2000:])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its descendants (uvicorn's worker
    processes), from /proc (Linux); NaN where there is no /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    try:
        while pending:
            current = pending.pop()
            # Fields 14 and 15 of /proc/PID/stat (utime, stime), counted after the command
            # name, which is parenthesised and may itself hold spaces.
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
    except OSError:
        return math.nan
    return total


@dataclass(frozen=True, slots=True)
class HttpRun:
    """One load run: requests/s and latency over the measured window; CPU microseconds per
    request of the server's processes and of the load generator over the whole run."""

    rate: float
    p50_ms: float
    p99_ms: float
    server_us: float
    client_us: float


async def _connection(
    port: int,
    request: bytes,
    stop_at: float,
    record_from: float,
    latencies: list[float],
    served: list[int],
    delay: float,
) -> None:
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                elif line.startswith(b"HTTP/1.1 ") and line[9:12] != b"200":
                    raise RuntimeError(line.decode())
            body = await reader.readexactly(length)
            if b"TN-Validation-Passed" not in body:
                raise RuntimeError(body.decode())
            served[0] += 1
            if started >= record_from:
                latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def _load(port: int, request: bytes) -> tuple[float, float, float, int]:
    """Requests/s, p50 and p99 (ms) over the measured window; requests served in all."""
    latencies: list[float] = []
    served = [0]
    begin = time.perf_counter()
    record_from = begin + WARMUP_S
    stop_at = record_from + MEASURE_S
    await asyncio.gather(
        *(
            _connection(port, request, stop_at, record_from, latencies, served, i * STAGGER_S)
            for i in range(CONCURRENCY)
        )
    )
    latencies.sort()
    rate = len(latencies) / MEASURE_S
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    return rate, p50, p99, served[0]


def _measure(pid: int, port: int, request: bytes) -> HttpRun:
    server_before, client_before = _cpu_seconds(pid), time.process_time()
    rate, p50, p99, served = asyncio.run(_load(port, request))
    server = _cpu_seconds(pid) - server_before
    client = time.process_time() - client_before
    return HttpRun(rate, p50, p99, server / served * 1e6, client / served * 1e6)


def _wrk(wrk: str, port: int, script: Path, seconds: float) -> tuple[int, float, int, float, float]:
    """One wrk run: requests, seconds, failed responses, p50 and p99 (ms)."""
    argv = [wrk, "-t1", f"-c{CONCURRENCY}", f"-d{seconds:g}s", "-s", str(script)]
    done = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}/stir/v1/verification"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    line = next(row for row in done.stdout.splitlines() if row.startswith("STIRSCOPE "))
    requests, micros, failed, p50, p99 = map(int, line.split()[1:])
    return requests, micros / 1e6, failed, p50 / 1000, p99 / 1000


def _wrk_script(body: bytes, tmp: Path) -> Path:
    script = tmp / "load.lua"
    script.write_text(WRK_SCRIPT % {
        "body": json.dumps(body.decode()),
        "authorization": json.dumps(f"Bearer {API_KEY}"),
    })  # fmt: skip
    return script


def _measure_wrk(wrk: str, pid: int, port: int, script: Path) -> HttpRun:
    server_before = _cpu_seconds(pid)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_before = usage.ru_utime + usage.ru_stime
    served, seconds, failed, p50, p99 = _wrk(wrk, port, script, MEASURE_S)
    server = _cpu_seconds(pid) - server_before
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = usage.ru_utime + usage.ru_stime - client_before
    if failed or not served:
        raise RuntimeError(f"wrk: {failed} of {served} responses were not a passing verdict")
    return HttpRun(served / seconds, p50, p99, server / served * 1e6, client / served * 1e6)


@dataclass(frozen=True, slots=True)
class Served:
    """One configuration's HTTP runs and, for each, its rate over the in-process rate
    measured right before and after it."""

    runs: list[HttpRun]
    ratios: list[float]

    @property
    def median(self) -> HttpRun:
        """Each figure's median over the runs."""
        return HttpRun(
            *(statistics.median(getattr(r, f.name) for r in self.runs) for f in fields(HttpRun))
        )


def over_http(
    identity: str, now: int, configs: list[tuple[int, list[str]]], local: InProcess
) -> list[Served]:
    """ROUNDS load runs of each server configuration (workers, extra flags), all servers
    started first and warmed up, each round running every configuration once, in an order
    rotated from round to round, with the in-process rate (``local.core``) measured right
    before and after each run. The machine's speed drifts (seen: 40% over minutes on a
    shared VM, and +-20% from one second to the next), so each HTTP rate is compared with the
    in-process rate of its own seconds, and the configurations take turns rather than one
    taking all its runs in one stretch of the machine's weather."""
    body = json.dumps(_body(identity, now)).encode()
    request = (
        b"POST /stir/v1/verification HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nAccept: application/json\r\n"
        + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    served = [Served([], []) for _ in configs]
    with tempfile.TemporaryDirectory(prefix="bench_api_") as tmp:
        servers: list[tuple[subprocess.Popen[bytes], int]] = []
        try:
            for index, (workers, extra) in enumerate(configs):
                folder = Path(tmp) / str(index)
                folder.mkdir()
                servers.append(_start(workers, folder, extra))
            script = _wrk_script(body, Path(tmp))
            for _, port in servers:
                if WRK is not None:
                    _wrk(WRK, port, script, WARMUP_S)
            for round_ in range(ROUNDS):
                for step in range(len(configs)):
                    index = (round_ + step) % len(configs)
                    process, port = servers[index]
                    before = local.core(PROBE_N)
                    if WRK is not None:
                        run = _measure_wrk(WRK, process.pid, port, script)
                    else:
                        run = _measure(process.pid, port, request)
                    after = local.core(PROBE_N)
                    served[index].runs.append(run)
                    served[index].ratios.append(run.rate / ((before + after) / 2))
        finally:
            for process, _ in servers:
                process.send_signal(signal.SIGTERM)
            for process, _ in servers:
                process.wait(timeout=30)
    return served


def main() -> int:
    now = int(time.time())
    identity = _fresh_identity(now)
    local = InProcess(identity, now)
    try:
        core = max(local.core() for _ in range(REPEATS))
        mapped = max(local.mapped() for _ in range(REPEATS))
        print(
            f"{'path':52} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'vs core':>8}"
            f" {'srv us':>7} {'gen us':>7}"
        )
        print(f"{'in-process Verifier.verify (warm cache)':52} {core:8.0f} {'':>23} {1:8.2f}")
        label = "in-process + ATIS JSON/model mapping"
        print(f"{label:52} {mapped:8.0f} {'':>7} {'':>7} {mapped / core:8.2f}")
        names = ["serve, 1 worker", "serve, 1 worker, --no-access-log", "serve, 2 workers"]
        configs: list[tuple[int, list[str]]] = [(1, []), (1, ["--no-access-log"]), (2, [])]
        results = dict(zip(names, over_http(identity, now, configs, local), strict=True))
        for name, done in results.items():
            run, ratio = done.median, statistics.median(done.ratios)
            label = f"{name} ({'wrk' if WRK else 'asyncio gen'}, {CONCURRENCY} conns)"
            print(
                f"{label:52} {run.rate:8.0f} {run.p50_ms:7.2f} {run.p99_ms:7.2f}"
                f" {ratio:8.2f} {run.server_us:7.0f} {run.client_us:7.0f}"
            )
    finally:
        local.close()
    one = results["serve, 1 worker"]
    ratios = one.ratios
    print(
        f"HTTP (1 worker) / in-process: {statistics.median(ratios):.2f} (goal: > 0.5; runs: "
        f"{', '.join(f'{r:.2f}' for r in sorted(ratios))}; 'vs core' of an HTTP row: the median "
        "over its runs of the run's rate over the in-process rate measured just before and "
        "after it)"
    )
    # Runs of one round are minutes apart at most: their rates compared pairwise.
    pairs = [
        two.rate / single.rate
        for two, single in zip(results["serve, 2 workers"].runs, one.runs, strict=True)
    ]
    print(f"2 workers / 1 worker: {statistics.median(pairs):.2f} (on {os.cpu_count()} cores)")
    busiest = max((done.median for done in results.values()), key=lambda r: r.rate)
    print(
        f"load generator: {busiest.client_us:.0f} us CPU per request, "
        f"{busiest.client_us * busiest.rate / 1e4:.0f}% of a core at {busiest.rate:.0f} req/s "
        f"(srv us / gen us: CPU per request of the server's processes / of the generator)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
