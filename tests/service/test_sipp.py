"""A real SIP client against ``stirscope listen --sip``: sipp (Debian ``sip-tester``).

The committed scenario ``tests/service/sipp/uac_identity.xml`` sends an INVITE with an
Identity header signed now with a fixture key (injected through sipp's ``-inf`` CSV file),
expects 302 with ``verstat=TN-Validation-Passed`` in the P-Asserted-Identity and Contact
(checked by sipp regexp actions), then ACKs. A tampered signature makes the same scenario fail,
which proves the checks bite. Skipped when ``sipp`` is not installed.
RFC 8224 section 6.2; 3GPP TS 24.229 section 7.2A.20; RFC 3261 section 17.1.1.3.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.service.invites import ALPHA_X5U, CERTS, DEST, ORIG, TRUST, sign_identity, sip_date

SCENARIO = Path(__file__).resolve().parent / "sipp" / "uac_identity.xml"
SIPP = shutil.which("sipp")
pytestmark = pytest.mark.skipif(
    SIPP is None, reason="sipp not installed (apt-get install sip-tester)"
)


def injection_file(path: Path, *, tamper: bool = False, calls: int = 1) -> Path:
    """sipp ``-inf`` file: PASSporT; x5u; orig; dest; Date (fields 0-4 of the scenario)."""
    now = datetime.now(UTC)
    token = sign_identity(now).split(";", 1)[0]
    if tamper:
        head, payload, sig = token.split(".")
        token = f"{head}.{payload}.{'A' * len(sig)}"
    line = f"{token};{ALPHA_X5U};{ORIG};{DEST};{sip_date(now)};"
    path.write_text("SEQUENTIAL\n" + "\n".join([line] * calls) + "\n")
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, str]]:
    """``stirscope listen`` on loopback UDP and TCP ports chosen by the kernel."""
    args = ["--sip", "udp:127.0.0.1:0", "--sip", "tcp:127.0.0.1:0"]
    args += ["--trust", str(TRUST), "--certs", str(CERTS)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "listen", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    bound: dict[str, str] = {}
    deadline = time.monotonic() + 20
    while len(bound) < 2 and time.monotonic() < deadline:
        words = proc.stderr.readline().split()
        if not words:
            break
        if len(words) >= 4 and words[2] == "sip":
            transport, _, hostport = words[3].partition(":")
            bound[transport] = hostport
    try:
        assert set(bound) == {"udp", "tcp"}, bound
        yield bound
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def run_sipp(
    target: str, transport: str, inf: Path, workdir: Path, calls: int = 1
) -> subprocess.CompletedProcess[str]:
    assert SIPP is not None
    command = [
        SIPP,
        target,
        "-sf",
        str(SCENARIO),
        "-inf",
        str(inf),
        "-m",
        str(calls),
        "-t",
        "u1" if transport == "udp" else "t1",
        "-i",
        "127.0.0.1",
        "-p",
        "0",
        "-timeout",
        "15s",
        "-nostdin",
        "-trace_err",
    ]
    return subprocess.run(
        command,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_invite_gets_302_with_verstat(
    server: dict[str, str], transport: str, tmp_path: Path
) -> None:
    inf = injection_file(tmp_path / "calls.csv", calls=3)
    result = run_sipp(server[transport], transport, inf, tmp_path, calls=3)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Successful call" in result.stdout


def test_sipp_scenario_fails_on_a_bad_signature(server: dict[str, str], tmp_path: Path) -> None:
    inf = injection_file(tmp_path / "bad.csv", tamper=True)
    result = run_sipp(server["udp"], "udp", inf, tmp_path)
    assert result.returncode != 0
    errors = "".join(p.read_text() for p in tmp_path.glob("*_errors.log"))
    assert "verstat=TN-Validation-Failed" in errors  # the 302 said so; the regexp check failed
