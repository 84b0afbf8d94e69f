"""The trust store: the STI-CA certificates a verifier accepts as chain anchors.

Trust is explicit. A store is built from certificates or PEM bytes the caller read (this
module reads no files), carries a name for reports, and is never empty: an empty store is a
``ShakenError`` rather than "trust everything". Its ``fingerprint`` (SHA-256 over the sorted
anchor fingerprints) goes into evidence manifests so a verdict can be tied to the exact anchors.

ATIS-1000080 (STI-PA trust-anchor list, STANDARDS.md section 7.1); RFC 5280 section 6.1.1 (d).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from shaken.certs import StirCertificate, parse_certificates
from shaken.errors import Reason, ShakenError


@dataclass(frozen=True, slots=True, eq=False)
class TrustStore:
    """Immutable set of trust anchors, indexed by subject and by SKI.

    ATIS-1000080 trust-anchor list (STANDARDS.md section 7.1).
    """

    anchors: tuple[StirCertificate, ...]
    name: str = "trust store"
    problems: tuple[str, ...] = ()
    _by_subject: dict[bytes, tuple[StirCertificate, ...]] = field(default_factory=dict, repr=False)
    _by_ski: dict[str, tuple[StirCertificate, ...]] = field(default_factory=dict, repr=False)
    _fingerprints: frozenset[str] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        if not self.anchors:
            raise ShakenError(Reason.CHAIN_UNTRUSTED, f"{self.name}: trust store has no anchors")
        by_subject: dict[bytes, list[StirCertificate]] = {}
        by_ski: dict[str, list[StirCertificate]] = {}
        for anchor in self.anchors:
            by_subject.setdefault(anchor.x509.subject.public_bytes(), []).append(anchor)
            if anchor.ski is not None:
                by_ski.setdefault(anchor.ski, []).append(anchor)
        self._by_subject.update({k: tuple(v) for k, v in by_subject.items()})
        self._by_ski.update({k: tuple(v) for k, v in by_ski.items()})
        object.__setattr__(
            self, "_fingerprints", frozenset(a.fingerprint_sha256 for a in self.anchors)
        )

    @classmethod
    def from_certificates(
        cls, certs: Iterable[StirCertificate], *, name: str = "trust store"
    ) -> TrustStore:
        """A store of ``certs`` (duplicates removed, order kept)."""
        unique: dict[str, StirCertificate] = {}
        for cert in certs:
            unique.setdefault(cert.fingerprint_sha256, cert)
        return cls(tuple(unique.values()), name)

    @classmethod
    def from_pem(cls, data: bytes, *, name: str) -> TrustStore:
        """A store from PEM bytes; load problems are kept in ``problems``, none loaded raises."""
        bundle = parse_certificates(data)
        if not bundle.certs:
            detail = "; ".join(bundle.problems) or "no certificate"
            raise ShakenError(Reason.CHAIN_UNTRUSTED, f"{name}: no usable anchor ({detail})")
        store = cls.from_certificates(bundle.certs, name=name)
        return cls(store.anchors, name, bundle.problems)

    @classmethod
    def merge(cls, *stores: TrustStore, name: str | None = None) -> TrustStore:
        """Union of several stores (e.g. one per named PEM file)."""
        anchors = [a for s in stores for a in s.anchors]
        merged = cls.from_certificates(anchors, name=name or "+".join(s.name for s in stores))
        problems = tuple(p for s in stores for p in s.problems)
        return cls(merged.anchors, merged.name, problems)

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) over the sorted anchor fingerprints, newline separated."""
        joined = "\n".join(sorted(self._fingerprints)).encode("ascii")
        return hashlib.sha256(joined).hexdigest()

    def __len__(self) -> int:
        return len(self.anchors)

    def __contains__(self, cert: object) -> bool:
        return isinstance(cert, StirCertificate) and cert.fingerprint_sha256 in self._fingerprints

    def by_subject(self, subject_der: bytes) -> tuple[StirCertificate, ...]:
        """Anchors whose subject Name DER equals ``subject_der``. RFC 5280 section 7.1."""
        return self._by_subject.get(subject_der, ())

    def by_ski(self, ski_hex: str) -> tuple[StirCertificate, ...]:
        """Anchors whose subjectKeyIdentifier is ``ski_hex``. RFC 5280 section 4.2.1.2."""
        return self._by_ski.get(ski_hex, ())

    def issuers_of(self, cert: StirCertificate) -> tuple[StirCertificate, ...]:
        """Candidate anchors for ``cert``: by AKI->SKI when it has an AKI, else by issuer name."""
        if cert.aki is not None:
            found = self.by_ski(cert.aki)
            if found:
                return found
        return self.by_subject(cert.x509.issuer.public_bytes())
