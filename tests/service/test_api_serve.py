"""A real ``stirscope serve`` on 127.0.0.1: ready, sign and verify against the wall clock,
errors as JSON, and a graceful SIGTERM shutdown with exit status 0 (1 and 2 workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.service.api_client import (
    ALPHA_KEY,
    ALPHA_X5U,
    CERTS,
    TRUST,
    atis_body,
    bearer,
    fixture_call,
    free_port,
    private_copy,
    wait_ready,
    write_keys,
)

STOP_TIMEOUT_S = 30.0


class Served:
    def __init__(self, base: str, process: subprocess.Popen[bytes], stderr: Path) -> None:
        self.base = base
        self.process = process
        self.stderr = stderr

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    stderr = tmp_path / "stderr.log"
    argv = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(request.param),
        "--trust",
        str(TRUST),
        "--certs",
        str(CERTS),
        "--api-keys",
        str(write_keys(tmp_path)),
        "--signing-key",
        str(private_copy(ALPHA_KEY, tmp_path)),
        "--signing-x5u",
        ALPHA_X5U,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIRSCOPE_")}
    with stderr.open("wb") as err:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=err, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, stderr)
        yield Served(base, process, stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_real_server(served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=10.0) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        now = int(time.time())
        signed = client.post(
            "/stir/v1/signing",
            json={
                "signingRequest": {
                    "attest": "A",
                    "orig": {"tn": "12025550101"},
                    "dest": {"tn": ["12025550199"]},
                    "origid": "4437c8d4-35d6-4cb4-9a57-a1b1c8f0f2e1",
                }
            },
            headers=bearer("carrier"),
        )
        assert signed.status_code == 200
        identity = signed.json()["signingResponse"]["identity"]
        verified = client.post(
            "/stir/v1/verification",
            json={
                "verificationRequest": {
                    "from": {"tn": "12025550101"},
                    "to": {"tn": "12025550199"},
                    "time": now,
                    "identity": identity,
                }
            },
            headers=bearer("verifier"),
        )
        assert verified.json()["verificationResponse"]["verstat"] == "TN-Validation-Passed"
        # The fixture call was signed for 2026-01-15: stale against the server's clock.
        stale = client.post(
            "/stir/v1/verification",
            json=atis_body(fixture_call("invite_alpha_a.sip")),
            headers=bearer("verifier"),
        ).json()["verificationResponse"]
        assert stale["reasoncode"] == 403
        assert stale["reason"] == "stale_date"
        bad = client.post(
            "/stir/v1/verification",
            content=b"{",
            headers={**bearer("verifier"), "Content-Type": "application/json"},
        )
        assert bad.status_code == 400
        assert bad.json()["requestError"]["serviceException"]["code"] == "parse_failure"
        assert "stirscope_verifications_total" in client.get("/metrics").text
    assert served.stop() == 0
    lines = served.stderr.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(r["message"] == "service ready" for r in records)
    assert any(r["message"] == "request" and r.get("status") == 200 for r in records)
    assert not any("Traceback" in line for line in lines)
