"""Every ``Policy`` knob changes the verdict as documented (shaken/policy.py), to the second.

Tokens are signed in the test with the fixture keys (fixtures/pki/keys, deterministic ECDSA)
and the certificates come from the committed mirror fixtures/certs through a ``MemorySource``,
so each case controls exactly what the verifier can fetch. RFC 8224 section 6.2 step 4
(freshness), section 8 (originator), ATIS-1000080 (CRL), RFC 8224 section 6.2.2 (428).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from analyzer.extract import request_from_headers
from analyzer.trustload import load_trust_store
from shaken.errors import Reason, Severity
from shaken.policy import CrlMode, Originator, Policy, TnMatch
from shaken.result import Revocation, VerificationResult, Verstat
from shaken.signing import identity_header_value, shaken_payload, sign_passport
from shaken.source import Fetched, FetchStatus, MemorySource
from shaken.verifier import Verifier
from tests.conftest import FIXTURES

AT = int(datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC).timestamp())
ORIG = "12025550101"
DEST = "12025550199"
OTHER = "12025550177"
ORIGID = "2f0b7c4e-6b1a-4f53-9d2e-6a5e1c3b9a01"
CERTS = FIXTURES / "certs"
ALPHA_X5U = "https://certs.alpha.example/alpha.pem"
REVOKED_X5U = "https://cr.stirscope.example/revoked.pem"
INTERMEDIATE_CRL = "https://crl.stirscope.example/intermediate.crl"
ROOT_CRL = "https://crl.stirscope.example/root.crl"
REVOCATION = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())  # fixtures/pki/manifest.json


def mirror_file(url: str) -> bytes:
    """The committed mirror file for an https URL (fixtures/certs/<host>/<path>)."""
    rest = url.removeprefix("https://")
    host, _, path = rest.partition("/")
    return Path(CERTS, host, path).read_bytes()


def signing_key(name: str) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key(
        (FIXTURES / "pki" / "keys" / f"{name}.key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def signed_identity(
    *,
    key: str = "alpha",
    x5u: str = ALPHA_X5U,
    iat: int = AT,
    orig: str = ORIG,
    dest: str = DEST,
    attest: str = "A",
) -> str:
    """A full-form SHAKEN Identity value signed with a fixture key (RFC 8588)."""
    payload = shaken_payload(attest=attest, orig_tn=orig, dest_tns=[dest], iat=iat, origid=ORIGID)
    token = sign_passport(signing_key(key), x5u=x5u, payload=payload)
    return identity_header_value(token, x5u=x5u)


def http_date(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def tn_header(tn: str, host: str = "example.net") -> str:
    return f"<sip:+{tn}@{host};user=phone>"


def full_source(*extra: str) -> dict[str, bytes | Fetched]:
    """Chains for alpha (and ``extra`` x5u URLs) plus both CRLs."""
    urls = (ALPHA_X5U, *extra, INTERMEDIATE_CRL, ROOT_CRL)
    return {url: mirror_file(url) for url in urls}


@dataclass(frozen=True, slots=True)
class Call:
    """One situation: SIP values, the verification time and the policy."""

    identities: tuple[str, ...] = ()
    from_tn: str = ORIG
    to_tn: str = DEST
    pai_tn: str | None = None
    date: int | None = AT
    at: int = AT
    policy: Policy = field(default_factory=Policy)
    source: dict[str, bytes | Fetched] | None = None


def run(call: Call) -> VerificationResult:
    request = request_from_headers(
        identities=call.identities if call.identities else (signed_identity(),),
        from_=tn_header(call.from_tn) + ";tag=1",
        to=tn_header(call.to_tn),
        pai=tn_header(call.pai_tn) if call.pai_tn else None,
        date=http_date(call.date) if call.date is not None else None,
    )
    source = MemorySource(call.source if call.source is not None else full_source())
    verifier = Verifier(
        trust=load_trust_store([FIXTURES / "pki" / "trust"]), source=source, policy=call.policy
    )
    return verifier.verify(request, at=datetime.fromtimestamp(call.at, UTC))


def reasons(result: VerificationResult, severity: Severity | None = None) -> set[Reason]:
    return {
        f.reason
        for p in result.passports
        for f in p.findings
        if severity is None or f.severity is severity
    }


PASS = (Verstat.PASSED, None, None)


def stale(reason: Reason) -> tuple[Verstat, int, Reason]:
    return (Verstat.FAILED, 403, reason)


def fails(status: int, reason: Reason) -> tuple[Verstat, int, Reason]:
    return (Verstat.FAILED, status, reason)


def token_at(iat: int) -> tuple[str, ...]:
    return (signed_identity(iat=iat),)


P = Policy()
CASES: list[tuple[str, Call, tuple[Verstat, int | None, Reason | None]]] = [
    # Freshness (RFC 8224 section 6.2 step 4: 60 s by default), boundaries to the second.
    ("fresh-at-signing", Call(), PASS),
    ("date-age-60", Call(at=AT + 60), PASS),
    ("date-age-61", Call(at=AT + 61), stale(Reason.STALE_DATE)),
    ("window-120-age-120", Call(at=AT + 120, policy=replace(P, freshness_s=120)), PASS),
    (
        "window-120-age-121",
        Call(at=AT + 121, policy=replace(P, freshness_s=120)),
        stale(Reason.STALE_DATE),
    ),
    ("window-0-age-0", Call(policy=replace(P, freshness_s=0)), PASS),
    ("window-0-age-1", Call(at=AT + 1, policy=replace(P, freshness_s=0)), stale(Reason.STALE_DATE)),
    # iat alone (Date off) has the same window.
    ("iat-age-60", Call(at=AT + 60, policy=replace(P, check_date=False)), PASS),
    (
        "iat-age-61",
        Call(at=AT + 61, policy=replace(P, check_date=False)),
        stale(Reason.STALE_IAT),
    ),
    # Clock skew: up to 60 s in the future by default.
    ("date-ahead-60", Call(at=AT - 60), PASS),
    ("date-ahead-61", Call(at=AT - 61), stale(Reason.FUTURE_DATE)),
    ("skew-0-ahead-0", Call(policy=replace(P, clock_skew_s=0)), PASS),
    (
        "skew-0-ahead-1",
        Call(at=AT - 1, policy=replace(P, clock_skew_s=0)),
        stale(Reason.FUTURE_DATE),
    ),
    ("skew-300-ahead-300", Call(at=AT - 300, policy=replace(P, clock_skew_s=300)), PASS),
    (
        "skew-300-ahead-301",
        Call(at=AT - 301, policy=replace(P, clock_skew_s=300)),
        stale(Reason.FUTURE_DATE),
    ),
    (
        "iat-ahead-61-date-off",
        Call(at=AT - 61, policy=replace(P, check_date=False)),
        stale(Reason.FUTURE_IAT),
    ),
    # check_date: a missing or stale Date only matters when it is on.
    ("no-date", Call(date=None), stale(Reason.MISSING_DATE)),
    ("no-date-check-off", Call(date=None, policy=replace(P, check_date=False)), PASS),
    ("stale-date-fresh-iat", Call(date=AT - 3600), stale(Reason.STALE_DATE)),
    (
        "stale-date-fresh-iat-check-off",
        Call(date=AT - 3600, policy=replace(P, check_date=False)),
        PASS,
    ),
    # check_iat: a stale iat under a fresh Date.
    (
        "stale-iat-fresh-date",
        Call(identities=token_at(AT - 3600)),
        stale(Reason.STALE_IAT),
    ),
    (
        "stale-iat-check-off",
        Call(identities=token_at(AT - 3600), policy=replace(P, check_iat=False)),
        PASS,
    ),
    (
        "future-iat-check-off",
        Call(identities=token_at(AT + 3600), policy=replace(P, check_iat=False)),
        PASS,
    ),
    # Originator (RFC 8224 section 8 vs SHAKEN practice).
    ("pai-signed-from-other", Call(from_tn=OTHER, pai_tn=ORIG), PASS),
    (
        "pai-signed-from-other-originator-from",
        Call(from_tn=OTHER, pai_tn=ORIG, policy=replace(P, originator=Originator.FROM)),
        fails(438, Reason.ORIG_MISMATCH),
    ),
    ("from-signed-pai-other", Call(pai_tn=OTHER), fails(438, Reason.ORIG_MISMATCH)),
    (
        "from-signed-pai-other-originator-from",
        Call(pai_tn=OTHER, policy=replace(P, originator=Originator.FROM)),
        PASS,
    ),
    # TN matching: a signer that dropped the NANP country code.
    (
        "orig-10-digits-exact",
        Call(identities=(signed_identity(orig=ORIG[1:]),)),
        fails(438, Reason.ORIG_MISMATCH),
    ),
    (
        "orig-10-digits-nanp",
        Call(
            identities=(signed_identity(orig=ORIG[1:]),), policy=replace(P, tn_match=TnMatch.NANP)
        ),
        PASS,
    ),
    (
        "dest-10-digits-exact",
        Call(identities=(signed_identity(dest=DEST[1:]),)),
        fails(438, Reason.DEST_MISMATCH),
    ),
    (
        "dest-10-digits-nanp",
        Call(
            identities=(signed_identity(dest=DEST[1:]),), policy=replace(P, tn_match=TnMatch.NANP)
        ),
        PASS,
    ),
    (
        "orig-other-number-nanp",
        Call(
            identities=(signed_identity(orig=OTHER[1:]),), policy=replace(P, tn_match=TnMatch.NANP)
        ),
        fails(438, Reason.ORIG_MISMATCH),
    ),
    # check_dest.
    ("dest-other", Call(to_tn=OTHER), fails(438, Reason.DEST_MISMATCH)),
    ("dest-other-check-off", Call(to_tn=OTHER, policy=replace(P, check_dest=False)), PASS),
    # x5u URL rules: ports and http.
    (
        "x5u-port-8080",
        Call(
            identities=(signed_identity(x5u="https://certs.alpha.example:8080/alpha.pem"),),
            source={
                "https://certs.alpha.example:8080/alpha.pem": mirror_file(ALPHA_X5U),
                INTERMEDIATE_CRL: mirror_file(INTERMEDIATE_CRL),
                ROOT_CRL: mirror_file(ROOT_CRL),
            },
        ),
        fails(436, Reason.BAD_INFO_URL),
    ),
    (
        "x5u-port-8080-allowed",
        Call(
            identities=(signed_identity(x5u="https://certs.alpha.example:8080/alpha.pem"),),
            source={
                "https://certs.alpha.example:8080/alpha.pem": mirror_file(ALPHA_X5U),
                INTERMEDIATE_CRL: mirror_file(INTERMEDIATE_CRL),
                ROOT_CRL: mirror_file(ROOT_CRL),
            },
            policy=replace(P, allowed_ports=frozenset({8080})),
        ),
        PASS,
    ),
    # Supported ppts: an unsupported one is ignored, then 428 (RFC 8224 section 6.2.2).
    (
        "shaken-not-supported",
        Call(policy=replace(P, supported_ppts=frozenset({None, "div"}))),
        (Verstat.NO_VALIDATION, 428, Reason.UNSUPPORTED_PPT),
    ),
    (
        "shaken-not-supported-not-required",
        Call(policy=replace(P, supported_ppts=frozenset({None, "div"}), require_identity=False)),
        (Verstat.NO_VALIDATION, None, Reason.UNSUPPORTED_PPT),
    ),
]


@pytest.mark.parametrize(("call", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_policy_knob(call: Call, expected: tuple[Verstat, int | None, Reason | None]) -> None:
    result = run(call)
    assert (result.verstat, result.status_code, result.reason) == expected, result.to_json()


def test_require_identity() -> None:
    """No Identity header: 428 when required (RFC 8224 section 6.2.2), no status otherwise."""
    request = request_from_headers(
        identities=[], from_=tn_header(ORIG), to=tn_header(DEST), date=http_date(AT)
    )
    at = datetime.fromtimestamp(AT, UTC)
    trust = load_trust_store([FIXTURES / "pki" / "trust"])
    strict = Verifier(trust=trust, source=MemorySource({}), policy=Policy()).verify(request, at=at)
    assert (strict.verstat, strict.status_code, strict.reason) == (
        Verstat.NO_VALIDATION,
        428,
        Reason.NO_IDENTITY_HEADER,
    )
    assert strict.reason_phrase == "Use Identity Header"
    lax = Verifier(
        trust=trust, source=MemorySource({}), policy=Policy(require_identity=False)
    ).verify(request, at=at)
    assert (lax.verstat, lax.status_code) == (Verstat.NO_VALIDATION, None)


def test_iat_date_mismatch_is_information_only() -> None:
    """Date and iat both fresh but different: iat is used, the call passes (RFC 8224 6.2 step 4)."""
    result = run(Call(identities=token_at(AT - 30)))
    assert result.passed
    assert Reason.IAT_DATE_MISMATCH in reasons(result, Severity.INFO)
    assert Reason.IAT_DATE_MISMATCH not in reasons(run(Call(policy=replace(P, check_iat=False))))


# -- CRL modes (ATIS-1000080) ----------------------------------------------------------------

GARBAGE_CRL = b"this is not a CRL"
CRL_CASES = [
    # (id, mode, what the CRL URLs serve, verdict, revocation recorded, finding)
    ("hard-missing", CrlMode.HARD, "missing", 437, Revocation.UNKNOWN_HARD_FAIL),
    ("soft-missing", CrlMode.SOFT, "missing", None, Revocation.UNKNOWN_SOFT_FAIL),
    ("off-missing", CrlMode.OFF, "missing", None, Revocation.NOT_CHECKED),
    ("hard-broken", CrlMode.HARD, "broken", 437, Revocation.UNKNOWN_HARD_FAIL),
    ("soft-broken", CrlMode.SOFT, "broken", None, Revocation.UNKNOWN_SOFT_FAIL),
    ("off-broken", CrlMode.OFF, "broken", None, Revocation.NOT_CHECKED),
    ("hard-wrong-issuer", CrlMode.HARD, "swapped", 437, Revocation.UNKNOWN_HARD_FAIL),
    ("soft-wrong-issuer", CrlMode.SOFT, "swapped", None, Revocation.UNKNOWN_SOFT_FAIL),
    ("hard-refused", CrlMode.HARD, "refused", 437, Revocation.UNKNOWN_HARD_FAIL),
    ("hard-good", CrlMode.HARD, "good", None, Revocation.GOOD),
    ("soft-good", CrlMode.SOFT, "good", None, Revocation.GOOD),
]


def crl_source(kind: str) -> dict[str, bytes | Fetched]:
    chain: dict[str, bytes | Fetched] = {ALPHA_X5U: mirror_file(ALPHA_X5U)}
    if kind == "missing":
        return chain
    if kind == "broken":
        return {**chain, INTERMEDIATE_CRL: GARBAGE_CRL, ROOT_CRL: GARBAGE_CRL}
    if kind == "swapped":  # each CRL is validly signed, by the wrong issuer
        return {**chain, INTERMEDIATE_CRL: mirror_file(ROOT_CRL), ROOT_CRL: mirror_file(ROOT_CRL)}
    if kind == "refused":
        return {
            **chain,
            INTERMEDIATE_CRL: Fetched.failure(INTERMEDIATE_CRL, FetchStatus.REFUSED, "private"),
            ROOT_CRL: Fetched.failure(ROOT_CRL, FetchStatus.REFUSED, "private"),
        }
    return full_source()


@pytest.mark.parametrize(
    ("mode", "served", "status", "revocation"),
    [c[1:] for c in CRL_CASES],
    ids=[c[0] for c in CRL_CASES],
)
def test_crl_mode(mode: CrlMode, served: str, status: int | None, revocation: Revocation) -> None:
    result = run(Call(policy=replace(P, crl=mode), source=crl_source(served)))
    passport = result.passports[0]
    assert passport.signer is not None
    assert passport.signer.revocation is revocation
    assert result.status_code == status, result.to_json()
    if status is None:
        assert result.passed
    crl_reasons = {Reason.CRL_UNAVAILABLE, Reason.CRL_INVALID}
    if served == "good" or mode is CrlMode.OFF:
        assert not crl_reasons & reasons(result)
    elif mode is CrlMode.HARD:
        assert result.reason in crl_reasons
        expected = (
            Reason.CRL_UNAVAILABLE if served in ("missing", "refused") else Reason.CRL_INVALID
        )
        assert result.reason is expected
    else:
        assert crl_reasons & reasons(result, Severity.WARNING)
        assert not crl_reasons & reasons(result, Severity.ERROR)


def test_crl_off_never_fetches() -> None:
    source = MemorySource(full_source())
    verifier = Verifier(
        trust=load_trust_store([FIXTURES / "pki" / "trust"]),
        source=source,
        policy=Policy(crl=CrlMode.OFF),
    )
    request = request_from_headers(
        identities=[signed_identity()],
        from_=tn_header(ORIG),
        to=tn_header(DEST),
        date=http_date(AT),
    )
    assert verifier.verify(request, at=datetime.fromtimestamp(AT, UTC)).passed
    assert source.calls == [ALPHA_X5U]


@pytest.mark.parametrize(
    ("mode", "at", "status", "revocation"),
    [
        (CrlMode.SOFT, AT, 437, Revocation.REVOKED),
        (CrlMode.HARD, AT, 437, Revocation.REVOKED),
        (CrlMode.OFF, AT, None, Revocation.NOT_CHECKED),
        (CrlMode.SOFT, REVOCATION - 1, None, Revocation.GOOD),
        (CrlMode.SOFT, REVOCATION, 437, Revocation.REVOKED),
    ],
    ids=["soft", "hard", "off-does-not-see-it", "soft-before-revocation", "soft-at-revocation"],
)
def test_revoked_certificate(
    mode: CrlMode, at: int, status: int | None, revocation: Revocation
) -> None:
    call = Call(
        identities=(signed_identity(key="revoked", x5u=REVOKED_X5U, iat=at),),
        date=at,
        at=at,
        policy=replace(P, crl=mode),
        source=full_source(REVOKED_X5U),
    )
    result = run(call)
    passport = result.passports[0]
    assert passport.signer is not None
    assert passport.signer.revocation is revocation
    assert result.status_code == status, result.to_json()
    if status is not None:
        assert result.reason is Reason.CERT_REVOKED
