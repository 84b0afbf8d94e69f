"""The OpenAPI document: committed copy equals the generated one, and schemathesis finds no
server error (nor a response outside the document) against the app in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.app import openapi_document, openapi_json
from tests.conftest import ROOT
from tests.service.api_client import ApiClient, bearer, make_config, serve_in_process

COMMITTED = ROOT / "openapi.json"


def test_committed_openapi_is_current() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == openapi_json(), (
        "openapi.json is stale: regenerate with `stirscope serve --openapi > openapi.json`"
    )


def test_served_openapi_equals_document(tmp_path: Any) -> None:
    with serve_in_process(make_config(tmp_path)) as api:
        served = api.get("/openapi.json").json()
    assert served == json.loads(openapi_json())


def test_document_has_every_endpoint_and_error_shape() -> None:
    document = openapi_document()
    assert set(document["paths"]) == {
        "/stir/v1/verification",
        "/stir/v1/signing",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/traceback",
        "/v1/jobs/{job_id}/traceback.csv",
        "/v1/jobs/{job_id}/export.csv",
        "/v1/jobs/{job_id}/export.jsonl",
        "/v1/jobs/{job_id}/export.html",
        "/v1/calls",
        "/v1/calls/{call_id}",
        "/v1/signers",
    }
    for path in ("/stir/v1/verification", "/stir/v1/signing"):
        responses = document["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "403", "406", "413", "415", "503"} <= set(responses)
        assert "422" not in responses
    assert "apiKey" in document["components"]["securitySchemes"]


SCHEMA = schemathesis.openapi.from_dict(openapi_document())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
    directory = tmp_path_factory.mktemp("fuzz")
    # With a results store (and no job workers: fuzzed uploads stay queued, cheaply).
    config = make_config(directory, db=str(directory / "store.db"),
                         upload_dir=directory / "uploads", job_workers=0)  # fmt: skip
    with serve_in_process(config) as api:
        yield api


def _file_part(item: tuple[str, Any]) -> tuple[str, Any]:
    """A multipart part as httpx takes it (schemathesis generates numbers for text parts)."""
    name, value = item
    if isinstance(value, tuple) and not isinstance(value[1], bytes | str):
        value = (value[0], json.dumps(value[1]).encode(), *value[2:])
    return name, value


@SCHEMA.parametrize()
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_schemathesis(case: Any, fuzz_client: ApiClient) -> None:
    kwargs = case.as_transport_kwargs(base_url="http://stirscope.test", headers=bearer("carrier"))
    kwargs.pop("cookies", None)
    if kwargs.get("files"):
        kwargs["files"] = [_file_part(item) for item in kwargs["files"]]
    if isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")  # requests-style raw body, httpx spelling
    response = fuzz_client.request(kwargs.pop("method"), kwargs.pop("url"), **kwargs)
    response.request.read()  # multipart uploads are streamed; the checks read the request
    case.validate_response(response, checks=CHECKS)
