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
    with serve_in_process(make_config(tmp_path_factory.mktemp("fuzz"))) as api:
        yield api


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
    if isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")  # requests-style raw body, httpx spelling
    response = fuzz_client.request(kwargs.pop("method"), kwargs.pop("url"), **kwargs)
    case.validate_response(response, checks=CHECKS)
