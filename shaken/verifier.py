"""The verification service (VS): the checklist of STANDARDS.md section 10, in numbered steps.

Theory of operation: ``Verifier.verify`` takes the Identity header values and the SIP-derived
values as plain data (``VerificationRequest``; ``shaken`` knows nothing of SIP objects) and a
verification time ``at`` (the call time for captures, the arrival time for live calls; never
read from the clock here). Each Identity header is judged on its own (RFC 8224 section 6.2);
every problem becomes a ``Finding`` in checklist order, so the first error is what a verifier
would answer and the rest is evidence. Checks continue after a failure whenever the later ones
still have something to tell (an investigator wants the signer even of a stale call). Diversion
chains are linked afterwards (RFC 8946 section 4.2) and the request result follows RFC 8224
section 6.2.1/6.2.2 (``shaken.result.aggregate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from shaken.constraints import check_claim_constraints
from shaken.credentials import Credential, CredentialResolver
from shaken.errors import Finding, Reason, Severity, error
from shaken.es256 import verify_es256
from shaken.identity import IdentityHeader, parse_identity_header
from shaken.party import Party, PartyKind
from shaken.passport import (
    DecodedPassport,
    check_claims,
    check_header,
    decode_passport,
    link_div_chains,
    rebuild_compact_signing_input,
)
from shaken.policy import Originator, Policy, TnMatch
from shaken.rcd import check_rcdi
from shaken.result import PassportResult, VerificationResult, aggregate
from shaken.source import CertificateSource, check_info_url
from shaken.trust import TrustStore

# PASSporT types whose claims cannot be rebuilt from SIP: compact form is not specified for them
# (RFC 8588 section 3, RFC 8946 section 3, RFC 8443 section 3).
FULL_FORM_ONLY: frozenset[str] = frozenset({"shaken", "div", "div-o", "rph"})


@dataclass(frozen=True, slots=True)
class VerificationRequest:
    """What the verifier needs from a SIP request, already extracted and canonicalised.

    ``from_party``/``pai_party``: the From and P-Asserted-Identity identities (canonical TN per
    RFC 8224 section 8.3 or normalised URI per section 8.5); ``dest``: the To identity (and
    any other target the caller deems equivalent); ``request_uri``: the current target, for
    diversion chains; ``date``: the parsed Date header, ``date_present`` whether a Date header
    was there at all (present but unparseable is a distinct finding).
    """

    identities: tuple[str, ...]
    from_party: Party | None = None
    pai_party: Party | None = None
    dest: tuple[Party, ...] = ()
    request_uri: Party | None = None
    date: datetime | None = None
    date_present: bool = False
    findings: tuple[Finding, ...] = field(default=())

    @property
    def originator(self) -> Party | None:
        return self.pai_party or self.from_party


class Verifier:
    """A STIR/SHAKEN verification service core: trust, certificate source and policy fixed."""

    def __init__(
        self,
        *,
        trust: TrustStore,
        source: CertificateSource,
        policy: Policy | None = None,
    ) -> None:
        self.policy = policy or Policy()
        self.trust = trust
        self.source = source
        self.credentials = CredentialResolver(trust=trust, source=source, policy=self.policy)

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
        originator = self._originator(request)
        # Steps 10-12: freshness of Date and iat.
        findings.extend(self._freshness(request, iat, now, compact=compact))
        # Steps 13-15: identities, derived from SIP, never taken from the token alone.
        if originator is None:
            findings.append(error(Reason.NO_ORIGINATING_IDENTITY, "no From/P-Asserted-Identity"))
        elif (
            claims is not None
            and claims.orig is not None
            and not self._same(claims.orig, originator)
        ):
            findings.append(
                error(
                    Reason.ORIG_MISMATCH,
                    f"PASSporT orig {claims.orig} != SIP originator {originator}",
                )
            )
        if policy.check_dest and claims is not None and claims.dest:
            targets = self._targets(request, ppt)
            if targets and not any(self._same(d, t) for d in claims.dest for t in targets):
                wanted = ", ".join(str(t) for t in targets)
                got = ", ".join(str(d) for d in claims.dest)
                findings.append(
                    error(Reason.DEST_MISMATCH, f"PASSporT dest [{got}] has none of [{wanted}]")
                )
        # Steps 16-20: the credential behind info (RFC 8224 section 7.2).
        credential = self._credential(header, now, findings)
        # Step 21: authority of the signer for the identities it signed (RFC 8226 section 9).
        if credential is not None and credential.leaf is not None and claims is not None:
            findings.extend(_authority(credential, claims.orig, claims.div, ppt))
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
            findings=tuple(_dedupe(findings)),
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

    def _originator(self, request: VerificationRequest) -> Party | None:
        if self.policy.originator is Originator.FROM:
            return request.from_party
        return request.originator

    def _targets(self, request: VerificationRequest, ppt: str | None) -> tuple[Party, ...]:
        """Where dest must point: a div PASSporT's dest is the current target (RFC 8946 4.2)."""
        if ppt == "div" and request.request_uri is not None:
            return (request.request_uri,)
        if request.request_uri is not None and request.request_uri not in request.dest:
            return (*request.dest, request.request_uri)
        return request.dest

    def _same(self, a: Party, b: Party) -> bool:
        if a.kind is not b.kind:
            return False
        if a.value == b.value:
            return True
        if a.kind is PartyKind.URI:
            return a.value.lower() == b.value.lower()
        if self.policy.tn_match is TnMatch.NANP:
            return a.value == "1" + b.value or b.value == "1" + a.value
        return False

    def _freshness(
        self, request: VerificationRequest, iat: int | None, now: float, *, compact: bool
    ) -> list[Finding]:
        """Steps 10-12 (RFC 8224 section 6.2 step 4; ATIS-1000074 iat check)."""
        policy = self.policy
        found: list[Finding] = []
        if policy.check_date:
            if request.date is None:
                if request.date_present:
                    found.append(error(Reason.INVALID_DATE, "Date header is not RFC 1123"))
                else:
                    found.append(error(Reason.MISSING_DATE, "no Date header"))
            else:
                found.extend(_window(request.date.timestamp(), now, policy, "Date"))
        if policy.check_iat and iat is not None and not compact:
            found.extend(_window(float(iat), now, policy, "iat"))
            if request.date is not None and int(request.date.timestamp()) != iat:
                delta = int(request.date.timestamp()) - iat
                found.append(
                    Finding(
                        Reason.IAT_DATE_MISMATCH,
                        f"Date - iat = {delta} s (iat used, RFC 8224 section 6.2 step 4)",
                        Severity.INFO,
                    )
                )
        return found

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
            findings.append(
                error(Reason.SIGNATURE_INVALID, "ES256 signature does not verify with the x5u key")
            )
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


def _dedupe(findings: Sequence[Finding]) -> list[Finding]:
    seen: set[tuple[Reason, str, Severity]] = set()
    out = []
    for f in findings:
        key = (f.reason, f.detail, f.severity)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _window(moment: float, now: float, policy: Policy, what: str) -> list[Finding]:
    """Freshness of a Date or iat: at most ``freshness_s`` old, ``clock_skew_s`` ahead."""
    age = now - moment
    if age > policy.freshness_s:
        reason = Reason.STALE_DATE if what == "Date" else Reason.STALE_IAT
        return [error(reason, f"{what} is {age:.0f} s old (window {policy.freshness_s} s)")]
    if -age > policy.clock_skew_s:
        reason = Reason.FUTURE_DATE if what == "Date" else Reason.FUTURE_IAT
        return [
            error(reason, f"{what} is {-age:.0f} s in the future (skew {policy.clock_skew_s} s)")
        ]
    return []


def _authority(
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


def _only_dest_failed(result: PassportResult) -> bool:
    errors = result.errors
    return bool(errors) and all(f.reason is Reason.DEST_MISMATCH for f in errors)
