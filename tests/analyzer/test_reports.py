"""Writers: CSV flat fields, the self-contained HTML report, the evidence manifest, JSONL shape."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from analyzer.records import CSV_FIELDS
from analyzer.trustload import load_trust_store
from analyzer.verifying import VerifierConfig
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
DEMO = FIXTURES / "demo" / "demo.pcap"
TRUST_DIR = FIXTURES / "pki" / "trust"
TRUST = ["--trust", str(TRUST_DIR), "--certs", str(FIXTURES / "certs")]
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "source", "wbr"}
SVG_VOID = {"rect", "line", "path", "circle"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["analyze", *argv]) == 0
    return capsys.readouterr().out


def test_csv_has_the_flat_fields_and_one_row_per_call(capsys: pytest.CaptureFixture[str]) -> None:
    text = run(capsys, str(DEMO), *TRUST, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_FIELDS
    assert len(rows) == 13
    by_id = {r["call_id"].split("@")[0]: r for r in rows}
    alpha = by_id["demo-01-alpha-udp"]
    assert (alpha["verstat"], alpha["attest"], alpha["signer_spc"]) == (
        "TN-Validation-Passed", "A", "1234A",
    )  # fmt: skip
    assert alpha["from_tn"] == "12025550101"
    assert by_id["demo-05-tampered"]["reason"] == "signature_invalid"
    assert by_id["demo-13-malformed-identity"]["anomalies"] == "malformed_identity"


class StrictParser(HTMLParser):
    """Checks tag balance and collects what a self-contained report must not have."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action") or (value and "url(" in value):
                self.external.append(f"{tag} {name}={value}")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(text: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(text)
    parser.close()
    return parser


def test_html_report_is_well_formed_and_self_contained(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    run(capsys, str(DEMO), *TRUST, "--format", "html", "-o", str(out))
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser = parse_html(text)
    assert parser.errors == []
    assert parser.stack == []
    assert parser.external == []
    assert "script" not in parser.tags
    assert "url(" not in text
    assert parser.tags.count("svg") == 4  # attestation, timeline, signers, reasons
    body = " ".join(parser.text)
    for heading in ("Attestation mix", "Verdicts over time", "Calls per signer",
                    "Failure reasons", "Evidence", "Anomalies", "Calls", "Manifest"):  # fmt: skip
        assert heading in body
    assert "demo-05-tampered@sbc.alpha.example" in body
    assert hashlib.sha256(DEMO.read_bytes()).hexdigest() in body


def _hostile_capture(tmp_path: Path) -> Path:
    """The demo's first INVITE with markup in the From display name and the Call-ID (same
    lengths, so the capture framing stays valid)."""
    data = DEMO.read_bytes()
    hostile = data.replace(b'"Alpha Caller"', b'"<script>1</>"', 1)
    hostile = hostile.replace(b"demo-01-alpha-udp@", b"demo<b>01</b>xxxx@", 1)
    assert hostile != data
    path = tmp_path / "hostile.pcap"
    path.write_bytes(hostile)
    return path


def test_html_escapes_capture_content(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    capture = _hostile_capture(tmp_path)
    out = tmp_path / "report.html"
    run(capsys, str(capture), *TRUST, "--format", "html", "-o", str(out))
    text = out.read_text(encoding="utf-8")
    parser = parse_html(text)
    assert parser.errors == []
    assert "script" not in parser.tags
    assert "b" not in parser.tags
    assert "demo&lt;b&gt;01&lt;/b&gt;xxxx@" in text
    assert "demo<b>01</b>xxxx@" in " ".join(parser.text)


def test_manifest_records_inputs_trust_configuration_and_time_policy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "m.json"
    run(capsys, str(DEMO), *TRUST, "--format", "jsonl", "--manifest", str(path), "--at",
        "2026-01-15T12:00:30Z")  # fmt: skip
    manifest = json.loads(path.read_text())
    data = DEMO.read_bytes()
    assert manifest["inputs"] == [
        {"name": str(DEMO), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]
    assert (
        manifest["trust_store"]["fingerprint_sha256"] == load_trust_store([TRUST_DIR]).fingerprint
    )
    config = VerifierConfig(trust=(TRUST_DIR,), certs_dirs=(FIXTURES / "certs",))
    assert manifest["configuration"] == json.loads(json.dumps(config.to_json()))
    assert manifest["verification_time"] == {"mode": "fixed", "at": "2026-01-15T12:00:30.000000Z"}
    assert manifest["tool"]["name"] == "stirscope"
    assert manifest["counts"]["calls"] == 13
    assert manifest["counts"]["summary"]["verstat"]["TN-Validation-Passed"] >= 1
    again = tmp_path / "m2.json"
    run(capsys, str(DEMO), *TRUST, "--format", "jsonl", "--manifest", str(again), "--at",
        "2026-01-15T12:00:30Z")  # fmt: skip
    assert again.read_bytes() == path.read_bytes()


def test_jsonl_passports_are_the_verify_json_passports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    records = [
        json.loads(x) for x in run(capsys, str(DEMO), *TRUST, "--format", "jsonl").split("\n") if x
    ]
    record = next(r for r in records if r["call_id"].startswith("demo-10-diverted"))
    # The same INVITE through `stirscope verify --sip --json` as of the same moment.
    from analyzer.capture import ObservedMessage, iter_messages
    from sip import Request

    invite = next(
        i.message for i in iter_messages(DEMO)
        if isinstance(i, ObservedMessage) and isinstance(i.message, Request)
        and i.message.call_id == record["call_id"]
    )  # fmt: skip
    sip_file = tmp_path / "invite.sip"
    sip_file.write_bytes(invite.raw)
    assert main(["verify", "--sip", str(sip_file), *TRUST, "--at", record["at"], "--json"]) in (
        0,
        1,
    )
    verified = json.loads(capsys.readouterr().out)
    assert record["passports"] == verified["passports"]
    assert record["verstat"] == verified["verstat"]
    assert len(record["passports"]) == 2  # shaken + div
