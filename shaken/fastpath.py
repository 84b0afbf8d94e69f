"""The common case of verification in a few dozen operations: one clean full-form SHAKEN PASSporT.

Theory of operation: nearly every call carries one Identity header in the shape every signer
emits (``<h.p.s>;info=<x5u>;alg=ES256;ppt="shaken"``), a JOSE header segment its signer sends
on every call, canonical claims (attest, dest, iat, orig, origid and nothing else), a fresh
Date and iat and identities that match the SIP ones. ``FastPath.verify`` recognises exactly
that case and computes the very result the full checklist (``shaken.verifier``) computes,
leaving out the work whose outcome is known to be empty: no finding can come from steps 2-15
once the conditions below hold, so none is looked for. It returns None, always before the
credential is resolved (no fetch, no cache counter is touched twice), on anything else, and
the caller then runs the full checklist, which names the problem.

Decided once per JOSE header segment (a signer's header is the same on every call; bounded
table, cleared when full): the segment is strict base64url of canonical JSON with typ
``passport``, alg ES256, ppt ``shaken`` and an x5u that passes the URL policy (steps 4, 7, 8,
16). Checked per call: the Identity parameters (``COMMON_PARAMS_RE``) against that header
(info == x5u) and the token's alphabet through the strict base64url decodes (together what
``COMMON_FORM_RE`` matches: the header parses with no finding, step 2), the payload (strict
base64url, canonical JSON, the five SHAKEN claims well typed: step 9), Date and iat
freshness (steps 10-12, the iat/Date note included), orig and dest against SIP (steps 13-15),
the signature encoding (step 6). From the credential on (steps 16-23) every outcome is handled
as the full checklist handles it, in the same order: credential findings, authority, the
signature, JWT Claim Constraints.

Equality with the full checklist is tested differentially, vector by vector and on generated
mutations of valid requests (tests/shaken/test_verify_fastpath.py). RFC 8224 section 6.2;
RFC 8225; RFC 8588; STANDARDS.md section 10.
"""

from __future__ import annotations

import re
from datetime import datetime

from shaken.claims import ATTEST_LEVELS, TN_RE, UUID_RE
from shaken.constraints import check_claim_constraints
from shaken.credentials import CredentialResolver, check_authority
from shaken.errors import Finding, ShakenError, unique_findings
from shaken.es256 import ES256_SIGNATURE_LENGTH, SIGNATURE_INVALID, verify_es256
from shaken.identity import COMMON_PARAMS_RE
from shaken.jose import b64url_decode, loads_canonical_segment
from shaken.party import Party, PartyKind
from shaken.passport import ES256, PASSPORT_TYP
from shaken.policy import Policy
from shaken.request import (
    VerificationRequest,
    iat_date_note,
    originator_of,
    same_identity,
    targets_of,
)
from shaken.result import PassportResult, VerificationResult, Verstat, aggregate
from shaken.source import check_info_url

# The one ppt this path knows (RFC 8588): every other type takes the full checklist.
SHAKEN_PPT = "shaken"
# The RFC 8225 section 9 serialisation of a SHAKEN payload with exactly the five claims of
# RFC 8588 sections 4-5 (attest, dest with TNs, iat, orig TN, origid), each well formed: TNs
# canonical (RFC 8224 section 8.3), origid a UUID (RFC 4122), iat a JSON integer. No value can
# need an escape, so a match is canonical JSON by construction (members in code-point order,
# no whitespace, no duplicate key) and ``check_payload`` finds nothing in it. Anything else
# (a URI identity, div, rcd, crn, opt, an extension claim, a non-UUID origid) does not match
# and takes the full checklist. Groups: attest, the dest TN list as written, iat, orig TN,
# origid.
_TN_PATTERN = TN_RE.pattern
SHAKEN_PAYLOAD_RE = re.compile(
    rf'\{{"attest":"([{"".join(sorted(ATTEST_LEVELS))}])",'
    rf'"dest":\{{"tn":\[("{_TN_PATTERN}"(?:,"{_TN_PATTERN}")*)\]\}},'
    r'"iat":(0|[1-9][0-9]*),'
    rf'"orig":\{{"tn":"({_TN_PATTERN})"\}},'
    rf'"origid":"({UUID_RE.pattern})"\}}'
)
# JOSE header segments remembered: a few thousand signers cover the US ecosystem
# (STANDARDS.md 9), as for ``shaken.passport.HEADER_CACHE_ENTRIES``.
HEADER_FACTS_ENTRIES = 4096
# Longest header segment remembered. A SHAKEN header {alg, ppt, typ, x5u} is ~100 characters
# plus 4/3 of the x5u URL; 1024 leaves room for a ~600-character URL while an attacker's
# padded headers cannot fill the table with megabytes.
MAX_REMEMBERED_HEADER_CHARS = 1024
# The largest integer a float holds exactly (IEEE 754 binary64: 53-bit significand): beyond it
# iat arithmetic is the full checklist's business.
MAX_EXACT_NUMERIC_DATE = 2**53

_TN_KIND = PartyKind.TN


class FastPath:
    """The common case of ``Verifier.verify`` for one verifier's policy and credentials."""

    def __init__(self, *, policy: Policy, credentials: CredentialResolver) -> None:
        self._policy = policy
        self._credentials = credentials
        # JOSE header segment -> its x5u when the segment qualifies, else "".
        self._headers: dict[str, str] = {}

    def verify(
        self, request: VerificationRequest, at: datetime, now: float
    ) -> VerificationResult | None:
        """The full checklist's result for ``request`` as of ``at`` (``now`` = its epoch
        seconds) when the request is the common case, else None (nothing was resolved)."""
        identities = request.identities
        if len(identities) != 1:
            return None
        value = identities[0]
        # Step 2: the common form (``COMMON_FORM_RE``, which the general parser matches with
        # no finding): its parameters here, its token's alphabet by the strict base64url
        # decodes below (the header segment's when it was learned).
        token, _, _ = value.partition(";")
        params = COMMON_PARAMS_RE.fullmatch(value, len(token))
        if params is None:
            return None
        info, alg, _quote, ppt = params.groups()
        policy = self._policy
        # Steps 2-4: ppt shaken and supported, alg ES256 (absent means ES256, RFC 8224 4.1).
        if ppt != SHAKEN_PPT or (alg is not None and alg != ES256):
            return None
        if SHAKEN_PPT not in policy.supported_ppts:
            return None
        # Steps 5-8: full form; a header segment already judged clean, its x5u == info.
        head, _, s64 = token.rpartition(".")
        h64, _, p64 = head.partition(".")
        if not h64 or not p64:
            return None
        x5u = self._headers.get(h64)
        if x5u is None:
            x5u = self._learn(h64)
        if x5u != info:  # also when the segment does not qualify ("": info is never empty)
            return None
        # Step 9: the payload is the canonical serialisation of the five SHAKEN claims.
        try:
            claims = SHAKEN_PAYLOAD_RE.fullmatch(b64url_decode(p64).decode("ascii"))
        except (ShakenError, UnicodeDecodeError):
            return None
        if claims is None:
            return None
        attest, dest_list, iat_text, orig_tn, origid = claims.groups()
        iat = int(iat_text)
        if iat > MAX_EXACT_NUMERIC_DATE:
            return None
        dest_tns = dest_list[1:-1].split('","')
        # Steps 10-12: Date and iat inside the window (the same arithmetic as check_freshness).
        findings: list[Finding] = []
        date = request.date
        date_s = date.timestamp() if date is not None else None
        if policy.check_date:
            if date_s is None:
                return None
            age = now - date_s
            if age > policy.freshness_s or -age > policy.clock_skew_s:
                return None
        if policy.check_iat:
            age = now - iat
            if age > policy.freshness_s or -age > policy.clock_skew_s:
                return None
            if date_s is not None and int(date_s) != iat:
                findings.append(iat_date_note(int(date_s) - iat))
        # Steps 13-15: orig and dest against SIP. Equal identities are equal values, so the
        # request's own Party objects stand for the claims when they match exactly.
        originator = originator_of(request, policy)
        if originator is None:
            return None
        if originator.kind is _TN_KIND and originator.value == orig_tn:
            orig_party = originator
        else:
            orig_party = Party(_TN_KIND, orig_tn)
            if not same_identity(orig_party, originator, policy.tn_match):
                return None
        sip_dest = request.dest
        if (
            len(dest_tns) == 1
            and sip_dest
            and sip_dest[0].kind is _TN_KIND
            and sip_dest[0].value == dest_tns[0]
        ):
            dest_parties: tuple[Party, ...] = (sip_dest[0],)  # dest matches To exactly
        else:
            dest_parties = tuple([Party(_TN_KIND, tn) for tn in dest_tns])
            if policy.check_dest:
                targets = targets_of(request, SHAKEN_PPT)
                tn_match = policy.tn_match
                if targets and not any(
                    same_identity(d, t, tn_match) for d in dest_parties for t in targets
                ):
                    return None
        # Step 6: the signature is 64 bytes of strict base64url.
        try:
            signature = b64url_decode(s64)
        except ShakenError:
            return None
        if len(signature) != ES256_SIGNATURE_LENGTH:
            return None
        # Steps 16-20: the credential; from here on every outcome is handled, none falls back.
        credential = self._credentials.resolve(x5u, at=now)
        if credential.findings:
            findings.extend(credential.findings)
        leaf = credential.leaf
        tnal = leaf.tn_auth_list if leaf is not None else None
        if tnal is not None and not tnal.spcs:
            # Step 21: authority for orig (an SPC-only list, the SHAKEN case, passes).
            findings.extend(check_authority(credential, orig_party, None, SHAKEN_PPT))
        # Step 22: the signature over the received bytes.
        signature_valid: bool | None = None
        key = credential.public_key
        if key is not None:
            signature_valid = verify_es256(key, head.encode("ascii"), signature)
            if not signature_valid:
                findings.append(SIGNATURE_INVALID)
        # The claims as decoded JSON, for the result and the constraints.
        payload: dict[str, object] = {
            "attest": attest,
            "dest": {"tn": dest_tns},
            "iat": iat,
            "orig": {"tn": orig_tn},
            "origid": origid,
        }
        # Step 23: JWT Claim Constraints (no rcd here, so no rcdi digests).
        if leaf is not None and leaf.claim_constraints is not None:
            findings.extend(check_claim_constraints(leaf.claim_constraints, payload))
        result = PassportResult(
            0,
            value,
            SHAKEN_PPT,
            "full",
            False,
            unique_findings(findings),
            attest,
            origid,
            orig_party,
            dest_parties,
            None,
            iat,
            x5u,
            credential.signer,
            signature_valid,
            payload,
        )
        if not findings or not any(f.is_error for f in findings):
            return VerificationResult(
                Verstat.PASSED, None, None, (result,), at, tuple(request.findings)
            )
        return aggregate(
            (result,),
            at=at,
            require_identity=policy.require_identity,
            request_findings=request.findings,
        )

    def _learn(self, h64: str) -> str:
        """Judge a header segment once: its x5u when it qualifies (see the module doc), else ""."""
        x5u = ""
        header = loads_canonical_segment(h64)
        if (
            header is not None
            and header.get("typ") == PASSPORT_TYP
            and header.get("alg") == ES256
            and header.get("ppt") == SHAKEN_PPT
        ):
            candidate = header.get("x5u")
            policy = self._policy
            if (
                type(candidate) is str
                and candidate
                and check_info_url(
                    candidate,
                    allowed_ports=policy.allowed_ports,
                    allow_http=policy.allow_http_x5u,
                )
                is None
            ):
                x5u = candidate
        if len(h64) <= MAX_REMEMBERED_HEADER_CHARS:
            if len(self._headers) >= HEADER_FACTS_ENTRIES:
                self._headers.clear()
            self._headers[h64] = x5u
        return x5u
