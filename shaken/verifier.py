"""The verification service (VS): the checklist of STANDARDS.md section 10, in numbered steps.

Theory of operation: ``Verifier.verify`` takes the Identity header values and the SIP-derived
values as plain data (``VerificationRequest``; ``shaken`` knows nothing of SIP objects) and a
verification time ``at`` (the call time for captures, the arrival time for live calls; never
read from the clock here). Each Identity header is judged on its own (RFC 8224 section 6.2);
every problem becomes a ``Finding`` in checklist order, so the first error is what a verifier
would answer and the rest is evidence. Checks continue after a failure whenever the later ones
still have something to tell (an investigator wants the signer even of a stale call). Diversion
chains are linked afterwards (RFC 8946 section 4.2) and the request result follows RFC 8224
section 6.2.1/6.2.2 (``shaken.result.aggregate``). The common case (one clean full-form SHAKEN
PASSporT) is answered first by ``shaken.fastpath`` with the very same result; anything else
comes here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from shaken.constraints import check_claim_constraints
from shaken.credentials import Credential, CredentialResolver, check_authority
from shaken.errors import Finding, Reason, Severity, error, unique_findings
from shaken.es256 import SIGNATURE_INVALID, verify_es256
from shaken.fastpath import FastPath
from shaken.identity import IdentityHeader, parse_identity_header
from shaken.party import Party
from shaken.passport import (
    DecodedPassport,
    check_claims,
    check_header,
    decode_passport,
    link_div_chains,
    rebuild_compact_signing_input,
)
from shaken.policy import Policy
from shaken.rcd import check_rcdi
from shaken.request import (
    VerificationRequest,
    check_freshness,
    originator_of,
    same_identity,
    targets_of,
)
from shaken.result import PassportResult, VerificationResult, aggregate
from shaken.source import CertificateSource, check_info_url
from shaken.trust import TrustStore

__all__ = ["FULL_FORM_ONLY", "VerificationRequest", "Verifier"]

# PASSporT types whose claims cannot be rebuilt from SIP: compact form is not specified for them
# (RFC 8588 section 3, RFC 8946 section 3, RFC 8443 section 3).
FULL_FORM_ONLY: frozenset[str] = frozenset({"shaken", "div", "div-o", "rph"})


class Verifier:
    """A STIR/SHAKEN verification service core: trust, certificate source and policy fixed.

    ``fast_path`` (on by default) answers the common case through ``shaken.fastpath``, which
    computes the same result as the full checklist; turning it off runs the full checklist
    for every request (the reference the fast path is tested against).
    """

    def __init__(
        self,
        *,
        trust: TrustStore,
        source: CertificateSource,
        policy: Policy | None = None,
        fast_path: bool = True,
    ) -> None:
        self.policy = policy or Policy()
        self.trust = trust
        self.source = source
        self.credentials = CredentialResolver(trust=trust, source=source, policy=self.policy)
        self._fast = (
            FastPath(policy=self.policy, credentials=self.credentials) if fast_path else None
        )

    def close(self) -> None:
        """Release what the certificate source holds (an HTTP source keeps connections open)."""
        closer = getattr(self.source, "close", None)
        if callable(closer):
            closer()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- request level ----------------------------------------------------------------------

    def verify(self, request: VerificationRequest, *, at: datetime) -> VerificationResult:
        """Verify every Identity header of ``request`` as of ``at`` (RFC 8224 section 6.2)."""
        if at.tzinfo is None:
            raise ValueError("verification time must be timezone-aware")
        now = at.timestamp()
        if self._fast is not None:
            common = self._fast.verify(request, at, now)
            if common is not None:
                return common
        decoded: list[DecodedPassport | None] = []
        results: list[PassportResult] = []
        # Step 1: every Identity header, each judged on its own.
        for index, value in enumerate(request.identities):
            result, passport = self._verify_one(index, value, request, now)
            results.append(result)
            decoded.append(passport)
        results = self._link_diversions(results, decoded, request)
        return aggregate(
            results,
            at=at,
            require_identity=self.policy.require_identity,
            request_findings=request.findings,
        )

    # -- one Identity header ------------------------------------------------------------------

    def _verify_one(
        self, index: int, value: str, request: VerificationRequest, now: float
    ) -> tuple[PassportResult, DecodedPassport | None]:
        policy = self.policy
        # Step 2: token + parameters; info present exactly once (RFC 8224 section 4).
        header = parse_identity_header(value)
        findings: list[Finding] = list(header.findings)
        ppt = header.ppt
        # Step 3: an unsupported ppt means this header is ignored (RFC 8224 section 6.2 step 1).
        if ppt not in policy.supported_ppts:
            note = Finding(Reason.UNSUPPORTED_PPT, f"ppt {ppt!r} is not supported", Severity.INFO)
            base = PassportResult(index, value, ppt, header.form, True, (*findings, note))
            return base, None
        # Step 4: the algorithm (RFC 8224 section 4.1: absent means ES256).
        if header.effective_alg != "ES256" and not _has(findings, Reason.UNSUPPORTED_ALG):
            findings.append(error(Reason.UNSUPPORTED_ALG, f"alg={header.effective_alg}"))
        # Steps 5-6: token form and encoding.
        passport = decode_passport(header.token)
        findings.extend(passport.findings)
        compact = passport.form == "compact"
        if compact and ppt in FULL_FORM_ONLY:
            findings.append(
                error(Reason.COMPACT_FORM_NOT_ALLOWED, f"compact form is not specified for {ppt}")
            )
        # Steps 7-9: JOSE header and claims (full form only: compact has none to check).
        if not compact:
            already = _has(findings, Reason.UNSUPPORTED_ALG)
            findings.extend(
                f
                for f in check_header(passport, header)
                if not (already and f.reason is Reason.UNSUPPORTED_ALG)
            )
            findings.extend(check_claims(passport))
        claims = passport.claims
        iat = claims.iat if claims else None
        originator = originator_of(request, policy)
        # Steps 10-12: freshness of Date and iat.
        findings.extend(check_freshness(request, iat, now, policy, compact=compact))
        # Steps 13-15: identities, derived from SIP, never taken from the token alone.
        if originator is None:
            findings.append(error(Reason.NO_ORIGINATING_IDENTITY, "no From/P-Asserted-Identity"))
        elif (
            claims is not None
            and claims.orig is not None
            and not same_identity(claims.orig, originator, policy.tn_match)
        ):
            findings.append(
                error(
                    Reason.ORIG_MISMATCH,
                    f"PASSporT orig {claims.orig} != SIP originator {originator}",
                )
            )
        if policy.check_dest and claims is not None and claims.dest:
            targets = targets_of(request, ppt)
            if targets and not any(
                same_identity(d, t, policy.tn_match) for d in claims.dest for t in targets
            ):
                wanted = ", ".join(str(t) for t in targets)
                got = ", ".join(str(d) for d in claims.dest)
                findings.append(
                    error(Reason.DEST_MISMATCH, f"PASSporT dest [{got}] has none of [{wanted}]")
                )
        # Steps 16-20: the credential behind info (RFC 8224 section 7.2).
        credential = self._credential(header, now, findings)
        # Step 21: authority of the signer for the identities it signed (RFC 8226 section 9).
        if credential is not None and credential.leaf is not None and claims is not None:
            findings.extend(check_authority(credential, claims.orig, claims.div, ppt))
        # Step 22: the signature, over the received bytes (full) or the rebuilt JSON (compact).
        signature_valid = self._signature(
            passport, header, credential, request, originator, iat, findings
        )
        # Step 23: JWT Claim Constraints and rcdi digests.
        if credential is not None and credential.leaf is not None and passport.payload:
            constraints = credential.leaf.claim_constraints
            if constraints is not None:
                findings.extend(check_claim_constraints(constraints, passport.payload))
        if claims is not None and claims.rcd is not None and claims.rcdi is not None:
            findings.extend(check_rcdi(claims.rcd, claims.rcdi))
        result = PassportResult(
            index=index,
            identity=value,
            ppt=ppt,
            form=passport.form,
            ignored=False,
            findings=unique_findings(findings),
            attest=claims.attest if claims else None,
            origid=claims.origid if claims else None,
            orig=claims.orig if claims else None,
            dest=claims.dest if claims else (),
            div=claims.div if claims else None,
            iat=iat,
            x5u=(claims.x5u if claims and claims.x5u else header.info),
            signer=credential.signer if credential else None,
            signature_valid=signature_valid,
            claims=dict(passport.payload) if passport.payload else None,
        )
        return result, passport

    # -- the steps ----------------------------------------------------------------------------

    def _credential(
        self, header: IdentityHeader, now: float, findings: list[Finding]
    ) -> Credential | None:
        """Steps 16-20: URL policy, fetch, chain, validity, revocation, end-entity profile."""
        url = header.info
        if url is None:
            return None
        problem = check_info_url(
            url, allowed_ports=self.policy.allowed_ports, allow_http=self.policy.allow_http_x5u
        )
        if problem is not None:
            findings.append(error(Reason.BAD_INFO_URL, problem))
            return None
        credential = self.credentials.resolve(url, at=now)
        findings.extend(credential.findings)
        return credential

    def _signature(
        self,
        passport: DecodedPassport,
        header: IdentityHeader,
        credential: Credential | None,
        request: VerificationRequest,
        originator: Party | None,
        iat: int | None,
        findings: list[Finding],
    ) -> bool | None:
        """Step 22 (RFC 8225 section 6; RFC 8224 section 6.2 step 5)."""
        if credential is None or credential.public_key is None or passport.signature is None:
            return None
        signing_input = passport.signing_input
        if passport.form == "compact":
            signing_input = self._rebuild(header, request, originator, iat)
        if signing_input is None:
            return None
        valid = verify_es256(credential.public_key, signing_input, passport.signature)
        if not valid:
            findings.append(SIGNATURE_INVALID)
        return valid

    def _rebuild(
        self,
        header: IdentityHeader,
        request: VerificationRequest,
        originator: Party | None,
        iat: int | None,
    ) -> bytes | None:
        """Compact form: rebuild header and payload from SIP (RFC 8224 section 4.1.1)."""
        if originator is None or not request.dest or header.info is None:
            return None
        when = (
            iat
            if iat is not None
            else (int(request.date.timestamp()) if request.date is not None else None)
        )
        if when is None:
            return None
        return rebuild_compact_signing_input(
            orig=originator, dest=request.dest, iat=when, x5u=header.info, ppt=header.ppt
        )

    def _link_diversions(
        self,
        results: list[PassportResult],
        decoded: Sequence[DecodedPassport | None],
        request: VerificationRequest,
    ) -> list[PassportResult]:
        """Step 25: diversion chains (RFC 8946 section 4.2)."""
        present = [(i, p) for i, p in enumerate(decoded) if p is not None]
        if not any((c := p.claims) is not None and c.div is not None for _, p in present):
            return results
        chains = link_div_chains([p for _, p in present])
        positions = [i for i, _ in present]
        extra: dict[int, list[Finding]] = {}
        for local, finding in chains.located:
            extra.setdefault(positions[local], []).append(finding)
        rescued: set[int] = set()
        for chain in chains.chains:
            indices = [positions[i] for i in chain.indices]
            if chain.broken or len(indices) < 2:
                continue
            links = [results[i] for i in indices]
            # Every link's signature must verify and nothing but dest may be wrong inside.
            if all(_only_dest_failed(r) or r.valid for r in links[:-1]) and links[-1].valid:
                rescued.update(i for i in indices[:-1] if not results[i].valid)
        out: list[PassportResult] = []
        for i, r in enumerate(results):
            findings = list(r.findings) + extra.get(i, [])
            if i in rescued:
                findings = [
                    Finding(f.reason, f.detail + " (retargeted: valid div chain)", Severity.INFO)
                    if f.reason is Reason.DEST_MISMATCH
                    else f
                    for f in findings
                ]
            out.append(replace(r, findings=tuple(findings)))
        return out


# -- small pure helpers ----------------------------------------------------------------------


def _has(findings: Sequence[Finding], reason: Reason) -> bool:
    return any(f.reason is reason for f in findings)


def _only_dest_failed(result: PassportResult) -> bool:
    errors = result.errors
    return bool(errors) and all(f.reason is Reason.DEST_MISMATCH for f in errors)
