"""The Redis-shared certificate cache: fetch once across instances, TTLs kept, Redis optional.

Runs against the real Redis on 127.0.0.1:6379 (skipped when it is not reachable); every test
uses its own key prefix (or its own keys) and deletes them.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from analyzer import sharedcache
from analyzer.certsource import DirectorySource
from analyzer.run import AnalyzeJob, AnalyzeOptions
from analyzer.sharedcache import SharedCacheSource, check_cache_url, redacted
from analyzer.verifying import VerifierConfig
from shaken.source import (
    ATIS_MIN_CACHE_SECONDS,
    DEFAULT_MAX_CACHE_SECONDS,
    CachingSource,
    Fetched,
    FetchKind,
    FetchStatus,
    MemorySource,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
DEMO = FIXTURES / "demo" / "demo.pcap"
REDIS_URL = "redis://127.0.0.1:6379/0"
# A Redis URL nothing listens on (port 1 is reserved, tcpmux).
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"
URL = "https://certs.example/a.pem"
T0 = 1_768_478_400.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5)
    try:
        c.ping()
    except redis.RedisError:
        c.close()
        pytest.skip("no Redis on 127.0.0.1:6379")
    yield c
    c.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    name = f"stirscope-test:{secrets.token_hex(6)}"
    yield name
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)


def ok(max_age: float | None = None, *, no_store: bool = False) -> Fetched:
    return Fetched(URL, FetchStatus.OK, b"chain", "application/pem-certificate-chain",
                   max_age=max_age, no_store=no_store)  # fmt: skip


def instance(
    inner: MemorySource,
    prefix: str,
    clock: Clock,
    url: str = REDIS_URL,
    *,
    min_ttl: float = ATIS_MIN_CACHE_SECONDS,
    default_ttl: float = ATIS_MIN_CACHE_SECONDS,
    max_ttl: float = DEFAULT_MAX_CACHE_SECONDS,
) -> tuple[CachingSource, SharedCacheSource]:
    """One instance: its local cache over the shared Redis cache over ``inner``. The test
    bodies are not certificates, so the notAfter cap is off (``ttl_cap=None``)."""
    policy = CachingSource(
        inner, clock=clock, ttl_cap=None, min_ttl=min_ttl, default_ttl=default_ttl, max_ttl=max_ttl
    )
    shared = SharedCacheSource(
        inner, sharedcache.connect(url), clock=clock, rules=policy, prefix=prefix
    )
    local = CachingSource(
        shared, clock=clock, ttl_cap=shared.shared_expiry,
        min_ttl=min_ttl, default_ttl=default_ttl, max_ttl=max_ttl,
    )  # fmt: skip
    return local, shared


def test_two_instances_fetch_a_url_once(prefix: str) -> None:
    inner = MemorySource({URL: ok()})
    clock = Clock()
    first, first_shared = instance(inner, prefix, clock)
    second, second_shared = instance(inner, prefix, clock)
    for _ in range(3):
        assert first.fetch(URL).body == b"chain"
        assert second.fetch(URL).body == b"chain"
    assert inner.calls == [URL]
    assert first_shared.stats().misses == 1
    assert first_shared.stats().stores == 1
    assert second_shared.stats().hits == 1  # then its local cache serves
    second_fetched = second.fetch(URL)
    assert second_fetched.from_cache
    assert second_fetched.kind is FetchKind.CERT


@pytest.mark.parametrize(
    ("fetched", "ttl_s"),
    [
        pytest.param(ok(max_age=100), 100.0, id="max-age"),
        pytest.param(ok(max_age=None), 3600.0, id="default-ttl"),
        pytest.param(ok(max_age=10**9), 7200.0, id="capped-at-max-ttl"),
        pytest.param(
            Fetched.failure(URL, FetchStatus.TIMEOUT, "slow"), 30.0, id="failure-negative-ttl"
        ),
    ],
)
def test_ttl_is_the_caching_rules_and_is_respected(
    client: redis.Redis, prefix: str, fetched: Fetched, ttl_s: float
) -> None:
    inner = MemorySource({URL: fetched})
    clock = Clock()
    local, _ = instance(inner, prefix, clock, min_ttl=0.0, default_ttl=3600.0, max_ttl=7200.0)
    other, _ = instance(inner, prefix, clock, min_ttl=0.0, default_ttl=3600.0, max_ttl=7200.0)
    assert local.fetch(URL).status is fetched.status
    (key,) = [k for k in client.scan_iter(f"{prefix}:*") if not k.endswith(b":lock")]
    assert ttl_s * 1000 - 2000 < client.pttl(key) <= ttl_s * 1000
    clock.now = T0 + ttl_s - 1
    other.fetch(URL)
    local.fetch(URL)
    assert inner.calls == [URL]  # still fresh: the other instance got it from Redis
    clock.now = T0 + ttl_s + 1
    local.fetch(URL)
    other.fetch(URL)
    assert inner.calls == [URL, URL]  # expired everywhere, refetched once


def test_local_cache_never_outlives_the_shared_entry(prefix: str) -> None:
    inner = MemorySource({URL: ok(max_age=100)})
    clock = Clock()
    first, _ = instance(inner, prefix, clock, min_ttl=0.0)
    first.fetch(URL)
    clock.now = T0 + 90
    # A late instance takes the entry with 10 s left; its own rules alone would keep 100 s.
    late, _ = instance(inner, prefix, clock, min_ttl=0.0)
    late.fetch(URL)
    clock.now = T0 + 101
    late.fetch(URL)
    assert inner.calls == [URL, URL]


def test_no_store_responses_are_not_shared(client: redis.Redis, prefix: str) -> None:
    inner = MemorySource({URL: ok(max_age=100, no_store=True)})
    clock = Clock()
    first, _ = instance(inner, prefix, clock)
    second, _ = instance(inner, prefix, clock)
    first.fetch(URL)
    second.fetch(URL)
    assert inner.calls == [URL, URL]
    assert list(client.scan_iter(f"{prefix}:*")) == []


def test_concurrent_misses_on_two_instances_fetch_once(prefix: str) -> None:
    release = threading.Event()

    class Slow(MemorySource):
        def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
            release.wait(5)
            return super().fetch(url, kind=kind)

    inner = Slow({URL: ok()})
    clock = Clock()
    sources = [instance(inner, prefix, clock) for _ in range(2)]
    results: list[Fetched] = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(s[0].fetch(URL))) for s in sources
    ]
    for thread in threads:
        thread.start()
    threading.Timer(0.2, release.set).start()
    for thread in threads:
        thread.join(10)
    assert [r.body for r in results] == [b"chain", b"chain"]
    assert inner.calls == [URL]
    assert sorted(s[1].stats().waited for s in sources) == [0, 1]


def test_redis_down_still_fetches_and_backs_off() -> None:
    other = "https://certs.example/b.pem"
    inner = MemorySource({URL: ok(), other: b"-----BEGIN CERTIFICATE-----"})
    clock = Clock()
    local, shared = instance(inner, "unused", clock, url=DEAD_REDIS_URL)
    assert local.fetch(URL).ok
    assert local.fetch(URL).ok  # the local cache still works
    assert inner.calls == [URL]
    assert shared.stats().errors == 1
    assert shared.fetch(other).ok
    assert shared.stats().errors == 1  # within RETRY_AFTER_S: Redis not tried again
    clock.now = T0 + sharedcache.RETRY_AFTER_S + 1
    assert shared.fetch(other).ok
    assert shared.stats().errors == 2


def _records(config: VerifierConfig) -> list[dict[str, object]]:
    return [r.to_json() for r in AnalyzeJob([str(DEMO)], AnalyzeOptions(config=config)).records()]


def test_analyze_with_shared_cache_fetches_once_and_matches(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # build_verifier uses the default namespace: clear it in a database of its own.
    db = 13
    url = f"redis://127.0.0.1:6379/{db}"
    scratch = redis.Redis.from_url(url)

    def clear() -> None:
        for key in scratch.scan_iter(f"{sharedcache.KEY_PREFIX}:*"):
            scratch.delete(key)

    clear()
    fetched: list[str] = []
    original = DirectorySource.fetch

    def counting(self: DirectorySource, u: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        fetched.append(u)
        return original(self, u, kind=kind)

    monkeypatch.setattr(DirectorySource, "fetch", counting)
    base = VerifierConfig(trust=(FIXTURES / "pki" / "trust",), certs_dirs=(FIXTURES / "certs",))
    try:
        plain = _records(base)
        alone = sorted(fetched)
        assert alone  # the demo's x5u chains come from the mirror
        fetched.clear()
        shared = VerifierConfig(trust=base.trust, certs_dirs=base.certs_dirs, cache=url)
        assert _records(shared) == plain  # instance 1
        assert sorted(fetched) == alone
        assert len(list(scratch.scan_iter(f"{sharedcache.KEY_PREFIX}:*"))) >= len(set(alone))
        assert _records(shared) == plain  # instance 2: everything from Redis
        assert sorted(fetched) == alone
    finally:
        clear()
        scratch.close()


def test_analyze_with_redis_down_gives_the_same_records() -> None:
    base = VerifierConfig(trust=(FIXTURES / "pki" / "trust",), certs_dirs=(FIXTURES / "certs",))
    dead = VerifierConfig(trust=base.trust, certs_dirs=base.certs_dirs, cache=DEAD_REDIS_URL)
    assert _records(dead) == _records(base)


@pytest.mark.parametrize(
    ("url", "valid"),
    [
        pytest.param("redis://127.0.0.1:6379/0", True, id="redis"),
        pytest.param("rediss://cache.example:6380/2", True, id="rediss"),
        pytest.param("redis://:pw@cache.example:6379", True, id="password"),
        pytest.param("unix:///run/redis.sock", True, id="unix"),
        pytest.param("http://cache.example:6379", False, id="http"),
        pytest.param("redis://", False, id="no-host"),
        pytest.param("redis://h:99999/0", False, id="bad-port"),
        pytest.param("redis://h:6379/x", False, id="bad-db"),
    ],
)
def test_check_cache_url(url: str, valid: bool) -> None:
    assert (check_cache_url(url) is None) == valid


def test_redacted_hides_the_password() -> None:
    assert redacted("redis://u:secret@h:6379/1") == "redis://u:***@h:6379/1"
    assert redacted("redis://h:6379/1") == "redis://h:6379/1"
