"""The web UI in a real browser: Playwright driving Debian's chromium (headless) against a real
`stirscope serve` on 127.0.0.1; sign in, upload the demo capture through the form, wait for
the job, open a call and see its verdict and signer. Skipped when chromium or playwright is
absent. A screenshot of each page goes to the test's tmp_path (never into the repository)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.auth import hash_api_key
from tests.conftest import FIXTURES, ROOT
from tests.service.api_client import CERTS, TRUST, free_port, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "browser-analyst-key-0123456789abcdefghij"
# Start-up and the demo job take about a second here; allow for a loaded CI machine.
READY_TIMEOUT_S = 30.0
JOB_TIMEOUT_MS = 60_000

sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip("chromium is not installed at /usr/bin/chromium", allow_module_level=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A `stirscope serve` with its store and uploads in tmp_path; yields its base URL."""
    keys = tmp_path / "keys"
    keys.write_text(f"analyst:{hash_api_key(API_KEY)}:jobs\n", encoding="utf-8")
    port = free_port()
    argv = [
        sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--trust", str(TRUST), "--certs", str(CERTS),
        "--api-keys", str(keys), "--data-dir", str(tmp_path / "data"),
        "--log-format", "text", "--no-access-log",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIRSCOPE_")}
    with (tmp_path / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env=env
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, tmp_path / "stderr.log")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_upload_and_open_a_call(server: str, tmp_path: Path) -> None:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server}/ui/")
            # Not signed in: the sign-in form, then back to the jobs page.
            sync_api.expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            page.get_by_label("API key").fill(API_KEY)
            page.get_by_role("button", name="Sign in").click()
            sync_api.expect(page.get_by_role("heading", name="Analysis jobs")).to_be_visible()
            page.screenshot(path=str(tmp_path / "jobs.png"), full_page=True)

            page.get_by_label(re.compile("^Captures")).set_input_files(
                str(FIXTURES / "demo" / "demo.pcap")
            )
            page.get_by_role("button", name="Upload and analyse").click()
            # The job page refreshes itself until the job is done.
            sync_api.expect(page.locator("#job-state")).to_have_text("done", timeout=JOB_TIMEOUT_MS)
            page.screenshot(path=str(tmp_path / "job.png"), full_page=True)
            job_url = page.url

            page.get_by_role("link", name=re.compile("Browse its 13 calls")).click()
            sync_api.expect(page.get_by_role("heading", name="Calls", exact=True)).to_be_visible()
            page.get_by_label("Calling number").fill("+1 202-555-0101")
            page.get_by_label("Verdict").select_option("TN-Validation-Passed")
            page.get_by_role("button", name="Filter").click()
            rows = page.locator("table.calls tbody tr")
            assert rows.count() >= 1
            page.screenshot(path=str(tmp_path / "calls.png"), full_page=True)

            rows.first.get_by_role("link").click()
            sync_api.expect(page.locator("#verdict")).to_contain_text("TN-Validation-Passed")
            sync_api.expect(page.locator("#signer")).to_contain_text("SPC")
            sync_api.expect(page.get_by_role("heading", name="Ladder")).to_be_visible()
            page.screenshot(path=str(tmp_path / "call.png"), full_page=True)

            page.get_by_role("link", name="Signers & campaigns").click()
            sync_api.expect(page.get_by_role("heading", name="Signers", exact=True)).to_be_visible()
            assert page.locator("svg.chart").count() >= 3
            page.screenshot(path=str(tmp_path / "signers.png"), full_page=True)

            page.goto(f"{job_url}/traceback")
            sync_api.expect(
                page.get_by_role("link", name="Download candidates as CSV")
            ).to_be_visible()
            page.screenshot(path=str(tmp_path / "traceback.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "call.png").stat().st_size > 0
