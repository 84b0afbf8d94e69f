"""``LoopSafeSource`` (service/listen_sip.py): the cache-only mode that lets the SIP server
verify on its event loop never fetches, and serves exactly what the certificate cache would.

Over a real ``CachingSource`` and a ``MemorySource`` that counts its fetches, with the clock
injected: what the cache fetched is served from memory until the lifetime the cache gave it
ends (a certificate chain: its 24 h floor; a failure: the 30 s negative TTL), then
``WouldBlock``; what the cache served without fetching for us has no known age and is never
served; the table is bounded; a verifier over it gives the same verdict in both modes.
RFC 8224 section 7.2; STANDARDS.md section 6.2.
"""

from __future__ import annotations

import pytest

from analyzer.extract import request_from_sip_bytes
from analyzer.verifying import build_verifier
from service.loop_source import LoopSafeSource, WouldBlock, loop_safe, verify_functions
from shaken.source import (
    DEFAULT_NEGATIVE_CACHE_SECONDS,
    CachingSource,
    FetchKind,
    FetchStatus,
    MemorySource,
)
from tests.service.invites import ALPHA_X5U, CERTS, FIXTURE_AT, fixture_call, fixture_config

ALPHA_CHAIN = (CERTS / "certs.alpha.example" / "alpha.pem").read_bytes()
MISSING = "https://certs.alpha.example/missing.pem"
T0 = FIXTURE_AT.timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def sources(
    clock: Clock, mapping: dict[str, bytes] | None = None, max_entries: int = 1024
) -> tuple[MemorySource, CachingSource, LoopSafeSource]:
    origin = MemorySource(mapping if mapping is not None else {ALPHA_X5U: ALPHA_CHAIN})
    cache = CachingSource(origin, clock=clock)
    return origin, cache, LoopSafeSource(cache, clock=clock, max_entries=max_entries)


def cached(source: LoopSafeSource, url: str, kind: FetchKind = FetchKind.CERT) -> bytes | None:
    with source.cache_only:
        return source.fetch(url, kind=kind).body


def test_serves_what_the_cache_fetched_until_it_expires() -> None:
    clock = Clock()
    origin, cache, source = sources(clock)
    with pytest.raises(WouldBlock):
        cached(source, ALPHA_X5U)
    assert origin.calls == []  # cache-only mode asked nobody
    fetched = source.fetch(ALPHA_X5U)
    assert fetched.status is FetchStatus.OK
    expires = cache.expiry_for(fetched, T0)
    assert expires is not None
    with source.cache_only:
        again = source.fetch(ALPHA_X5U)
    assert (again.body, again.from_cache) == (ALPHA_CHAIN, True)
    clock.now = expires - 1
    assert cached(source, ALPHA_X5U) == ALPHA_CHAIN
    clock.now = expires
    with pytest.raises(WouldBlock):
        cached(source, ALPHA_X5U)
    assert origin.calls == [ALPHA_X5U]
    source.fetch(ALPHA_X5U)  # outside the mode: the cache fetches again, remembered again
    assert cached(source, ALPHA_X5U) == ALPHA_CHAIN
    assert origin.calls == [ALPHA_X5U, ALPHA_X5U]


def test_failures_are_served_for_the_negative_ttl_only() -> None:
    clock = Clock()
    _, _, source = sources(clock)
    assert source.fetch(MISSING).status is FetchStatus.NOT_FOUND
    with source.cache_only:
        assert source.fetch(MISSING).status is FetchStatus.NOT_FOUND  # as the cache answers
    clock.now += DEFAULT_NEGATIVE_CACHE_SECONDS
    with pytest.raises(WouldBlock):
        cached(source, MISSING)


def test_what_the_cache_did_not_fetch_for_us_is_not_served() -> None:
    """An entry the cache already held (fetched through another path) has an unknown age:
    the cache-only mode cannot know it is still fresh."""
    clock = Clock()
    _, cache, source = sources(clock)
    cache.fetch(ALPHA_X5U)
    assert source.fetch(ALPHA_X5U).from_cache
    with pytest.raises(WouldBlock):
        cached(source, ALPHA_X5U)


def test_kinds_are_kept_apart_and_the_table_is_bounded() -> None:
    clock = Clock()
    urls = [f"https://certs.alpha.example/{n}.pem" for n in range(3)]
    _, _, source = sources(clock, dict.fromkeys(urls, ALPHA_CHAIN), max_entries=2)
    for url in urls:
        source.fetch(url)
    with pytest.raises(WouldBlock):
        cached(source, urls[0])  # the oldest went first
    assert cached(source, urls[2]) == ALPHA_CHAIN
    with pytest.raises(WouldBlock):
        cached(source, urls[2], FetchKind.CRL)


def test_a_verifier_over_it_gives_the_same_verdict_in_both_modes() -> None:
    """Verdicts (every finding, signer and revocation status) do not depend on where the
    verification ran: the first call of each x5u fetches, the same call again is answered
    in cache-only mode with the identical result."""
    clock = Clock()
    with build_verifier(fixture_config(), clock=clock) as base:
        verify, verify_cached = verify_functions(loop_safe(base, clock=clock))
        assert verify_cached is not None
        for name in ("alpha_a", "tampered", "revoked", "unsigned", "charlie_c"):
            request = request_from_sip_bytes(fixture_call(name))
            pooled = verify(request, FIXTURE_AT)
            assert verify_cached(request, FIXTURE_AT) == pooled, name
