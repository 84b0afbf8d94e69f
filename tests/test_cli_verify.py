"""`stirscope verify` end to end: the command-line and JSON contracts other tools depend on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from tests.conftest import FIXTURES

CALLS = FIXTURES / "calls"
TRUST = ["--trust", str(FIXTURES / "pki" / "trust"), "--certs", str(FIXTURES / "certs")]
AT = ["--at", "2026-01-15T12:00:05Z"]

PASSPORT_KEYS = {
    "ppt",
    "valid",
    "reason",
    "status_code",
    "attest",
    "origid",
    "orig",
    "dest",
    "iat",
    "x5u",
    "findings",
    "signer",
}
SIGNER_KEYS = {
    "spc",
    "organization",
    "subject",
    "issuer",
    "serial",
    "not_before",
    "not_after",
    "fingerprint_sha256",
    "chain_trusted",
    "revocation",
}


@pytest.mark.parametrize(
    ("name", "exit_code", "verstat", "status", "spcs"),
    [
        ("invite_alpha_a.sip", 0, "TN-Validation-Passed", None, ["1234A"]),
        ("invite_charlie_c.sip", 0, "TN-Validation-Passed", None, ["9012C"]),
        ("invite_diverted.sip", 0, "TN-Validation-Passed", None, ["1234A", "5678B"]),
        ("invite_tampered.sip", 1, "TN-Validation-Failed", 438, ["1234A"]),
        ("invite_untrusted.sip", 1, "TN-Validation-Failed", 437, ["1357W"]),
        ("invite_revoked.sip", 1, "TN-Validation-Failed", 437, ["5678B"]),
        ("invite_unsigned.sip", 1, "No-TN-Validation", 428, []),
    ],
)
def test_verify_sip_json(
    name: str,
    exit_code: int,
    verstat: str,
    status: int | None,
    spcs: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["verify", "--sip", str(CALLS / name), *TRUST, *AT, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == exit_code
    assert out["verstat"] == verstat
    assert out["status_code"] == status
    assert {"verstat", "status_code", "reason_phrase", "passports"} <= out.keys()
    assert [p["signer"]["spc"] for p in out["passports"]] == spcs
    for passport in out["passports"]:
        assert passport.keys() >= PASSPORT_KEYS
        assert passport["signer"].keys() >= SIGNER_KEYS
        assert isinstance(passport["dest"], list)
        for finding in passport["findings"]:
            assert {"reason", "status_code", "detail"} <= finding.keys()


def test_verify_text_output_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--sip", str(CALLS / "invite_revoked.sip"), *TRUST, *AT]) == 1
    out = capsys.readouterr().out
    assert "TN-Validation-Failed (437 Unsupported Credential)" in out
    assert "cert_revoked" in out
    assert "SPC 5678B" in out


def test_verify_identity_values(capsys: pytest.CaptureFixture[str]) -> None:
    raw = (CALLS / "invite_alpha_a.sip").read_bytes().decode()
    identity = next(line[10:] for line in raw.split("\r\n") if line.startswith("Identity: "))
    code = main(
        [
            "verify",
            "--identity",
            identity,
            "--from",
            '"Alpha" <sip:+12025550101@alpha.example;user=phone>;tag=9',
            "--to",
            "<tel:+12025550199>",
            "--date",
            "Thu, 15 Jan 2026 12:00:00 GMT",
            *TRUST,
            "--at",
            "1768478410",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["passports"][0]["orig"] == "12025550101"
    assert out["passports"][0]["dest"] == ["12025550199"]


def test_verify_at_decides_freshness(capsys: pytest.CaptureFixture[str]) -> None:
    call = str(CALLS / "invite_alpha_a.sip")
    assert main(["verify", "--sip", call, *TRUST, "--at", "2026-01-15T12:01:00Z"]) == 0
    assert main(["verify", "--sip", call, *TRUST, "--at", "2026-01-15T12:01:01Z", "--json"]) == 1
    out = capsys.readouterr().out
    assert '"reason": "stale_date"' in out


@pytest.mark.parametrize("workers", [1, 2])
def test_verify_batch_keeps_order(
    workers: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = (CALLS / "batch.jsonl").read_text().splitlines()
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([*lines, "not json", '{"identity": 1}']) + "\n")
    dst = tmp_path / "out.jsonl"
    code = main(["verify", "--batch", str(src), *TRUST, "--workers", str(workers), "-o", str(dst)])
    results = [json.loads(x) for x in dst.read_text().splitlines()]
    assert code == 1  # some lines do not pass
    assert [r["line"] for r in results] == list(range(1, len(lines) + 3))
    assert [r.get("id") for r in results[: len(lines)]] == [json.loads(x)["id"] for x in lines]
    assert results[-1]["error"]["reason"] == "bad_input_line"
    assert results[-2]["error"]["reason"] == "bad_input_line"
    by_id = {r["id"]: r for r in results if "id" in r}
    assert by_id["valid_a"]["verstat"] == "TN-Validation-Passed"
    assert by_id["tampered_payload"]["status_code"] == 438
    assert "unreadable" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["verify"],
        ["verify", "--sip", "x.sip", "--identity", "y"],
        ["verify", "--identity", "abc", "--trust", "fixtures/pki/trust"],
        ["verify", "--sip", "does-not-exist.sip", "--trust", "fixtures/pki/trust"],
        ["verify", "--sip", "-", "--at", "yesterday", "--trust", "fixtures/pki/trust"],
        ["verify", "--sip", str(CALLS / "invite_alpha_a.sip")],
        ["verify", "--sip", str(CALLS / "invite_alpha_a.sip"), "--trust", "missing-dir"],
        [
            "verify",
            "--sip",
            str(CALLS / "invite_alpha_a.sip"),
            "--trust",
            str(CALLS / "batch.jsonl"),
        ],
    ],
    ids=[
        "nothing",
        "two-inputs",
        "identity-without-from",
        "missing-file",
        "bad-at",
        "no-trust",
        "trust-missing",
        "trust-not-a-cert",
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("stirscope verify: ")
    assert "Traceback" not in err


def test_not_sip_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01\x02 definitely not SIP")
    assert main(["verify", "--sip", str(junk), *TRUST]) == 1
    assert "not a SIP message" in capsys.readouterr().err
