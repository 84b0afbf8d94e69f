"""Verification throughput, side by side in one run (medians of several repeats).

``N`` distinct PASSporTs are signed at bench time (alpha test key and x5u, each with its own
origid and an iat inside the freshness window, the Date header equal to its iat), and their
requests are built beforehand (building a request is not part of verifying it). Each round
verifies every token once, in the same order, with each of these in turn (rounds alternate
between the rows, so a change in the machine's load hits them alike):

1. raw ``cryptography`` ECDSA P-256 verify of each signature with a loaded key (the floor);
2. ``jwt.decode`` (PyJWT) of each token with the same key;
3. stirscope ``Verifier.verify`` of each full Identity header with a warm certificate cache
   (every checklist step: parse, decode, header/claims, freshness, orig/dest, credential
   cache, signature), and the same with the common-case fast path off (the full checklist);
4. ``stirscope verify --batch`` over a JSON Lines file of distinct tokens, 1 and 2 workers, in
   a fresh process (as the command runs; start-up excluded).

No row can hit a per-token cache: nothing in stirscope caches by token, and every token differs
from the others in its payload and signature. The certificate cache is warm, as for any busy
verifier (one signer, one x5u). The Python function calls per verify (counted with cProfile)
are printed too: unlike the rates they do not depend on the machine's load.

Ratios matter, not absolutes: the machine is shared and noisy.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
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
from cryptography.hazmat.primitives.serialization import load_pem_private_key

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analyzer.batch import run_batch  # noqa: E402
from analyzer.certsource import build_source  # noqa: E402
from analyzer.extract import request_from_headers  # noqa: E402
from analyzer.trustload import load_trust_store  # noqa: E402
from analyzer.verifying import VerifierConfig  # noqa: E402
from shaken.certs import parse_certificates  # noqa: E402
from shaken.jose import b64url_decode  # noqa: E402
from shaken.signing import identity_header_value, shaken_payload, sign_passport  # noqa: E402
from shaken.verifier import VerificationRequest, Verifier  # noqa: E402

FIXTURES = ROOT / "fixtures"
QUICK = os.environ.get("BENCH_QUICK") is not None
REPEATS = 7
# Distinct tokens verified per round by the in-process rows.
N = 3000
# Lines of the --batch input, each its own token (signing them takes ~0.1 ms each).
BATCH_LINES = 4000 if QUICK else 20000
# The calls are spread over this many seconds before the verification time: inside the 60 s
# freshness window of RFC 8224 section 6.2 step 4 (the default policy).
IAT_SPREAD_S = 50
X5U = "https://certs.alpha.example/alpha.pem"
FROM = "<sip:+12025550101@alpha.example;user=phone>;tag=a1"
TO = "<sip:+12025550199@bravo.example;user=phone>"


def median_rates(rows: list[Callable[[], None]], n: int) -> list[float]:
    """Each row verifies ``n`` tokens; the rows take turns, round after round (so a change in
    the machine's load hits every row alike), and each row's median rate is returned."""
    rates: list[list[float]] = [[] for _ in rows]
    for _ in range(REPEATS):
        for fn, samples in zip(rows, rates, strict=True):
            started = time.perf_counter()
            fn()
            samples.append(n / (time.perf_counter() - started))
    return [statistics.median(samples) for samples in rates]


def http_date(epoch: int) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(epoch))


def identities(count: int, at: int) -> list[tuple[str, int]]:
    """``count`` distinct Identity values (own origid, iat spread before ``at``) and iats."""
    key = load_pem_private_key((FIXTURES / "pki" / "keys" / "alpha.key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    out = []
    for i in range(count):
        iat = at - i % IAT_SPREAD_S
        payload = shaken_payload(
            attest="A",
            orig_tn="12025550101",
            dest_tns=["12025550199"],
            iat=iat,
            origid=f"00000000-0000-4000-8000-{i:012d}",
        )
        token = sign_passport(key, x5u=X5U, payload=payload)
        out.append((identity_header_value(token, x5u=X5U), iat))
    return out


def calls_per_verify(
    verifier: Verifier, requests: list[VerificationRequest], at: datetime
) -> float:
    profile = cProfile.Profile()
    profile.enable()
    for request in requests:
        verifier.verify(request, at=at)
    profile.disable()
    calls: int = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
    return calls / len(requests)


def _batch_rate(src: Path, workers: int, expected: int) -> float:
    """Lines/s of ``run_batch`` over ``src``, measured in a fresh process as `stirscope verify
    --batch` runs: worker processes forked from this one would inherit (and copy, page by page,
    as their garbage collector touches it) the tens of MB of tokens and requests built above."""
    out = subprocess.run(
        [sys.executable, __file__, "--batch-child", str(src), str(workers)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines, seconds = out.split()
    assert int(lines) == expected
    return expected / float(seconds)


def _batch_child(src: str, workers: int) -> int:
    config = VerifierConfig(trust=(FIXTURES / "pki" / "trust",), certs_dirs=(FIXTURES / "certs",))
    with open(src) as handle:
        summary = run_batch(handle, io.StringIO(), config=config, workers=workers)
    print(summary.passed, summary.seconds)
    return 0


def main() -> int:
    vectors = [json.loads(x) for x in (FIXTURES / "vectors" / "verify.jsonl").open()]
    at_s = next(v for v in vectors if v["id"] == "valid_a")["at"]
    at = datetime.fromtimestamp(at_s, UTC)
    signed = identities(max(N, BATCH_LINES), at_s)
    chain = (FIXTURES / "certs" / "certs.alpha.example" / "alpha.pem").read_bytes()
    key = parse_certificates(chain).certs[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    algorithm = ec.ECDSA(hashes.SHA256())

    tokens = [identity.split(";", 1)[0] for identity, _ in signed[:N]]
    raw_inputs = []
    for token in tokens:
        h, p, s = token.split(".")
        raw = b64url_decode(s)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        raw_inputs.append((der, f"{h}.{p}".encode()))
    requests = [
        request_from_headers(identities=[identity], from_=FROM, to=TO, date=http_date(iat))
        for identity, iat in signed[:N]
    ]

    def raw_verify() -> None:
        for der, signing_input in raw_inputs:
            key.verify(der, signing_input, algorithm)

    def pyjwt_decode() -> None:
        for token in tokens:
            jwt.decode(token, key, algorithms=["ES256"], options={"verify_signature": True})

    trust = load_trust_store([FIXTURES / "pki" / "trust"])
    source = build_source(certs_dirs=[FIXTURES / "certs"])
    verifier = Verifier(trust=trust, source=source)
    full = Verifier(trust=trust, source=source, fast_path=False)
    assert all(verifier.verify(r, at=at).passed for r in requests)
    assert all(full.verify(r, at=at).passed for r in requests)

    def ours() -> None:
        for request in requests:
            verifier.verify(request, at=at)

    def ours_full() -> None:
        for request in requests:
            full.verify(request, at=at)

    r_raw, r_jwt, r_ours, r_full = median_rates([raw_verify, pyjwt_decode, ours, ours_full], N)
    print(f"{N} distinct tokens per round, {REPEATS} rounds, rows in turn (median)")
    print(f"{'path':44} {'verif/s':>10} {'vs raw':>8}")
    print(f"{'raw cryptography ECDSA verify':44} {r_raw:10.0f} {1.0:8.2f}")
    print(f"{'pyjwt.decode (ES256)':44} {r_jwt:10.0f} {r_jwt / r_raw:8.2f}")
    print(f"{'stirscope Verifier.verify (warm cache)':44} {r_ours:10.0f} {r_ours / r_raw:8.2f}")
    print(f"{'  the same, full checklist (fast path off)':44} {r_full:10.0f} {r_full / r_raw:8.2f}")
    for name, rate in (("Verifier.verify", r_ours), ("full checklist", r_full)):
        overhead_us = (1 / rate - 1 / r_raw) * 1e6
        print(f"overhead per PASSporT beyond the ECDSA verify, {name}: {overhead_us:.1f} us")
    print(
        f"Python function calls per verify: {calls_per_verify(verifier, requests, at):.0f} "
        f"(full checklist {calls_per_verify(full, requests, at):.0f})"
    )

    # --batch with 1 and 2 worker processes over the same JSON Lines input.
    lines = [
        json.dumps(
            {"identity": identity, "from": FROM, "to": TO, "date": http_date(iat), "at": at_s}
        )
        for identity, iat in signed[:BATCH_LINES]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        src.write_text("".join(line + "\n" for line in lines))
        samples: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(3):
            for workers, rates_of in samples.items():
                rates_of.append(_batch_rate(src, workers, len(lines)))
        rates = {workers: statistics.median(values) for workers, values in samples.items()}
    print(f"\n{'verify --batch (distinct tokens)':44} {'lines/s':>10} {'vs 1 worker':>11}")
    for workers, rate in rates.items():
        label = f"  {workers} worker(s), {len(lines)} lines"
        print(f"{label:44} {rate:10.0f} {rate / rates[1]:11.2f}")
    print(f"batch (1 worker) vs raw verify: {rates[1] / r_raw:.2f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--batch-child"]:
        sys.exit(_batch_child(sys.argv[2], int(sys.argv[3])))
    sys.exit(main())
