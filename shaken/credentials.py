"""Credential resolution: x5u -> certificate chain -> trust, profile and revocation verdict.

Checklist steps 16-20 (STANDARDS.md section 10; RFC 8224 section 6.2 step 3 and section 7.2;
RFC 8226; ATIS-1000080). Theory of operation: the certificate source (possibly caching) returns
the x5u body; parsed bundles are cached by body, and a full ``Credential`` (chain, trust,
revocation, key object) is cached by body too, together with the interval of verification times
for which it stays the same (the intersection of every certificate's validity and every CRL's
thisUpdate..nextUpdate). A later call inside that interval costs a few dictionary look-ups (the
x5u body and the CRL bodies, through the usually caching source: a re-issued CRL means new
revocation facts and a fresh judgement); a call outside it is judged afresh, so an
investigator's "as of the call time" verdict is never served from a cache computed for another
time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ec

from shaken.certs import StirCertificate, parse_certificates
from shaken.chain import validate_chain, validity_window
from shaken.crl import RevocationStatus, check_crl
from shaken.errors import Finding, Reason, error, warning
from shaken.party import Party, PartyKind
from shaken.policy import CrlMode, Policy
from shaken.profile import check_leaf_for_verification
from shaken.result import Revocation, SignerInfo
from shaken.source import CertificateSource, FetchKind, FetchStatus
from shaken.trust import TrustStore

# Parsed-credential cache size: one entry per distinct x5u body. Real traffic shows ~18k x5u URLs
# across the whole US ecosystem (realworld/identity/x5u_urls_observed), so 8192 covers the busy
# part of it at a few KiB each.
CREDENTIAL_CACHE_ENTRIES = 8192


@dataclass(frozen=True, slots=True)
class Credential:
    """What the verifier needs from the x5u: key, signer facts and the credential findings."""

    url: str
    findings: tuple[Finding, ...]
    leaf: StirCertificate | None = None
    path: tuple[StirCertificate, ...] = ()
    chain_trusted: bool = False
    revocation: Revocation = Revocation.NOT_CHECKED
    public_key: ec.EllipticCurvePublicKey | None = None
    signer: SignerInfo | None = None
    obtained: bool = False  # the credential was fetched (RFC 8224 section 6.2.2: 436 vs 437)
    valid_from: float = float("-inf")
    valid_until: float = float("inf")
    # The CRLs (URL, body) the revocation verdict rests on: a cached credential is reused only
    # while the source still serves these very bodies (a re-issued CRL is judged afresh).
    crls: tuple[tuple[str, bytes], ...] = ()


def check_authority(
    credential: Credential, orig: Party | None, div: Party | None, ppt: str | None
) -> list[Finding]:
    """Step 21: a TNAuthList with TNs or ranges must cover the identity signed for.

    SHAKEN certificates carry an SPC only; nothing can be checked against an SPC without
    external data (STANDARDS.md 7.3), so SPC-only lists pass. RFC 8226 section 9; RFC 8946
    section 4.2 (the div signer must be authoritative for the div identity).
    """
    leaf = credential.leaf
    if leaf is None or leaf.tn_auth_list is None:
        return []
    tnal = leaf.tn_auth_list
    if tnal.spcs or not (tnal.ranges or tnal.tns):
        return []
    subject = div if ppt == "div" else orig
    if subject is None or subject.kind is not PartyKind.TN:
        return []
    if tnal.covers(subject.value):
        return []
    return [error(Reason.SIGNER_NOT_AUTHORIZED, f"TNAuthList does not cover {subject.value}")]


@dataclass(slots=True)
class CredentialStats:
    """Counters for metrics and benchmarks."""

    hits: int = 0
    misses: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class CredentialResolver:
    """Resolves an x5u URL to a judged ``Credential`` as of a verification time."""

    def __init__(
        self,
        *,
        trust: TrustStore,
        source: CertificateSource,
        policy: Policy,
        max_entries: int = CREDENTIAL_CACHE_ENTRIES,
    ) -> None:
        self._trust = trust
        self._source = source
        self._policy = policy
        self._max = max_entries
        self._cache: OrderedDict[tuple[str, bytes], Credential] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CredentialStats()

    def resolve(self, url: str, *, at: float) -> Credential:
        """Fetch (or reuse) and judge the credential at ``url`` as of ``at`` (epoch seconds)."""
        source = self._source
        fetched = source.fetch(url, kind=FetchKind.CERT)
        body = fetched.body
        if fetched.status is not FetchStatus.OK or body is None:
            reason = fetched.reason or Reason.FETCH_FAILED
            return Credential(url, (error(reason, fetched.detail or str(fetched.status)),))
        key = (url, body)
        # One dictionary look-up is atomic; the lock guards the LRU order and the counters.
        cached = self._cache.get(key)
        if cached is not None and cached.valid_from <= at <= cached.valid_until:
            # Reused only while the source still serves the CRLs the verdict used (a caching
            # source answers from memory while they are fresh; a new CRL means new facts).
            for crl_url, crl_body in cached.crls:
                served = source.fetch(crl_url, kind=FetchKind.CRL).body
                if served is not crl_body and served != crl_body:
                    break
            else:
                with self._lock:
                    if key in self._cache:
                        self._cache.move_to_end(key)
                    self.stats.hits += 1
                return cached
        with self._lock:
            self.stats.misses += 1
        credential = self._judge(url, body, at)
        if credential.valid_from <= credential.valid_until:
            with self._lock:
                self._cache[key] = credential
                self._cache.move_to_end(key)
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        return credential

    # -- the judgement itself (cache miss) ---------------------------------------------------

    def _judge(self, url: str, body: bytes, at: float) -> Credential:
        moment = datetime.fromtimestamp(at, UTC)
        bundle = parse_certificates(body)
        findings: list[Finding] = []
        if not bundle.certs:
            detail = "; ".join(bundle.problems) or "no certificate in the x5u response"
            return Credential(url, (error(Reason.CERT_PARSE_ERROR, detail),), obtained=True)
        for problem in bundle.problems:
            findings.append(warning(Reason.CERT_PARSE_ERROR, problem))
        # Step 18: the end-entity certificate comes first (RFC 9060 section 7; STI-CR rules).
        leaf, intermediates = bundle.certs[0], bundle.certs[1:]
        chain = validate_chain(leaf, intermediates, self._trust, at=moment)
        findings.extend(chain.findings)
        # Step 20: the end-entity profile that affects the verdict (P-256 key, TNAuthList...).
        findings.extend(check_leaf_for_verification(leaf))
        lo, hi = float("-inf"), float("inf")
        if chain.path:
            nb, na = validity_window(chain.path)
            lo, hi = nb.timestamp(), na.timestamp()
        # Step 19: revocation, through the same certificate source.
        revocation, crl_findings, crl_lo, crl_hi, crls = self._revocation(
            chain.path or (leaf,), moment
        )
        findings.extend(crl_findings)
        lo, hi = max(lo, crl_lo), min(hi, crl_hi)
        if crl_findings or not (lo <= at <= hi):
            # The result depends on a time boundary we are outside of, on a revocation date, or
            # on a CRL we could not get (to be retried): judge such calls afresh every time.
            lo, hi = 1.0, 0.0
        key = leaf.public_key()
        public_key = (
            key
            if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
            else None
        )
        signer = SignerInfo(
            spc=leaf.spc,
            organization=leaf.organization,
            subject=leaf.subject,
            issuer=leaf.issuer,
            serial=leaf.serial,
            not_before=leaf.not_before,
            not_after=leaf.not_after,
            fingerprint_sha256=leaf.fingerprint_sha256,
            chain_trusted=chain.trusted,
            revocation=revocation,
            chain=tuple(c.subject for c in chain.path),
            profile_findings=tuple(
                {"code": str(p.code), "severity": str(p.severity), "detail": p.detail}
                for p in leaf.profile_findings
            ),
        )
        return Credential(
            url=url,
            findings=tuple(findings),
            leaf=leaf,
            path=chain.path,
            chain_trusted=chain.trusted,
            revocation=revocation,
            public_key=public_key,
            signer=signer,
            obtained=True,
            valid_from=lo,
            valid_until=hi,
            crls=crls,
        )

    def _revocation(
        self, path: tuple[StirCertificate, ...], at: datetime
    ) -> tuple[Revocation, list[Finding], float, float, tuple[tuple[str, bytes], ...]]:
        """Check every non-anchor certificate of the path against its CRL (ATIS-1000080)."""
        mode = self._policy.crl
        if mode is CrlMode.OFF:
            return Revocation.NOT_CHECKED, [], float("-inf"), float("inf"), ()
        findings: list[Finding] = []
        used: list[tuple[str, bytes]] = []
        lo, hi = float("-inf"), float("inf")
        leaf_status = Revocation.GOOD
        unavailable = (
            Revocation.UNKNOWN_HARD_FAIL if mode is CrlMode.HARD else Revocation.UNKNOWN_SOFT_FAIL
        )
        make = error if mode is CrlMode.HARD else warning
        for position, cert in enumerate(path[:-1] if len(path) > 1 else path):
            issuer = path[position + 1] if position + 1 < len(path) else None
            if not cert.crl_urls:
                if position == 0:
                    leaf_status = Revocation.NO_CRL_DP
                continue
            if issuer is None:
                findings.append(
                    make(Reason.CRL_UNAVAILABLE, f"no issuer to check the CRL of {cert.subject}")
                )
                if position == 0:
                    leaf_status = unavailable
                continue
            crl_url = cert.crl_urls[0]
            fetched = self._source.fetch(crl_url, kind=FetchKind.CRL)
            if fetched.status is not FetchStatus.OK or fetched.body is None:
                findings.append(
                    make(
                        Reason.CRL_UNAVAILABLE, f"CRL {crl_url}: {fetched.detail or fetched.status}"
                    )
                )
                if position == 0:
                    leaf_status = unavailable
                continue
            used.append((crl_url, fetched.body))
            check = check_crl(cert, issuer, fetched.body, at=at)
            for finding in check.findings:
                # A CRL that cannot be trusted is as good as no CRL: policy decides.
                if finding.reason is Reason.CERT_REVOKED:
                    findings.append(finding)
                elif finding.is_error:
                    findings.append(make(finding.reason, finding.detail))
                else:
                    findings.append(finding)
            if check.this_update is not None:
                lo = max(lo, check.this_update.timestamp())
            if check.next_update is not None:
                hi = min(hi, check.next_update.timestamp())
            if check.status is RevocationStatus.REVOKED:
                if position == 0:
                    leaf_status = Revocation.REVOKED
            elif check.status is not RevocationStatus.GOOD and position == 0:
                leaf_status = unavailable
        return leaf_status, findings, lo, hi, tuple(used)
