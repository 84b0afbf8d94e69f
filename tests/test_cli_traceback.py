"""`stirscope traceback`: from captures and from analyze results, formats, errors, determinism."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import jsonschema
import pytest

from analyzer.traceback_report import CSV_FIELDS
from service.cli import main
from tests.conftest import FIXTURES, ROOT

TB = FIXTURES / "traceback"
CAPTURE = str(TB / "traceback.pcap")
TRUST = ["--trust", str(FIXTURES / "pki" / "trust"), "--certs", str(FIXTURES / "certs")]
FILES = [
    "--peers", str(TB / "peers.csv"), "--providers", str(TB / "providers.csv"),
    "--watch", str(TB / "watchlist.txt"), "--network", "Our Telco",
]  # fmt: skip
SCHEMA = json.loads((ROOT / "schemas" / "traceback-candidate.schema.json").read_text("utf-8"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["traceback", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tb") / "calls.jsonl"
    assert main(["analyze", CAPTURE, *TRUST, "--format", "jsonl", "-o", str(path)]) == 0
    return path


def test_default_selection_from_a_capture(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, CAPTURE, *TRUST, *FILES)
    assert code == 0
    candidates = lines(out)
    # 12 C-attested + 3 watched + 1 unsigned from a signing peer + 3 replays + 2 failed
    assert len(candidates) == 21
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for candidate in candidates:
        validator.validate(candidate)
    assert "23 calls, 21 candidates" in err


def test_captures_and_results_give_the_same_candidates(
    capsys: pytest.CaptureFixture[str], results: Path
) -> None:
    _, direct, _ = run(capsys, CAPTURE, *TRUST, *FILES, "--select", "all")
    code, recorded, _ = run(capsys, "--from-results", str(results), *FILES, "--select", "all")
    assert code == 0
    a, b = lines(direct), lines(recorded)
    assert len(a) == len(b) == 23
    for x, y in zip(a, b, strict=True):
        for key in ("candidate_id", "hops", "call", "itg_prefill", "replay", "campaign_ids"):
            assert x[key] == y[key], key
        assert x["evidence_source"]["kind"] == "capture"  # type: ignore[index]
        assert y["evidence_source"]["kind"] == "call_records"  # type: ignore[index]


def test_output_is_byte_identical_across_runs(
    capsys: pytest.CaptureFixture[str], results: Path
) -> None:
    first = run(capsys, "--from-results", str(results), *FILES, "--format", "json")[1]
    second = run(capsys, "--from-results", str(results), *FILES, "--format", "json")[1]
    assert first == second


def test_csv_has_the_portal_columns(capsys: pytest.CaptureFixture[str], results: Path) -> None:
    code, out, _ = run(capsys, "--from-results", str(results), *FILES, "--format", "csv",
                       "--timezone", "America/Chicago")  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == CSV_FIELDS
    assert len(rows) == 21
    robo = next(r for r in rows if r["sip_call_id"].startswith("robo-00"))
    assert robo["calling_number"] == "3125550100"
    assert robo["call_datetime_utc"] == "2026-01-15T13:00:00.000Z"
    assert robo["call_datetime_local"] == "2026-01-15T07:00:00.000-06:00"
    assert robo["time_zone"] == "America/Chicago"
    assert robo["received_from"] == "Gateway Two"
    assert robo["signer_status"] == "gateway_candidate"
    assert robo["review_required"] == "true"


def test_json_document_carries_campaigns(capsys: pytest.CaptureFixture[str], results: Path) -> None:
    _, out, _ = run(capsys, "--from-results", str(results), *FILES, "--format", "json")
    document = json.loads(out)
    assert document["summary"] == {"calls": 23, "candidates": 21, "campaigns": 4}
    ids = [c["campaign_id"] for c in document["campaigns"]]
    assert "signer:9012C:origid:2f0b7c4e-6b1a-4f53-9d2e-6a5e1c3b9a01" in ids
    assert document["run"]["files"]["peers"]["rows"] == 4
    assert len(document["run"]["config_sha256"]) == 64


def test_html_report_with_campaigns(
    capsys: pytest.CaptureFixture[str], results: Path, tmp_path: Path
) -> None:
    target = tmp_path / "report.html"
    code, out, _ = run(capsys, "--from-results", str(results), *FILES, "--format", "html",
                       "-o", str(target), "--network", "<b>Telco</b>")  # fmt: skip
    assert code == 0
    assert "21 candidates" in out  # the summary goes to stdout with -o
    page = target.read_text("utf-8")
    assert "<h2>Campaigns</h2>" in page
    assert "calling:+1312555XXXX" in page
    assert "<b>Telco</b>" not in page
    assert "&lt;b&gt;Telco&lt;/b&gt;" in page


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ([], "one of them"),
        ([CAPTURE, "--from-results", "x.jsonl"], "one of them"),
        ([CAPTURE], "no trust anchors"),
        (["--from-results", "missing.jsonl"], "cannot read missing.jsonl"),
        ([CAPTURE, *TRUST, "--select", "watch"], "--select watch needs --watch"),
        ([CAPTURE, *TRUST, "--select", "bogus"], "unknown rule"),
        ([CAPTURE, *TRUST, "--timezone", "Mars/Olympus"], "not an IANA time zone"),
        ([CAPTURE, *TRUST, "--campaign-min", "0"], "--campaign-min"),
        ([str(FIXTURES / "README.md"), *TRUST], "not a pcap"),
    ],
    ids=["no-input", "both-inputs", "no-trust", "missing-results", "watch-without-file",
         "bad-rule", "bad-zone", "bad-campaign-min", "not-a-capture"],
)  # fmt: skip
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str
) -> None:
    code, _, err = run(capsys, *extra)
    assert code == 2
    assert fragment in err


@pytest.mark.parametrize(
    ("option", "text", "fragment"),
    [
        ("--peers", "match,name\n192.0.2.1,A\n192.0.2.1,B\n", "line 3: duplicate match"),
        ("--providers", "spc,name\n1234A,A\n1234A\n", "line 3: empty name"),
        ("--watch", "+12025550111\nnope\n", "line 2: bad entry"),
    ],
    ids=["peers", "providers", "watch"],
)
def test_malformed_data_files_name_the_line(
    capsys: pytest.CaptureFixture[str],
    results: Path,
    tmp_path: Path,
    option: str,
    text: str,
    fragment: str,
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    code, out, err = run(capsys, "--from-results", str(results), option, str(path))
    assert code == 2
    assert out == ""
    assert f"{path} {fragment}" in err


@pytest.mark.parametrize(
    "bad", ["{not json", "[1, 2]", '{"call_id": "x"}', '{"call_id": 1, "start_ns": 2}'],
    ids=["not-json", "not-an-object", "no-start", "wrong-type"],
)  # fmt: skip
def test_malformed_call_record_names_the_line(
    capsys: pytest.CaptureFixture[str], results: Path, tmp_path: Path, bad: str
) -> None:
    first = results.read_text("utf-8").splitlines()[0]
    path = tmp_path / "calls.jsonl"
    path.write_text(f"{first}\n\n{bad}\n", encoding="utf-8")
    code, _, err = run(capsys, "--from-results", str(path))
    assert code == 2
    assert f"{path} line 3: not a call record" in err


def test_zero_candidates_is_success(capsys: pytest.CaptureFixture[str], results: Path) -> None:
    code, out, err = run(capsys, "--from-results", str(results), "--select", "watch+replay",
                         "--watch", str(TB / "watchlist.txt"))  # fmt: skip
    assert code == 0
    assert out == ""
    assert "0 candidates" in err
