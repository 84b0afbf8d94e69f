"""RFC 9795 rcdi digests and checks, with the RFC vectors (STANDARDS-VECTORS.md V10)."""

from __future__ import annotations

import json

import pytest

from shaken.errors import Reason, Severity
from shaken.jose import canonical_json
from shaken.rcd import check_rcdi, rcdi_digest

NAM = "Q Branch Spy Gadgets"
NAM_DIGEST = "sha256-sM275lTgzCte+LHOKHtU4SxG8shlOo6OS4ot8IJQImY"
ICON_DIGEST = "sha256-RojgWwU6xUtI4q82+kHPyHm1JKbm7+663bMvzymhkl4"


def jcard(photo: str) -> list[object]:
    return [
        "vcard",
        [
            ["version", {}, "text", "4.0"],
            ["fn", {}, "text", "Q Branch"],
            ["org", {}, "text", "MI6;Q Branch Spy Gadgets"],
            ["photo", {}, "uri", photo],
            ["logo", {}, "uri", "https://example.com/logos/mi6-256x256.jpg"],
            ["logo", {}, "uri", "https://example.com/logos/mi6-64x64.jpg"],
        ],
    ]


QM_JCARD = jcard("https://example.com/photos/quartermaster-256x256.png")
Q_JCARD = jcard("https://example.com/photos/q-256x256.png")


@pytest.mark.parametrize(
    ("value", "digest"),
    [
        pytest.param(NAM, NAM_DIGEST, id="rfc9795-8.3-nam-with-quotes"),
        pytest.param(QM_JCARD, "sha256-7kdCBZqH0nqMSPsmABvsKlHPhZEStgjojhdSJGRr3rk",
                     id="rfc9795-6.1.3-jcd"),
        pytest.param(Q_JCARD, "sha256-qCn4pEH6BJu7zXndLFuAP6DwlTv5fRmJ1AFkqftwnCs",
                     id="rfc9795-8.3-jcl"),
        pytest.param(NAM.encode(), "sha256-tbh37rWCJ/BF9cuhFJFpJTWb8sVRb0L2F6iGDVZSBLo",
                     id="bytes-without-quotes-differ"),
    ],
)  # fmt: skip
def test_rfc_digests(value: object, digest: str) -> None:
    assert rcdi_digest(value) == digest


@pytest.mark.parametrize("alg", ["sha256", "sha384", "sha512"])
def test_all_mandatory_algorithms(alg: str) -> None:
    digest = rcdi_digest(NAM, alg)
    assert digest.startswith(f"{alg}-")
    assert "=" not in digest
    assert check_rcdi({"nam": NAM}, {"/nam": digest}) == []


def test_unsupported_algorithm_raises() -> None:
    with pytest.raises(ValueError, match="md5"):
        rcdi_digest(NAM, "md5")


def found(
    rcd: dict[str, object], rcdi: dict[str, object], fetched: dict[str, bytes] | None = None
) -> list[tuple[Reason, Severity]]:
    return [(f.reason, f.severity) for f in check_rcdi(rcd, rcdi, fetched)]


MISMATCH = (Reason.RCDI_MISMATCH, Severity.WARNING)
NOT_VERIFIED = (Reason.RCD_NOT_VERIFIED, Severity.INFO)
ICON = "https://example.com/photos/q-256x256.png"
JCL = "https://example.com/qbranch.json"


@pytest.mark.parametrize(
    ("rcd", "rcdi", "fetched", "expected"),
    [
        pytest.param({"nam": NAM}, {"/nam": NAM_DIGEST}, None, [], id="nam-ok"),
        pytest.param({"nam": NAM}, {"/nam": NAM_DIGEST + "="}, None, [], id="nam-padded-ok"),
        pytest.param({"nam": "Q Branch"}, {"/nam": NAM_DIGEST}, None, [MISMATCH],
                     id="nam-changed"),
        pytest.param({"nam": NAM, "icn": ICON}, {"/nam": NAM_DIGEST, "/icn": ICON_DIGEST}, None,
                     [NOT_VERIFIED], id="rfc-8.3-icn-not-fetched"),
        pytest.param({"nam": NAM, "icn": ICON}, {"/icn": rcdi_digest(b"PNG")}, {ICON: b"PNG"}, [],
                     id="icn-fetched-ok"),
        pytest.param({"nam": NAM, "icn": ICON}, {"/icn": rcdi_digest(b"PNG")}, {ICON: b"GIF"},
                     [MISMATCH], id="icn-fetched-mismatch"),
        pytest.param({"nam": NAM, "jcd": QM_JCARD},
                     {"/jcd": "sha256-7kdCBZqH0nqMSPsmABvsKlHPhZEStgjojhdSJGRr3rk"}, None, [],
                     id="jcd-inline-ok"),
        pytest.param({"nam": NAM, "jcd": QM_JCARD}, {"/jcd/1/3/3": ICON_DIGEST}, None,
                     [NOT_VERIFIED], id="jcd-photo-not-fetched"),
        pytest.param({"nam": NAM, "jcd": QM_JCARD},
                     {"/jcd/1/3/3": rcdi_digest(b"img")},
                     {"https://example.com/photos/quartermaster-256x256.png": b"img"}, [],
                     id="jcd-photo-fetched"),
        pytest.param({"nam": NAM, "jcd": QM_JCARD}, {"/jcd/1/1": rcdi_digest(QM_JCARD[1][1])},  # type: ignore[index]
                     None, [], id="jcd-json-member"),
        pytest.param({"nam": NAM, "jcl": JCL},
                     {"/jcl": "sha256-qCn4pEH6BJu7zXndLFuAP6DwlTv5fRmJ1AFkqftwnCs"},
                     {JCL: canonical_json(Q_JCARD).encode()}, [], id="rfc-8.3-jcl-fetched"),
        pytest.param({"nam": NAM, "jcl": JCL},
                     {"/jcl": "sha256-qCn4pEH6BJu7zXndLFuAP6DwlTv5fRmJ1AFkqftwnCs"},
                     {JCL: json.dumps(Q_JCARD, indent=1).encode()}, [MISMATCH],
                     id="jcl-body-bytes-matter"),
        pytest.param({"nam": NAM, "jcl": JCL},
                     {"/jcl": "sha256-qCn4pEH6BJu7zXndLFuAP6DwlTv5fRmJ1AFkqftwnCs",
                      "/jcl/1/3/3": ICON_DIGEST}, None, [NOT_VERIFIED, NOT_VERIFIED],
                     id="rfc-8.3-jcl-nothing-fetched"),
        pytest.param({"nam": NAM, "jcl": JCL}, {"/jcl/1/3/3": rcdi_digest(b"img")},
                     {JCL: canonical_json(Q_JCARD).encode(), ICON: b"img"}, [],
                     id="jcl-inner-photo-fetched"),
        pytest.param({"nam": NAM}, {"/missing": NAM_DIGEST}, None, [MISMATCH],
                     id="pointer-unresolved"),
        pytest.param({"nam": NAM}, {"nam": NAM_DIGEST}, None, [MISMATCH], id="pointer-no-slash"),
        pytest.param({"nam": NAM, "jcd": QM_JCARD}, {"/jcd/01": NAM_DIGEST}, None, [MISMATCH],
                     id="pointer-leading-zero"),
        pytest.param({"nam": NAM, "jcd": QM_JCARD}, {"/jcd/-": NAM_DIGEST}, None, [MISMATCH],
                     id="pointer-dash"),
        pytest.param({"nam": NAM}, {"/nam": "md5-abc"}, None, [MISMATCH], id="bad-alg"),
        pytest.param({"nam": NAM}, {"/nam": "sha256-!!!"}, None, [MISMATCH], id="bad-base64"),
        pytest.param({"nam": NAM}, {"/nam": 5}, None, [MISMATCH], id="digest-not-string"),
        pytest.param({"a/b": "x", "m~n": "y"}, {"/a~1b": rcdi_digest("x"),
                     "/m~0n": rcdi_digest("y")}, None, [], id="pointer-escapes"),
        pytest.param({"nam": NAM, "jcl": JCL}, {"/jcl/1": NAM_DIGEST}, {JCL: b"not json"},
                     [MISMATCH], id="jcl-not-json"),
    ],
)  # fmt: skip
def test_check_rcdi(
    rcd: dict[str, object],
    rcdi: dict[str, object],
    fetched: dict[str, bytes] | None,
    expected: list[tuple[Reason, Severity]],
) -> None:
    assert found(rcd, rcdi, fetched) == expected
