"""`stirscope analyze` (with verification) vs tshark extraction on one generated capture.

Generates (at bench time, in a temporary directory) ``CALLS`` calls, each a signed INVITE
(alpha test key, its own iat/Date and origid), 100/180/200, ACK, ``RTP_PER_CALL`` RTP packets,
BYE and its 200, over UDP/Ethernet. Then times, side by side on the same file:

* ``stirscope analyze FILE --trust ... --certs ... --format jsonl`` (scan, reassembly, call
  tracking, verification of every INVITE, JSONL out) with ``--workers 1`` and ``2``, each
  ``BENCH_REPEAT`` times (median reported);
* ``tshark -r FILE -Y 'sip.Method == "INVITE"' -T fields -e sip.Call-ID -e sip.Identity``
  (extraction only), when tshark is installed;
* ``sip-doctor read --json FILE`` when installed (it is not a dependency).

Each runs as a child process; wall time, CPU time and peak RSS of the child and its workers
(``wait4``) are reported with calls/s, MB/s and the ratios. The other tools are killed after
``BENCH_OTHER_LIMIT_S`` seconds (the ratio is then a lower bound). ``BENCH_FILE`` reuses a
capture already generated with the same ``BENCH_CALLS``; ``BENCH_CALLS=0`` skips these rows.

Memory, opt-in: ``BENCH_LARGE_CALLS=100000`` then generates a capture of that many calls (about
15 kB a call: ~1.5 GB, streamed to disk as it is made) and times one ``stirscope analyze
--workers 2`` run on it: peak RSS is the number to watch (bounded memory whatever the capture
size); the file is deleted right after. Measurement only: it never fails on a number.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shaken.signing import shaken_payload, sign_passport  # noqa: E402

CALLS = int(os.environ.get("BENCH_CALLS", "10000"))
# Calls of the opt-in large capture (0: no large run); 100,000 calls is ~1.5 GB.
LARGE_CALLS = int(os.environ.get("BENCH_LARGE_CALLS", "0"))
# Runs of each stirscope row; the median is reported (a shared machine is noisy).
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
# Time limit for the other tools: tshark's time grows faster than linearly with the number
# of calls in one capture (measured: ~6 s for 1,000 calls, more than 10 minutes for 10,000).
OTHER_LIMIT_S = float(os.environ.get("BENCH_OTHER_LIMIT_S", "600"))
RTP_PER_CALL = 50
NS = 1_000_000_000
START_S = 1_768_478_400  # 2026-01-15T12:00:00Z, inside the test certificates' validity
X5U = "https://certs.alpha.example/alpha.pem"
A, B = "198.51.100.10", "203.0.113.20"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "fixtures" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _http_date(epoch: int) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(epoch))


def _messages(call: int, epoch: int, identity: str) -> dict[str, bytes]:
    cid = f"bench-{call:06d}@sbc.alpha.example"
    common = (
        f"From: <sip:+12025550101@alpha.example;user=phone>;tag=f{call}\r\n"
        f"Call-ID: {cid}\r\nMax-Forwards: 70\r\n"
    )
    to = "To: <sip:+12025550199@bravo.example;user=phone>"
    ruri = "sip:+12025550199@bravo.example;user=phone"
    via = f"Via: SIP/2.0/UDP {A}:5060;branch=z9hG4bK-{call}"
    sdp = (
        f"v=0\r\no=- {call} 1 IN IP4 {A}\r\ns=-\r\nc=IN IP4 {A}\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )

    def request(method: str, cseq: int, tag: bool, extra: str = "", body: str = "") -> bytes:
        branch = f"{via}{'' if method in ('INVITE', 'ACK') else '-' + method.lower()}"
        text = (
            f"{method} {ruri} SIP/2.0\r\n{branch}\r\n{common}{to}{';tag=t' if tag else ''}\r\n"
            f"CSeq: {cseq} {method}\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}"
        )
        return text.encode()

    def response(status: str, cseq: str, tag: bool) -> bytes:
        text = (
            f"SIP/2.0 {status}\r\n{via}{'-bye' if 'BYE' in cseq else ''}\r\n{common}"
            f"{to}{';tag=t' if tag else ''}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
        )
        return text.encode()

    invite_extra = (
        f"Contact: <sip:{A}:5060>\r\nDate: {_http_date(epoch)}\r\nIdentity: {identity}\r\n"
        "Content-Type: application/sdp\r\n"
    )
    return {
        "invite": request("INVITE", 1, False, invite_extra, sdp),
        "100": response("100 Trying", "1 INVITE", False),
        "180": response("180 Ringing", "1 INVITE", True),
        "200": response("200 OK", "1 INVITE", True),
        "ack": request("ACK", 1, True),
        "bye": request("BYE", 2, True),
        "bye200": response("200 OK", "2 BYE", True),
    }


def build(path: Path, calls: int | None = None) -> tuple[int, int]:
    """Write the capture of ``calls`` calls (default ``CALLS``), packet by packet (memory stays
    flat whatever its size); returns (packets, INVITEs)."""
    calls = CALLS if calls is None else calls
    cap = _load("gen_captures")
    vec = _load("gen_vectors")
    key = vec._key("alpha")
    rtp = [cap.build_udp_ipv4_ethernet(A, 40000, B, 30000, cap.rtp(i, i * 160)) for i in range(64)]
    packets = 0
    ts = START_S * NS
    with open(path, "wb") as out:
        writer = cap.PcapWriter(out, cap.LINKTYPE_ETHERNET)

        def sip(src: str, dst: str, data: bytes) -> None:
            nonlocal ts, packets
            writer.write(ts, cap.build_udp_ipv4_ethernet(src, 5060, dst, 5060, data))
            ts += 1_000_000
            packets += 1

        for call in range(calls):
            epoch = ts // NS
            payload = shaken_payload(
                attest="A", orig_tn="12025550101", dest_tns=["12025550199"], iat=epoch,
                origid=f"00000000-0000-4000-8000-{call:012d}",
            )  # fmt: skip
            token = sign_passport(key, x5u=X5U, payload=payload)
            identity = f"{token};info=<{X5U}>;alg=ES256;ppt=shaken"
            m = _messages(call, epoch, identity)
            sip(A, B, m["invite"])
            sip(B, A, m["100"])
            sip(B, A, m["180"])
            sip(B, A, m["200"])
            sip(A, B, m["ack"])
            for j in range(RTP_PER_CALL):
                writer.write(ts, rtp[(call + j) % 64])
                ts += 20_000
                packets += 1
            sip(A, B, m["bye"])
            sip(B, A, m["bye200"])
    return packets, calls


@dataclass(frozen=True, slots=True)
class Run:
    """One child process: wall seconds, CPU seconds (itself and its workers), peak RSS in MB
    of the largest process, stdout lines; ``timed_out`` when killed at the time limit."""

    seconds: float
    cpu: float
    rss_mb: int
    lines: int
    timed_out: bool = False


def timed(argv: list[str], limit_s: float | None = None) -> Run:
    """Run ``argv`` as a child process: wall time, and from ``wait4`` its CPU time and peak
    RSS (the child and the workers it waited for); killed after ``limit_s`` seconds."""
    start = time.perf_counter()
    deadline = None if limit_s is None else start + limit_s
    timed_out = False
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline and not timed_out:
                proc.kill()
                timed_out = True
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        lines = sum(block.count(b"\n") for block in iter(lambda: out.read(1 << 20), b""))
    cpu = usage.ru_utime + usage.ru_stime
    return Run(seconds, cpu, usage.ru_maxrss // 1024, lines, timed_out)


def main() -> int:
    if CALLS:
        side_by_side()
    if LARGE_CALLS:
        large()
    return 0


def large() -> None:
    """One ``--workers 2`` run on a capture of ``LARGE_CALLS`` calls, for its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.pcap"
        t0 = time.perf_counter()
        packets, invites = build(path, LARGE_CALLS)
        size = path.stat().st_size
        print(f"large capture: {invites} calls, {packets} packets, {size / 1e6:,.0f} MB, "
              f"generated in {time.perf_counter() - t0:.0f} s")  # fmt: skip
        fixtures = ROOT / "fixtures"
        argv = [sys.executable, "-m", "service.cli", "analyze", str(path), "--trust",
                str(fixtures / "pki" / "trust"), "--certs", str(fixtures / "certs"),
                "--format", "jsonl", "--workers", "2"]  # fmt: skip
        print(f"{'':22} {'seconds':>8} {'cpu s':>7} {'calls/s':>9} {'MB/s':>7} {'peak MB':>8}"
              "  output")  # fmt: skip
        run = timed(argv)
        path.unlink()  # before anything else: the disk may be small
        _row("stirscope --workers 2", run, invites, size)


def side_by_side() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        given = os.environ.get("BENCH_FILE")
        path = Path(given) if given else Path(tmp) / "bench.pcap"
        t0 = time.perf_counter()
        if given:
            invites = CALLS
            print(f"using {path} ({invites} calls assumed, BENCH_CALLS)")
        else:
            packets, invites = build(path)
            print(f"generated {invites} calls, {packets} packets in "
                  f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        size = path.stat().st_size
        print(f"capture: {size / 1e6:.1f} MB; {REPEAT} runs per stirscope row (median)")
        fixtures = ROOT / "fixtures"
        stirscope = [sys.executable, "-m", "service.cli", "analyze", str(path),
                     "--trust", str(fixtures / "pki" / "trust"), "--certs",
                     str(fixtures / "certs"), "--format", "jsonl"]  # fmt: skip
        ours: list[tuple[str, list[str]]] = [
            ("stirscope --workers 1", [*stirscope, "--workers", "1"]),
            ("stirscope --workers 2", [*stirscope, "--workers", "2"]),
        ]
        others: list[tuple[str, list[str]]] = []
        if shutil.which("tshark"):
            others.append(("tshark extraction", [
                "tshark", "-r", str(path), "-Y", 'sip.Method == "INVITE"', "-T", "fields",
                "-e", "sip.Call-ID", "-e", "sip.Identity",
            ]))  # fmt: skip
        else:
            print("tshark not installed: skipped")
        doctor = shutil.which("sip-doctor") or _venv_tool("sip-doctor")
        if doctor:
            # With the same certificates and trust anchor, so it verifies every PASSporT too:
            # its --stir-certs wants the chains in one folder, named like the x5u's last part.
            flat = Path(tmp) / "stir-certs"
            flat.mkdir(exist_ok=True)
            for pem in (fixtures / "certs").rglob("*.pem"):
                shutil.copy(pem, flat / pem.name)
            others.append(("sip-doctor read", [
                doctor, "read", "--json", "--no-rtp", "--stir-certs", str(flat), "--stir-ca",
                str(fixtures / "pki" / "trust" / "root.pem"), str(path),
            ]))  # fmt: skip
        else:
            print("sip-doctor not installed (pip install sip-doctor): skipped")
        print(f"{'':22} {'seconds':>8} {'cpu s':>7} {'calls/s':>9} {'MB/s':>7} {'peak MB':>8}"
              "  output")  # fmt: skip
        results: dict[str, Run] = {}
        for name, argv in ours:
            runs = sorted((timed(argv) for _ in range(REPEAT)), key=lambda r: r.seconds)
            results[name] = runs[len(runs) // 2]
            _row(name, results[name], invites, size)
        for name, argv in others:
            results[name] = timed(argv, OTHER_LIMIT_S)
            _row(name, results[name], invites, size)
        for name, run in results.items():
            if name.startswith("stirscope"):
                continue
            for mine in ours:
                ratio = run.seconds / results[mine[0]].seconds
                more = "more than " if run.timed_out else ""
                print(f"{mine[0]} is {more}{ratio:.1f}x faster than {name}")


def _venv_tool(name: str) -> str | None:
    """A console script installed beside this interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def _row(name: str, run: Run, invites: int, size: int) -> None:
    cut = f"  (killed at {OTHER_LIMIT_S:.0f} s)" if run.timed_out else ""
    print(f"{name:22} {run.seconds:8.2f} {run.cpu:7.2f} {invites / run.seconds:9,.0f} "
          f"{size / run.seconds / 1e6:7.1f} {run.rss_mb:8,}  {run.lines} lines{cut}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
