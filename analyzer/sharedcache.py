"""A certificate and CRL cache shared by several instances through Redis (``--cache``).

Theory of operation. Each verifier keeps its local ``CachingSource`` (the L1: no network
round trip on the hot path); on an L1 miss, ``SharedCacheSource`` looks in Redis (the L2,
shared by every `stirscope serve` instance and Dask worker), and only on an L2 miss fetches
from the mirrors/HTTPS. So a fleet fetches each x5u (and CRL) about once per lifetime instead
of once per instance.

* Expiry: the same rules as ``CachingSource`` (``CachingSource.expiry_for``: Cache-Control /
  Expires with the ATIS 24 h floor, capped at notAfter/nextUpdate, failures kept 30 s). The
  absolute expiry is stored with the entry (and as the Redis key's TTL), and the L1 never
  keeps an entry it got from Redis longer than Redis does (``ttl_cap``).
* Single flight across instances: the first instance to miss takes a short Redis lock
  (``SET NX PX``) and fetches; the others poll for the entry for at most the lock's life,
  then fetch themselves (a dead lock holder costs a delay, never a failure).
* Redis is optional: any Redis error (down, timeout, refused) is counted, the instance works
  from its local cache and fetches itself, and Redis is tried again after
  ``RETRY_AFTER_S`` (so a dead Redis costs one connect timeout per period, not per call).

RFC 8224 section 7.2 (caching keyed on the URI); RFC 9111; STANDARDS.md section 6.2.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from analyzer.certsource import (
    DEFAULT_TIMEOUT_SECONDS,
    origin_source,
)
from shaken.source import (
    CachingSource,
    CertificateSource,
    Fetched,
    FetchKind,
    FetchStatus,
    content_expiry,
)

if TYPE_CHECKING:
    import redis

# URL schemes redis-py accepts (redis-py Redis.from_url).
CACHE_SCHEMES = frozenset({"redis", "rediss", "unix"})
# Key namespace; the version changes when the stored format does.
KEY_PREFIX = "stirscope:fetch:v1"
# Seconds to connect to / wait for Redis: it is on the LAN next to the service; a slow
# Redis must cost less than fetching (HTTP timeout 2 s, analyzer.certsource).
CONNECT_TIMEOUT_S = 0.5
OPERATION_TIMEOUT_S = 0.5
# Seconds Redis is left alone after an error (our choice: a restart takes seconds).
RETRY_AFTER_S = 5.0
# Life of the fetch lock: one fetch at most (HTTP timeout) plus a margin; waiters give up then.
LOCK_TTL_S = DEFAULT_TIMEOUT_SECONDS + 1.0
# How often a waiter polls for the entry another instance is fetching.
POLL_INTERVAL_S = 0.02


@dataclass(frozen=True, slots=True)
class SharedCacheStats:
    """Counters for metrics: served from Redis, fetched here after a Redis miss, got from
    another instance's fetch after waiting, stored, and Redis errors (fallbacks)."""

    hits: int = 0
    misses: int = 0
    waited: int = 0
    stores: int = 0
    errors: int = 0


def redacted(url: str) -> str:
    """The cache URL without its password (for manifests and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_cache_url(url: str) -> str | None:
    """None when ``url`` is a Redis URL we can use; else what is wrong with it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"bad URL {url!r}: {exc}"
    if parts.scheme not in CACHE_SCHEMES:
        return f"expected redis://HOST:PORT/DB, got {url!r}"
    if parts.scheme != "unix" and not parts.hostname:
        return f"no host in {url!r}"
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        return f"database must be a number, got {db!r}"
    return None


def _encode(fetched: Fetched, expires_at: float) -> bytes:
    body = None if fetched.body is None else base64.b64encode(fetched.body).decode("ascii")
    return json.dumps(
        {
            "status": fetched.status.value,
            "body": body,
            "content_type": fetched.content_type,
            "detail": fetched.detail,
            "max_age": fetched.max_age,
            "kind": fetched.kind.value,
            "no_store": fetched.no_store,
            "expires_at": expires_at,
        }
    ).encode()


def _decode(url: str, raw: bytes | str) -> tuple[Fetched, float] | None:
    """The entry stored for ``url``, or None when it is not one of ours (then refetched)."""
    try:
        item = json.loads(raw)
        body = item["body"]
        fetched = Fetched(
            url=url,
            status=FetchStatus(item["status"]),
            body=None if body is None else base64.b64decode(body, validate=True),
            content_type=item["content_type"],
            detail=str(item["detail"]),
            max_age=None if item["max_age"] is None else float(item["max_age"]),
            from_cache=True,
            kind=FetchKind(item["kind"]),
            no_store=bool(item["no_store"]),
        )
        return fetched, float(item["expires_at"])
    except (ValueError, KeyError, TypeError):
        return None


class SharedCacheSource:
    """A ``CertificateSource``: Redis in front of ``inner``, with ``rules`` deciding expiry.

    Never raises (the protocol); Redis failures fall back to ``inner``. RFC 8224 section 7.2.
    """

    def __init__(
        self,
        inner: CertificateSource,
        client: redis.Redis,
        *,
        clock: Callable[[], float],
        rules: CachingSource | None = None,
        sleep: Callable[[float], None] = time.sleep,
        prefix: str = KEY_PREFIX,
    ) -> None:
        self._inner = inner
        self._client = client
        self._clock = clock
        # Only its expiry rules are used (the same defaults as every local cache).
        self._rules = rules if rules is not None else CachingSource(inner, clock=clock)
        self._sleep = sleep
        self._prefix = prefix
        self._lock = threading.Lock()
        self._expiry: dict[tuple[FetchKind, str], float] = {}
        self._down_until = 0.0
        self._last_error = ""
        self._hits = self._misses = self._waited = self._stores = self._errors = 0

    # -- the protocol -----------------------------------------------------------------------

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        if self._clock() < self._down_until:
            return self._fetch_inner(url, kind)
        key = f"{self._prefix}:{kind.value}:{hashlib.sha256(url.encode()).hexdigest()}"
        lock, token = f"{key}:lock", secrets.token_hex(8)
        try:
            cached = self._lookup(key, url, kind)
            if cached is not None:
                self._count("_hits")
                return cached
            leader = bool(self._client.set(lock, token, nx=True, px=_ms(LOCK_TTL_S)))
            if not leader:
                waited = self._wait(key, url, kind)
                if waited is not None:
                    self._count("_waited")
                    return waited
        except Exception as exc:  # redis.RedisError and anything odd from the client
            self._failed(exc)
            return self._fetch_inner(url, kind)
        self._count("_misses")
        result = self._fetch_inner(url, kind)
        try:
            self._store(key, result)
            if leader:
                self._unlock(lock, token)
        except Exception as exc:  # as above: the result is good, only sharing it failed
            self._failed(exc)
        return result

    def _lookup(self, key: str, url: str, kind: FetchKind) -> Fetched | None:
        raw = self._client.get(key)
        if raw is None:
            return None
        entry = _decode(url, raw)
        if entry is None or entry[0].kind is not kind or entry[1] <= self._clock():
            return None
        with self._lock:
            self._expiry[(kind, url)] = entry[1]
        return entry[0]

    def _wait(self, key: str, url: str, kind: FetchKind) -> Fetched | None:
        """Another instance is fetching ``url``: its result, or None after the lock's life."""
        for _ in range(int(LOCK_TTL_S / POLL_INTERVAL_S)):
            self._sleep(POLL_INTERVAL_S)
            found = self._lookup(key, url, kind)
            if found is not None:
                return found
            if not self._client.exists(f"{key}:lock"):
                return self._lookup(key, url, kind)  # the holder stored nothing (no-store)
        return None

    def _store(self, key: str, fetched: Fetched) -> None:
        now = self._clock()
        expires = self._rules.expiry_for(fetched, now)
        if expires is None:
            return
        self._client.set(key, _encode(fetched, expires), px=max(1, _ms(expires - now)))
        with self._lock:
            self._expiry[(fetched.kind, fetched.url)] = expires
            self._stores += 1

    def _unlock(self, lock: str, token: str) -> None:
        # Delete the lock only if it is still ours (it may have expired and been retaken).
        if self._client.get(lock) == token.encode():
            self._client.delete(lock)

    def _failed(self, exc: Exception) -> None:
        """Count a Redis error and leave Redis alone for ``RETRY_AFTER_S``."""
        with self._lock:
            self._errors += 1
            self._last_error = repr(exc)
            self._down_until = self._clock() + RETRY_AFTER_S

    def _fetch_inner(self, url: str, kind: FetchKind) -> Fetched:
        try:
            return self._inner.fetch(url, kind=kind)
        except Exception as exc:  # the protocol says never raise; contain a faulty source
            return Fetched.failure(url, FetchStatus.FAILED, f"source error: {exc!r}", kind=kind)

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    # -- for the local cache and metrics ----------------------------------------------------

    def shared_expiry(self, fetched: Fetched) -> float | None:
        """When the shared entry behind ``fetched`` expires (None: not from/to Redis)."""
        with self._lock:
            return self._expiry.get((fetched.kind, fetched.url))

    def ttl_cap(self, fetched: Fetched) -> float | None:
        """The local cache's cap: notAfter/nextUpdate, and never past the shared entry."""
        caps = [c for c in (content_expiry(fetched), self.shared_expiry(fetched)) if c is not None]
        return min(caps) if caps else None

    def stats(self) -> SharedCacheStats:
        with self._lock:
            return SharedCacheStats(
                self._hits, self._misses, self._waited, self._stores, self._errors
            )

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            closer = getattr(self._inner, "close", None)
            if callable(closer):
                closer()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def connect(url: str) -> redis.Redis:
    """A Redis client for ``url`` (connects lazily, on first use) with short timeouts."""
    import redis

    client: Any = redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=OPERATION_TIMEOUT_S
    )
    return client  # type: ignore[no-any-return]


def build_shared_source(
    cache_url: str,
    *,
    certs_dirs: Sequence[Path] = (),
    fetch: bool = False,
    ca_bundle: Path | None = None,
    allow_private: bool = False,
    clock: Callable[[], float] = time.time,
) -> CachingSource:
    """``analyzer.certsource.build_source`` with the Redis cache between the local cache and
    the mirrors/HTTPS: local cache -> Redis -> mirrors, then HTTPS or offline.

    STANDARDS.md section 6.2.
    """
    inner = origin_source(
        certs_dirs=certs_dirs,
        fetch=fetch,
        ca_bundle=ca_bundle,
        allow_private=allow_private,
        clock=clock,
    )
    shared = SharedCacheSource(inner, connect(cache_url), clock=clock)
    return CachingSource(shared, clock=clock, ttl_cap=shared.ttl_cap)
