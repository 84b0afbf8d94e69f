"""`stirscope analyze` (with verification) vs tshark extraction on one generated capture.

Generates (at bench time, in a temporary directory) ``CALLS`` calls, each a signed INVITE
(alpha test key, its own iat/Date and origid), 100/180/200, ACK, ``RTP_PER_CALL`` RTP packets,
BYE and its 200, over UDP/Ethernet. Then times, side by side on the same file:

* ``stirscope analyze FILE --trust ... --certs ... --format jsonl`` (scan, reassembly, call
  tracking, verification of every INVITE, JSONL out), default workers;
* ``tshark -r FILE -Y 'sip.Method == "INVITE"' -T fields -e sip.Call-ID -e sip.Identity``
  (extraction only), when tshark is installed;
* ``sip-doctor read --json FILE`` when installed (it is not a dependency).

Each runs as a child process; wall time and the child's peak RSS (``wait4``) are reported with
calls/s, MB/s and the ratios. Measurement only: it never fails on a number.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shaken.signing import shaken_payload, sign_passport  # noqa: E402

CALLS = int(os.environ.get("BENCH_CALLS", "10000"))
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


def build(path: Path) -> tuple[int, int]:
    """Write the capture; returns (packets, INVITEs)."""
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

        for call in range(CALLS):
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
    return packets, CALLS


def timed(argv: list[str]) -> tuple[float, int, bytes]:
    """(wall seconds, peak RSS in MB of the child, stdout) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    return seconds, usage.ru_maxrss // 1024, out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pcap"
        t0 = time.perf_counter()
        packets, invites = build(path)
        size = path.stat().st_size
        print(f"generated {invites} calls, {packets} packets, {size / 1e6:.1f} MB "
              f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        fixtures = ROOT / "fixtures"
        stirscope = [sys.executable, "-m", "service.cli", "analyze", str(path),
                     "--trust", str(fixtures / "pki" / "trust"), "--certs",
                     str(fixtures / "certs"), "--format", "jsonl"]  # fmt: skip
        rows: list[tuple[str, list[str]]] = [
            ("stirscope analyze", stirscope),
            ("stirscope --workers 1", [*stirscope, "--workers", "1"]),
        ]
        if shutil.which("tshark"):
            rows.append(("tshark extraction", [
                "tshark", "-r", str(path), "-Y", 'sip.Method == "INVITE"', "-T", "fields",
                "-e", "sip.Call-ID", "-e", "sip.Identity",
            ]))  # fmt: skip
        else:
            print("tshark not installed: skipped")
        if shutil.which("sip-doctor"):
            rows.append(("sip-doctor read", ["sip-doctor", "read", "--json", str(path)]))
        else:
            print("sip-doctor not installed (pip install sip-doctor): skipped")
        results = {}
        print(f"{'':22} {'seconds':>8} {'calls/s':>9} {'MB/s':>7} {'peak MB':>8}  output")
        for name, argv in rows:
            seconds, rss, out = timed(argv)
            results[name] = seconds
            lines = out.count(b"\n")
            print(f"{name:22} {seconds:8.2f} {invites / seconds:9,.0f} {size / seconds / 1e6:7.1f}"
                  f" {rss:8,}  {lines} lines")  # fmt: skip
        ours = results["stirscope analyze"]
        for name, seconds in results.items():
            if not name.startswith("stirscope"):
                print(f"stirscope analyze is {seconds / ours:.1f}x faster than {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
