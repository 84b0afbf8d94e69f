"""Where certificate chains and CRLs come from: a directory mirror, HTTPS, or nowhere.

The mirror (``DirectorySource``), ``OfflineSource``, ``ChainSource`` and the factories
(``origin_source``, ``build_source``) live here. The HTTPS fetcher, ``HttpSource``, is the only
network code in stirscope and lives in ``analyzer.certhttp`` (https only, no redirects, size
caps, timeouts, no connections to non-public addresses); the factories import it only when
fetching is enabled, so an offline analysis never loads httpx.

RFC 8224 section 7.2-7.4; STANDARDS.md section 6.2, 7.4 and section 10 steps 16-17.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shaken.source import (
    CachingSource,
    CertificateSource,
    Fetched,
    FetchKind,
    FetchStatus,
    infer_content_type,
    is_acceptable_content_type,
)

# Body caps. Asterisk caps an x5u body at 8192 bytes (STANDARDS.md section 6.2); a real SHAKEN
# chain (P-256 EE + intermediate, PEM) is 2-4 KiB. 64 KiB leaves room for long chains with
# RSA CA certificates and stays far below anything that could hurt memory.
DEFAULT_MAX_CERT_BYTES = 64 * 1024
# CRLs grow with revocations (~35 bytes per entry, RFC 5280 section 5.1.2.6): 1 MiB holds
# ~30,000 entries; the STI-PA CRL is far smaller.
DEFAULT_MAX_CRL_BYTES = 1024 * 1024
# RFC 8224 section 6.2 leaves the timeout open; a fetch happens while the call waits
# (post-dial delay), and Asterisk and secsipid use a few seconds. 2 s total per fetch.
DEFAULT_TIMEOUT_SECONDS = 2.0


class DirectorySource:
    """Serves ``http(s)://host[:port]/path`` from ``root/host/path`` (an offline mirror).

    With an explicit port, ``root/host_port/path`` is tried first, then ``root/host/path``
    (so a mirror may ignore ports). Both http and https are served: the URL policy is the
    verifier's step 16, and a local file carries no SSRF risk. Refused (``bad_url``): other
    schemes, userinfo, query, fragment, ``.``/``..``/empty segments, backslashes and NUL;
    files (after resolving symlinks) must lie inside ``root``. ARCHITECTURE.md "Fetching".
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = DEFAULT_MAX_CERT_BYTES,
        max_crl_bytes: int = DEFAULT_MAX_CRL_BYTES,
        strict_content_type: bool = False,
    ) -> None:
        self._root = root.resolve()
        self._caps = {FetchKind.CERT: max_bytes, FetchKind.CRL: max_crl_bytes}
        self._strict = strict_content_type

    def _candidates(self, url: str) -> list[Path] | str:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"unparseable URL ({exc})"
        if parts.scheme.lower() not in ("http", "https"):
            return f"scheme {parts.scheme!r} is not served by a mirror"
        if "@" in parts.netloc or "?" in url or "#" in url:
            return "userinfo, query or fragment in URL"
        host = parts.hostname or ""
        segments = unquote(parts.path).split("/")[1:]
        if not host or host in (".", "..") or "/" in host or "\\" in host:
            return f"host {host!r} cannot name a mirror folder"
        if not segments or any(s in ("", ".", "..") or "\\" in s or "\0" in s for s in segments):
            return f"path {parts.path!r} is not a plain relative file path"
        folders = ([f"{host}_{port}"] if port is not None else []) + [host]
        return [self._root.joinpath(folder, *segments) for folder in folders]

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        candidates = self._candidates(url)
        if isinstance(candidates, str):
            return Fetched.failure(url, FetchStatus.BAD_URL, candidates, kind=kind)
        for candidate in candidates:
            try:
                resolved = candidate.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if not resolved.is_relative_to(self._root):
                return Fetched.failure(
                    url, FetchStatus.REFUSED, "path escapes the mirror", kind=kind
                )
            if not resolved.is_file():
                continue
            return self._read(url, kind, resolved)
        return Fetched.failure(url, FetchStatus.NOT_FOUND, "not in mirror", kind=kind)

    def _read(self, url: str, kind: FetchKind, path: Path) -> Fetched:
        cap = self._caps[kind]
        try:
            with path.open("rb") as handle:
                body = handle.read(cap + 1)
        except OSError as exc:
            return Fetched.failure(
                url, FetchStatus.FAILED, f"cannot read mirror file: {exc}", kind=kind
            )
        if len(body) > cap:
            detail = f"mirror file exceeds the {cap}-byte cap"
            return Fetched.failure(url, FetchStatus.TOO_LARGE, detail, kind=kind)
        ctype = infer_content_type(body, path.name)
        if not is_acceptable_content_type(ctype, kind, strict=self._strict):
            detail = f"mirror file looks like {ctype}, not a {kind}"
            return Fetched.failure(url, FetchStatus.BAD_CONTENT_TYPE, detail, kind=kind)
        return Fetched(url, FetchStatus.OK, body, ctype, "mirror", kind=kind)


class OfflineSource:
    """Fetches nothing: every URL is ``offline`` (network fetching not enabled)."""

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        detail = "not available offline (enable fetching or add a mirror)"
        return Fetched.failure(url, FetchStatus.OFFLINE, detail, kind=kind)


class ChainSource:
    """Tries each source in order and returns the first ``ok``; otherwise the last failure,
    its detail prefixed by the earlier ones (e.g. "mirror: not in mirror; timed out")."""

    def __init__(self, *sources: CertificateSource) -> None:
        if not sources:
            raise ValueError("ChainSource needs at least one source")
        self._sources = sources

    def fetch(self, url: str, *, kind: FetchKind = FetchKind.CERT) -> Fetched:
        notes: list[str] = []
        result = Fetched.failure(url, FetchStatus.FAILED, "no source", kind=kind)
        for source in self._sources:
            try:
                result = source.fetch(url, kind=kind)
            except Exception as exc:  # contain a faulty source
                result = Fetched.failure(url, FetchStatus.FAILED, repr(exc), kind=kind)
            if result.ok:
                return result
            notes.append(f"{type(source).__name__}: {result.status}")
        if len(notes) > 1:
            prefix = "; ".join(notes[:-1])
            return Fetched.failure(url, result.status, f"{prefix}; {result.detail}", kind=kind)
        return result

    def close(self) -> None:
        for source in self._sources:
            closer = getattr(source, "close", None)
            if callable(closer):
                closer()


def origin_source(
    *,
    certs_dirs: Sequence[Path] = (),
    fetch: bool = False,
    ca_bundle: Path | None = None,
    allow_private: bool = False,
    clock: Callable[[], float] = time.time,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    strict_content_type: bool = False,
) -> CertificateSource:
    """Where certificates come from, uncached: the mirrors in order, then HTTPS (when
    ``fetch``) or ``offline``. STANDARDS.md section 6.2."""
    sources: list[CertificateSource] = [
        DirectorySource(path, strict_content_type=strict_content_type) for path in certs_dirs
    ]
    if fetch:
        # httpx and httpcore cost a large part of start-up: load them only when fetching.
        from analyzer.certhttp import HttpSource

        sources.append(
            HttpSource(
                timeout=timeout,
                ca_bundle=ca_bundle,
                allow_private=allow_private,
                strict_content_type=strict_content_type,
                clock=clock,
            )
        )
    else:
        sources.append(OfflineSource())
    return sources[0] if len(sources) == 1 else ChainSource(*sources)


def build_source(
    *,
    certs_dirs: Sequence[Path] = (),
    fetch: bool = False,
    ca_bundle: Path | None = None,
    allow_private: bool = False,
    clock: Callable[[], float] = time.time,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    strict_content_type: bool = False,
) -> CachingSource:
    """The one factory for the CLI and the service: ``origin_source`` behind a
    ``CachingSource`` (24 h floor, notAfter cap, 30 s negative caching). Close it when done.
    STANDARDS.md section 6.2.
    """
    inner = origin_source(
        certs_dirs=certs_dirs,
        fetch=fetch,
        ca_bundle=ca_bundle,
        allow_private=allow_private,
        clock=clock,
        timeout=timeout,
        strict_content_type=strict_content_type,
    )
    return CachingSource(inner, clock=clock)
