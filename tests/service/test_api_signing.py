"""POST /stir/v1/signing: round trips through the API and the core Verifier, both response
shapes, div PASSporTs, rejected values, and signing keys loaded only from private files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from analyzer.atis import AtisIdentity, verification_request
from analyzer.verifying import VerifierConfig, build_verifier
from service.config import ConfigError, load_signing_key
from shaken.identity import parse_identity_header
from shaken.passport import decode_passport
from tests.service.api_client import (
    ALPHA_KEY,
    ALPHA_X5U,
    CALL_TIME,
    CERTS,
    TRUST,
    ApiClient,
    bearer,
    make_config,
    private_copy,
    serve_in_process,
)

SIGN = "/stir/v1/signing"
VERIFY = "/stir/v1/verification"
NOW = CALL_TIME + 5


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
    with serve_in_process(make_config(tmp_path_factory.mktemp("sign"), at=NOW)) as api:
        yield api


def _request(**members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "attest": "A",
        "orig": {"tn": "+1 202 555 0101"},
        "dest": {"tn": ["2025550199"]},
        "iat": NOW,
        "origid": "de305d54-75b4-431b-adb2-eb6b9e546014",
    }
    body.update(members)
    return {"signingRequest": {k: v for k, v in body.items() if v is not None}}


def _claims(identity: str) -> dict[str, object]:
    payload = decode_passport(parse_identity_header(identity).token).payload
    assert payload is not None
    return dict(payload)


def _sign(client: ApiClient, body: dict[str, Any], **kwargs: Any) -> Any:
    response = client.post(SIGN, json=body, headers=bearer("carrier"), **kwargs)
    assert response.status_code == 200, response.text
    return response.json()["signingResponse"]


def test_signing_round_trip_through_the_api(client: ApiClient) -> None:
    identity = _sign(client, _request())["identity"]
    assert identity.endswith(f';info=<{ALPHA_X5U}>;alg=ES256;ppt="shaken"')
    verification = {
        "verificationRequest": {
            "from": {"tn": "12025550101"},
            "to": {"tn": ["+12025550199"]},
            "time": NOW,
            "identity": identity,
        }
    }
    response = client.post(VERIFY, json=verification, headers=bearer("carrier"))
    assert response.json()["verificationResponse"] == {
        "verstat": "TN-Validation-Passed",
        "attest": "A",
        "origid": "de305d54-75b4-431b-adb2-eb6b9e546014",
    }


def test_signed_claims_are_canonical(client: ApiClient) -> None:
    identity = _sign(client, _request())["identity"]
    claims = decode_passport(parse_identity_header(identity).token).payload
    assert claims == {
        "attest": "A",
        "dest": {"tn": ["12025550199"]},
        "iat": NOW,
        "orig": {"tn": "12025550101"},
        "origid": "de305d54-75b4-431b-adb2-eb6b9e546014",
    }


def test_signing_round_trip_through_the_core_verifier(client: ApiClient) -> None:
    identity = _sign(client, _request(attest="B"))["identity"]
    request = verification_request(
        identities=[identity],
        orig=AtisIdentity(tn=("+12025550101",)),
        to=AtisIdentity(tn=("12025550199",)),
        time=NOW,
    )
    config = VerifierConfig(trust=(TRUST,), certs_dirs=(CERTS,))
    with build_verifier(config) as verifier:
        result = verifier.verify(request, at=datetime.fromtimestamp(NOW, UTC))
    assert result.passed
    assert result.best is not None
    assert result.best.attest == "B"


def test_defaults_iat_from_server_clock_and_random_origid(client: ApiClient) -> None:
    first = _sign(client, _request(iat=None, origid=None))["identity"]
    second = _sign(client, _request(iat=None, origid=None))["identity"]
    claims = [_claims(v) for v in (first, second)]
    assert [c["iat"] for c in claims] == [NOW, NOW]
    assert claims[0]["origid"] != claims[1]["origid"]


@pytest.mark.parametrize(
    ("members", "params", "key"),
    [
        ({}, {}, "identity"),
        ({"requestId": "r-9"}, {}, "identityHeader"),
        ({"profileId": "p"}, {}, "identityHeader"),
        ({}, {"flavour": "3gpp"}, "identityHeader"),
        ({"requestId": "r-9"}, {"flavour": "atis"}, "identity"),
    ],
    ids=["atis", "3gpp-request-id", "3gpp-profile-id", "asked-3gpp", "asked-atis"],
)
def test_response_shape(
    client: ApiClient, members: dict[str, Any], params: dict[str, str], key: str
) -> None:
    body = _sign(client, _request(**members), params=params)
    assert key in body
    if key == "identityHeader" and "requestId" in members:
        assert body["requestId"] == "r-9"


def test_div_passport_round_trip(client: ApiClient) -> None:
    body = _request(ppt="div", attest=None, origid=None, div={"tn": "12025550199"})
    body["signingRequest"]["dest"] = {"tn": ["12025550142"]}
    identity = _sign(client, body)["identity"]
    assert identity.endswith(';ppt="div"')
    claims = _claims(identity)
    assert claims["div"] == {"tn": "12025550199"}


REJECTED = [
    ("attest-D", {"attest": "D"}, "invalid_parameter", "signingRequest.attest"),
    ("attest-missing", {"attest": None}, "invalid_parameter", "signingRequest.attest"),
    ("orig-not-tn", {"orig": {"tn": "alice"}}, "invalid_parameter", "signingRequest.orig.tn"),
    ("orig-uri", {"orig": {"uri": "sip:alice@example.com"}}, "invalid_parameter",
     "signingRequest.orig.uri"),
    ("dest-empty", {"dest": {"tn": []}}, "invalid_parameter", "signingRequest.dest.tn"),
    ("iat-string", {"iat": "now"}, "invalid_parameter", "signingRequest.iat"),
    ("iat-negative", {"iat": -5}, "invalid_parameter", "signingRequest.iat"),
    ("origid-empty", {"origid": ""}, "invalid_parameter", "signingRequest.origid"),
    ("ppt-rcd", {"ppt": "rcd"}, "invalid_parameter", "signingRequest.ppt"),
    ("div-without-ppt-div", {"div": {"tn": "12025550199"}}, "invalid_parameter",
     "signingRequest.div"),
    ("ppt-div-without-div", {"ppt": "div"}, "invalid_parameter", "signingRequest.div"),
    ("rph", {"rph": {"auth": ["ets.0"]}}, "invalid_parameter", "signingRequest.rph"),
    ("orig-missing", {"orig": None}, "missing_parameter", "signingRequest.orig"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("members", "code", "where"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED]
)
def test_rejected_signing_requests(
    client: ApiClient, members: dict[str, Any], code: str, where: str
) -> None:
    response = client.post(SIGN, json=_request(**members), headers=bearer("carrier"))
    assert response.status_code == 400
    error = response.json()["requestError"]["serviceException"]
    assert error["code"] == code
    assert error["variables"][0] == where


def test_signing_without_a_configured_key_is_503(tmp_path: Path) -> None:
    with serve_in_process(make_config(tmp_path, signing=False)) as api:
        response = api.post(SIGN, json=_request(), headers=bearer("carrier"))
        ready = api.get("/readyz").json()
    assert response.status_code == 503
    assert response.json()["requestError"]["serviceException"]["code"] == "signing_unavailable"
    assert ready["signing"] is False


def test_no_endpoint_returns_the_signing_key(client: ApiClient) -> None:
    marker = ALPHA_KEY.read_text().splitlines()[1][:40]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert marker not in client.get(path).text


@pytest.mark.parametrize(
    ("mode", "ok"),
    [(0o600, True), (0o400, True), (0o640, False), (0o604, False), (0o620, False)],
    ids=["600", "400", "640-group-read", "604-world-read", "620-group-write"],
)
def test_signing_key_file_permissions(tmp_path: Path, mode: int, ok: bool) -> None:
    path = private_copy(ALPHA_KEY, tmp_path, mode)
    if ok:
        assert load_signing_key(path).curve.name == "secp256r1"
    else:
        with pytest.raises(ConfigError, match="group or others"):
            load_signing_key(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("not-pem.pem", b"hello"),
        ("rsa.pem", (ALPHA_KEY.parent / "rsa.key.pem").read_bytes()),
        ("p384.pem", (ALPHA_KEY.parent / "p384.key.pem").read_bytes()),
    ],
    ids=["not-pem", "rsa", "p384"],
)
def test_signing_key_must_be_p256(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError):
        load_signing_key(path)


def test_signing_key_missing_or_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_signing_key(tmp_path / "absent.pem")
    with pytest.raises(ConfigError, match="regular file"):
        load_signing_key(tmp_path)
