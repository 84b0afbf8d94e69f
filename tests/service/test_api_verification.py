"""POST /stir/v1/verification in-process: both flavours over the fixture calls, the server
clock, and every malformed-request answer (4xx JSON with a stable code, never a 500)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.api.models import Flavour
from tests.service.api_client import (
    CALL_TIME,
    ApiClient,
    atis_body,
    bearer,
    fixture_call,
    gpp_body,
    make_config,
    serve_in_process,
)

URL = "/stir/v1/verification"
AUTH = bearer("verifier")

CALLS = [
    # name, verstat, reasoncode, reason
    ("invite_alpha_a.sip", "TN-Validation-Passed", None, None),
    ("invite_charlie_c.sip", "TN-Validation-Passed", None, None),
    ("invite_diverted.sip", "TN-Validation-Passed", None, None),
    ("invite_tampered.sip", "TN-Validation-Failed", 438, "signature_invalid"),
    ("invite_untrusted.sip", "TN-Validation-Failed", 437, "chain_untrusted"),
    ("invite_revoked.sip", "TN-Validation-Failed", 437, "cert_revoked"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
    with serve_in_process(make_config(tmp_path_factory.mktemp("api"))) as api:
        yield api


def _error(response: Any) -> dict[str, Any]:
    body = response.json()["requestError"]
    (detail,) = body.values()
    assert set(detail) >= {"messageId", "text", "variables", "code"}
    return dict(detail)


@pytest.mark.parametrize("tn_form", [False, True], ids=["uri", "tn"])
@pytest.mark.parametrize(
    ("name", "verstat", "code", "reason"), CALLS, ids=[c[0].removesuffix(".sip") for c in CALLS]
)
def test_atis_flavour(
    client: ApiClient, name: str, verstat: str, code: int | None, reason: str | None, tn_form: bool
) -> None:
    response = client.post(URL, json=atis_body(fixture_call(name), tn_form=tn_form), headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()["verificationResponse"]
    assert body["verstat"] == verstat
    assert body.get("reasoncode") == code
    assert body.get("reason") == reason
    assert ("reasontext" in body) == (code is not None)


@pytest.mark.parametrize(
    ("name", "verstat", "code", "reason"), CALLS, ids=[c[0].removesuffix(".sip") for c in CALLS]
)
def test_3gpp_flavour(
    client: ApiClient, name: str, verstat: str, code: int | None, reason: str | None
) -> None:
    call = fixture_call(name)
    response = client.post(URL, json=gpp_body(call, request_id=name), headers=AUTH)
    assert response.status_code == 200
    body = response.json()["verificationResponse"]
    assert body["verstatValue"] == verstat
    assert body["requestId"] == name
    results = [r["verifyResult"] for r in body["verifyResults"] + body.get("divResult", [])]
    assert len(results) == len(call.identities)
    assert {r["status"] for r in results} == ({"pass"} if code is None else {"fail"})
    if reason is not None:
        assert results[0]["reason"] == reason
        assert results[0]["reasonCode"] == code
        assert "validClaims" not in results[0]
    else:
        assert results[0]["validClaims"]["orig"] == {"tn": "12025550101"}


def test_3gpp_diverted_puts_div_in_div_result(client: ApiClient) -> None:
    body = client.post(URL, json=gpp_body(fixture_call("invite_diverted.sip")), headers=AUTH)
    result = body.json()["verificationResponse"]
    assert [r["verifyResult"]["ppt"] for r in result["verifyResults"]] == ["shaken"]
    assert [r["verifyResult"]["ppt"] for r in result["divResult"]] == ["div"]


def test_3gpp_single_identity_header(client: ApiClient) -> None:
    body = gpp_body(fixture_call("invite_alpha_a.sip"))
    inner = body["verificationRequest"]
    inner["identityHeader"] = inner.pop("identityHeaders")[0]
    response = client.post(URL, json=body, headers=AUTH)
    assert response.json()["verificationResponse"]["verstatValue"] == "TN-Validation-Passed"


@pytest.mark.parametrize(
    ("body_of", "flavour", "key"),
    [
        (atis_body, Flavour.GPP, "verstatValue"),
        (gpp_body, Flavour.ATIS, "verstat"),
        (atis_body, Flavour.ATIS, "verstat"),
    ],
    ids=["atis-asks-3gpp", "3gpp-asks-atis", "atis-asks-atis"],
)
def test_flavour_query_picks_response_shape(
    client: ApiClient, body_of: Any, flavour: Flavour, key: str
) -> None:
    body = body_of(fixture_call("invite_alpha_a.sip"))
    response = client.post(URL, json=body, headers=AUTH, params={"flavour": flavour.value})
    assert response.status_code == 200
    assert response.json()["verificationResponse"][key] == "TN-Validation-Passed"


@pytest.mark.parametrize(
    ("offset", "verstat", "reason"),
    [
        (0, "TN-Validation-Passed", None),
        (60, "TN-Validation-Passed", None),
        (61, "TN-Validation-Failed", "stale_date"),
        (-60, "TN-Validation-Passed", None),
        (-61, "TN-Validation-Failed", "future_date"),
        (3600, "TN-Validation-Failed", "stale_date"),
    ],
    ids=["same-second", "60s-late", "61s-late", "60s-early", "61s-early", "1h-late"],
)
def test_freshness_is_judged_on_the_server_clock(
    tmp_path: Path, offset: int, verstat: str, reason: str | None
) -> None:
    with serve_in_process(make_config(tmp_path, at=CALL_TIME + offset)) as api:
        body = atis_body(fixture_call("invite_alpha_a.sip"))
        response = api.post(URL, json=body, headers=AUTH).json()["verificationResponse"]
    assert response["verstat"] == verstat
    assert response.get("reason") == reason
    if reason is not None:
        assert response["reasoncode"] == 403


def test_missing_time_is_a_missing_date_result(client: ApiClient) -> None:
    body = atis_body(fixture_call("invite_alpha_a.sip"))
    del body["verificationRequest"]["time"]
    response = client.post(URL, json=body, headers=AUTH).json()["verificationResponse"]
    assert response["reason"] == "missing_date"
    assert response["reasoncode"] == 403


def test_request_id_header_is_echoed(client: ApiClient) -> None:
    body = atis_body(fixture_call("invite_alpha_a.sip"))
    response = client.post(URL, json=body, headers={**AUTH, "X-RequestID": "abc-123"})
    assert response.headers["x-requestid"] == "abc-123"


def _valid() -> dict[str, Any]:
    return atis_body(fixture_call("invite_alpha_a.sip"))


def _without(member: str) -> dict[str, Any]:
    body = _valid()
    del body["verificationRequest"][member]
    return body


def _with(member: str, value: Any) -> dict[str, Any]:
    body = _valid()
    body["verificationRequest"][member] = value
    return body


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


BAD_REQUESTS = [
    # id, raw body, content type, extra headers, status, code, messageId
    ("empty-body", b"", "application/json", {}, 400, "missing_body", "SVC4000"),
    ("blank-body", b"  \r\n", "application/json", {}, 400, "missing_body", "SVC4000"),
    ("malformed-json", b'{"verificationRequest": {', "application/json", {}, 400,
     "parse_failure", "SVC4003"),
    ("json-array", b"[1, 2]", "application/json", {}, 400, "parse_failure", "SVC4003"),
    ("invalid-utf8", b'{"a": "\xff"}', "application/json", {}, 400, "parse_failure", "SVC4003"),
    ("deep-nesting", b"[" * 100_00 + b"]" * 100_00, "application/json", {}, 400,
     "parse_failure", "SVC4003"),
    ("text-plain", _json(_valid()), "text/plain", {}, 415, "unsupported_media_type", "SVC4003"),
    ("form", b"a=b", "application/x-www-form-urlencoded", {}, 415, "unsupported_media_type",
     "SVC4003"),
    ("no-content-type", _json(_valid()), None, {}, 415, "unsupported_media_type", "SVC4003"),
    ("accept-xml", _json(_valid()), "application/json", {"Accept": "application/xml"}, 406,
     "unsupported_response_type", "SVC4002"),
    ("accept-json-q0", _json(_valid()), "application/json",
     {"Accept": "application/json;q=0, text/html"}, 406, "unsupported_response_type", "SVC4002"),
    ("no-envelope", _json({"other": {}}), "application/json", {}, 400, "missing_parameter",
     "SVC4001"),
    ("envelope-not-object", _json({"verificationRequest": [1]}), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("missing-identity", _json(_without("identity")), "application/json", {}, 400,
     "missing_parameter", "SVC4001"),
    ("missing-from", _json(_without("from")), "application/json", {}, 400,
     "missing_parameter", "SVC4001"),
    ("missing-to", _json(_without("to")), "application/json", {}, 400, "missing_parameter",
     "SVC4001"),
    ("time-as-string", _json(_with("time", "1768478400")), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("time-as-bool", _json(_with("time", True)), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("time-negative", _json(_with("time", -1)), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("time-huge", _json(_with("time", 10**30)), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("identity-number", _json(_with("identity", 5)), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("identity-empty", _json(_with("identity", "")), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("from-tn-and-uri", _json(_with("from", {"tn": "12025550101", "uri": "sip:a@b"})),
     "application/json", {}, 400, "invalid_parameter", "SVC4004"),
    ("from-empty", _json(_with("from", {})), "application/json", {}, 400, "invalid_parameter",
     "SVC4004"),
    ("from-not-a-tn", _json(_with("from", {"tn": "alice"})), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("from-not-a-uri", _json(_with("from", {"uri": "no scheme"})), "application/json", {},
     400, "invalid_parameter", "SVC4004"),
    ("from-two-tns", _json(_with("from", {"tn": ["12025550101", "12025550102"]})),
     "application/json", {}, 400, "invalid_parameter", "SVC4004"),
    ("to-empty-list", _json(_with("to", {"tn": []})), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("to-list-of-numbers", _json(_with("to", {"tn": [1]})), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("atis-and-3gpp-members", _json(_with("identityHeader", "x")), "application/json", {}, 400,
     "invalid_parameter", "SVC4004"),
    ("3gpp-empty-headers", _json({"verificationRequest": {
        "from": {"tn": "12025550101"}, "to": {"tn": "12025550199"}, "identityHeaders": []}}),
     "application/json", {}, 400, "invalid_parameter", "SVC4004"),
    ("3gpp-two-dests", _json({"verificationRequest": {
        "from": {"tn": "12025550101"}, "to": {"tn": "12025550199"}, "identityHeader": "x",
        "dest": {"tn": ["12025550199", "12025550142"]}}}),
     "application/json", {}, 400, "invalid_parameter", "SVC4004"),
    ("too-many-identities", _json({"verificationRequest": {
        "from": {"tn": "12025550101"}, "to": {"tn": "12025550199"},
        "identityHeaders": ["x"] * 17}}), "application/json", {}, 400, "invalid_parameter",
     "SVC4004"),
    ("too-large", b'{"verificationRequest": "' + b"x" * 70_000 + b'"}', "application/json",
     {}, 413, "payload_too_large", "SVC0001"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "status", "code", "message_id"),
    [b[1:] for b in BAD_REQUESTS],
    ids=[b[0] for b in BAD_REQUESTS],
)
def test_malformed_requests_get_a_json_error(
    client: ApiClient,
    body: bytes,
    content_type: str | None,
    headers: dict[str, str],
    status: int,
    code: str,
    message_id: str,
) -> None:
    sent = {**AUTH, **headers}
    if content_type is not None:
        sent["Content-Type"] = content_type
    response = client.post(URL, content=body, headers=sent)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = _error(response)
    assert error["code"] == code
    assert error["messageId"] == message_id


def test_chunked_body_over_the_limit_is_413(client: ApiClient) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 4096

    response = client.post(
        URL, content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"


def test_missing_parameter_names_the_member(client: ApiClient) -> None:
    response = client.post(URL, json=_without("from"), headers=AUTH)
    assert _error(response)["variables"] == ["verificationRequest.from"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", URL, 405, "method_not_allowed"),
        ("PUT", URL, 405, "method_not_allowed"),
        ("GET", "/stir/v1/unknown", 404, "not_found"),
        ("POST", "/", 404, "not_found"),
    ],
    ids=["get", "put", "unknown-path", "root"],
)
def test_routing_errors_are_json(
    client: ApiClient, method: str, path: str, status: int, code: str
) -> None:
    response = client.request(method, path, headers=AUTH)
    assert response.status_code == status
    assert _error(response)["code"] == code


def test_bad_flavour_query_is_invalid_parameter(client: ApiClient) -> None:
    response = client.post(URL, json=_valid(), headers=AUTH, params={"flavour": "oma"})
    assert response.status_code == 400
    assert _error(response)["code"] == "invalid_parameter"
