"""Verification throughput, side by side in one run (medians of several repeats).

1. raw ``cryptography`` ECDSA P-256 verify of the same signature with a loaded key (the floor);
2. ``jwt.decode`` (PyJWT) of the same token with the same key;
3. stirscope ``Verifier.verify`` of the full Identity header with a warm certificate cache
   (every checklist step: parse, decode, header/claims, freshness, orig/dest, credential
   cache, signature);
4. ``stirscope verify --batch`` over a JSON Lines file with 1 and 2 worker processes.

Ratios matter, not absolutes: the machine is shared and noisy.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analyzer.batch import run_batch  # noqa: E402
from analyzer.certsource import build_source  # noqa: E402
from analyzer.extract import request_from_headers  # noqa: E402
from analyzer.trustload import load_trust_store  # noqa: E402
from analyzer.verifying import VerifierConfig  # noqa: E402
from shaken.certs import parse_certificates  # noqa: E402
from shaken.jose import b64url_decode  # noqa: E402
from shaken.verifier import Verifier  # noqa: E402

FIXTURES = ROOT / "fixtures"
REPEATS = 5
N = 3000


def median_rate(fn: Callable[[], None], n: int) -> float:
    rates = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        rates.append(n / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> int:
    vectors = [json.loads(x) for x in (FIXTURES / "vectors" / "verify.jsonl").open()]
    vec = next(v for v in vectors if v["id"] == "valid_a")
    identity = vec["identities"][0]
    token = identity.split(";", 1)[0]
    at = datetime.fromtimestamp(vec["at"], UTC)
    chain = (FIXTURES / "certs" / "certs.alpha.example" / "alpha.pem").read_bytes()
    key = parse_certificates(chain).certs[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    h, p, s = token.split(".")
    signing_input = f"{h}.{p}".encode()
    raw = b64url_decode(s)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    algorithm = ec.ECDSA(hashes.SHA256())

    def raw_verify() -> None:
        key.verify(der, signing_input, algorithm)

    def pyjwt_decode() -> None:
        jwt.decode(token, key, algorithms=["ES256"], options={"verify_signature": True})

    verifier = Verifier(
        trust=load_trust_store([FIXTURES / "pki" / "trust"]),
        source=build_source(certs_dirs=[FIXTURES / "certs"]),
    )
    request = request_from_headers(
        identities=[identity], from_=vec["from"], to=vec["to"], date=vec["date"]
    )
    assert verifier.verify(request, at=at).passed

    def ours() -> None:
        verifier.verify(request, at=at)

    r_raw = median_rate(raw_verify, N)
    r_jwt = median_rate(pyjwt_decode, N)
    r_ours = median_rate(ours, N)
    print(f"{'path':44} {'verif/s':>10} {'vs raw':>8}")
    print(f"{'raw cryptography ECDSA verify':44} {r_raw:10.0f} {1.0:8.2f}")
    print(f"{'pyjwt.decode (ES256)':44} {r_jwt:10.0f} {r_jwt / r_raw:8.2f}")
    print(f"{'stirscope Verifier.verify (warm cache)':44} {r_ours:10.0f} {r_ours / r_raw:8.2f}")
    overhead_us = (1 / r_ours - 1 / r_raw) * 1e6
    print(f"stirscope overhead per PASSporT beyond the ECDSA verify: {overhead_us:.1f} us")

    # --batch with 1 and 2 worker processes over the same JSON Lines input.
    lines = 20000 if os.environ.get("BENCH_QUICK") is None else 4000
    line = json.dumps(
        {
            "identity": identity,
            "from": vec["from"],
            "to": vec["to"],
            "date": vec["date"],
            "at": vec["at"],
        }
    )
    config = VerifierConfig(trust=(FIXTURES / "pki" / "trust",), certs_dirs=(FIXTURES / "certs",))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        src.write_text((line + "\n") * lines)
        rates = {}
        for workers in (1, 2):
            samples = []
            for _ in range(3):
                with src.open() as handle:
                    summary = run_batch(handle, io.StringIO(), config=config, workers=workers)
                assert summary.passed == lines
                samples.append(lines / summary.seconds)
            rates[workers] = statistics.median(samples)
    print(f"\n{'verify --batch':44} {'lines/s':>10} {'vs 1 worker':>11}")
    for workers, rate in rates.items():
        print(f"{f'  {workers} worker(s), {lines} lines':44} {rate:10.0f} {rate / rates[1]:11.2f}")
    print(f"batch (1 worker) vs raw verify: {rates[1] / r_raw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
