"""The common-case fast path (shaken/fastpath.py) computes exactly the full checklist's result.

Differential: every vector of fixtures/vectors/verify.jsonl, and hypothesis-generated
mutations of a valid signed request (claims, their serialisation, the JOSE header, the
Identity parameters, the signature bytes, the SIP identities and Date, the verification time
across certificate validity and revocation, the policy) go through a verifier with the fast
path and one without (``Verifier(fast_path=False)``, the reference): the results are equal,
as values and as ``stirscope verify --json``. ``FastPath.verify`` is also asked directly, so
each test knows whether it answered or fell back; fixed cases pin what it must answer
(certificate outcomes, invalid signatures, the iat/Date note, claim constraints, NANP) and
what it must leave to the full checklist. RFC 8224 section 6.2; STANDARDS.md section 10.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from analyzer.extract import request_from_headers
from analyzer.trustload import load_trust_store
from shaken.credentials import CredentialResolver
from shaken.errors import Reason, Severity
from shaken.es256 import sign_es256
from shaken.fastpath import FastPath
from shaken.jose import b64url_encode
from shaken.policy import CrlMode, Originator, Policy, TnMatch
from shaken.result import VerificationResult, Verstat
from shaken.source import MemorySource
from shaken.verifier import VerificationRequest, Verifier
from tests.conftest import FIXTURES
from tests.integration.test_verify_vectors import VECTORS, vector_policy, vector_request

CERTS = FIXTURES / "certs"
KEYS = FIXTURES / "pki" / "keys"
TRUST = load_trust_store([FIXTURES / "pki" / "trust"])


def epoch(year: int, month: int, day: int, second: int = 0) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp()) + second


AT = epoch(2026, 1, 15, 12 * 3600)
ORIG = "12025550101"
DEST = "12025550199"
OTHER = "12025550177"
ORIGID = "2f0b7c4e-6b1a-4f53-9d2e-6a5e1c3b9a01"
# fixtures/pki/manifest.json: validity of the SP leaves and the revocation date of "revoked".
LEAF_NOT_BEFORE = epoch(2025, 6, 1)
LEAF_NOT_AFTER = epoch(2030, 6, 1)
REVOCATION = epoch(2026, 1, 1)
ALPHA_X5U = "https://certs.alpha.example/alpha.pem"
CONSTRAINED_X5U = "https://cr.stirscope.example/constrained.pem"


def _mirror() -> dict[str, bytes]:
    """Every committed mirror file under its https URL (fixtures/certs/<host>/<path>)."""
    return {
        f"https://{path.relative_to(CERTS).as_posix()}": path.read_bytes()
        for path in sorted(CERTS.rglob("*"))
        if path.is_file()
    }


def _key(name: str) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key((KEYS / f"{name}.key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _der(tag: int, content: bytes) -> bytes:
    assert len(content) < 128
    return bytes([tag, len(content)]) + content


def _constrained_chain() -> bytes:
    """An SP leaf (alpha's key and TNAuthList) whose JWTClaimConstraints permit attest A or B
    only, issued by the test intermediate (RFC 8226 section 8): chain PEM, leaf first."""
    alpha_leaf, intermediate = x509.load_pem_x509_certificates(
        (CERTS / "certs.alpha.example" / "alpha.pem").read_bytes()
    )
    permitted = _der(
        0x30,
        _der(0x16, b"attest") + _der(0x30, _der(0x0C, b"A") + _der(0x0C, b"B")),
    )
    constraints = _der(0x30, _der(0xA1, _der(0x30, permitted)))
    tnauthlist = alpha_leaf.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26")
    )
    assert isinstance(tnauthlist.value, x509.UnrecognizedExtension)
    builder = (
        x509.CertificateBuilder()
        .subject_name(alpha_leaf.subject)
        .issuer_name(intermediate.subject)
        .public_key(_key("alpha").public_key())
        .serial_number(0x57175C09E000000001FF)
        .not_valid_before(datetime.fromtimestamp(LEAF_NOT_BEFORE, UTC))
        .not_valid_after(datetime.fromtimestamp(LEAF_NOT_AFTER, UTC))
        .add_extension(x509.UnrecognizedExtension(tnauthlist.oid, tnauthlist.value.value), False)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.27"), constraints),
            critical=False,
        )
    )
    for extension in alpha_leaf.extensions:
        if extension.oid != tnauthlist.oid:
            builder = builder.add_extension(extension.value, extension.critical)
    leaf = builder.sign(_key("intermediate"), hashes.SHA256(), ecdsa_deterministic=True)
    return b"".join(c.public_bytes(Encoding.PEM) for c in (leaf, intermediate))


SERVED = {**_mirror(), CONSTRAINED_X5U: _constrained_chain()}
SOURCE = MemorySource(SERVED)


@dataclass(frozen=True, slots=True)
class Judges:
    """One policy's verifier with the fast path, the reference without, and the path alone."""

    fast: Verifier
    full: Verifier
    direct: FastPath


_JUDGES: dict[Policy, Judges] = {}


def judges(policy: Policy) -> Judges:
    """Shared per policy, so the credential caches are warm after the first examples."""
    if policy not in _JUDGES:
        _JUDGES[policy] = Judges(
            fast=Verifier(trust=TRUST, source=SOURCE, policy=policy),
            full=Verifier(trust=TRUST, source=SOURCE, policy=policy, fast_path=False),
            direct=FastPath(
                policy=policy,
                credentials=CredentialResolver(trust=TRUST, source=SOURCE, policy=policy),
            ),
        )
    return _JUDGES[policy]


def differential(
    request: VerificationRequest, at: int, policy: Policy
) -> tuple[VerificationResult, bool]:
    """The reference result, after checking that both the verifier with the fast path and the
    path alone (when it answers) give exactly it; and whether the path answered."""
    moment = datetime.fromtimestamp(at, UTC)
    judge = judges(policy)
    expected = judge.full.verify(request, at=moment)
    got = judge.fast.verify(request, at=moment)
    assert got == expected
    assert got.to_json() == expected.to_json()
    answer = judge.direct.verify(request, moment, moment.timestamp())
    if answer is not None:
        assert answer == expected
        assert answer.to_json() == expected.to_json()
    return expected, answer is not None


# -- every vector --------------------------------------------------------------------------

# Vectors the fast path must answer itself: the clean common case and every credential
# outcome (the rest are formats and mismatches it leaves to the full checklist).
ANSWERED = {
    "valid_a",
    "valid_b",
    "valid_c",
    "valid_unquoted_ppt",
    "valid_no_ppt_param_alg",
    "date_60s_old",
    "iat_60s_old",
    "no_date_policy",
    "pai_preferred",
    "tn_10_digit_token_nanp",
    "verstat_param_stripped",
    "x5u_not_found",
    "untrusted_chain",
    "expired_leaf",
    "not_yet_valid_leaf",
    "revoked_leaf",
    "revoked_after_call",
    "no_tnauthlist",
    "p384_leaf",
    "rsa_leaf",
    "ca_true_leaf",
    "critical_tnauthlist",
    "tn_range_outside",
    "tampered_payload",
    "wrong_key",
}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    result, answered = differential(
        vector_request(vector), vector["at"], vector_policy(vector["policy"])
    )
    assert result.verstat.value == vector["expect"]["verstat"]
    assert answered == (vector["id"] in ANSWERED)


def test_answered_vectors_exist() -> None:
    assert {v["id"] for v in VECTORS} >= ANSWERED


# -- building mutated requests ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """A signed call and its SIP context; every field a mutation may touch."""

    header: dict[str, object]
    payload: dict[str, object]
    serialisation: str = "canonical"
    key: str = "alpha"
    signature: str = "intact"
    info: str | None = None  # None: the header's x5u
    alg_param: str | None = "ES256"
    ppt_param: str | None = '"shaken"'
    from_tn: str = ORIG
    to_tn: str = DEST
    pai_tn: str | None = None
    request_uri_tn: str | None = None
    date: int | None = AT
    at: int = AT
    policy: Policy = field(default_factory=Policy)


def _serialise(obj: dict[str, object], how: str) -> bytes:
    if how == "canonical":  # RFC 8225 section 9 (a float claim written as JSON writes it)
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if how == "spaced":
        return json.dumps(obj, sort_keys=True).encode()
    if how == "unsorted":
        return json.dumps(dict(reversed(obj.items())), separators=(",", ":")).encode()
    assert how == "duplicate"  # the first member repeated at the end
    first = min(obj)
    text = _serialise(obj, "canonical").decode()
    return f"{text[:-1]},{json.dumps(first)}:{json.dumps(obj[first])}}}".encode()


def _identity(case: Case) -> str:
    h64 = b64url_encode(_serialise(case.header, "canonical"))
    p64 = b64url_encode(_serialise(case.payload, case.serialisation))
    signature = sign_es256(_key(case.key), f"{h64}.{p64}".encode())
    if case.signature == "flipped":
        signature = bytes([signature[0] ^ 0x01]) + signature[1:]
    elif case.signature == "last-bit":
        signature = signature[:-1] + bytes([signature[-1] ^ 0x80])
    elif case.signature == "truncated":
        signature = signature[:63]
    s64 = b64url_encode(signature)
    if case.signature == "padded":
        s64 += "=="
    x5u = case.header.get("x5u")
    info = case.info if case.info is not None else (x5u if isinstance(x5u, str) else ALPHA_X5U)
    value = f"{h64}.{p64}.{s64};info=<{info}>"
    if case.alg_param is not None:
        value += f";alg={case.alg_param}"
    if case.ppt_param is not None:
        value += f";ppt={case.ppt_param}"
    return value


def _http_date(moment: int) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _request(case: Case) -> VerificationRequest:
    def uri(tn: str) -> str:
        return f"sip:+{tn}@example.net;user=phone"

    return request_from_headers(
        identities=[_identity(case)],
        from_=f"<{uri(case.from_tn)}>;tag=1",
        to=f"<{uri(case.to_tn)}>",
        pai=f"<{uri(case.pai_tn)}>" if case.pai_tn is not None else None,
        date=_http_date(case.date) if case.date is not None else None,
        request_uri=uri(case.request_uri_tn) if case.request_uri_tn is not None else None,
    )


def valid_case(at: int = AT, **changes: Any) -> Case:
    header: dict[str, object] = {"alg": "ES256", "ppt": "shaken", "typ": "passport"}
    header["x5u"] = ALPHA_X5U
    payload: dict[str, object] = {
        "attest": "A",
        "dest": {"tn": [DEST]},
        "iat": at,
        "orig": {"tn": ORIG},
        "origid": ORIGID,
    }
    return replace(Case(header=header, payload=payload, date=at, at=at), **changes)


# (x5u, signing key): the SP leaves of the test PKI and their outcomes (manifest.json), the
# constrained leaf, a URL nobody serves, and URLs the policy refuses.
SIGNERS: list[tuple[str, str]] = [
    (ALPHA_X5U, "alpha"),
    (ALPHA_X5U, "alpha"),
    ("https://certs.bravo.example/bravo.pem", "bravo"),
    ("https://certs.alpha.example/alpha.pem", "bravo"),  # wrong key
    ("https://cr.stirscope.example/expired.pem", "expired"),
    ("https://cr.stirscope.example/not-yet-valid.pem", "not-yet-valid"),
    ("https://cr.stirscope.example/revoked.pem", "revoked"),
    ("https://cr.stirscope.example/no-tnauthlist.pem", "no-tnauthlist"),
    ("https://cr.stirscope.example/critical-tnauthlist.pem", "critical-tnauthlist"),
    ("https://cr.stirscope.example/wrong-ca.pem", "wrong-ca"),
    ("https://cr.stirscope.example/tn-range.pem", "tn-range"),
    ("https://cr.stirscope.example/ca-true.pem", "ca-true"),
    ("https://cr.stirscope.example/rsa.pem", "alpha"),
    ("https://cr.stirscope.example/p384.pem", "alpha"),
    (CONSTRAINED_X5U, "alpha"),
    ("https://certs.nobody.example/none.pem", "alpha"),
    ("http://certs.alpha.example/alpha.pem", "alpha"),
    ("https://certs.alpha.example:8080/alpha.pem", "alpha"),
]
# Call times: inside every validity, at and around the leaves' and the revocation's edges.
TIMES = [
    AT,
    AT,
    LEAF_NOT_BEFORE - 1,
    LEAF_NOT_BEFORE,
    LEAF_NOT_AFTER,
    LEAF_NOT_AFTER + 1,
    REVOCATION - 1,
    REVOCATION,
    epoch(2031, 1, 1),
    epoch(2032, 6, 1),
]
POLICIES = [
    Policy(),
    Policy(),
    Policy(tn_match=TnMatch.NANP),
    Policy(originator=Originator.FROM),
    Policy(check_date=False),
    Policy(check_iat=False),
    Policy(check_date=False, check_iat=False),
    Policy(check_dest=False),
    Policy(crl=CrlMode.HARD),
    Policy(crl=CrlMode.OFF),
    Policy(freshness_s=30, clock_skew_s=0),
    Policy(supported_ppts=frozenset({None, "div"})),
]
TNS = [ORIG, DEST, OTHER, "1" + ORIG[1:], ORIG[1:], "12025550150", "+12025550101", "1#2*3"]
CLAIM_VALUES: dict[str, list[object]] = {
    "attest": ["A", "B", "C", "D", "", "a", 1, None],
    "origid": [ORIGID, ORIGID.upper(), "not-a-uuid", "", 7],
    "iat": [-1, "1768478400", 1.5, True, 2**53 + 1, 10**400],
    "orig": [{"tn": OTHER}, {"uri": "sip:alice@example.net"}, {"tn": ORIG, "uri": "x"}, ORIG],
    "dest": [
        {"tn": [DEST, OTHER]},
        {"tn": [OTHER]},
        {"tn": []},
        {"uri": ["sip:bob@example.net"]},
        {"tn": DEST},
        {"tn": [DEST], "uri": ["sip:bob@example.net"]},
    ],
}
EXTRA_CLAIMS: list[dict[str, object]] = [
    {"div": {"tn": OTHER}},
    {"rcd": {"nam": "Alice"}},
    {"crn": "a reason"},
    {"opt": "x"},
    {"ext": 1},
]
HEADER_CHANGES: list[dict[str, object]] = [
    {"typ": "PASSporT"},
    {"typ": "JWT"},
    {"alg": "RS256"},
    {"alg": "none"},
    {"ppt": "div"},
    {"ppt": None},
    {"x5u": None},
    {"x5u": "https://certs.bravo.example/bravo.pem"},
    {"kid": "1"},
]


def _mutate_claim(draw: st.DrawFn, case: Case) -> Case:
    name = draw(st.sampled_from(sorted(CLAIM_VALUES)))
    return replace(case, payload={**case.payload, name: draw(st.sampled_from(CLAIM_VALUES[name]))})


def _mutate_extra_claim(draw: st.DrawFn, case: Case) -> Case:
    return replace(case, payload={**case.payload, **draw(st.sampled_from(EXTRA_CLAIMS))})


def _mutate_header(draw: st.DrawFn, case: Case) -> Case:
    header = {**case.header, **draw(st.sampled_from(HEADER_CHANGES))}
    return replace(case, header={k: v for k, v in header.items() if v is not None})


def _mutate_serialisation(draw: st.DrawFn, case: Case) -> Case:
    return replace(case, serialisation=draw(st.sampled_from(["spaced", "unsorted", "duplicate"])))


def _mutate_signature(draw: st.DrawFn, case: Case) -> Case:
    how = draw(st.sampled_from(["flipped", "last-bit", "truncated", "padded"]))
    return replace(case, signature=how)


def _mutate_identity_params(draw: st.DrawFn, case: Case) -> Case:
    return replace(
        case,
        info=draw(st.sampled_from([None, ALPHA_X5U, str(case.header.get("x5u")) + "x"])),
        alg_param=draw(st.sampled_from(["ES256", None, "RS256", "es256"])),
        ppt_param=draw(st.sampled_from(['"shaken"', "shaken", None, '"div"', '"rcd"'])),
    )


def _mutate_sip(draw: st.DrawFn, case: Case) -> Case:
    return replace(
        case,
        from_tn=draw(st.sampled_from(TNS)),
        to_tn=draw(st.sampled_from(TNS)),
        pai_tn=draw(st.sampled_from([None, *TNS])),
        request_uri_tn=draw(st.sampled_from([None, *TNS])),
    )


def _mutate_date(draw: st.DrawFn, case: Case) -> Case:
    base = case.date if case.date is not None else case.at  # the iat before any mutation
    return replace(
        case, date=draw(st.sampled_from([base + 1, base - 1, base + 61, base - 61, None]))
    )


MUTATIONS = [
    _mutate_claim,
    _mutate_extra_claim,
    _mutate_header,
    _mutate_serialisation,
    _mutate_signature,
    _mutate_identity_params,
    _mutate_sip,
    _mutate_date,
]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A valid call from some signer at some time under some policy, with an iat anywhere
    around the freshness window, then none, one or two of the mutations above."""
    at = draw(st.sampled_from(TIMES))
    x5u, key = draw(st.sampled_from(SIGNERS))
    case = valid_case(at, key=key, policy=draw(st.sampled_from(POLICIES)))
    iat = at + draw(st.sampled_from([0, 0, 0, -1, 1, -30, -59, -60, -61, 59, 60, 61, -3600]))
    case = replace(
        case, header={**case.header, "x5u": x5u}, payload={**case.payload, "iat": iat}, date=iat
    )
    count = draw(st.sampled_from([0, 0, 1, 1, 2]))
    for mutate in draw(st.lists(st.sampled_from(MUTATIONS), min_size=count, max_size=count)):
        case = mutate(draw, case)
    return case


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(cases())
def test_mutations_give_the_full_checklist_result(case: Case) -> None:
    _, answered = differential(_request(case), case.at, case.policy)
    event("fast path answered" if answered else "full checklist")


@FUZZ
@given(cases())
def test_a_fresh_verifier_gives_the_reference_cold_and_warm(case: Case) -> None:
    """The same request twice through one verifier (cold, then warm caches): same result."""
    request = _request(case)
    moment = datetime.fromtimestamp(case.at, UTC)
    verifier = Verifier(trust=TRUST, source=SOURCE, policy=case.policy)
    reference = judges(case.policy).full.verify(request, at=moment)
    assert verifier.verify(request, at=moment) == reference
    assert verifier.verify(request, at=moment) == reference


# -- what the fast path must answer itself -----------------------------------------------------


def _answer(case: Case) -> VerificationResult:
    result, answered = differential(_request(case), case.at, case.policy)
    assert answered, result.to_json()
    return result


def test_clean_call_passes_with_no_finding() -> None:
    result = _answer(valid_case())
    assert result.passed
    (passport,) = result.passports
    assert passport.findings == ()
    assert passport.signature_valid is True
    assert passport.signer is not None
    assert passport.signer.spc == "1234A"


@pytest.mark.parametrize("how", ["flipped", "last-bit"])
def test_invalid_signature_is_answered(how: str) -> None:
    result = _answer(valid_case(signature=how))
    assert (result.status_code, result.reason) == (438, Reason.SIGNATURE_INVALID)
    assert result.passports[0].signature_valid is False


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        (LEAF_NOT_AFTER + 1, Reason.CERT_EXPIRED),
        (LEAF_NOT_BEFORE - 1, Reason.CERT_NOT_YET_VALID),
    ],
    ids=["expired-by-1s", "not-yet-valid-by-1s"],
)
def test_time_outside_certificate_validity_is_answered(at: int, reason: Reason) -> None:
    result = _answer(valid_case(at))
    assert (result.status_code, result.reason) == (437, reason)


def test_edges_of_validity_pass() -> None:
    for at in (LEAF_NOT_BEFORE, LEAF_NOT_AFTER):
        assert _answer(valid_case(at)).passed


def test_date_differing_from_iat_is_recorded() -> None:
    result = _answer(valid_case(date=AT - 2))
    assert result.passed
    (note,) = result.passports[0].findings
    assert (note.reason, note.severity) == (Reason.IAT_DATE_MISMATCH, Severity.INFO)


def test_claim_constraints_are_enforced() -> None:
    header = {**valid_case().header, "x5u": CONSTRAINED_X5U}
    assert _answer(valid_case(header=header)).passed
    payload = {**valid_case().payload, "attest": "C"}
    result = _answer(valid_case(header=header, payload=payload))
    assert (result.status_code, result.reason) == (438, Reason.CLAIM_CONSTRAINTS_VIOLATED)


def test_nanp_policy_matches_ten_digit_from() -> None:
    case = valid_case(from_tn=ORIG[1:], policy=Policy(tn_match=TnMatch.NANP))
    assert _answer(case).passed


def test_request_findings_are_kept() -> None:
    request = _request(valid_case())
    joined = request_from_headers(
        identities=[request.identities[0] + "," + request.identities[0]],
        from_=f"<sip:+{ORIG}@example.net;user=phone>",
        to=f"<sip:+{DEST}@example.net;user=phone>",
        date=_http_date(AT),
    )
    single = replace(joined, identities=joined.identities[:1])
    result, answered = differential(single, AT, Policy())
    assert answered
    assert result.passed
    assert [f.reason for f in result.findings] == [Reason.COMMA_JOINED_IDENTITY]


# -- what it must leave to the full checklist ------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "verstat"),
    [
        pytest.param({"serialisation": "spaced"}, Verstat.PASSED, id="non-canonical-json"),
        pytest.param({"serialisation": "duplicate"}, Verstat.FAILED, id="duplicate-key"),
        pytest.param({"signature": "truncated"}, Verstat.FAILED, id="short-signature"),
        pytest.param({"date": AT - 61}, Verstat.FAILED, id="stale-date"),
        pytest.param({"date": None}, Verstat.FAILED, id="no-date"),
        pytest.param({"from_tn": OTHER}, Verstat.FAILED, id="orig-mismatch"),
        pytest.param({"to_tn": OTHER}, Verstat.FAILED, id="dest-mismatch"),
        pytest.param({"ppt_param": None}, Verstat.FAILED, id="no-ppt-param"),
        pytest.param({"info": "https://certs.bravo.example/bravo.pem"}, Verstat.FAILED, id="info"),
        pytest.param(
            {"policy": Policy(supported_ppts=frozenset({None}))},
            Verstat.NO_VALIDATION,
            id="shaken-unsupported",
        ),
    ],
)
def test_unusual_requests_fall_back(changes: dict[str, Any], verstat: Verstat) -> None:
    case = valid_case(**changes)
    result, answered = differential(_request(case), AT, case.policy)
    assert not answered
    assert result.verstat is verstat


def test_fallback_before_the_credential_is_resolved() -> None:
    """A request the path leaves costs no fetch: the full checklist fetches once, as ever."""
    source = MemorySource(_mirror())
    verifier = Verifier(trust=TRUST, source=source)
    verifier.verify(
        _request(valid_case(serialisation="spaced")), at=datetime.fromtimestamp(AT, UTC)
    )
    assert source.calls.count(ALPHA_X5U) == 1


def test_huge_iat_is_judged_not_crashed() -> None:
    """A JSON integer too large for a float is a future iat, on either path."""
    payload = {**valid_case().payload, "iat": 10**400}
    result, answered = differential(_request(valid_case(payload=payload)), AT, Policy())
    assert not answered
    assert Reason.FUTURE_IAT in {f.reason for f in result.passports[0].findings}


def test_the_source_serves_the_signers() -> None:
    """Only the deliberate fetch failures are missing (else mutations would test nothing)."""
    missing = {x5u for x5u, _ in SIGNERS if x5u not in SERVED}
    assert missing == {
        "https://certs.nobody.example/none.pem",
        "http://certs.alpha.example/alpha.pem",
        "https://certs.alpha.example:8080/alpha.pem",
    }
