"""SIP parsing throughput: stirscope's parser vs PyPI ``sipmessage`` vs a naive line split.

Parses ``fixtures/sip/invite_identity.sip`` (a 1.5 kB INVITE with an Identity header) and
prints messages per second (median of several repeats) and each rate relative to ours.
A measurement, not a test: it never fails on a number.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sip import parse_message  # noqa: E402

DATA = (ROOT / "fixtures" / "sip" / "invite_identity.sip").read_bytes()
REPEATS = 7
LOOPS = 3000


def naive(data: bytes) -> dict[str, str]:
    head, _, _body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return headers


def ours_six(data: bytes) -> object:
    msg = parse_message(data)
    return (msg.from_, msg.to, msg.call_id, msg.cseq, msg.via, msg.identity_values)


def rate(fn: Callable[[bytes], object]) -> float:
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(LOOPS):
            fn(DATA)
        samples.append(LOOPS / (time.perf_counter() - start))
    return statistics.median(samples)


def main() -> int:
    cases: list[tuple[str, Callable[[bytes], object]]] = [
        ("stirscope parse", parse_message),
        ("stirscope parse + 6 fields", ours_six),
        ("naive split-lines", naive),
    ]
    try:
        from sipmessage import Message

        def sm_six(data: bytes) -> object:
            msg = Message.parse(data)
            h = msg.headers
            return (
                h.get("From"),
                h.get("To"),
                h.get("Call-ID"),
                h.get("CSeq"),
                h.getlist("Via"),
                h.getlist("Identity"),
            )

        def sm_six_typed(data: bytes) -> object:
            msg = Message.parse(data)
            return (
                msg.from_address,
                msg.to_address,
                msg.call_id,
                msg.cseq,
                msg.via,
                msg.headers.getlist("Identity"),
            )

        cases += [
            ("sipmessage parse", Message.parse),
            ("sipmessage parse + 6 raw fields", sm_six),
            ("sipmessage parse + 6 typed fields", sm_six_typed),
        ]
    except ImportError:
        print("sipmessage not installed: skipping it")
    print(f"input: {len(DATA)} bytes, median of {REPEATS} x {LOOPS} parses")
    print(f"{'parser':36} {'msgs/s':>10} {'us/msg':>8} {'vs ours':>8}")
    base = 0.0
    for name, fn in cases:
        try:
            value = rate(fn)
        except Exception as exc:  # a third-party API change must not stop the table
            print(f"{name:36} failed: {exc!r}")
            continue
        base = base or value  # the first row (our parse) is the reference
        print(f"{name:36} {value:10.0f} {1e6 / value:8.1f} {value / base:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
