"""Chain validation against the generated test PKI (fixtures/gen_pki.py), at explicit times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shaken.certs import StirCertificate, parse_certificates
from shaken.chain import validate_chain, validity_window
from shaken.errors import Reason, ShakenError
from shaken.profile import check_leaf_for_verification
from shaken.trust import TrustStore
from tests.conftest import FIXTURES

PKI = FIXTURES / "pki"
AT = datetime(2026, 6, 1, tzinfo=UTC)
MANIFEST = json.loads((PKI / "manifest.json").read_text())
LEAVES = {leaf["name"]: leaf for leaf in MANIFEST["leaves"]}


def chain_of(name: str) -> tuple[StirCertificate, ...]:
    host, path = LEAVES[name]["x5u"].removeprefix("https://").split("/", 1)
    bundle = parse_certificates((FIXTURES / "certs" / host / path).read_bytes())
    assert not bundle.problems
    return bundle.certs


def pem(rel: str) -> bytes:
    return (PKI / rel).read_bytes()


@pytest.fixture(scope="module")
def trust() -> TrustStore:
    return TrustStore.from_pem(pem("trust/root.pem"), name="test root")


@pytest.mark.parametrize(
    ("name", "reasons"),
    [
        pytest.param("alpha", set(), id="alpha"),
        pytest.param("bravo", set(), id="bravo"),
        pytest.param("charlie", set(), id="charlie"),
        pytest.param("critical-tnauthlist", set(), id="critical-tnauthlist"),
        pytest.param("rsa", set(), id="rsa-leaf-chain-ok"),
        pytest.param("p384", set(), id="p384-leaf-chain-ok"),
        pytest.param("expired", {Reason.CERT_EXPIRED}, id="expired"),
        pytest.param("not-yet-valid", {Reason.CERT_NOT_YET_VALID}, id="not-yet-valid"),
        pytest.param("wrong-ca", {Reason.CHAIN_UNTRUSTED}, id="wrong-ca"),
    ],
)
def test_chain_outcomes(trust: TrustStore, name: str, reasons: set[Reason]) -> None:
    leaf, *rest = chain_of(name)
    result = validate_chain(leaf, rest, trust, at=AT)
    assert {f.reason for f in result.findings} == reasons
    assert result.trusted is (not reasons)
    if result.trusted:
        assert result.path[0] == leaf
        assert result.path[-1] in trust
        assert len(result.path) == 3


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param(leaf["name"], leaf["expected_reason"], id=leaf["name"])
        for leaf in MANIFEST["leaves"]
    ],
)
def test_manifest_expectations(trust: TrustStore, name: str, reason: str | None) -> None:
    """Chain + step-20 leaf checks give exactly the manifest's expected reason (CRL aside)."""
    leaf, *rest = chain_of(name)
    findings = [*validate_chain(leaf, rest, trust, at=AT).findings]
    findings += check_leaf_for_verification(leaf)
    errors = {f.reason.value for f in findings if f.is_error}
    if reason is None or reason == "cert_revoked":
        assert errors == set()
    else:
        assert errors == {reason}


def _boundary_cases() -> list[object]:
    nb = datetime.fromisoformat(LEAVES["alpha"]["not_before"])
    na = datetime.fromisoformat(LEAVES["alpha"]["not_after"])
    second = timedelta(seconds=1)
    return [
        pytest.param(nb - second, Reason.CERT_NOT_YET_VALID, id="notBefore-1s"),
        pytest.param(nb, None, id="notBefore"),
        pytest.param(na, None, id="notAfter"),
        pytest.param(na + second, Reason.CERT_EXPIRED, id="notAfter+1s"),
    ]


@pytest.mark.parametrize(("at", "reason"), _boundary_cases())
def test_validity_boundaries_inclusive(
    trust: TrustStore, at: datetime, reason: Reason | None
) -> None:
    leaf, *rest = chain_of("alpha")
    result = validate_chain(leaf, rest, trust, at=at)
    assert [f.reason for f in result.findings] == ([reason] if reason else [])


def test_intermediate_expiry_fails_the_chain(trust: TrustStore) -> None:
    leaf, intermediate = chain_of("alpha")
    # The leaf is valid until 2030, the intermediate until 2034, the root until 2035:
    # at 2034-06-01 the leaf is expired too, so check a time only the root outlives.
    at = intermediate.not_after + timedelta(seconds=1)
    reasons = {f.reason for f in validate_chain(leaf, [intermediate], trust, at=at).findings}
    assert reasons == {Reason.CERT_EXPIRED}


def test_missing_intermediate_is_untrusted(trust: TrustStore) -> None:
    leaf, _ = chain_of("alpha")
    result = validate_chain(leaf, [], trust, at=AT)
    assert not result.trusted
    assert result.path == ()
    assert result.findings[-1].reason is Reason.CHAIN_UNTRUSTED


def test_intermediate_order_and_duplicates_do_not_matter(trust: TrustStore) -> None:
    leaf, intermediate = chain_of("alpha")
    wrong_root = parse_certificates(pem("ca/wrong-root.pem")).certs[0]
    result = validate_chain(leaf, [wrong_root, leaf, intermediate, intermediate], trust, at=AT)
    assert result.trusted
    assert result.path == (leaf, intermediate, result.path[2])


def test_anchor_supplied_in_chain_only_trusted_when_in_store(trust: TrustStore) -> None:
    leaf, wrong_root = chain_of("wrong-ca")
    assert not validate_chain(leaf, [wrong_root], trust, at=AT).trusted
    both = TrustStore.merge(trust, TrustStore.from_certificates([wrong_root], name="wrong"))
    result = validate_chain(leaf, [wrong_root], both, at=AT)
    assert result.trusted
    assert result.path == (leaf, wrong_root)


def test_root_in_chain_plus_trusted_root(trust: TrustStore) -> None:
    leaf, intermediate = chain_of("bravo")
    root = parse_certificates(pem("ca/root.pem")).certs[0]
    result = validate_chain(leaf, [intermediate, root], trust, at=AT)
    assert result.trusted
    assert result.path == (leaf, intermediate, root)


def test_leaf_signed_by_other_key_is_untrusted(trust: TrustStore) -> None:
    # The wrong-ca leaf claims a different issuer; presenting the real intermediate does
    # not help, and a leaf cannot issue another certificate.
    leaf, _ = chain_of("wrong-ca")
    _, intermediate = chain_of("alpha")
    other_leaf, _ = chain_of("bravo")
    result = validate_chain(leaf, [intermediate, other_leaf], trust, at=AT)
    assert not result.trusted
    assert Reason.CHAIN_UNTRUSTED in {f.reason for f in result.findings}


def test_intermediate_as_explicit_anchor() -> None:
    leaf, intermediate = chain_of("charlie")
    store = TrustStore.from_certificates([intermediate], name="intermediate as anchor")
    result = validate_chain(leaf, [], store, at=AT)
    assert result.trusted
    assert result.path == (leaf, intermediate)


def test_trusted_leaf_is_its_own_path() -> None:
    leaf, _ = chain_of("charlie")
    store = TrustStore.from_certificates([leaf], name="pinned leaf")
    assert validate_chain(leaf, [], store, at=AT).path == (leaf,)


def test_validity_window(trust: TrustStore) -> None:
    leaf, *rest = chain_of("alpha")
    path = validate_chain(leaf, rest, trust, at=AT).path
    assert validity_window(path) == (leaf.not_before, leaf.not_after)
    with pytest.raises(ValueError, match="empty"):
        validity_window(())


def test_naive_time_rejected(trust: TrustStore) -> None:
    leaf, *rest = chain_of("alpha")
    with pytest.raises(ValueError, match="aware"):
        validate_chain(leaf, rest, trust, at=datetime(2026, 1, 1))


def test_empty_trust_store_is_an_error() -> None:
    with pytest.raises(ShakenError) as info:
        TrustStore.from_certificates([], name="empty")
    assert info.value.reason is Reason.CHAIN_UNTRUSTED
    with pytest.raises(ShakenError):
        TrustStore.from_pem(b"no pem here", name="junk")


def test_trust_store_fingerprint_and_lookup(trust: TrustStore) -> None:
    root = trust.anchors[0]
    again = TrustStore.from_pem(pem("trust/root.pem") * 2, name="twice")
    assert len(again) == 1
    assert again.fingerprint == trust.fingerprint
    assert len(trust.fingerprint) == 64
    assert trust.by_ski(root.ski or "") == (root,)
    assert trust.by_subject(root.x509.subject.public_bytes()) == (root,)
    wrong = TrustStore.from_pem(pem("ca/wrong-root.pem"), name="wrong")
    merged = TrustStore.merge(trust, wrong)
    assert len(merged) == 2
    assert merged.fingerprint != trust.fingerprint
    assert TrustStore.merge(wrong, trust).fingerprint == merged.fingerprint


def test_fixture_paths_do_not_leak_machine_paths() -> None:
    text = (PKI / "manifest.json").read_text()
    assert "/work/" not in text
    assert not Path(MANIFEST["trust_store"]).is_absolute()
