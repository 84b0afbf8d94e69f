"""Certificate path validation for STIR/SHAKEN, at a given time.

Theory of operation: starting from the leaf, look for an issuer among the trust anchors and
then among the x5u-supplied intermediates (matched by AKI->SKI, else by issuer name), verify
each link with ``verify_directly_issued_by`` and recurse until an anchor signs the current
certificate. A self-signed certificate supplied in the chain is only an anchor when the store
holds it. Once a path is found every certificate on it is checked at ``at`` (the call time,
not the wall clock): validity inclusive at both ends, CA certificates must be CAs.

Why not ``cryptography``'s ``PolicyBuilder``: its client/server verifiers apply the Web PKI
profile (RFC 5280 plus CA/B Forum rules): the leaf must carry a subjectAltName (15,934 of
15,936 real SHAKEN leaves have none), unknown critical extensions are rejected, and the EKU
rules do not fit. It cannot express the SHAKEN profile, so the walk is explicit here and the
SHAKEN-specific leaf checks live in ``shaken.profile``.

RFC 5280 section 6.1 (simplified: no policy or name-constraint processing); RFC 8226 section 4;
RFC 9060 section 6; STANDARDS.md section 10 steps 18-19.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from shaken.certs import StirCertificate
from shaken.errors import Finding, Reason, error
from shaken.trust import TrustStore

# Longest path walked: SHAKEN uses leaf -> intermediate -> root; RFC 9060 delegate
# certificates add levels below the SP CA. Six leaves room for both and stops loops.
MAX_PATH_LENGTH = 6
# Complete candidate paths tried before giving up (cross-signed anchors give a few).
MAX_CANDIDATE_PATHS = 8
# Certificate signature algorithms a verifier must support: ECDSA (P-256, P-384 issuers)
# and RSA PKCS #1 v1.5 (RFC 8226 section 4).
SUPPORTED_CERT_SIGNATURES = frozenset(
    {
        "ecdsa-with-SHA256",
        "ecdsa-with-SHA384",
        "sha256WithRSAEncryption",
        "sha384WithRSAEncryption",
        "sha512WithRSAEncryption",
    }
)


@dataclass(frozen=True, slots=True)
class ChainResult:
    """Outcome of path validation: ``path`` runs leaf .. anchor (empty if none was built).

    ``trusted`` is True only when a path reaches an anchor and no error finding was raised.
    RFC 5280 section 6.1.6.
    """

    trusted: bool
    path: tuple[StirCertificate, ...]
    findings: tuple[Finding, ...]

    @property
    def anchor(self) -> StirCertificate | None:
        return self.path[-1] if self.trusted else None


def validity_window(path: Sequence[StirCertificate]) -> tuple[datetime, datetime]:
    """(latest notBefore, earliest notAfter) over ``path``: a time inside is valid for all.

    Lets a caller cache a ``validate_chain`` result per chain and time window.
    RFC 5280 section 4.1.2.5.
    """
    if not path:
        raise ValueError("empty path")
    return max(c.not_before for c in path), min(c.not_after for c in path)


def _link_problem(child: StirCertificate, issuer: StirCertificate) -> Finding | None:
    """None if ``issuer`` signed ``child``; else why not."""
    if child.signature_algorithm not in SUPPORTED_CERT_SIGNATURES:
        return error(
            Reason.UNSUPPORTED_CERT_SIGNATURE,
            f"{child.subject}: signature algorithm {child.signature_algorithm}",
        )
    try:
        if child.issued_tbs is not None:
            _verify_issued_tbs(child, issuer)
        else:
            child.x509.verify_directly_issued_by(issuer.x509)
    except InvalidSignature:
        return error(Reason.CHAIN_UNTRUSTED, f"{child.subject}: bad signature by {issuer.subject}")
    except (ValueError, TypeError) as exc:
        return error(
            Reason.CHAIN_UNTRUSTED, f"{child.subject}: not issued by {issuer.subject}: {exc}"
        )
    return None


def _verify_issued_tbs(child: StirCertificate, issuer: StirCertificate) -> None:
    """The issuer's signature over the TBSCertificate as issued (a re-encoded child,
    shaken.certfix): what ``verify_directly_issued_by`` checks, over the original bytes."""
    if child.x509.issuer != issuer.x509.subject:
        raise ValueError("issuer name does not match")
    algorithm = child.x509.signature_hash_algorithm
    if algorithm is None:
        raise ValueError("no signature hash algorithm")
    assert child.issued_tbs is not None
    key = issuer.x509.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(child.x509.signature, child.issued_tbs, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(child.x509.signature, child.issued_tbs, padding.PKCS1v15(), algorithm)
    else:
        raise TypeError(f"unsupported issuer key {type(key).__name__}")


def _may_issue(child: StirCertificate, candidate: StirCertificate) -> bool:
    if child.aki is not None and candidate.ski is not None:
        return child.aki == candidate.ski
    return child.x509.issuer == candidate.x509.subject


class _PathSearch:
    """Depth-first search over issuers; remembers why links failed for the report."""

    def __init__(self, intermediates: Sequence[StirCertificate], trust: TrustStore) -> None:
        self.trust = trust
        self.pool = [c for c in intermediates if c not in trust]
        self.failures: list[Finding] = []
        self.verified: dict[tuple[str, str], bool] = {}

    def _linked(self, child: StirCertificate, issuer: StirCertificate) -> bool:
        key = (child.fingerprint_sha256, issuer.fingerprint_sha256)
        if key not in self.verified:
            problem = _link_problem(child, issuer)
            if problem is not None:
                self.failures.append(problem)
            self.verified[key] = problem is None
        return self.verified[key]

    def paths(self, path: tuple[StirCertificate, ...]) -> Iterator[tuple[StirCertificate, ...]]:
        current = path[-1]
        for anchor in self.trust.issuers_of(current):
            if self._linked(current, anchor):
                yield (*path, anchor) if anchor != current else path
        if len(path) >= MAX_PATH_LENGTH:
            return
        for candidate in self.pool:
            if candidate in path or not _may_issue(current, candidate):
                continue
            if candidate.is_self_issued and _link_problem(candidate, candidate) is None:
                # A self-signed root from the x5u response is not an anchor by itself.
                self.failures.append(
                    error(
                        Reason.CHAIN_UNTRUSTED,
                        f"root {candidate.subject} supplied in the chain is not trusted",
                    )
                )
                continue
            if self._linked(current, candidate):
                yield from self.paths((*path, candidate))


def _check_path(path: tuple[StirCertificate, ...], at: datetime) -> list[Finding]:
    findings: list[Finding] = []
    for position, cert in enumerate(path):
        if at < cert.not_before:
            findings.append(
                error(
                    Reason.CERT_NOT_YET_VALID,
                    f"{cert.subject}: notBefore {cert.not_before.isoformat()} > {at.isoformat()}",
                )
            )
        if at > cert.not_after:
            findings.append(
                error(
                    Reason.CERT_EXPIRED,
                    f"{cert.subject}: notAfter {cert.not_after.isoformat()} < {at.isoformat()}",
                )
            )
        if position == 0:
            continue  # the leaf's own profile is checked by shaken.profile
        if cert.is_ca is False or (cert.is_ca is None and position < len(path) - 1):
            findings.append(
                error(Reason.BASIC_CONSTRAINTS_INVALID, f"{cert.subject}: issuer is not a CA")
            )
        if cert.key_usage is not None and "key_cert_sign" not in cert.key_usage:
            findings.append(
                error(Reason.KEY_USAGE_INVALID, f"{cert.subject}: issuer lacks keyCertSign")
            )
    return findings


def validate_chain(
    leaf: StirCertificate,
    intermediates: Sequence[StirCertificate],
    trust: TrustStore,
    *,
    at: datetime,
) -> ChainResult:
    """Build and check a path from ``leaf`` to an anchor of ``trust``, as of ``at``.

    ``intermediates`` are the other certificates of the x5u response (order irrelevant; the
    leaf itself, if repeated, is ignored). ``at`` must be timezone-aware.
    RFC 5280 section 6.1; RFC 9060 section 6; STANDARDS.md section 10 steps 18-19.
    """
    if at.tzinfo is None:
        raise ValueError("validate_chain needs an aware datetime for `at`")
    if leaf in trust:
        # The leaf itself is an anchor (a directly trusted certificate).
        return ChainResult(not (f := _check_path((leaf,), at)), (leaf,), tuple(f))
    search = _PathSearch([c for c in intermediates if c != leaf], trust)
    first: tuple[tuple[StirCertificate, ...], list[Finding]] | None = None
    for count, path in enumerate(search.paths((leaf,))):
        findings = _check_path(path, at)
        if not findings:
            return ChainResult(True, path, ())
        if first is None:
            first = (path, findings)
        if count + 1 >= MAX_CANDIDATE_PATHS:
            break
    if first is not None:
        return ChainResult(False, first[0], tuple(first[1]))
    findings = list(dict.fromkeys(search.failures))
    findings.append(
        error(Reason.CHAIN_UNTRUSTED, f"no path from {leaf.subject} to an anchor of {trust.name}")
    )
    return ChainResult(False, (), tuple(findings))
