"""Operations endpoints: liveness, readiness around the lifespan, Prometheus metrics content."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from service.api.app import create_app
from service.config import JsonFormatter
from tests.service.api_client import (
    CALL_TIME,
    atis_body,
    bearer,
    fixture_call,
    make_config,
    running,
    serve_in_process,
)


def _sample(text: str, name: str, labels: str = "") -> float:
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"no sample {prefix!r}")


def test_health_and_readiness(tmp_path: Path) -> None:
    with serve_in_process(make_config(tmp_path)) as api:
        assert api.get("/healthz").json() == {"status": "ok"}
        ready = api.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert ready.json()["signing"] is True


def test_not_ready_before_the_lifespan_ran(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path))
    with running(app, lifespan=False) as api:
        assert api.get("/healthz").status_code == 200
        ready = api.get("/readyz")
        verify = api.post(
            "/stir/v1/verification",
            json=atis_body(fixture_call("invite_alpha_a.sip")),
            headers=bearer("carrier"),
        )
    for response in (ready, verify):
        assert response.status_code == 503
        assert response.json()["requestError"]["serviceException"]["code"] == "not_ready"


def test_not_ready_after_shutdown(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path))
    with running(app) as api:
        pass
    with running(app, lifespan=False) as api:
        assert api.get("/readyz").status_code == 503


def test_metrics_count_verifications_signings_and_cache(tmp_path: Path) -> None:
    with serve_in_process(make_config(tmp_path, at=CALL_TIME + 5)) as api:
        for name in ("invite_alpha_a.sip", "invite_alpha_a.sip", "invite_tampered.sip"):
            api.post(
                "/stir/v1/verification",
                json=atis_body(fixture_call(name)),
                headers=bearer("carrier"),
            )
        api.post("/stir/v1/verification", content=b"{", headers=bearer("carrier"))
        for orig in ("alice", "12025550101"):
            api.post(
                "/stir/v1/signing",
                json={"signingRequest": {"attest": "A", "orig": {"tn": orig}, "dest": {"tn": "2"}}},
                headers=bearer("carrier"),
            )
        api.get("/nowhere")
        response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    passed = 'reason="none",verstat="TN-Validation-Passed"'
    failed = 'reason="signature_invalid",verstat="TN-Validation-Failed"'
    assert _sample(text, "stirscope_verifications_total", passed) == 2
    assert _sample(text, "stirscope_verifications_total", failed) == 1
    assert _sample(text, "stirscope_verification_duration_seconds_count") == 3
    route = 'method="POST",route="/stir/v1/verification",status="200"'
    assert _sample(text, "stirscope_http_requests_total", route) == 3
    bad = 'method="POST",route="/stir/v1/verification",status="415"'
    assert _sample(text, "stirscope_http_requests_total", bad) == 1
    assert _sample(text, "stirscope_http_requests_total", 'method="GET",route="unmatched",'
                   'status="404"') == 1  # fmt: skip
    assert _sample(text, "stirscope_signings_total", 'result="rejected"') == 1
    assert _sample(text, "stirscope_signings_total", 'result="signed"') == 1
    assert _sample(text, "stirscope_certificate_cache_events_total", 'event="hits"') >= 1
    assert _sample(text, "stirscope_credential_cache_events_total", 'event="hits"') >= 1
    assert _sample(text, "stirscope_certificate_cache_entries") >= 1


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    first = create_app(make_config(tmp_path))
    second = create_app(make_config(tmp_path))
    assert first.state.metrics.registry is not second.state.metrics.registry


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("stirscope.access", logging.INFO, __file__, 1, "request", (), None)
    record.status = 200
    record.path = "/healthz"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "request"
    assert line["level"] == "info"
    assert line["status"] == 200
    assert line["path"] == "/healthz"
    assert line["time"].endswith("+00:00")


def test_access_log_is_json(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, access_log=True)
    with (
        caplog.at_level(logging.INFO, logger="stirscope.access"),
        serve_in_process(config) as api,
    ):
        api.get("/healthz", headers={"X-RequestID": "trace-7"})
    records = [r for r in caplog.records if r.name == "stirscope.access"]
    assert records
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["request_id"] == "trace-7"
    assert line["status"] == 200
    assert line["path"] == "/healthz"


def test_unexpected_errors_are_json_without_a_trace(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    with running(app, raise_app_exceptions=False) as api:
        response = api.get("/boom", headers={"X-RequestID": "ref-42"})
    assert response.status_code == 500
    detail = response.json()["requestError"]["serviceException"]
    assert detail["code"] == "internal_error"
    assert detail["variables"] == ["ref-42"]
    assert "secret" not in response.text
    assert "Traceback" not in response.text
