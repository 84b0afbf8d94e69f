"""API keys: bearer tokens against SHA-256 digests, scopes, open or keyed verification."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api.auth import KeyFileError, KeyRing, Scope, generate_api_key, hash_api_key
from tests.service.api_client import (
    KEYS,
    ApiClient,
    atis_body,
    bearer,
    fixture_call,
    make_config,
    serve_in_process,
)

VERIFY = "/stir/v1/verification"
SIGN = "/stir/v1/signing"
SIGNING = {
    "signingRequest": {
        "attest": "A",
        "orig": {"tn": "12025550101"},
        "dest": {"tn": ["12025550199"]},
        "iat": 1_768_478_400,
        "origid": "x",
    }
}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
    with serve_in_process(make_config(tmp_path_factory.mktemp("keyed"))) as api:
        yield api


@pytest.fixture(scope="module")
def open_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
    config = make_config(tmp_path_factory.mktemp("open"), open_verification=True)
    with serve_in_process(config) as api:
        yield api


def _verification() -> dict[str, object]:
    return atis_body(fixture_call("invite_alpha_a.sip"))


CASES = [
    # id, endpoint, headers, status, code
    ("verify-no-token", VERIFY, {}, 401, "unauthorized"),
    ("verify-unknown-key", VERIFY, {"Authorization": "Bearer nope"}, 401, "unauthorized"),
    ("verify-basic-scheme", VERIFY, {"Authorization": "Basic YTpi"}, 401, "unauthorized"),
    ("verify-empty-bearer", VERIFY, {"Authorization": "Bearer "}, 401, "unauthorized"),
    ("verify-sign-only-key", VERIFY, bearer("signer"), 403, "forbidden"),
    ("verify-verify-key", VERIFY, bearer("verifier"), 200, None),
    ("verify-both-key", VERIFY, bearer("carrier"), 200, None),
    ("sign-no-token", SIGN, {}, 401, "unauthorized"),
    ("sign-verify-only-key", SIGN, bearer("verifier"), 403, "forbidden"),
    ("sign-sign-key", SIGN, bearer("signer"), 200, None),
    ("sign-both-key", SIGN, bearer("carrier"), 200, None),
]


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_keyed_service(
    keyed: ApiClient, path: str, headers: dict[str, str], status: int, code: str | None
) -> None:
    body = _verification() if path == VERIFY else SIGNING
    response = keyed.post(path, json=body, headers=headers)
    assert response.status_code == status
    if code is not None:
        (detail,) = response.json()["requestError"].values()
        assert detail["code"] == code
        assert detail["messageId"] == "POL0001"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_auth_is_checked_before_the_body(keyed: ApiClient) -> None:
    response = keyed.post(VERIFY, content=b"{", headers={"Content-Type": "application/json"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        (VERIFY, {}, 200),
        (VERIFY, {"Authorization": "Bearer nope"}, 200),
        (SIGN, {}, 401),
        (SIGN, bearer("verifier"), 403),
        (SIGN, bearer("signer"), 200),
    ],
    ids=["verify-anonymous", "verify-bad-key-ignored", "sign-anonymous", "sign-verify-key",
         "sign-sign-key"],
)  # fmt: skip
def test_open_verification(
    open_api: ApiClient, path: str, headers: dict[str, str], status: int
) -> None:
    body = _verification() if path == VERIFY else SIGNING
    assert open_api.post(path, json=body, headers=headers).status_code == status


def test_keyring_file_and_inline_entries(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(
        f"# comment\n\na:{hash_api_key('k1')}  # trailing\nb:{hash_api_key('k2').upper()}:sign\n",
        encoding="utf-8",
    )
    ring = KeyRing.load(path, [f"c:{hash_api_key('k3')}:verify"])
    assert len(ring) == 3
    found = [ring.authenticate(k) for k in ("k1", "k2", "k3", "k4")]
    assert [k.name if k else None for k in found] == ["a", "b", "c", None]
    assert found[0] is not None
    assert found[0].scopes == {Scope.VERIFY, Scope.SIGN}
    assert found[1] is not None
    assert found[1].scopes == {Scope.SIGN}


@pytest.mark.parametrize(
    "entry",
    [
        "no-digest",
        "a:1234",
        f"a:{'g' * 64}",
        f"a:{hash_api_key('x')}:admin",
        f"a b:{hash_api_key('x')}",
        f"a:{hash_api_key('x')}:sign:extra",
    ],
    ids=["no-digest", "short-digest", "not-hex", "bad-scope", "space-in-name", "extra-field"],
)
def test_bad_key_entries(entry: str) -> None:
    with pytest.raises(KeyFileError):
        KeyRing.load(None, [entry])


def test_duplicate_names_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="duplicate"):
        KeyRing.load(None, [f"a:{hash_api_key('x')}", f"a:{hash_api_key('y')}"])
    with pytest.raises(KeyFileError, match="cannot read"):
        KeyRing.load(tmp_path / "absent")


def test_generated_keys_are_long_and_distinct() -> None:
    keys = {generate_api_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(len(k) >= 43 for k in keys)


def test_keys_are_not_stored_in_clear(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.api_keys is not None
    text = config.api_keys.read_text(encoding="utf-8")
    assert all(key not in text for key, _ in KEYS.values())
