"""Tests for shaken.source: statuses, URL policy, content types, cache headers and the cache."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shaken.errors import REASON_STATUS, Reason
from shaken.source import (
    ATIS_MIN_CACHE_SECONDS,
    CRL_TYPE,
    PEM_CHAIN_TYPE,
    CachingSource,
    CertificateSource,
    Fetched,
    FetchKind,
    FetchStatus,
    MemorySource,
    check_info_url,
    content_expiry,
    infer_content_type,
    is_acceptable_content_type,
    parse_cache_headers,
)

URL = "https://cr.example.com/sp.pem"
T0 = 1_700_000_000.0
DAY = 86_400.0
HTTP_DATE_T0 = "Tue, 14 Nov 2023 22:13:20 GMT"  # == T0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingSource:
    """Returns queued results (the last one repeats) and counts calls."""

    def __init__(self, *results: Fetched) -> None:
        self.results = list(results)
        self.calls = 0

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        self.calls += 1
        index = min(self.calls - 1, len(self.results) - 1)
        return self.results[index]


def ok(max_age: float | None = None, *, no_store: bool = False, body: bytes = b"chain") -> Fetched:
    return Fetched(URL, FetchStatus.OK, body, PEM_CHAIN_TYPE, "", max_age, no_store=no_store)


def failed(status: FetchStatus = FetchStatus.TIMEOUT) -> Fetched:
    return Fetched.failure(URL, status, "boom")


def make_cert(not_after: datetime.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SHAKEN test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_after - datetime.timedelta(days=30))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def make_crl(next_update: datetime.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "STI-PA test")])
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(next_update - datetime.timedelta(days=1))
        .next_update(next_update)
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.DER)


def at(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


# --- statuses and reasons --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (FetchStatus.OK, None),
        (FetchStatus.NOT_FOUND, Reason.FETCH_NOT_FOUND),
        (FetchStatus.REFUSED, Reason.FETCH_REFUSED),
        (FetchStatus.FAILED, Reason.FETCH_FAILED),
        (FetchStatus.TIMEOUT, Reason.FETCH_TIMEOUT),
        (FetchStatus.TOO_LARGE, Reason.FETCH_TOO_LARGE),
        (FetchStatus.BAD_CONTENT_TYPE, Reason.FETCH_BAD_CONTENT_TYPE),
        (FetchStatus.OFFLINE, Reason.FETCH_OFFLINE),
        (FetchStatus.BAD_URL, Reason.BAD_INFO_URL),
    ],
    ids=lambda v: str(v),
)
def test_status_maps_to_reason(status: FetchStatus, reason: Reason | None) -> None:
    fetched = Fetched(URL, status)
    assert fetched.reason is reason
    assert fetched.ok is (status is FetchStatus.OK)
    if reason is not None:
        assert REASON_STATUS[reason] == 436  # Bad Identity Info, RFC 8224 section 6.2.2


def test_every_status_is_mapped() -> None:
    unmapped = [
        s for s in FetchStatus if s is not FetchStatus.OK and Fetched(URL, s).reason is None
    ]
    assert unmapped == []


# --- URL policy ------------------------------------------------------------------------------

GOOD_URLS = [
    ("plain", "https://cr.example.com/sp.pem"),
    ("port-443", "https://cr.example.com:443/sp.pem"),
    ("port-8443", "https://cert2.sticr.att.net:8443/a/b.pem"),
    ("no-path", "https://cr.example.com"),
    ("upper-scheme-host", "HTTPS://CR.Example.COM/sp.pem"),
    ("ipv4-literal", "https://192.0.2.7/sp.pem"),
    ("ipv6-literal", "https://[2001:db8::1]:8443/sp.pem"),
    ("no-extension", "https://p.mtsec.me/2dd5/KGooOP8qrCkY"),
    ("percent-path", "https://cr.example.com/a%20b.pem"),
]


@pytest.mark.parametrize("url", [u for _, u in GOOD_URLS], ids=[i for i, _ in GOOD_URLS])
def test_good_info_urls(url: str) -> None:
    assert check_info_url(url) is None


BAD_URLS = [
    ("empty", ""),
    ("http", "http://cr.example.com/sp.pem"),
    ("ftp", "ftp://cr.example.com/sp.pem"),
    ("no-scheme", "cr.example.com/sp.pem"),
    ("scheme-relative", "//cr.example.com/sp.pem"),
    ("port-80", "https://cr.example.com:80/sp.pem"),
    ("port-8080", "https://cr.example.com:8080/sp.pem"),
    ("port-out-of-range", "https://cr.example.com:99999/sp.pem"),
    ("port-not-number", "https://cr.example.com:https/sp.pem"),
    ("userinfo", "https://user@cr.example.com/sp.pem"),
    ("userinfo-password", "https://u:p@cr.example.com/sp.pem"),
    ("backslash-userinfo-trick", "https://evil.example\\@cr.example.com/sp.pem"),
    ("query", "https://cr.example.com/sp.pem?x=1"),
    ("empty-query", "https://cr.example.com/sp.pem?"),
    ("fragment", "https://cr.example.com/sp.pem#frag"),
    ("empty-fragment", "https://cr.example.com/sp.pem#"),
    ("no-host", "https:///sp.pem"),
    ("port-only", "https://:443/sp.pem"),
    ("space", "https://cr.example.com/s p.pem"),
    ("newline", "https://cr.example.com/sp.pem\r\n"),
    ("non-ascii", "https://cr.exämple.com/sp.pem"),
    ("unclosed-ipv6", "https://[2001:db8::1/sp.pem"),
    ("percent-host", "https://cr%2eexample.com/sp.pem"),
    ("angle-brackets", "<https://cr.example.com/sp.pem>"),
]


@pytest.mark.parametrize("url", [u for _, u in BAD_URLS], ids=[i for i, _ in BAD_URLS])
def test_bad_info_urls(url: str) -> None:
    assert check_info_url(url) is not None


@pytest.mark.parametrize(
    ("url", "kwargs", "allowed"),
    [
        ("http://cr.example.com/sp.pem", {"allow_http": True}, True),
        ("http://cr.example.com:8080/sp.pem", {"allow_http": True}, False),
        (
            "http://cr.example.com:8080/sp.pem",
            {"allow_http": True, "allowed_ports": frozenset({8080})},
            True,
        ),
        ("https://cr.example.com/sp.pem", {"allowed_ports": frozenset({8443})}, False),
        ("https://127.0.0.1:4711/x", {"allowed_ports": frozenset({4711})}, True),
        ("https://cr.example.com:80/sp.pem", {"allow_http": True}, False),
    ],
    ids=[
        "http-allowed",
        "http-8080-not-allowed",
        "http-8080-allowed-port",
        "implied-443-not-allowed",
        "test-port",
        "https-on-80-still-refused",
    ],
)
def test_info_url_options(url: str, kwargs: dict[str, object], allowed: bool) -> None:
    assert (check_info_url(url, **kwargs) is None) is allowed


@pytest.mark.realworld
def test_observed_x5u_urls(realworld: Path) -> None:
    """17,839 x5u URLs seen in US traffic: the policy passes exactly https on 443/8443."""
    urls = (realworld / "identity" / "x5u_urls_observed_martinisecurity.txt").read_text()
    checked = 0
    for url in urls.split():
        rest = url.removeprefix("https://")
        authority = rest.split("/", 1)[0]
        port = authority.rsplit(":", 1)[1] if ":" in authority else "443"
        expected_ok = url.startswith("https://") and port in ("443", "8443")
        assert (check_info_url(url) is None) is expected_ok, url
        checked += 1
    assert checked > 17_000


# --- content types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "kind", "lenient", "strict"),
    [
        (PEM_CHAIN_TYPE, FetchKind.CERT, True, True),
        ("Application/PEM-Certificate-Chain; charset=utf-8", FetchKind.CERT, True, True),
        ("application/x-pem-file", FetchKind.CERT, True, False),
        ("application/x-x509-ca-cert", FetchKind.CERT, True, False),
        ("application/pkix-cert", FetchKind.CERT, True, False),
        ("binary/octet-stream", FetchKind.CERT, True, False),
        ("text/plain", FetchKind.CERT, True, False),
        (None, FetchKind.CERT, True, False),
        ("text/html; charset=utf-8", FetchKind.CERT, False, False),
        ("application/json", FetchKind.CERT, False, False),
        (CRL_TYPE, FetchKind.CERT, False, False),
        (CRL_TYPE, FetchKind.CRL, True, True),
        ("application/x-pkcs7-crl", FetchKind.CRL, True, False),
        (PEM_CHAIN_TYPE, FetchKind.CRL, False, False),
        ("text/html", FetchKind.CRL, False, False),
    ],
    ids=lambda v: str(v),
)
def test_content_type_policy(
    content_type: str | None, kind: FetchKind, lenient: bool, strict: bool
) -> None:
    assert is_acceptable_content_type(content_type, kind) is lenient
    assert is_acceptable_content_type(content_type, kind, strict=True) is strict


def test_standard_content_type_flag() -> None:
    assert ok().has_standard_content_type
    assert not Fetched(URL, FetchStatus.OK, b"x", "text/plain").has_standard_content_type
    crl = Fetched(URL, FetchStatus.OK, b"x", CRL_TYPE, kind=FetchKind.CRL)
    assert crl.has_standard_content_type


@pytest.mark.parametrize(
    ("body", "name", "expected"),
    [
        (b"-----BEGIN CERTIFICATE-----\nMII...", "sp.pem", PEM_CHAIN_TYPE),
        (b"-----BEGIN X509 CRL-----\nMII...", "ca.pem", CRL_TYPE),
        (b"\x30\x82\x01\x00", "ca.crl", CRL_TYPE),
        (b"\x30\x82\x01\x00", "sp.cer", "application/pkix-cert"),
        (b"\n <html>", "sp.pem", "text/html"),
        (b'{"error": 1}', "sp.pem", "application/json"),
        (b"\x00\x01", "sp.pem", "application/octet-stream"),
    ],
    ids=["pem-chain", "pem-crl", "der-crl-by-name", "der-cert", "html", "json", "binary"],
)
def test_infer_content_type(body: bytes, name: str, expected: str) -> None:
    assert infer_content_type(body, name) == expected


# --- cache headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "expires", "date", "max_age", "no_store"),
    [
        (None, None, None, None, False),
        ("max-age=3600", None, None, 3600.0, False),
        ("public, max-age=86400", None, None, 86400.0, False),
        ("MAX-AGE=60", None, None, 60.0, False),
        ('max-age="120"', None, None, 120.0, False),
        ("max-age=60, s-maxage=600", None, None, 600.0, False),
        ("max-age=60, max-age=999", None, None, 60.0, False),
        ("max-age=abc", None, None, 0.0, False),
        ("max-age=-5", None, None, 0.0, False),
        ("no-cache", None, None, 0.0, False),
        ("no-store", None, None, None, True),
        ("no-store, max-age=60", None, None, 60.0, True),
        ("max-age=60", "Wed, 15 Nov 2023 22:13:20 GMT", HTTP_DATE_T0, 60.0, False),
        (None, "Wed, 15 Nov 2023 22:13:20 GMT", HTTP_DATE_T0, DAY, False),
        (None, "Wed, 15 Nov 2023 22:13:20 GMT", None, DAY, False),
        (None, "Wed, 15 Nov 2023 22:13:20 GMT", "garbage", DAY, False),
        (None, "Mon, 13 Nov 2023 22:13:20 GMT", HTTP_DATE_T0, 0.0, False),
        (None, "0", HTTP_DATE_T0, 0.0, False),
        ("private", None, None, None, False),
    ],
    ids=[
        "none",
        "max-age",
        "public-max-age",
        "case-insensitive",
        "quoted",
        "s-maxage-wins",
        "first-wins",
        "invalid-max-age-stale",
        "negative-max-age-stale",
        "no-cache",
        "no-store",
        "no-store-with-max-age",
        "max-age-beats-expires",
        "expires-minus-date",
        "expires-minus-received",
        "expires-bad-date-uses-received",
        "expires-in-past",
        "invalid-expires-stale",
        "unrelated-directive",
    ],
)
def test_parse_cache_headers(
    cache_control: str | None,
    expires: str | None,
    date: str | None,
    max_age: float | None,
    no_store: bool,
) -> None:
    directives = parse_cache_headers(cache_control, expires, date, received_at=T0)
    assert directives.max_age == max_age
    assert directives.no_store is no_store


# --- MemorySource ----------------------------------------------------------------------------


def test_memory_source() -> None:
    chain = b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"
    timeout = Fetched.failure("https://slow.example/x", FetchStatus.TIMEOUT, "t")
    source: CertificateSource = MemorySource(
        {URL: chain, "https://slow.example/x": timeout, "https://x.example/c.crl": b"\x30\x00"}
    )
    got = source.fetch(URL)
    assert (got.status, got.body, got.content_type) == (FetchStatus.OK, chain, PEM_CHAIN_TYPE)
    assert source.fetch("https://other.example/x").status is FetchStatus.NOT_FOUND
    assert source.fetch("https://slow.example/x") is timeout
    crl = source.fetch("https://x.example/c.crl", kind=FetchKind.CRL)
    assert (crl.status, crl.kind) == (FetchStatus.OK, FetchKind.CRL)
    assert source.fetch(URL, kind=FetchKind.CRL).status is FetchStatus.BAD_CONTENT_TYPE


# --- content_expiry --------------------------------------------------------------------------


def test_content_expiry_is_earliest_not_after() -> None:
    chain = make_cert(at(T0 + 10 * DAY)) + make_cert(at(T0 + 3 * DAY))
    assert content_expiry(ok(body=chain)) == T0 + 3 * DAY


def test_content_expiry_crl_next_update() -> None:
    crl = Fetched(URL, FetchStatus.OK, make_crl(at(T0 + 7 * DAY)), CRL_TYPE, kind=FetchKind.CRL)
    assert content_expiry(crl) == T0 + 7 * DAY


@pytest.mark.parametrize(
    ("fetched", "expected"),
    [
        (ok(body=b"not a certificate"), 0.0),
        (ok(body=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0.0),
        (failed(), None),
    ],
    ids=["garbage", "bad-pem", "no-body"],
)
def test_content_expiry_edge(fetched: Fetched, expected: float | None) -> None:
    assert content_expiry(fetched) == expected


# --- CachingSource ---------------------------------------------------------------------------


def make_cache(inner: CertificateSource, clock: FakeClock, **kwargs: object) -> CachingSource:
    kwargs.setdefault("ttl_cap", None)
    return CachingSource(inner, clock=clock, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("response", "fresh_for"),
    [
        (ok(None), ATIS_MIN_CACHE_SECONDS),
        (ok(60.0), ATIS_MIN_CACHE_SECONDS),
        (ok(0.0), ATIS_MIN_CACHE_SECONDS),
        (ok(2 * DAY), 2 * DAY),
        (ok(365 * DAY), 7 * DAY),
    ],
    ids=["no-directives-24h", "short-max-age-floored", "max-age-0-floored", "long", "capped"],
)
def test_cache_lifetime(response: Fetched, fresh_for: float) -> None:
    clock = FakeClock()
    inner = CountingSource(response)
    cache = make_cache(inner, clock)
    first = cache.fetch(URL)
    assert (first.from_cache, inner.calls) == (False, 1)
    clock.now = T0 + fresh_for - 1
    assert cache.fetch(URL).from_cache
    assert inner.calls == 1
    clock.now = T0 + fresh_for
    assert not cache.fetch(URL).from_cache
    assert inner.calls == 2


def test_cache_options_change_floor() -> None:
    clock = FakeClock()
    inner = CountingSource(ok(60.0))
    cache = make_cache(inner, clock, min_ttl=0.0)
    cache.fetch(URL)
    clock.now = T0 + 59
    cache.fetch(URL)
    clock.now = T0 + 60
    cache.fetch(URL)
    assert inner.calls == 2


def test_cache_expires_header_via_inner() -> None:
    # Inner sources turn Expires into max_age; a 3-day Expires outlives the 24 h floor.
    directives = parse_cache_headers(
        None, "Fri, 17 Nov 2023 22:13:20 GMT", HTTP_DATE_T0, received_at=T0
    )
    clock = FakeClock()
    inner = CountingSource(ok(directives.max_age))
    cache = make_cache(inner, clock)
    cache.fetch(URL)
    clock.now = T0 + 3 * DAY - 1
    cache.fetch(URL)
    assert inner.calls == 1


@pytest.mark.parametrize(("honour", "calls"), [(True, 3), (False, 1)], ids=["honoured", "ignored"])
def test_cache_no_store(honour: bool, calls: int) -> None:
    clock = FakeClock()
    inner = CountingSource(ok(None, no_store=True))
    cache = make_cache(inner, clock, honour_no_store=honour)
    for _ in range(3):
        cache.fetch(URL)
    assert inner.calls == calls


def test_cache_capped_at_not_after() -> None:
    clock = FakeClock()
    inner = CountingSource(ok(2 * DAY))
    cache = make_cache(inner, clock, ttl_cap=lambda fetched: T0 + 3600)
    cache.fetch(URL)
    clock.now = T0 + 3599
    assert cache.fetch(URL).from_cache
    clock.now = T0 + 3600
    assert not cache.fetch(URL).from_cache
    assert inner.calls == 2


def test_cache_real_certificate_not_after() -> None:
    clock = FakeClock()
    inner = CountingSource(ok(None, body=make_cert(at(T0 + 2 * 3600))))
    cache = CachingSource(inner, clock=clock)  # default cap: content_expiry
    cache.fetch(URL)
    clock.now = T0 + 2 * 3600 - 1
    cache.fetch(URL)
    clock.now = T0 + 2 * 3600
    cache.fetch(URL)
    assert inner.calls == 2


@pytest.mark.parametrize(
    "cap",
    [lambda f: T0 - DAY, lambda f: 0.0, lambda f: 1 / 0],
    ids=["expired-chain", "unparseable", "cap-raises"],
)
def test_cache_past_cap_kept_briefly(cap: object) -> None:
    clock = FakeClock()
    inner = CountingSource(ok(None))
    cache = make_cache(inner, clock, ttl_cap=cap, negative_ttl=30.0)
    cache.fetch(URL)
    clock.now = T0 + 29
    cache.fetch(URL)
    assert inner.calls == 1
    clock.now = T0 + 30
    cache.fetch(URL)
    assert inner.calls == 2


@pytest.mark.parametrize(
    "status",
    [FetchStatus.TIMEOUT, FetchStatus.NOT_FOUND, FetchStatus.FAILED, FetchStatus.REFUSED],
    ids=str,
)
def test_negative_caching(status: FetchStatus) -> None:
    clock = FakeClock()
    inner = CountingSource(failed(status), ok())
    cache = make_cache(inner, clock, negative_ttl=30.0)
    assert cache.fetch(URL).status is status
    clock.now = T0 + 29
    again = cache.fetch(URL)
    assert (again.status, again.from_cache, inner.calls) == (status, True, 1)
    clock.now = T0 + 30
    assert cache.fetch(URL).ok
    stats = cache.stats()
    assert (stats.misses, stats.negative_hits, stats.hits) == (2, 1, 0)


def test_negative_ttl_zero_disables() -> None:
    inner = CountingSource(failed())
    cache = make_cache(inner, FakeClock(), negative_ttl=0.0)
    cache.fetch(URL)
    cache.fetch(URL)
    assert inner.calls == 2


def test_lru_eviction() -> None:
    clock = FakeClock()
    inner = MemorySource(
        {f"https://h.example/{i}": b"-----BEGIN CERTIFICATE-----" for i in range(4)}
    )
    cache = make_cache(inner, clock, max_entries=2)
    cache.fetch("https://h.example/0")
    cache.fetch("https://h.example/1")
    cache.fetch("https://h.example/0")  # 0 is now most recent
    cache.fetch("https://h.example/2")  # evicts 1
    assert cache.fetch("https://h.example/0").from_cache
    assert not cache.fetch("https://h.example/1").from_cache
    stats = cache.stats()
    assert (stats.entries, stats.evictions) == (2, 2)


def test_cache_key_includes_kind() -> None:
    inner = CountingSource(ok())
    cache = make_cache(inner, FakeClock())
    cache.fetch(URL)
    cache.fetch(URL, kind=FetchKind.CRL)
    assert inner.calls == 2


def test_cache_contains_raising_source() -> None:
    class Broken:
        def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
            raise RuntimeError("bug")

    result = make_cache(Broken(), FakeClock()).fetch(URL)
    assert result.status is FetchStatus.FAILED
    assert result.reason is Reason.FETCH_FAILED


def test_single_flight_from_threads() -> None:
    release = threading.Event()
    calls: list[str] = []

    class Slow:
        def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
            calls.append(url)
            release.wait(5)
            return ok()

    cache = CachingSource(Slow(), clock=FakeClock(), ttl_cap=None)
    results: list[Fetched] = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch(URL))) for _ in range(8)]
    for thread in threads:
        thread.start()
    # Wait until the leader is inside the inner fetch and the others are waiting on it.
    for _ in range(500):
        stats = cache.stats()
        if stats.misses + stats.coalesced == 8:
            break
        threading.Event().wait(0.01)
    release.set()
    for thread in threads:
        thread.join(5)
    assert calls == [URL]
    assert len(results) == 8
    assert all(r.ok for r in results)
    assert sum(not r.from_cache for r in results) == 1
    stats = cache.stats()
    assert (stats.misses, stats.coalesced) == (1, 7)


def test_many_urls_from_threads() -> None:
    urls = [f"https://h{i}.example/sp.pem" for i in range(20)]
    inner = MemorySource(dict.fromkeys(urls, b"-----BEGIN CERTIFICATE-----"))
    cache = CachingSource(inner, clock=FakeClock(), ttl_cap=None, max_entries=8)

    def work() -> None:
        for _ in range(5):
            for url in urls:
                assert cache.fetch(url).ok

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    stats = cache.stats()
    assert stats.entries == 8
    assert stats.hits + stats.misses + stats.coalesced == 4 * 5 * 20
    assert len(inner.calls) == stats.misses


@pytest.mark.parametrize(
    "kwargs",
    [{"max_entries": 0}, {"negative_ttl": -1.0}, {"min_ttl": 10.0, "max_ttl": 5.0}],
    ids=["no-entries", "negative-ttl", "min-above-max"],
)
def test_cache_rejects_bad_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        CachingSource(MemorySource({}), clock=FakeClock(), **kwargs)  # type: ignore[arg-type]
