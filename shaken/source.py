"""Certificate and CRL sources: the fetch protocol, URL policy, HTTP cache rules and the cache.

Step 16-17 of the verification checklist (STANDARDS.md section 10) need the bytes behind an
``info``/``x5u`` URL and behind the CRL distribution points. This module stays sans-IO: it
defines what a fetch returns (``Fetched``), the ``CertificateSource`` protocol, the URL policy
(``check_info_url``), the HTTP caching rules (``parse_cache_headers``) and ``CachingSource``,
whose clock is injected. The directory mirror lives in ``analyzer.certsource`` and the only
HTTP client in ``analyzer.certhttp``.

RFC 8224 section 7.2-7.4; ATIS-1000074 / ATIS-1000080 as digested in STANDARDS.md section 6.2.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Protocol
from urllib.parse import urlsplit

from cryptography import x509

from shaken.errors import Reason

# Ports a verifier may dereference (ATIS-1000080 via Asterisk verification.c and the
# martinisecurity lint w_atis_protocol; STANDARDS.md section 6.2). AT&T's STI-CR uses 8443.
DEFAULT_ALLOWED_PORTS: frozenset[int] = frozenset({443, 8443})

# The media types the standards name: ATIS-1000080 for certificate repositories
# (STANDARDS.md section 7.4, RFC 8555 section 9.1 registers it) and RFC 2585 section 4.2 /
# RFC 5280 section 4.2.1.13 for CRLs.
PEM_CHAIN_TYPE = "application/pem-certificate-chain"
CRL_TYPE = "application/pkix-crl"


class FetchKind(StrEnum):
    """What is being fetched: an ``x5u`` certificate chain or a CRL (RFC 5280 section 4.2.1.13)."""

    CERT = "cert"
    CRL = "crl"


STANDARD_CONTENT_TYPES: dict[FetchKind, str] = {
    FetchKind.CERT: PEM_CHAIN_TYPE,
    FetchKind.CRL: CRL_TYPE,
}

# Lenient mode (the default) also accepts what real repositories send. The martinisecurity
# lint w_atis_content_type (ATIS-1000080) is only a *warning*, and it fires for Martini's own
# repository and for S3/GCS-hosted chains: rejecting those would fail real, valid calls. What
# stays refused is anything that is clearly not a certificate (text/html error or login pages,
# JSON). A missing Content-Type is accepted in lenient mode for the same reason.
LENIENT_CONTENT_TYPES: dict[FetchKind, frozenset[str]] = {
    FetchKind.CERT: frozenset(
        {
            PEM_CHAIN_TYPE,
            "application/x-pem-file",
            "application/pem",
            "application/x-x509-ca-cert",
            "application/x-x509-user-cert",
            "application/pkix-cert",
            "application/pkcs7-mime",
            "application/octet-stream",
            "binary/octet-stream",
            "text/plain",
            "",
        }
    ),
    FetchKind.CRL: frozenset(
        {
            CRL_TYPE,
            "application/x-pkcs7-crl",
            "application/x-pem-file",
            "application/octet-stream",
            "binary/octet-stream",
            "text/plain",
            "",
        }
    ),
}


class FetchStatus(StrEnum):
    """Outcome of one fetch; every value but ``ok`` maps to a 436 reason.

    RFC 8224 section 6.2.2.
    """

    OK = "ok"
    NOT_FOUND = "not_found"
    REFUSED = "refused"
    FAILED = "failed"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    BAD_CONTENT_TYPE = "bad_content_type"
    OFFLINE = "offline"
    BAD_URL = "bad_url"


_STATUS_REASON: dict[FetchStatus, Reason] = {
    FetchStatus.NOT_FOUND: Reason.FETCH_NOT_FOUND,
    FetchStatus.REFUSED: Reason.FETCH_REFUSED,
    FetchStatus.FAILED: Reason.FETCH_FAILED,
    FetchStatus.TIMEOUT: Reason.FETCH_TIMEOUT,
    FetchStatus.TOO_LARGE: Reason.FETCH_TOO_LARGE,
    FetchStatus.BAD_CONTENT_TYPE: Reason.FETCH_BAD_CONTENT_TYPE,
    FetchStatus.OFFLINE: Reason.FETCH_OFFLINE,
    FetchStatus.BAD_URL: Reason.BAD_INFO_URL,
}


@dataclass(frozen=True, slots=True)
class Fetched:
    """The result of dereferencing one URL; failures are values, never exceptions.

    ``max_age`` is the freshness lifetime in seconds the response allowed (Cache-Control
    s-maxage / max-age, or Expires minus Date), None when it said nothing; ``no_store`` is
    Cache-Control ``no-store``. ``from_cache`` tells the investigator the bytes were not
    fetched for this call. RFC 8224 section 7.2; RFC 9111 section 4.2.1.
    """

    url: str
    status: FetchStatus
    body: bytes | None = None
    content_type: str | None = None
    detail: str = ""
    max_age: float | None = None
    from_cache: bool = False
    kind: FetchKind = FetchKind.CERT
    no_store: bool = False

    @property
    def ok(self) -> bool:
        return self.status is FetchStatus.OK

    @property
    def reason(self) -> Reason | None:
        """The stable reason for a failed fetch (436 family), None when it succeeded."""
        return _STATUS_REASON.get(self.status)

    @property
    def has_standard_content_type(self) -> bool:
        """True when the media type is exactly the standard one (ATIS-1000080; lint
        w_atis_content_type): lets the verifier warn about tolerated deviations."""
        return media_type(self.content_type) == STANDARD_CONTENT_TYPES[self.kind]

    @classmethod
    def failure(
        cls, url: str, status: FetchStatus, detail: str, *, kind: FetchKind = FetchKind.CERT
    ) -> Fetched:
        """A failed fetch with no body."""
        return cls(url=url, status=status, detail=detail, kind=kind)


class CertificateSource(Protocol):
    """Anything that turns an ``x5u``/CRL URL into bytes. ``fetch`` never raises.

    RFC 8224 section 7.2 (the VS must be able to dereference ``info``).
    """

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched: ...


def media_type(content_type: str | None) -> str:
    """The lower-case media type of a Content-Type value, without parameters (RFC 9110 8.3.1)."""
    if content_type is None:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_acceptable_content_type(
    content_type: str | None, kind: FetchKind, *, strict: bool = False
) -> bool:
    """Whether a response's Content-Type may carry ``kind``; strict: only the standard type.

    ATIS-1000080 (STANDARDS.md section 6.2 and 7.4); RFC 2585 section 4.2 for CRLs.
    """
    mtype = media_type(content_type)
    if strict:
        return mtype == STANDARD_CONTENT_TYPES[kind]
    return mtype in LENIENT_CONTENT_TYPES[kind]


def infer_content_type(body: bytes, name: str = "") -> str:
    """Guess the media type of stored bytes (mirror files have no headers).

    PEM labels per RFC 7468 section 5 and 6; a DER file is classified by its extension.
    """
    lowered = name.lower()
    if b"-----BEGIN X509 CRL-----" in body or lowered.endswith(".crl"):
        return CRL_TYPE
    if b"-----BEGIN CERTIFICATE-----" in body:
        return PEM_CHAIN_TYPE
    if lowered.endswith((".der", ".cer", ".crt")) and body.startswith(b"\x30"):
        return "application/pkix-cert"
    start = body.lstrip()[:1]
    if start == b"<":  # an HTML error or login page saved in place of the file
        return "text/html"
    if start in (b"{", b"["):
        return "application/json"
    return "application/octet-stream"


# A DNS name (letters, digits, hyphen, dot) or an IPv6 literal's inside (RFC 3986 3.2.2).
_HOST_RE = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?|[0-9a-f:.]+)$")


# The verdict is a pure function of its arguments and x5u URLs repeat on every call from the same
# signer; 4096 distinct URLs covers a busy verifier's working set (STANDARDS.md 9).
URL_POLICY_CACHE_ENTRIES = 4096


@functools.lru_cache(maxsize=URL_POLICY_CACHE_ENTRIES)
def check_info_url(
    url: str, *, allowed_ports: frozenset[int] = DEFAULT_ALLOWED_PORTS, allow_http: bool = False
) -> str | None:
    """Apply the certificate URL policy; None when the URL may be dereferenced.

    Rules: printable ASCII only; scheme https (http only with ``allow_http``, then port 80 is
    allowed too); a host; port 443 or 8443 (explicit or implied); no userinfo, query or
    fragment (even empty ones). Whether the host is a private address is judged at fetch time
    (DNS can change), not here. STANDARDS.md section 6.2 and section 10 step 16 (ATIS-1000074).
    """
    if not url:
        return "empty URL"
    if not (url.isascii() and url.isprintable()) or " " in url:
        return "URL contains whitespace, control or non-ASCII characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"unparseable URL ({exc})"
    scheme = parts.scheme.lower()
    if scheme != "https" and not (allow_http and scheme == "http"):
        return f"scheme {scheme or '(none)'!r} is not https"
    if "@" in parts.netloc:
        return "URL carries userinfo"
    if "?" in url:
        return "URL carries a query"
    if "#" in url:
        return "URL carries a fragment"
    host = parts.hostname
    if not host:
        return "URL has no host"
    if not _HOST_RE.match(host):
        return f"host {host!r} is not a DNS name or IP literal"
    effective = port if port is not None else (443 if scheme == "https" else 80)
    permitted = allowed_ports | ({80} if scheme == "http" else set())
    if effective not in permitted:
        return f"port {effective} is not one of {sorted(permitted)}"
    return None


@dataclass(frozen=True, slots=True)
class CacheDirectives:
    """What a response allows a cache to do: freshness lifetime and whether it may store."""

    max_age: float | None
    no_store: bool = False


def _parse_http_date(value: str) -> float | None:
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # RFC 9110 section 5.6.7: HTTP dates are GMT
        return None
    return parsed.timestamp()


def parse_cache_headers(
    cache_control: str | None, expires: str | None, date: str | None, *, received_at: float
) -> CacheDirectives:
    """Derive the freshness lifetime from Cache-Control, Expires and Date.

    Precedence (RFC 9111 section 4.2.1): ``s-maxage`` (we are a shared cache in the service),
    then ``max-age``, then ``Expires`` minus ``Date`` (or minus ``received_at`` when Date is
    absent or invalid). The first occurrence of a directive wins; an unparseable max-age or
    Expires means "already stale" (0), RFC 9111 section 5.3. ``no-cache`` means fresh for 0 s
    (we cannot revalidate); ``no-store`` forbids storing. RFC 9111 section 5.2.2.
    """
    directives: dict[str, str | None] = {}
    for item in (cache_control or "").split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip().lower()
        if name and name not in directives:
            directives[name] = value.strip().strip('"') if sep else None
    no_store = "no-store" in directives
    for name in ("s-maxage", "max-age"):
        if name in directives:
            raw = directives[name] or ""
            return CacheDirectives(float(raw) if raw.isdigit() else 0.0, no_store)
    if "no-cache" in directives:
        return CacheDirectives(0.0, no_store)
    if expires is not None:
        expires_at = _parse_http_date(expires)
        if expires_at is None:
            return CacheDirectives(0.0, no_store)
        base = _parse_http_date(date) if date is not None else None
        return CacheDirectives(
            max(0.0, expires_at - (received_at if base is None else base)), no_store
        )
    return CacheDirectives(None, no_store)


class MemorySource:
    """Serves URLs from a mapping (tests, pre-loaded chains). Bytes become ``ok`` responses
    with the inferred content type; a ``Fetched`` value is returned as given.

    RFC 8224 section 7.2.
    """

    def __init__(self, mapping: Mapping[str, bytes | Fetched]) -> None:
        self._mapping = dict(mapping)
        self._lock = threading.Lock()
        self.calls: list[str] = []

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        with self._lock:
            self.calls.append(url)
        item = self._mapping.get(url)
        if item is None:
            return Fetched.failure(url, FetchStatus.NOT_FOUND, "not in memory source", kind=kind)
        if isinstance(item, Fetched):
            return item
        ctype = infer_content_type(item, urlsplit(url).path)
        if not is_acceptable_content_type(ctype, kind):
            return Fetched.failure(
                url, FetchStatus.BAD_CONTENT_TYPE, f"{ctype} is not a {kind}", kind=kind
            )
        return Fetched(url, FetchStatus.OK, item, ctype, "memory", kind=kind)


def content_expiry(fetched: Fetched) -> float | None:
    """The POSIX time after which the response must not be served from cache.

    Certificates: the earliest notAfter in the chain (STANDARDS.md section 6.2, "never cache
    past the certificate's notAfter"); CRLs: nextUpdate (RFC 5280 section 5.1.2.5). An
    unparseable body gives 0.0 (already expired: the cache keeps it only briefly); no body or
    no nextUpdate gives None. Never raises.
    """
    body = fetched.body
    if body is None:
        return None
    try:
        if fetched.kind is FetchKind.CRL:
            crl = (
                x509.load_pem_x509_crl(body)
                if b"-----BEGIN" in body
                else x509.load_der_x509_crl(body)
            )
            update = crl.next_update_utc
            return None if update is None else update.timestamp()
        certs = (
            x509.load_pem_x509_certificates(body)
            if b"-----BEGIN" in body
            else [x509.load_der_x509_certificate(body)]
        )
        return min(cert.not_valid_after_utc.timestamp() for cert in certs)
    except Exception:  # any parse failure: the verifier reports it, the cache stays brief
        return 0.0


# Cache policy defaults.
# ATIS-1000074 (quoted in Asterisk's verification.c and in the martinisecurity lint
# e_atis_cache_header): with no caching directives, or directives giving less than 24 h,
# cache the response for 24 h.
ATIS_MIN_CACHE_SECONDS = 24 * 3600.0
# Our choice, not a standard: a server may ask for a year; a week bounds how long a chain
# replaced in place at the same URL keeps being served (notAfter caps it further).
DEFAULT_MAX_CACHE_SECONDS = 7 * 24 * 3600.0
# Our choice: half the 60 s freshness window (RFC 8224 section 6.2 step 4, STANDARDS.md 6.3),
# so a flood of calls naming a dead repository costs one fetch per 30 s, and a repository
# that comes back is used again well within one key-rollover period (RFC 8224 section 7.4).
DEFAULT_NEGATIVE_CACHE_SECONDS = 30.0
# 17,839 x5u URLs on 253 hosts were seen in US traffic over three years (martinisecurity
# shaken-pki-reports); a busy verifier sees a few hundred a day. 1024 chains of ~4 KiB each
# is ~4 MiB, and at most 64 MiB even if every entry hit the 64 KiB body cap.
DEFAULT_MAX_ENTRIES = 1024


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters for metrics: served fresh, served a cached failure, fetched, joined a fetch
    already in flight (single-flight), evicted by the LRU bound, and entries held now."""

    hits: int = 0
    negative_hits: int = 0
    misses: int = 0
    coalesced: int = 0
    evictions: int = 0
    entries: int = 0


@dataclass(slots=True)
class _Entry:
    fetched: Fetched
    expires_at: float


@dataclass(slots=True)
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    result: Fetched | None = None


class CachingSource:
    """An LRU, thread-safe cache in front of another source, keyed on (kind, exact URL).

    Theory of operation: a lookup under the lock returns a live entry (counting a hit or a
    negative hit) or registers a flight for the key; the first caller for a key fetches
    outside the lock while later callers for the same key wait on that flight and share its
    result (single-flight). The result is stored with an expiry computed by ``expiry_for``:

    * failures: ``negative_ttl``;
    * ``no-store``: not stored (when ``honour_no_store``);
    * success: the response's max-age (``default_ttl`` when absent), raised to ``min_ttl``
      (ATIS 24 h floor), lowered to ``max_ttl``, and never past ``ttl_cap(fetched)``, the
      absolute POSIX time the content stops being valid (``content_expiry`` by default: the
      earliest notAfter of the chain / the CRL's nextUpdate). Content already past that time
      is kept only ``negative_ttl``, so replayed calls naming an expired chain stay cheap.

    RFC 8224 section 7.2 (caching keyed on the URI); RFC 9111; STANDARDS.md section 6.2.
    """

    def __init__(
        self,
        inner: CertificateSource,
        *,
        clock: Callable[[], float],
        max_entries: int = DEFAULT_MAX_ENTRIES,
        default_ttl: float = ATIS_MIN_CACHE_SECONDS,
        min_ttl: float = ATIS_MIN_CACHE_SECONDS,
        max_ttl: float = DEFAULT_MAX_CACHE_SECONDS,
        negative_ttl: float = DEFAULT_NEGATIVE_CACHE_SECONDS,
        ttl_cap: Callable[[Fetched], float | None] | None = content_expiry,
        honour_no_store: bool = True,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if min(default_ttl, min_ttl, max_ttl, negative_ttl) < 0 or min_ttl > max_ttl:
            raise ValueError("TTLs must be >= 0 and min_ttl <= max_ttl")
        self._inner = inner
        self._clock = clock
        self._max_entries = max_entries
        self._default_ttl = default_ttl
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._ttl_cap = ttl_cap
        self._honour_no_store = honour_no_store
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[FetchKind, str], _Entry] = OrderedDict()
        self._inflight: dict[tuple[FetchKind, str], _Flight] = {}
        self._hits = self._negative_hits = self._misses = self._coalesced = 0
        self._evictions = 0

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        key = (kind, url)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry.expires_at > self._clock():
                    self._entries.move_to_end(key)
                    if entry.fetched.ok:
                        self._hits += 1
                    else:
                        self._negative_hits += 1
                    return entry.fetched
                del self._entries[key]
            flight = self._inflight.get(key)
            leader = flight is None
            if flight is None:
                flight = self._inflight[key] = _Flight()
                self._misses += 1
            else:
                self._coalesced += 1
        if not leader:
            flight.done.wait()
            assert flight.result is not None
            return replace(flight.result, from_cache=True)
        result = Fetched.failure(url, FetchStatus.FAILED, "fetch interrupted", kind=kind)
        try:
            result = self._fetch_inner(url, kind)
        finally:
            with self._lock:
                self._store(key, result)
                del self._inflight[key]
            flight.result = result
            flight.done.set()
        return result

    def _fetch_inner(self, url: str, kind: FetchKind) -> Fetched:
        try:
            return self._inner.fetch(url, kind=kind)
        except Exception as exc:  # the protocol says never raise; contain a faulty source
            return Fetched.failure(url, FetchStatus.FAILED, f"source error: {exc!r}", kind=kind)

    def expiry_for(self, fetched: Fetched, now: float) -> float | None:
        """When a response stored at ``now`` expires; None when it must not be stored."""
        if not fetched.ok:
            return now + self._negative_ttl if self._negative_ttl > 0 else None
        if fetched.no_store and self._honour_no_store:
            return None
        ttl = self._default_ttl if fetched.max_age is None else fetched.max_age
        expires = now + min(max(ttl, self._min_ttl), self._max_ttl)
        if self._ttl_cap is not None:
            try:
                cap = self._ttl_cap(fetched)
            except Exception:  # a faulty cap must not break fetching: keep briefly
                cap = 0.0
            if cap is not None:
                expires = min(expires, cap if cap > now else now + self._negative_ttl)
        return expires if expires > now else None

    def _store(self, key: tuple[FetchKind, str], fetched: Fetched) -> None:
        expires = self.expiry_for(fetched, self._clock())
        if expires is None:
            return
        # Stored as it will be served: hits then cost no copy (this is on every verification).
        self._entries[key] = _Entry(replace(fetched, from_cache=True), expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1

    def stats(self) -> CacheStats:
        """A snapshot of the counters (for metrics endpoints)."""
        with self._lock:
            return CacheStats(
                hits=self._hits,
                negative_hits=self._negative_hits,
                misses=self._misses,
                coalesced=self._coalesced,
                evictions=self._evictions,
                entries=len(self._entries),
            )

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._entries.clear()

    def close(self) -> None:
        """Close the wrapped source when it holds resources (HTTP connections)."""
        closer = getattr(self._inner, "close", None)
        if callable(closer):
            closer()
