"""Test support for analysis jobs: a configuration with a results store and upload directory
in tmp_path, keys with and without the ``jobs`` scope, uploading and waiting for a job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from service.api.auth import hash_api_key
from service.config import ServeConfig
from tests.conftest import FIXTURES
from tests.service.api_client import ApiClient, make_config

DEMO = FIXTURES / "demo" / "demo.pcap"
# The demo capture's calls (fixtures/README.md).
DEMO_CALLS = 13
# Keys: name -> (key, scopes).
JOB_KEYS = {
    "analyst": ("analyst-key-0123456789abcdefghijklmnop", "jobs"),
    "verifier": ("verifier-key-0123456789abcdefghijklmnop", "verify"),
}
# The demo job takes well under a second; allow for a loaded CI machine.
JOB_TIMEOUT_S = 60.0


def auth(name: str = "analyst") -> dict[str, str]:
    return {"Authorization": f"Bearer {JOB_KEYS[name][0]}"}


def write_job_keys(path: Path) -> Path:
    """The keys file of ``JOB_KEYS`` (``NAME:SHA256HEX:SCOPES`` lines) at ``path``."""
    path.write_text(
        "".join(f"{n}:{hash_api_key(k)}:{s}\n" for n, (k, s) in JOB_KEYS.items()),
        encoding="utf-8",
    )
    return path


def jobs_config(directory: Path, **overrides: Any) -> ServeConfig:
    keys = write_job_keys(directory / "job-keys")
    fields: dict[str, Any] = {
        "db": str(directory / "store.db"),
        "upload_dir": directory / "uploads",
        "api_keys": keys,
        "signing": False,
    }
    fields.update(overrides)
    return make_config(directory, **fields)


def upload(api: ApiClient, *paths: Path, **data: str) -> Any:
    files = [("capture", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    return api.post("/v1/jobs", headers=auth(), files=files, data=data or None)


def wait_job(api: ApiClient, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}", headers=auth()).json()
        if job["state"] in ("done", "failed", "interrupted"):
            return job
        assert time.monotonic() < deadline, f"job still {job['state']}"
        time.sleep(0.05)
