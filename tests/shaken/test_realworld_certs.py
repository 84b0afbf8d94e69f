"""Every real certificate of the corpus parses; SPCs match the crawler's metadata; real chains
of the sampled SP certificates validate against the real STI-CA certificates."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shaken.certs import StirCertificate, parse_certificates
from shaken.chain import validate_chain
from shaken.profile import check_leaf_for_verification
from shaken.trust import TrustStore

pytestmark = pytest.mark.realworld
# Every 8th bulk certificate: ~2,000 of 15,936, ~2 s (all of them take ~12 s on one core).
BULK_SAMPLE_STEP = 8
# The one bulk entry cryptography refuses (a v1 cert with trailing bytes in its
# signature AlgorithmIdentifier, VoiceCarrier); reported as a problem, not an exception.
UNLOADABLE_BULK = 1


# Certificates whose signature AlgorithmIdentifier carries NULL parameters (ecdsa-with-SHA256
# plus 05 00): cryptography refuses them as issued; shaken.certfix re-encodes them for reading
# and the chain walk verifies signatures over the TBSCertificate as issued. T-Mobile's STI-CA
# root and intermediates are among them.
NULL_PARAMETER_FILES = {
    "T-Mobile__TMOBILE_PROD_ROOT_STIRSHAKEN_EC__d54b8c44.pem",
    "T-Mobile__TMOBILE_PROD_SUB_STIRSHAKEN_EC__4378a3f1.pem",
    "T-Mobile__TMOBILE_PROD_SUB_STIRSHAKEN_EC__a22dda81.pem",
    "Ribbon_Communications__Empire_SHAKEN_087H__ff4a083e.pem",
}


def _bundle(path: Path) -> tuple[StirCertificate, ...]:
    return parse_certificates(path.read_bytes()).certs


def _metadata(realworld: Path) -> dict[str, dict[str, str]]:
    with (realworld / "certs" / "bulk" / "shaken_pki_reports_metadata.csv").open() as fh:
        return {row["sha256"]: row for row in csv.DictReader(fh)}


def _expected_spc(tnauthlist: str) -> str | None:
    """The crawler writes ``spc:XXXX`` or ``tag13:<hex>`` (bare PrintableString)."""
    kind, _, value = tnauthlist.partition(":")
    if kind == "spc":
        return value
    if kind == "tag13":
        return bytes.fromhex(value).decode("ascii")
    return None


def _check_spcs(certs: tuple[StirCertificate, ...], meta: dict[str, dict[str, str]]) -> int:
    compared = 0
    for cert in certs:
        row = meta.get(cert.fingerprint_sha256)
        if row is None or not row["tnauthlist"]:
            continue
        expected = _expected_spc(row["tnauthlist"])
        if cert.tn_auth_list is not None and not cert.tn_auth_list.is_conforming:
            # Truncated DER: the crawler read the length-less string one byte short
            # ("67J" for the "867J" the enclosing lengths prove).
            assert expected is not None
            assert cert.spc is not None
            assert cert.spc.endswith(expected)
        else:
            assert cert.spc == expected, cert.fingerprint_sha256
        compared += 1
    return compared


def test_bulk_sample_parses_and_spc_matches_metadata(realworld: Path) -> None:
    data = (realworld / "certs" / "bulk" / "shaken_pki_reports_leaf_certs.pem").read_bytes()
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + b for b in data.split(marker)[1:]]
    assert len(blocks) == 15936
    sample = b"".join(blocks[::BULK_SAMPLE_STEP])
    bundle = parse_certificates(sample)
    assert len(bundle.certs) + len(bundle.problems) == len(blocks[::BULK_SAMPLE_STEP])
    assert len(bundle.problems) <= UNLOADABLE_BULK
    assert _check_spcs(bundle.certs, _metadata(realworld)) > 1900
    for cert in bundle.certs:
        # Real leaves lack SAN and carry a non-critical TNAuthList: that must not fail.
        errors = {f.reason for f in check_leaf_for_verification(cert) if f.is_error}
        assert errors <= {"tnauthlist_missing"}


@pytest.mark.parametrize("folder", ["sti_ca", "sp_sample", "edge_certs"])
def test_curated_folders_parse(realworld: Path, folder: str) -> None:
    meta = _metadata(realworld)
    files = sorted((realworld / "certs" / folder).glob("*.pem"))
    assert files
    unloadable = set()
    for file in files:
        bundle = parse_certificates(file.read_bytes())
        # Comment lines between PEM blocks are tolerated and reported, never fatal.
        assert len(bundle.entries) >= 1
        if any(entry.cert is None for entry in bundle.entries):
            unloadable.add(file.name)
            assert any("cannot load" in p for p in bundle.problems)
        _check_spcs(bundle.certs, meta)
    multi = {"ALL_STI_CA_intermediates.pem", "ALL_STI_CA_roots.pem"}
    assert unloadable - multi == set()
    for file in files:
        if file.name in NULL_PARAMETER_FILES:
            (cert,) = parse_certificates(file.read_bytes()).certs
            assert cert.issued_tbs is not None
            # Evidence stays the certificate as received: the file name carries its digest.
            assert file.name.endswith(f"__{cert.fingerprint_sha256[:8]}.pem")


def test_t_mobile_intermediates_chain_to_their_root(realworld: Path) -> None:
    """Before shaken.certfix every T-Mobile-signed call ended chain_untrusted."""
    folder = realworld / "certs" / "sti_ca"
    (root,) = parse_certificates(
        (folder / "T-Mobile__TMOBILE_PROD_ROOT_STIRSHAKEN_EC__d54b8c44.pem").read_bytes()
    ).certs
    trust = TrustStore.from_certificates([root], name="t-mobile root")
    for name in sorted(NULL_PARAMETER_FILES):
        if "_SUB_" not in name:
            continue
        (sub,) = parse_certificates((folder / name).read_bytes()).certs
        result = validate_chain(sub, [], trust, at=datetime(2024, 1, 1, tzinfo=UTC))
        assert result.trusted, result.findings


@pytest.mark.parametrize(
    ("name", "spc", "deviant"),
    [
        pytest.param("Telonium__08f4adc9_TNAuthList_PrintableString_no_ctx_tag", "755J", True),
        pytest.param("GBSDTech__Edify_SHAKEN__224a236b", "867J", True),
        pytest.param("GBSDTech__MYPBXManager_SHAKEN__ea581385", "558J", True),
        pytest.param("Neustar__SHAKEN_719k__31b8e7e6", "719k", False),
        pytest.param("VOSLogic_com__SHAKEN__3dd37bec", None, False),
    ],
)
def test_edge_certificate_tnauthlists(
    realworld: Path, name: str, spc: str | None, deviant: bool
) -> None:
    (cert,) = _bundle(realworld / "certs" / "edge_certs" / f"{name}.pem")
    assert cert.spc == spc
    codes = {f.code.value for f in cert.profile_findings}
    assert ("tnauthlist_nonconformant" in codes) is deviant


def test_sp_sample_chains_validate_against_sti_ca(realworld: Path) -> None:
    sti_ca = realworld / "certs" / "sti_ca"
    roots = TrustStore.from_pem((sti_ca / "ALL_STI_CA_roots.pem").read_bytes(), name="roots")
    intermediates = _bundle(sti_ca / "ALL_STI_CA_intermediates.pem")
    trusted = 0
    leaves = [
        c for f in sorted((realworld / "certs" / "sp_sample").glob("*.pem")) for c in _bundle(f)
    ]
    for leaf in leaves:
        at = leaf.not_before + timedelta(hours=1)
        result = validate_chain(leaf, intermediates, roots, at=at)
        if result.trusted:
            trusted += 1
            assert result.path[-1] in roots
            assert result.path[0] == leaf
    # Not every issuing CA of the sample is in the corpus (e.g. BigFatTelecom, VOSLogic are
    # self-made); most real SP certificates must chain.
    assert trusted >= len(leaves) // 2, f"{trusted} of {len(leaves)}"
