"""``stirscope sip parse``: text and JSON output, exit codes 0/1/2."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from service import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sip"


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sip", "parse", str(FIXTURES / "invite_identity.sip")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("INVITE sip:+12125551212@sbc.example.net:5060;user=phone SIP/2.0\n")
    assert "P-Asserted-Identity" in out
    assert "defects: none" in out


def test_json_output_uses_canonical_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sip", "parse", "--json", str(FIXTURES / "rfc4475" / "esc01.sip")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "request"
    assert doc["method"] == "INVITE"
    names = [(h["name"], h["canonical_name"]) for h in doc["headers"]]
    assert ("i", "Call-ID") in names
    assert ("C", "Content-Type") in names
    assert [d["code"] for d in doc["defects"]] == ["header_folding"]


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = (FIXTURES / "rfc4475" / "noreason.sip").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert cli.main(["sip", "parse", "-"]) == 0
    assert capsys.readouterr().out.startswith("SIP/2.0 100 \n")


def test_parse_error_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sip", "parse", str(FIXTURES / "rfc4475" / "bigcode.sip")]) == 1
    err = capsys.readouterr().err
    assert "invalid_status_line" in err
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_strict_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sip", "parse", "--strict", str(FIXTURES / "rfc4475" / "baddate.sip")]) == 1
    assert "invalid_date" in capsys.readouterr().err


def test_unreadable_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sip", "parse", str(tmp_path / "missing.sip")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_running_one_command_imports_only_its_module() -> None:
    """CLI start-up stays cheap: `stirscope sip ...` does not import FastAPI or SQLAlchemy."""
    import subprocess
    import sys

    code = (
        "import sys; from service.cli import main; main(['sip', 'parse', sys.argv[1]]); "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'service.cmd_serve') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(FIXTURES / "invite_identity.sip")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().endswith("[]")
