"""The credential cache (shaken/credentials.py) never changes a verdict, only its cost.

One verifier judges the same x5u at different call times, in every order: each verdict must
equal a fresh verifier's verdict for that time (validity boundaries to the second, revocation
dates, CRL windows). While warm, the certificate source is asked once per URL (through the
``CachingSource`` every face builds); a CRL re-issued by the CA is seen once the source serves
it; threads verifying concurrently get the serial results. RFC 5280 section 6.1 and 6.3 (as of
the verification time); RFC 8224 section 7.2 (caching keyed on the URI).
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from analyzer.extract import request_from_headers
from analyzer.trustload import load_trust_store
from shaken.errors import Reason
from shaken.policy import Policy
from shaken.result import Revocation, VerificationResult
from shaken.source import CachingSource, Fetched, FetchKind, MemorySource
from shaken.verifier import Verifier
from tests.conftest import FIXTURES
from tests.integration.test_verifier_policy import (
    ALPHA_X5U,
    INTERMEDIATE_CRL,
    REVOCATION,
    REVOKED_X5U,
    ROOT_CRL,
    full_source,
    http_date,
    signed_identity,
    tn_header,
)

TRUST = load_trust_store([FIXTURES / "pki" / "trust"])


def epoch(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp())


# Validity of the alpha chain (fixtures/pki/manifest.json) and of the committed CRLs.
ALPHA_NOT_BEFORE = epoch(2025, 6, 1)
ALPHA_NOT_AFTER = epoch(2030, 6, 1)
CRL_THIS_UPDATE = epoch(2026, 1, 2)
CRL_NEXT_UPDATE = epoch(2034, 1, 1)

# Call times and the verdict (status, reason) expected at each for the alpha certificate.
ALPHA_TIMES: dict[str, tuple[int, int | None, Reason | None]] = {
    "valid": (epoch(2026, 1, 15, 12), None, None),
    "last-valid-second": (ALPHA_NOT_AFTER, None, None),
    "expired-by-1s": (ALPHA_NOT_AFTER + 1, 437, Reason.CERT_EXPIRED),
    "expired": (epoch(2031, 1, 1), 437, Reason.CERT_EXPIRED),
    "not-yet-valid": (ALPHA_NOT_BEFORE - 1, 437, Reason.CERT_NOT_YET_VALID),
    "first-valid-second": (ALPHA_NOT_BEFORE, None, None),
    "before-crl-issued": (CRL_THIS_UPDATE - 1, None, None),
}


class CountingSource:
    """A ``MemorySource`` whose served bytes can be replaced, counting fetches per URL."""

    def __init__(self, mapping: dict[str, bytes | Fetched]) -> None:
        self.mapping = dict(mapping)
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        with self._lock:
            self.counts[url] = self.counts.get(url, 0) + 1
        return MemorySource(self.mapping).fetch(url, kind=kind)


def verify(
    verifier: Verifier, at: int, *, x5u: str = ALPHA_X5U, key: str = "alpha"
) -> VerificationResult:
    """A call signed (and dated) at ``at``, verified at ``at``: only the credential can fail."""
    request = request_from_headers(
        identities=[signed_identity(key=key, x5u=x5u, iat=at)],
        from_=tn_header("12025550101"),
        to=tn_header("12025550199"),
        date=http_date(at),
    )
    return verifier.verify(request, at=datetime.fromtimestamp(at, UTC))


def fresh_verifier(policy: Policy | None = None) -> Verifier:
    return Verifier(trust=TRUST, source=MemorySource(full_source(REVOKED_X5U)), policy=policy)


def verdict(result: VerificationResult) -> tuple[int | None, Reason | None]:
    return result.status_code, result.reason


@pytest.mark.parametrize(
    "order",
    [
        *itertools.permutations(["valid", "expired", "not-yet-valid"]),
        ("valid", "last-valid-second", "expired-by-1s", "last-valid-second", "valid"),
        ("expired-by-1s", "last-valid-second", "first-valid-second", "not-yet-valid", "valid"),
        ("valid", "before-crl-issued", "valid", "not-yet-valid", "first-valid-second"),
    ],
    ids="->".join,
)
def test_same_verifier_judges_each_time_afresh(order: tuple[str, ...]) -> None:
    verifier = fresh_verifier()
    for name in order:
        at, status, reason = ALPHA_TIMES[name]
        result = verify(verifier, at)
        assert verdict(result) == (status, reason), (name, result.to_json())
        # ...and exactly what a verifier that never saw another time answers.
        assert result.to_json() == verify(fresh_verifier(), at).to_json(), name


@pytest.mark.parametrize(
    "order",
    [
        ("before", "after"),
        ("after", "before"),
        ("at", "before", "at"),
        ("before", "before", "long-after", "before"),
    ],
    ids="->".join,
)
def test_revocation_date_seen_in_every_order(order: tuple[str, ...]) -> None:
    times = {
        "before": (REVOCATION - 1, None, Revocation.GOOD),
        "at": (REVOCATION, 437, Revocation.REVOKED),
        "after": (REVOCATION + 3600, 437, Revocation.REVOKED),
        "long-after": (epoch(2027, 6, 1), 437, Revocation.REVOKED),
    }
    verifier = fresh_verifier()
    for name in order:
        at, status, revocation = times[name]
        result = verify(verifier, at, x5u=REVOKED_X5U, key="revoked")
        passport = result.passports[0]
        assert passport.signer is not None
        assert (result.status_code, passport.signer.revocation) == (status, revocation), name
        if status is not None:
            assert result.reason is Reason.CERT_REVOKED


def test_cache_hits_inside_interval_and_misses_outside() -> None:
    verifier = fresh_verifier()
    stats = verifier.credentials.stats
    valid = ALPHA_TIMES["valid"][0]
    verify(verifier, valid)
    assert (stats.hits, stats.misses) == (0, 1)
    verify(verifier, valid + 86_400)
    verify(verifier, ALPHA_NOT_AFTER)  # inclusive end of the cached interval
    assert (stats.hits, stats.misses) == (2, 1)
    assert not verify(verifier, ALPHA_NOT_AFTER + 1).passed  # outside: judged afresh
    assert verify(verifier, CRL_THIS_UPDATE - 1).passed  # before the CRL: outside too
    assert stats.misses == 3
    verify(verifier, valid)  # the entry for the interval survived the outside judgements
    assert (stats.hits, stats.misses) == (3, 3)


def test_source_asked_once_per_url_while_warm() -> None:
    """Through the CachingSource every face builds, each URL is fetched once while fresh."""
    inner = CountingSource(full_source())
    now = [1_800_000_000.0]
    verifier = Verifier(trust=TRUST, source=CachingSource(inner, clock=lambda: now[0]))
    base = ALPHA_TIMES["valid"][0]
    for offset in range(0, 50 * 3600, 3600):  # 50 calls over two days of call time
        assert verify(verifier, base + offset).passed
    assert inner.counts == {ALPHA_X5U: 1, INTERMEDIATE_CRL: 1, ROOT_CRL: 1}
    now[0] += 25 * 3600  # past the ATIS 24 h cache floor: fetched once more, then warm again
    for offset in range(3):
        assert verify(verifier, base + offset).passed
    assert inner.counts[ALPHA_X5U] == 2


def test_crl_fetched_once_while_fresh_even_on_credential_misses() -> None:
    """Calls outside the credential interval re-judge the chain, not re-download the CRL."""
    inner = CountingSource(full_source())
    verifier = Verifier(trust=TRUST, source=CachingSource(inner, clock=lambda: 1_800_000_000.0))
    for name in ("valid", "before-crl-issued", "expired", "not-yet-valid", "valid"):
        verify(verifier, ALPHA_TIMES[name][0])
    assert inner.counts[INTERMEDIATE_CRL] == 1
    assert inner.counts[ROOT_CRL] == 1


def _intermediate_crl(revoked: list[tuple[int, int]], this_update: int, number: int) -> bytes:
    """An intermediate CRL re-issued by the test CA (fixture key), DER."""
    key = load_pem_private_key(
        (FIXTURES / "pki" / "keys" / "intermediate.key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    issuer = x509.load_pem_x509_certificate(
        (FIXTURES / "pki" / "ca" / "intermediate.pem").read_bytes()
    )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(datetime.fromtimestamp(this_update, UTC))
        .next_update(datetime.fromtimestamp(this_update, UTC) + dt.timedelta(days=7))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(datetime.fromtimestamp(when, UTC))
            .build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_reissued_crl_is_seen_while_credential_is_cached() -> None:
    """A CA revokes a certificate and publishes a new CRL: once the source serves the new CRL,
    the verifier must use it, even though the credential judged with the old CRL is still
    inside its cached interval (ATIS-1000080; RFC 5280 section 6.3)."""
    alpha = x509.load_pem_x509_certificates(
        (FIXTURES / "certs" / "certs.alpha.example" / "alpha.pem").read_bytes()
    )[0]
    day = 86_400
    issued = epoch(2026, 3, 1)
    inner = CountingSource(
        {
            **full_source(),
            INTERMEDIATE_CRL: _intermediate_crl([], issued, 10),
        }
    )
    now = [1_800_000_000.0]
    verifier = Verifier(trust=TRUST, source=CachingSource(inner, clock=lambda: now[0]))
    assert verify(verifier, issued + day).passed  # cached for the CRL's week
    inner.mapping[INTERMEDIATE_CRL] = _intermediate_crl(
        [(alpha.serial_number, issued + 2 * day)], issued + 2 * day + 60, 11
    )
    now[0] += 25 * 3600  # the source's cached copy of the old CRL has expired
    result = verify(verifier, issued + 3 * day)
    passport = result.passports[0]
    assert passport.signer is not None
    assert passport.signer.revocation is Revocation.REVOKED, result.to_json()
    assert result.reason is Reason.CERT_REVOKED


def test_concurrent_verification_matches_serial() -> None:
    """Many threads on one verifier (shared caches): the same results as one thread."""
    calls = [
        (ALPHA_TIMES[name][0], ALPHA_X5U, "alpha")
        for name in ("valid", "expired", "not-yet-valid", "last-valid-second")
    ] + [(REVOCATION - 1, REVOKED_X5U, "revoked"), (REVOCATION + 60, REVOKED_X5U, "revoked")]
    expected = {
        call: verify(fresh_verifier(), call[0], x5u=call[1], key=call[2]).to_json()
        for call in calls
    }
    inner = CountingSource(full_source(REVOKED_X5U))
    verifier = Verifier(trust=TRUST, source=CachingSource(inner, clock=lambda: 1_800_000_000.0))
    work = calls * 40
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda c: (c, verify(verifier, c[0], x5u=c[1], key=c[2]).to_json()), work)
        )
    for call, got in results:
        assert got == expected[call], call
    assert inner.counts[ALPHA_X5U] == 1  # single flight: concurrent misses share one fetch
    stats = verifier.credentials.stats
    assert stats.hits + stats.misses == len(work)
