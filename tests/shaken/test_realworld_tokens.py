"""Real-world Identity headers (../shared/data/realworld, see its PROVENANCE.md).

Every value parses and decodes without an exception, yields the claims its record documents,
and the signatures PROVENANCE.md marks VERIFIES / FAILS do so with the named key file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from shaken.errors import Reason, Severity
from shaken.es256 import verify_es256
from shaken.identity import IdentityHeader, parse_identity_header
from shaken.party import Party
from shaken.passport import DecodedPassport, check_claims, check_header, decode_passport

pytestmark = pytest.mark.realworld

HEADERS = "identity/headers.jsonl"
VECTORS = "vectors/identity_test_vectors.jsonl"
EDGE = "edge/identity_edge_cases.jsonl"
# Several header lines in one record ("Identity: foo\r\nIdentity: bar"); folded lines start
# with whitespace and stay attached.
_HEADER_LINE_SPLIT = re.compile(r"\r?\n(?=[A-Za-z-]+:)")
# Documented decodes our strict decoder deliberately does not reproduce.
DECODE_EXCEPTIONS = {
    # ',' injected into the base64url: the record's decoder skipped it, we reject the segment.
    "V15_cgrates_comma_injected_1": Reason.INVALID_BASE64,
}


def load_records(root: Path, name: str) -> list[dict[str, Any]]:
    with (root / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def header_values(record: dict[str, Any]) -> list[str]:
    text = record.get("header") or record.get("header_template") or ""
    return [v for v in _HEADER_LINE_SPLIT.split(text) if v]


def parse_all(value: str) -> tuple[IdentityHeader, DecodedPassport, set[Reason]]:
    identity = parse_identity_header(value)
    decoded = decode_passport(identity.token)
    found = [*identity.findings, *decoded.findings]
    found += check_header(decoded, identity) + check_claims(decoded)
    return identity, decoded, {f.reason for f in found}


@pytest.mark.parametrize("name", [HEADERS, VECTORS, EDGE])
def test_every_record_parses_without_exception(realworld: Path, name: str) -> None:
    records = load_records(realworld, name)
    assert records
    for record in records:
        for value in header_values(record):
            parse_all(value)  # must not raise


def _documented(record: dict[str, Any]) -> bool:
    decoded = record.get("decoded") or {}
    return isinstance(decoded.get("jose"), dict) and isinstance(decoded.get("payload"), dict)


def _party(value: object) -> Party | None:
    if isinstance(value, str):  # libstirshaken writes the object as a JSON string
        value = json.loads(value)
    if not isinstance(value, dict):
        return None
    return Party.tn(value["tn"]) if "tn" in value else Party.uri(value["uri"])


@pytest.mark.parametrize("name", [HEADERS, VECTORS])
def test_documented_decodes_and_claims(realworld: Path, name: str) -> None:
    checked = 0
    for record in load_records(realworld, name):
        (value,) = header_values(record)
        identity, decoded, reasons = parse_all(value)
        rid = record["id"]
        if rid in DECODE_EXCEPTIONS:
            assert DECODE_EXCEPTIONS[rid] in reasons, rid
            continue
        if "info" in record:
            info = record["info"]
            assert identity.info == (info.strip("<>") if info else None), rid
            assert identity.alg == record["alg_param"], rid
            ppt = record["ppt_param"]
            assert identity.ppt == (ppt.strip('"') if ppt else None), rid
        if not _documented(record):
            continue
        assert decoded.header == record["decoded"]["jose"], rid
        assert decoded.payload == record["decoded"]["payload"], rid
        claims = decoded.claims
        assert claims is not None
        if "attest" in record:
            assert (claims.attest, claims.origid, claims.iat) == (
                record["attest"], record["origid"], record["iat"],
            ), rid  # fmt: skip
            assert claims.orig == _party(record["orig"]), rid
            dest = record["dest"]
            if isinstance(dest, dict):
                expected = [Party.tn(t) for t in dest.get("tn", [])]
                expected += [Party.uri(u) for u in dest.get("uri", [])]
                assert list(claims.dest) == expected, rid
            elif isinstance(dest, str):
                assert claims.dest == (_party(dest),), rid
        assert claims.x5u == record["x5u"], rid
        checked += 1
    assert checked >= 5


def _public_key(path: Path) -> ec.EllipticCurvePublicKey:
    pem = path.read_bytes()
    if b"CERTIFICATE" in pem:
        key: object = x509.load_pem_x509_certificate(pem).public_key()
    elif b"PRIVATE KEY" in pem:
        key = load_pem_private_key(pem, password=None).public_key()
    else:
        key = load_pem_public_key(pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def test_signatures_marked_in_provenance(realworld: Path) -> None:
    outcomes: dict[str, bool] = {}
    for record in load_records(realworld, VECTORS):
        result = record.get("signature_check_with_keyfile")
        if result not in ("VERIFIES", "FAILS"):
            continue
        (value,) = header_values(record)
        decoded = decode_passport(parse_identity_header(value).token)
        assert decoded.signing_input is not None
        assert decoded.signature is not None
        key = _public_key(realworld / record["keyfile"])
        outcomes[record["id"]] = verify_es256(key, decoded.signing_input, decoded.signature)
        assert outcomes[record["id"]] is (result == "VERIFIES"), record["id"]
    assert outcomes["V_appliedbits_tampered"] is False
    assert outcomes["V20_rfc8225_appendix_a"] is False
    assert sum(outcomes.values()) >= 10


# Expected reasons per record: the behaviour each record's "expected" field documents.
EXPECTED = [
    ("R01_bandwidth_docs", set(), HEADERS),
    ("R02_neustar_11184_jambonz_vapi_log", set(), HEADERS),
    # A bare token: the JOSE ppt has no Identity ppt to match.
    ("R05_verizon_twilio_stirpassporttoken", {Reason.MISSING_INFO_PARAM, Reason.PPT_MISMATCH},
     HEADERS),
    ("R07_sansay_nss_lab_997T_302", set(), HEADERS),
    ("V03_libstirshaken_readme_nonnumeric_tn", {Reason.MISSING_INFO_PARAM, Reason.PPT_MISMATCH,
                                                Reason.INVALID_ORIG,
                                                Reason.INVALID_DEST}, VECTORS),
    ("V04_libstirshaken_readme_spc_token", {Reason.MISSING_INFO_PARAM, Reason.INVALID_TYP,
                                            Reason.INVALID_IAT,
                                            Reason.INVALID_ORIG, Reason.INVALID_DEST}, VECTORS),
    ("V05_libstirshaken_ref_passport_string_claims", {Reason.MISSING_INFO_PARAM,
                                                      Reason.PPT_MISMATCH,
                                                      Reason.INVALID_ORIG, Reason.INVALID_DEST,
                                                      Reason.INVALID_ORIGID}, VECTORS),
    ("V12_freeswitch_identity_compact_check", {Reason.MALFORMED_TOKEN}, VECTORS),
    ("V14_cgrates_no_alg_param", {Reason.INVALID_ORIGID}, VECTORS),
    ("V15_cgrates_comma_injected_1", {Reason.COMMA_JOINED_IDENTITY, Reason.INVALID_BASE64},
     VECTORS),
    ("V16_cgrates_info_mismatch", {Reason.X5U_INFO_MISMATCH, Reason.INVALID_ORIGID}, VECTORS),
    ("V18_comcast_vesper_api_example", {Reason.PPT_MISMATCH, Reason.NON_CANONICAL_JSON,
                                        Reason.INVALID_ORIG, Reason.INVALID_DEST,
                                        Reason.INVALID_ORIGID}, VECTORS),
    ("V19_portsip_doc_missing_semicolon", {Reason.MALFORMED_IDENTITY_HEADER,
                                           Reason.X5U_INFO_MISMATCH}, VECTORS),
    ("V_opensips_12", {Reason.PPT_MISMATCH, Reason.NON_CANONICAL_JSON, Reason.UNSUPPORTED_ALG,
                       Reason.ALG_MISMATCH, Reason.X5U_INFO_MISMATCH}, VECTORS),
    ("V_appliedbits_unordered", {Reason.NON_CANONICAL_JSON, Reason.INVALID_ORIG,
                                 Reason.INVALID_DEST}, VECTORS),
    ("V_appliedbits_mismatch", {Reason.X5U_INFO_MISMATCH, Reason.INVALID_ORIG,
                                Reason.INVALID_DEST}, VECTORS),
    ("V_asterisk_legacy_2020-06-16", {Reason.INVALID_BASE64, Reason.INVALID_SIGNATURE_ENCODING,
                                      Reason.MALFORMED_IDENTITY_HEADER, Reason.INVALID_DEST,
                                      Reason.INVALID_ORIGID}, VECTORS),
    ("V_asterisk_legacy_2021-05-10", {Reason.INVALID_SIGNATURE_ENCODING, Reason.NON_CANONICAL_JSON,
                                      Reason.MALFORMED_IDENTITY_HEADER, Reason.INVALID_DEST},
     VECTORS),
    ("E_opensipit_010-identity-garbage", {Reason.INVALID_BASE64, Reason.INVALID_JSON,
                                          Reason.MISSING_INFO_PARAM}, EDGE),
    ("E_opensipit_011-invalid-jwt", {Reason.INVALID_SIGNATURE_ENCODING, Reason.PPT_MISMATCH,
                                     Reason.MISSING_INFO_PARAM}, EDGE),
    ("E_opensipit_param_wrongalg", {Reason.UNSUPPORTED_ALG, Reason.MALFORMED_TOKEN},
     EDGE),
    ("E_tmobile_truncated_tail", {Reason.MALFORMED_TOKEN, Reason.MISSING_INFO_PARAM}, EDGE),
    ("E_vonage_doc_der_like_sig", {Reason.INVALID_SIGNATURE_ENCODING,
                                   Reason.X5U_INFO_MISMATCH}, EDGE),
    ("E_voxpulse_ellipsis", {Reason.MALFORMED_TOKEN}, EDGE),
    ("E_bandwidth_html_escaped_params", {Reason.MALFORMED_IDENTITY_HEADER}, EDGE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rid", "expected", "name"), [pytest.param(*row, id=row[0]) for row in EXPECTED]
)
def test_expected_reasons(realworld: Path, rid: str, expected: set[Reason], name: str) -> None:
    (record,) = [r for r in load_records(realworld, name) if r["id"] == rid]
    (value,) = header_values(record)
    assert parse_all(value)[2] == expected


def test_legacy_and_quirky_edges_still_expose_claims(realworld: Path) -> None:
    edge = {r["id"]: r for r in load_records(realworld, EDGE)}
    folded = decode_passport(
        parse_identity_header(edge["E_folded_identity_rvoip_doc"]["header"]).token
    )
    assert folded.payload is not None
    assert folded.payload["attest"] == "A"
    html = parse_identity_header(edge["E_bandwidth_html_escaped_params"]["header"])
    (r01,) = [r for r in load_records(realworld, HEADERS) if r["id"] == "R01_bandwidth_docs"]
    assert (html.token, html.info, html.ppt) == (
        parse_identity_header(r01["header"]).token, r01["x5u"], "shaken",
    )  # fmt: skip
    pair = [
        parse_identity_header(v) for v in header_values(edge["E_div_passport_pair_asterisk_1209"])
    ]
    assert [h.ppt for h in pair] == ["shaken", "div"]
    assert all(h.info is not None for h in pair)


def test_twilio_calltoken_embeds_the_same_identity(realworld: Path) -> None:
    text = (realworld / "identity/twilio_calltoken_examples.txt").read_text(encoding="utf-8")
    headers = {r["id"][:3]: r for r in load_records(realworld, HEADERS)}
    found = 0
    for line in text.splitlines():
        if not line.startswith(("{", "%7B")):
            continue
        call_token = json.loads(unquote(line) if line.startswith("%7B") else line)
        for value in call_token["identityHeaderTokens"]:
            identity = parse_identity_header(value)
            decoded = decode_passport(identity.token)
            assert identity.ppt == "shaken"
            assert decoded.findings == ()
            assert check_header(decoded, identity) == []
            claims = decoded.claims
            assert claims is not None
            matches = [r for r in headers.values() if r.get("origid") == claims.origid]
            assert len(matches) == 1
            assert matches[0]["iat"] == claims.iat
            found += 1
        # The parent call token is a Twilio JWT, not a PASSporT: no typ, no x5u.
        parent = decode_passport(call_token["parentCallInfoToken"])
        assert parent.header == {"alg": "ES256"}
    assert found == 4


def test_warnings_do_not_hide_clean_carrier_tokens(realworld: Path) -> None:
    for record in load_records(realworld, HEADERS):
        if record["id"] in ("R05_verizon_twilio_stirpassporttoken",):
            continue  # a bare token without Identity parameters
        (value,) = header_values(record)
        identity = parse_identity_header(value)
        decoded = decode_passport(identity.token)
        errors = [
            f
            for f in [*identity.findings, *decoded.findings, *check_claims(decoded)]
            if f.severity is Severity.ERROR
        ]
        if record["id"].startswith("R06"):  # x5u corrupted by the publisher: JSON broken
            assert {f.reason for f in errors} == {Reason.INVALID_JSON}
            continue
        assert errors == [], record["id"]
