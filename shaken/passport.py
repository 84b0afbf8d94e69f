"""Decode PASSporTs (RFC 8225), check their JOSE header and claims, link diversion chains.

Theory of operation: ``decode_passport`` only splits and decodes (never raises) and keeps the
signing input exactly as received, because a full-form signature covers the transmitted bytes,
not a re-serialisation (RFC 8225 section 9 note). ``check_header`` and ``check_claims`` then
judge the decoded values (STANDARDS.md section 10 steps 7-9); the signature itself is checked by
``shaken.es256.verify_es256``. Tokens are decoded even when malformed (legacy padded base64)
so an investigator can still see what they claimed; such tokens always carry an error finding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from shaken.claims import check_payload
from shaken.errors import Finding, Reason, ShakenError, error, warning
from shaken.identity import IdentityHeader
from shaken.jose import (
    b64url_decode,
    b64url_decode_lenient,
    b64url_encode,
    canonical_json,
    loads_canonical,
    loads_strict,
)
from shaken.party import Party, PartyKind

# ppt values this core verifies: baseline (no ppt), RFC 8588, RFC 8946 section 3, RFC 9795.
SUPPORTED_PPTS: frozenset[str | None] = frozenset({None, "shaken", "div", "rcd"})
# Also parsed and reported (claims checked) but not counted as supported by the verifier:
# RFC 8443 ``rph`` and RFC 8946 section 5 ``div-o``.
PARSED_PPTS: frozenset[str | None] = SUPPORTED_PPTS | {"rph", "div-o"}

PASSPORT_TYP = "passport"  # RFC 8225 section 4.1
ES256 = "ES256"  # RFC 8224 section 4.1, RFC 7518 section 3.4
# JWS ES256 signature: R || S, 32 octets each (RFC 7518 section 3.4).
ES256_SIGNATURE_LENGTH = 64
# Claims this module gives a typed view of; everything else lands in ``extra_claims``.
_KNOWN_CLAIMS = frozenset(
    {"iat", "orig", "dest", "attest", "origid", "div", "rph", "rcd", "rcdi", "crn", "opt"}
)

TokenForm = Literal["full", "compact", "invalid"]


class PassportClaims(NamedTuple):
    """A typed, lenient view of a PASSporT's header and claims (wrong types become None/empty).

    An immutable NamedTuple rather than a frozen dataclass: one is built per PASSporT on the
    verification hot path, and a 17-field frozen dataclass costs ~3 us to construct against
    ~0.5 us here. RFC 8225 section 5, RFC 8588 section 4-5, RFC 8946 section 3, RFC 8443
    section 3, RFC 9795 section 5-7.
    """

    iat: int | None
    orig: Party | None
    dest: tuple[Party, ...]
    attest: str | None
    origid: str | None
    div: Party | None
    div_hi: str | None
    rph: tuple[str, ...]
    rcd: dict[str, object] | None
    rcdi: dict[str, object] | None
    crn: str | None
    opt: str | None
    ppt: str | None
    x5u: str | None
    typ: str | None
    alg: str | None
    extra_claims: dict[str, object]


@dataclass(frozen=True, slots=True)
class DecodedPassport:
    """A split and decoded PASSporT. ``signature`` is the raw 64-byte R||S when well formed.

    ``signing_input`` is the received ``header.payload`` ASCII bytes (None for compact form:
    rebuild it with ``rebuild_compact_signing_input``). RFC 8225 section 6-7, RFC 7515 section 5.2.
    """

    token: str
    form: TokenForm
    header: dict[str, object] | None
    payload: dict[str, object] | None
    signature: bytes | None
    signing_input: bytes | None
    findings: tuple[Finding, ...]
    # The typed view, built once by ``decode_passport`` (it is read several times per verify).
    cached_claims: PassportClaims | None = field(default=None, compare=False, repr=False)

    @property
    def ppt(self) -> str | None:
        """The JOSE header ``ppt`` when it is a string. RFC 8225 section 8.1."""
        value = self.header.get("ppt") if self.header else None
        return value if isinstance(value, str) else None

    @property
    def is_valid(self) -> bool:
        """True when decoding recorded no error finding."""
        return not any(f.is_error for f in self.findings)

    @property
    def claims(self) -> PassportClaims | None:
        """Typed view of header and payload, or None when the payload could not be decoded."""
        if self.cached_claims is not None:
            return self.cached_claims
        if self.payload is None:
            return None
        return _claims_view(self.header or {}, self.payload)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _unwrap(value: object) -> object:
    """A JSON-encoded identity object in a string (libstirshaken quirk) is decoded."""
    if type(value) is str and value.startswith("{"):
        try:
            return loads_strict(value.encode("utf-8"))
        except ShakenError:
            return None
    return value


def _party(value: object) -> Party | None:
    """One identity object (RFC 8225 section 5.2.1): ``{"tn": ...}`` or ``{"uri": ...}``."""
    value = _unwrap(value)
    if type(value) is not dict:
        return None
    tn = value.get("tn")
    if type(tn) is str:
        return Party(PartyKind.TN, tn)
    uri = value.get("uri")
    if type(uri) is str:
        return Party(PartyKind.URI, uri)
    return None


def _parties(value: object) -> tuple[Party, ...]:
    """``dest``: arrays of tn and uri values, tn first (RFC 8225 section 5.2.1)."""
    value = _unwrap(value)
    if type(value) is not dict:
        return ()
    result: list[Party] = []
    for kind, entries in ((PartyKind.TN, value.get("tn")), (PartyKind.URI, value.get("uri"))):
        if entries is None:
            continue
        # RFC 8946 section 5's div-o example writes a bare string instead of an array.
        items = [entries] if type(entries) is str else entries
        if type(items) is list:
            result.extend([Party(kind, item) for item in items if type(item) is str])
    return tuple(result)


def _claims_view(header: Mapping[str, object], payload: Mapping[str, object]) -> PassportClaims:
    iat = payload.get("iat")
    div = payload.get("div")
    div_hi = div.get("hi") if isinstance(div, dict) else None
    rph = payload.get("rph")
    auth = rph.get("auth") if isinstance(rph, dict) else None
    rcd, rcdi = payload.get("rcd"), payload.get("rcdi")
    return PassportClaims(
        iat=iat if isinstance(iat, int) and not isinstance(iat, bool) else None,
        orig=_party(payload.get("orig")),
        dest=_parties(payload.get("dest")),
        attest=_str(payload.get("attest")),
        origid=_str(payload.get("origid")),
        div=_party(div),
        div_hi=_str(div_hi),
        rph=tuple(a for a in auth if isinstance(a, str)) if isinstance(auth, list) else (),
        rcd=rcd if isinstance(rcd, dict) else None,
        rcdi=rcdi if isinstance(rcdi, dict) else None,
        crn=_str(payload.get("crn")),
        opt=_str(payload.get("opt")),
        ppt=_str(header.get("ppt")),
        x5u=_str(header.get("x5u")),
        typ=_str(header.get("typ")),
        alg=_str(header.get("alg")),
        extra_claims={k: v for k, v in payload.items() if k not in _KNOWN_CLAIMS},
    )


def _decode_json_segment(
    segment: str, what: str, findings: list[Finding], *, check_canonical: bool
) -> tuple[dict[str, object] | None, bytes | None]:
    """Decode one base64url JSON segment; on a strict failure try a lenient decode for forensics.

    Canonical JSON (what compliant signers send) takes the C-only fast path; anything else is
    decoded strictly, which names duplicate keys and bad JSON, and is linted as non-canonical.
    """
    try:
        data = b64url_decode(segment)
    except ShakenError as exc:
        findings.append(error(exc.reason, f"{what}: {exc.detail}"))
        lenient = b64url_decode_lenient(segment)
        if lenient is None:
            return None, None
        try:
            return loads_strict(lenient), None
        except ShakenError:
            return None, None
    fast = loads_canonical(data)
    if fast is not None:
        return fast, data
    try:
        value = loads_strict(data)
    except ShakenError as exc:
        findings.append(error(exc.reason, f"{what}: {exc.detail}"))
        return None, data
    if check_canonical and not _is_canonical(value, data):
        findings.append(
            warning(Reason.NON_CANONICAL_JSON, f"{what} is not RFC 8225 section 9 JSON")
        )
    return value, data


def _is_der_ecdsa(sig: bytes) -> bool:
    # ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (RFC 3279 section 2.2.3).
    return len(sig) >= 8 and sig[0] == 0x30 and sig[1] == len(sig) - 2 and sig[2] == 0x02


def _decode_signature(segment: str, findings: list[Finding]) -> bytes | None:
    try:
        sig = b64url_decode(segment)
    except ShakenError as exc:
        findings.append(error(exc.reason, f"signature: {exc.detail}"))
        lenient = b64url_decode_lenient(segment)
        if lenient is not None and _is_der_ecdsa(lenient):
            findings.append(error(Reason.INVALID_SIGNATURE_ENCODING, "DER-encoded ECDSA signature"))
        return None
    if len(sig) == ES256_SIGNATURE_LENGTH:
        return sig
    kind = "DER-encoded ECDSA signature" if _is_der_ecdsa(sig) else f"{len(sig)}-byte signature"
    findings.append(error(Reason.INVALID_SIGNATURE_ENCODING, f"{kind}; ES256 needs 64-byte R||S"))
    return None


# A signer sends the same JOSE header (alg, ppt, typ, x5u) on every call: a clean, canonical
# header segment is decoded once and its (never mutated) dict reused. Bounded: a few thousand
# signers cover the US ecosystem (STANDARDS.md 9); the table is simply cleared when full.
HEADER_CACHE_ENTRIES = 4096
_canonical_headers: dict[str, dict[str, object]] = {}


def _remember_header(segment: str, header: dict[str, object]) -> None:
    if len(_canonical_headers) >= HEADER_CACHE_ENTRIES:
        _canonical_headers.clear()
    _canonical_headers[segment] = header


def decode_passport(token: str, *, check_canonical: bool = True) -> DecodedPassport:
    """Split a full (``h.p.s``) or compact (``..s``) PASSporT and decode it; never raises.

    Header and payload must be unpadded base64url of UTF-8 JSON objects without duplicate keys;
    the signature must be the 64-byte JWS R||S (a DER signature is INVALID_SIGNATURE_ENCODING).
    A non-canonical (RFC 8225 section 9) serialisation is a warning; ``check_canonical=False``
    skips that lint (about a third of the decode time) on hot paths. RFC 8225 sections 6, 7
    and 9; RFC 7515 section 5.2; STANDARDS.md section 10 steps 5-6.
    """
    findings: list[Finding] = []
    parts = token.split(".")
    if len(parts) != 3:
        findings.append(
            error(Reason.MALFORMED_TOKEN, f"{len(parts)} dot-separated parts, expected 3")
        )
        return DecodedPassport(token, "invalid", None, None, None, None, tuple(findings))
    h64, p64, s64 = parts
    if not s64:
        findings.append(error(Reason.MALFORMED_TOKEN, "empty signature segment"))
    if not h64 and not p64:
        signature = _decode_signature(s64, findings) if s64 else None
        form: TokenForm = "compact" if s64 else "invalid"
        return DecodedPassport(token, form, None, None, signature, None, tuple(findings))
    if not h64 or not p64:
        findings.append(error(Reason.MALFORMED_TOKEN, "empty header or payload segment"))
        return DecodedPassport(token, "invalid", None, None, None, None, tuple(findings))

    header = _canonical_headers.get(h64)
    if header is None:
        header, _ = _decode_json_segment(
            h64, "JOSE header", findings, check_canonical=check_canonical
        )
        if header is not None and not findings:
            _remember_header(h64, header)
    payload, _ = _decode_json_segment(p64, "payload", findings, check_canonical=check_canonical)
    signature = _decode_signature(s64, findings) if s64 else None
    signing_input = f"{h64}.{p64}".encode() if token.isascii() else None
    form = "full" if s64 else "invalid"
    claims = _claims_view(header or {}, payload) if payload is not None else None
    return DecodedPassport(
        token, form, header, payload, signature, signing_input, tuple(findings), claims
    )


def _is_canonical(obj: object, data: bytes) -> bool:
    try:
        return canonical_json(obj).encode("utf-8") == data
    except ValueError:  # floats cannot be canonical
        return False


def check_header(decoded: DecodedPassport, identity: IdentityHeader) -> list[Finding]:
    """JOSE header against the Identity parameters: typ, alg, ppt, x5u == info.

    ``alg`` must equal the effective Identity ``alg`` and be ES256 (``none``, HS256, RS256...
    are UNSUPPORTED_ALG); ``ppt`` is present iff the Identity carries one, with the same value;
    ``x5u`` must equal ``info`` byte for byte (RFC 3986 section 6.2.1 simple comparison).
    RFC 8224 section 4.1 and section 6.2 step 4; RFC 8225 section 4; STANDARDS.md section 10
    steps 4, 7 and 8.
    """
    found: list[Finding] = []
    identity_alg = identity.effective_alg
    if identity_alg != ES256:
        found.append(error(Reason.UNSUPPORTED_ALG, f"Identity alg={identity_alg!r}"))
    header = decoded.header
    if header is None:
        return found
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() != PASSPORT_TYP:
        found.append(error(Reason.INVALID_TYP, f"typ is {typ!r}, expected 'passport'"))
    elif typ != PASSPORT_TYP:
        # Media types compare case-insensitively (RFC 7515 section 4.1.9), RFC 8225 writes it
        # in lower case.
        found.append(warning(Reason.INVALID_TYP, f"typ {typ!r} is not lower case"))

    alg = header.get("alg")
    if alg != ES256:
        found.append(error(Reason.UNSUPPORTED_ALG, f"JOSE alg {alg!r}; only ES256 is accepted"))
    if alg != identity_alg:
        found.append(
            error(Reason.ALG_MISMATCH, f"JOSE alg {alg!r} != Identity alg {identity_alg!r}")
        )

    ppt = header.get("ppt")
    if ppt is not None and not isinstance(ppt, str):
        found.append(error(Reason.PPT_MISMATCH, f"JOSE ppt is not a string: {ppt!r}"))
    elif ppt != identity.ppt:
        found.append(
            error(Reason.PPT_MISMATCH, f"JOSE ppt {ppt!r} != Identity ppt {identity.ppt!r}")
        )

    x5u = header.get("x5u")
    if not isinstance(x5u, str) or not x5u:
        found.append(error(Reason.MISSING_X5U, "JOSE header has no x5u"))
    elif identity.info is not None and x5u != identity.info:
        found.append(error(Reason.X5U_INFO_MISMATCH, f"x5u {x5u!r} != info {identity.info!r}"))
    return found


def check_claims(decoded: DecodedPassport) -> list[Finding]:
    """Claim syntax for the baseline and the JOSE ``ppt``; never raises (see ``check_payload``).

    RFC 8225 section 5, RFC 8588, RFC 8946, RFC 8443, RFC 9795; STANDARDS.md section 10 step 9.
    """
    if decoded.payload is None:
        return []
    return check_payload(decoded.payload, decoded.ppt)


def rebuild_compact_signing_input(
    *,
    orig: Party,
    dest: Sequence[Party],
    iat: int,
    x5u: str,
    ppt: str | None = None,
    alg: str = ES256,
    extra: Mapping[str, object] | None = None,
) -> bytes:
    """Rebuild the signing input of a compact-form PASSporT from SIP-derived values.

    JOSE header ``{alg, ppt?, typ, x5u}`` and payload ``{dest, iat, orig, ...extra}`` in
    RFC 8225 section 9 JSON, ``dest`` arrays sorted. Raises ``ValueError`` for non-integer
    values (floats) in ``extra``. RFC 8224 section 4.1, RFC 8225 sections 7 and 9.
    """
    header: dict[str, object] = {"alg": alg, "typ": PASSPORT_TYP, "x5u": x5u}
    if ppt is not None:
        header["ppt"] = ppt
    dest_obj: dict[str, list[str]] = {}
    for party in dest:
        dest_obj.setdefault(party.kind.value, []).append(party.value)
    payload: dict[str, object] = dict(extra or {})
    payload.update(
        dest={kind: sorted(values) for kind, values in dest_obj.items()},
        iat=iat,
        orig=orig.to_json(),
    )
    h64 = b64url_encode(canonical_json(header).encode("utf-8"))
    p64 = b64url_encode(canonical_json(payload).encode("utf-8"))
    return f"{h64}.{p64}".encode("ascii")


@dataclass(frozen=True, slots=True)
class DivChain:
    """One diversion chain as indices into the input, innermost (original call) first.

    RFC 8946 section 4.2.
    """

    indices: tuple[int, ...]
    broken: bool

    @property
    def innermost(self) -> int:
        return self.indices[0]

    @property
    def outermost(self) -> int:
        return self.indices[-1]


@dataclass(frozen=True, slots=True)
class DivChains:
    """Links ``child index -> parent index``, the chains they form, and chain findings.

    RFC 8946 section 4.2.
    """

    parents: dict[int, int]
    chains: tuple[DivChain, ...]
    # Each chain finding with the index of the PASSporT it is about.
    located: tuple[tuple[int, Finding], ...]

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(finding for _, finding in self.located)

    @property
    def outermost(self) -> tuple[int, ...]:
        """Index of the outermost PASSporT of each chain."""
        return tuple(chain.outermost for chain in self.chains)


def link_div_chains(passports: Sequence[DecodedPassport]) -> DivChains:
    """Link each ``div`` PASSporT to the PASSporT whose ``dest`` contains its ``div`` identity.

    An earlier PASSporT (lower index) is preferred. A ``div`` PASSporT without such a parent
    is DIV_ORPHAN; a link whose ``orig`` differs from its parent's, or a cycle, is
    DIV_CHAIN_BROKEN. Identities compare exactly (callers canonicalise first).
    RFC 8946 section 4.2; STANDARDS.md section 10 step 25.
    """
    claims = [p.claims for p in passports]
    found: list[tuple[int, Finding]] = []
    parents: dict[int, int] = {}
    broken: set[int] = set()
    for i, c in enumerate(claims):
        if c is None or c.div is None:
            continue
        candidates = [j for j, o in enumerate(claims) if j != i and o and c.div in o.dest]
        candidates.sort(key=lambda j: (j > i, j))  # earlier headers first
        if not candidates:
            found.append(
                (i, error(Reason.DIV_ORPHAN, f"PASSporT {i}: no PASSporT has dest {c.div}"))
            )
            broken.add(i)
            continue
        parent = candidates[0]
        parents[i] = parent
        if claims[parent] is not None and claims[parent].orig != c.orig:  # type: ignore[union-attr]
            detail = f"PASSporT {i}: orig differs from PASSporT {parent}"
            found.append((i, error(Reason.DIV_CHAIN_BROKEN, detail)))
            broken.add(i)
    # Cycles (A diverts to B diverts to A) cannot be chains: cut them.
    for start in list(parents):
        seen = {start}
        node = start
        while node in parents:
            node = parents[node]
            if node in seen:
                found.append(
                    (start, error(Reason.DIV_CHAIN_BROKEN, f"PASSporT {start}: cyclic chain"))
                )
                broken.add(start)
                del parents[start]
                break
            seen.add(node)
    has_child = set(parents.values())
    chains: list[DivChain] = []
    for leaf in range(len(passports)):
        if leaf in has_child:
            continue
        path = [leaf]
        while path[-1] in parents:
            path.append(parents[path[-1]])
        path.reverse()
        chains.append(DivChain(tuple(path), any(i in broken for i in path)))
    return DivChains(parents, tuple(chains), tuple(found))
