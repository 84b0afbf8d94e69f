"""Build a ready ``Verifier`` from user-facing options: trust paths, mirrors, fetching, policy.

The configuration is a plain picklable value so worker processes (``verify --batch --workers``,
the capture pipeline) can each build their own verifier and certificate cache.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analyzer.certsource import build_source
from analyzer.sharedcache import build_shared_source, redacted
from analyzer.trustload import load_trust_store
from shaken.policy import Policy
from shaken.verifier import Verifier


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """Everything needed to build a verifier; recorded in evidence manifests."""

    trust: tuple[Path, ...]
    certs_dirs: tuple[Path, ...] = ()
    fetch: bool = False
    ca_bundle: Path | None = None
    # Allow x5u/CRL fetches to loopback/private addresses (tests and lab set-ups only: the x5u
    # is chosen by whoever sent the call, so this is an SSRF switch).
    unsafe_allow_private: bool = False
    policy: Policy = field(default_factory=Policy)
    # Shared certificate/CRL cache (redis://HOST:PORT/DB), None for the local cache only.
    cache: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "trust": [str(p) for p in self.trust],
            "certs_dirs": [str(p) for p in self.certs_dirs],
            "fetch": self.fetch,
            "ca_bundle": str(self.ca_bundle) if self.ca_bundle else None,
            "unsafe_allow_private": self.unsafe_allow_private,
            "policy": self.policy.to_json(),
            "shared_cache": redacted(self.cache) if self.cache else None,
        }


def build_verifier(config: VerifierConfig, *, clock: Callable[[], float] = time.time) -> Verifier:
    """A verifier over the configured trust store and certificate source (mirror, HTTPS, cache,
    and the shared Redis cache when ``config.cache`` names one)."""
    trust = load_trust_store(config.trust)
    build = build_source
    if config.cache:
        build = functools.partial(build_shared_source, config.cache)
    source = build(
        certs_dirs=config.certs_dirs,
        fetch=config.fetch,
        ca_bundle=config.ca_bundle,
        allow_private=config.unsafe_allow_private,
        clock=clock,
    )
    return Verifier(trust=trust, source=source, policy=config.policy)
