"""``stirscope cert inspect``: text and JSON Lines output, malformed input, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from tests.conftest import FIXTURES

ALPHA = FIXTURES / "certs" / "certs.alpha.example" / "alpha.pem"
TN_RANGE = FIXTURES / "certs" / "cr.stirscope.example" / "tn-range.pem"


def test_inspect_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "inspect", str(ALPHA)]) == 0
    out = capsys.readouterr().out
    assert "spc:         1234A" in out
    assert "EC P-256" in out
    assert "https://crl.stirscope.example/intermediate.crl" in out


def test_inspect_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "inspect", "--json", str(ALPHA), str(TN_RANGE)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["file"], r["index"]) for r in records] == [
        (str(ALPHA), 0),
        (str(ALPHA), 1),
        (str(TN_RANGE), 0),
        (str(TN_RANGE), 1),
    ]
    leaf, intermediate, range_leaf, _ = records
    assert leaf["spc"] == "1234A"
    assert leaf["is_ca"] is False
    assert leaf["tnauthlist"]["critical"] is False
    assert intermediate["is_ca"] is True
    assert intermediate["tnauthlist"] is None
    assert range_leaf["tnauthlist"]["ranges"] == [{"start": "12025550100", "count": 100}]
    assert {f["code"] for f in range_leaf["profile_findings"]} == {"tnauthlist_not_single_spc"}
    for key in (
        "subject",
        "issuer",
        "serial",
        "not_before",
        "not_after",
        "key_type",
        "crl_urls",
        "policies",
        "fingerprint_sha256",
    ):
        assert key in leaf


def test_malformed_certificate_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(
        ALPHA.read_bytes() + b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n"
    )
    assert main(["cert", "inspect", "--json", str(bad)]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3
    assert records[2]["index"] == 2
    assert "error" in records[2]


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"\x30\x82\x00"], ids=["empty", "text", "der"]
)
def test_unparseable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "x.pem"
    path.write_bytes(content)
    assert main(["cert", "inspect", str(path)]) == 1
    assert str(path) in capsys.readouterr().out


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "inspect", str(ALPHA), str(tmp_path / "absent.pem")]) == 2
    captured = capsys.readouterr()
    assert "absent.pem" in captured.err
    assert "1234A" in captured.out
