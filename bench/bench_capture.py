"""Capture-layer throughput: ``iter_segments`` vs a bare struct record walk (and tshark).

Generates (at bench time, in a temporary directory) a capture of ``CALLS`` SIP calls over UDP
with RTP making ~88% of the packets (ARCHITECTURE.md section 5), then times, median of
``RUNS``: a bare ``struct`` walk over the records, ``read_records`` (records only), and the
full ``iter_segments`` (link layer, filter, defragmentation, TCP reassembly, HEP); and
``tshark -r FILE -Y sip`` when tshark is installed. Prints records/s, MB/s and ratios.
Measurement only: it never fails on a number.
"""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analyzer.anomaly import Anomaly  # noqa: E402
from analyzer.pcapfile import iter_segments, read_records  # noqa: E402

CALLS = 10_000
RTP_PER_CALL = 30  # 4 SIP + 30 RTP packets per call: ~88% RTP
RUNS = 3


def _gen() -> object:
    spec = importlib.util.spec_from_file_location(
        "gen_captures", ROOT / "fixtures" / "gen_captures.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_captures"] = module
    spec.loader.exec_module(module)
    return module


def build(path: Path) -> int:
    gen = _gen()
    g = gen.__dict__
    rtp_frames = [
        g["build_udp_ipv4_ethernet"](
            "192.0.2.10", 16384, "198.51.100.20", 20000, g["rtp"](i, i * 160)
        )
        for i in range(64)
    ]
    count = 0
    with open(path, "wb") as out:
        w = g["PcapWriter"](out, 1)
        ts = g["BASE_TS_NS"]
        for call in range(CALLS):
            for i, kind in enumerate(g["DIALOG"]):
                src, dst = (
                    ("192.0.2.10", "198.51.100.20")
                    if kind != "200"
                    else ("198.51.100.20", "192.0.2.10")
                )
                frame = g["build_udp_ipv4_ethernet"](
                    src, 5060, dst, 5060, g["sip_message"](kind, call)
                )
                w.write(ts, frame)
                ts += 1_000_000
                count += 1
                if i == 2:
                    for j in range(RTP_PER_CALL):
                        w.write(ts, rtp_frames[(call + j) % 64])
                        ts += 20_000
                        count += 1
    return count


def bare_walk(path: Path) -> int:
    """The floor: a struct walk over record headers, no slicing, no decoding."""
    with open(path, "rb") as f:
        buf = f.read(1 << 20)
        unpack = struct.Struct("<IIII").unpack_from
        pos, n = 24, 0
        while True:
            while pos + 16 <= len(buf):
                incl = unpack(buf, pos)[2]
                if pos + 16 + incl > len(buf):
                    break
                pos += 16 + incl
                n += 1
            more = f.read(1 << 20)
            if not more:
                return n
            buf, pos = buf[pos:] + more, 0


def records_only(path: Path) -> int:
    return sum(1 for r in read_records(path) if not isinstance(r, Anomaly))


def segments(path: Path) -> int:
    return sum(1 for s in iter_segments(path) if not isinstance(s, Anomaly))


def tshark(path: Path) -> int:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "sip", "-T", "fields", "-e", "frame.number"],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    return len(out.stdout.split())


def timed(fn: Callable[[Path], int], path: Path, runs: int = RUNS) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        result = fn(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pcap"
        t0 = time.perf_counter()
        packets = build(path)
        size = path.stat().st_size
        print(f"generated {CALLS} calls, {packets} packets, {size / 1e6:.1f} MB "
              f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        rows = [("bare struct walk", bare_walk), ("read_records", records_only),
                ("iter_segments", segments)]  # fmt: skip
        if shutil.which("tshark"):
            rows.append(("tshark -Y sip", tshark))
        base = None
        print(f"{'':18} {'median s':>9} {'records/s':>12} {'MB/s':>8} {'x walk':>7}  result")
        for name, fn in rows:
            seconds, result = timed(fn, path, 1 if name.startswith("tshark") else RUNS)
            base = base or seconds
            print(f"{name:18} {seconds:9.3f} {packets / seconds:12,.0f} {size / seconds / 1e6:8.1f}"
                  f" {seconds / base:7.1f}  {result}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
