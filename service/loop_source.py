"""Verification on the event loop when every certificate it needs is cached (``listen --sip``).

Theory of operation. `LoopSafeSource` wraps the process's `CachingSource`: outside cache-only
mode every fetch goes to the cache and what the cache fetched is remembered with the lifetime
the cache gives it; inside ``with source.cache_only:`` (per thread) a fetch is a dictionary
lookup of a remembered answer within its lifetime, or `WouldBlock` raised before any I/O. The
SIP server verifies a call on its event loop in that mode (`verify_functions` gives it both
verifiers) and hands the call to its thread pool when `WouldBlock` says a fetch is needed, so
a certificate fetch never blocks the loop. RFC 8224 section 7.2; RFC 3261 section 17.2.1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from types import TracebackType

from shaken.result import VerificationResult
from shaken.source import DEFAULT_MAX_ENTRIES, CacheStats, CachingSource, Fetched, FetchKind
from shaken.verifier import VerificationRequest, Verifier

# A verification as the SIP server calls it: the request and its arrival time.
Verify = Callable[[VerificationRequest, datetime], VerificationResult]


class WouldBlock(BaseException):
    """Raised by a `LoopSafeSource` in cache-only mode: the verification needs a certificate or
    CRL that is not cached (or no longer fresh), and fetching it must not happen here. A
    `BaseException`, like `asyncio.CancelledError`: code that turns errors into findings
    (``except Exception``) must let it through, or it would become a verdict."""


class _CacheOnly:
    """``with source.cache_only:`` -- fetches of this thread are served from memory or raise
    `WouldBlock` (a context manager without the cost of a generator)."""

    __slots__ = ("_local",)

    def __init__(self, local: threading.local) -> None:
        self._local = local

    def __enter__(self) -> None:
        self._local.cache_only = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._local.cache_only = False


class LoopSafeSource:
    """The certificate source of a verifier that may run on the event loop: the process's
    `CachingSource`, plus a cache-only mode that never fetches.

    Theory of operation. Outside cache-only mode every fetch goes to the cache. When the cache
    fetched (its answer is not ``from_cache``), the answer is remembered with the lifetime the
    cache gives it (``CachingSource.expiry_for``, from a clock read taken before the fetch
    began: never later than the cache's own). Inside ``with source.cache_only:`` (per thread)
    a fetch is a dictionary lookup: a remembered answer within its lifetime, exactly what the
    cache serves, or `WouldBlock`, raised before any I/O. So a verification in that mode
    costs CPU only, and gives the verdict the cache would. What the cache served without
    fetching for us (a shared Redis cache's entries) has no known lifetime and is not
    remembered: calls naming it are verified off the loop, as before. ``clock`` must be the
    cache's clock. RFC 8224 section 7.2 (caching keyed on the URI); RFC 3261 section 17.2.1.
    """

    def __init__(
        self,
        cache: CachingSource,
        *,
        clock: Callable[[], float] = time.time,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.cache = cache
        self._clock = clock
        self._max_entries = max_entries
        self._known: dict[tuple[FetchKind, str], tuple[Fetched, float]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.cache_only = _CacheOnly(self._local)
        # Remembered answers served in cache-only mode (cache hits the cache did not see).
        self._hits = self._negative_hits = 0

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        """The cache's answer (remembered when it fetched); in cache-only mode the remembered
        answer or `WouldBlock`. RFC 8224 section 7.2."""
        key = (kind, url)
        if getattr(self._local, "cache_only", False):
            known = self._known.get(key)
            if known is None or known[1] <= self._clock():
                raise WouldBlock(url)
            if known[0].ok:
                self._hits += 1
            else:
                self._negative_hits += 1
            return known[0]
        began = self._clock()
        fetched = self.cache.fetch(url, kind=kind)
        if not fetched.from_cache:
            expires = self.cache.expiry_for(fetched, began)
            if expires is not None:
                self._remember(key, replace(fetched, from_cache=True), expires)
        return fetched

    def _remember(self, key: tuple[FetchKind, str], fetched: Fetched, expires: float) -> None:
        with self._lock:
            known = self._known
            known.pop(key, None)
            known[key] = (fetched, expires)
            while len(known) > self._max_entries:
                del known[next(iter(known))]

    def stats(self) -> CacheStats:
        """The cache's counters, with the hits served here in cache-only mode (for metrics)."""
        stats = self.cache.stats()
        return replace(
            stats,
            hits=stats.hits + self._hits,
            negative_hits=stats.negative_hits + self._negative_hits,
        )

    def close(self) -> None:
        self.cache.close()


def loop_safe(verifier: Verifier, *, clock: Callable[[], float] = time.time) -> Verifier:
    """``verifier`` over a `LoopSafeSource` (same trust store, policy and certificate cache;
    ``clock`` is the cache's), so that a verification can also run on the event loop;
    unchanged when its source is not a `CachingSource` (nothing is then served without a
    fetch)."""
    source = verifier.source
    if not isinstance(source, CachingSource):
        return verifier
    safe = LoopSafeSource(source, clock=clock)
    return Verifier(trust=verifier.trust, source=safe, policy=verifier.policy)


def verify_functions(verifier: Verifier) -> tuple[Verify, Verify | None]:
    """The server's ``verify`` over ``verifier`` and, when its source is a `LoopSafeSource`
    (see `loop_safe`), ``verify_cached``: the same verification in cache-only mode."""

    def verify(request: VerificationRequest, at: datetime) -> VerificationResult:
        return verifier.verify(request, at=at)

    source = verifier.source
    if not isinstance(source, LoopSafeSource):
        return verify, None
    cache_only = source.cache_only

    def verify_cached(request: VerificationRequest, at: datetime) -> VerificationResult:
        with cache_only:
            return verifier.verify(request, at=at)

    return verify, verify_cached
