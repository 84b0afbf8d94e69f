"""``stirscope sign``: prints a verifiable Identity header value; exit 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.cli import main
from shaken.es256 import verify_es256
from shaken.identity import parse_identity_header
from shaken.passport import check_claims, check_header, decode_passport

X5U = "https://cert.example.org/passport.cer"
ORIGID = "123e4567-e89b-12d3-a456-426655440000"
# RFC 8225 A.1 private key (STANDARDS-VECTORS.md V3 / V5b).
RFC8225_A1_PRIVATE = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgi7q2TZvN9VDFg8Vy
qCP06bETrR2v8MRvr89rn4i+UAahRANCAAQWfaj1HUETpoNCrOtp9KA8o0V79IuW
ARKt9C1cFPkyd3FBP4SeiNZxQhDrD0tdBHls3/wFe8++K2FrPyQF9vuh
-----END PRIVATE KEY-----
"""
V5B_TOKEN = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0LmV4YW1w"
    "bGUub3JnL3Bhc3Nwb3J0LmNlciJ9.eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyIxMjEyNTU1MTIxMiJdfSwiaWF0Ijox"
    "NDcxMzc1NDE4LCJvcmlnIjp7InRuIjoiMTIxNTU1NTEyMTIifSwib3JpZ2lkIjoiMTIzZTQ1NjctZTg5Yi0xMmQzLWE0NTYt"
    "NDI2NjU1NDQwMDAwIn0.czDg9vLNZ1pwBYU3ctFMfniftHtbuX0gxIpIL5LaARVBfkjKooUKA8WThpUY-68ppB8Aeyjw5at81Z"
    "lD2WL4gA"
)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.pem"
    path.write_bytes(RFC8225_A1_PRIVATE)
    return path


def sign_args(key: Path, *extra: str) -> list[str]:
    return ["sign", "--key", str(key), "--x5u", X5U, "--orig", "12155551212",
            "--dest", "12125551212", *extra]  # fmt: skip


def test_sign_reproduces_v5b(key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(sign_args(key_file, "--attest", "A", "--iat", "1471375418", "--origid", ORIGID))
    assert code == 0
    out = capsys.readouterr().out.strip()
    assert out == f'{V5B_TOKEN};info=<{X5U}>;alg=ES256;ppt="shaken"'


def test_sign_output_verifies_with_defaults(
    key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(sign_args(key_file, "--attest", "C", "--dest", "12125550000")) == 0
    identity = parse_identity_header(capsys.readouterr().out.strip())
    decoded = decode_passport(identity.token)
    assert check_header(decoded, identity) == []
    assert check_claims(decoded) == []
    claims = decoded.claims
    assert claims is not None
    assert claims.attest == "C"
    assert len(claims.dest) == 2
    assert claims.iat is not None
    assert claims.iat > 1_700_000_000
    assert claims.origid is not None
    assert len(claims.origid) == 36
    key = serialization.load_pem_private_key(RFC8225_A1_PRIVATE, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert decoded.signing_input is not None
    assert decoded.signature is not None
    assert verify_es256(key.public_key(), decoded.signing_input, decoded.signature)


def test_sign_div(key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(sign_args(key_file, "--ppt", "div", "--div", "12125559999", "--iat", "5"))
    assert code == 0
    identity = parse_identity_header(capsys.readouterr().out.strip())
    assert identity.ppt == "div"
    claims = decode_passport(identity.token).claims
    assert claims is not None
    assert claims.div is not None
    assert claims.div.value == "12125559999"


def test_sign_json(key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(sign_args(key_file, "--attest", "B", "--iat", "1", "--origid", "o", "--json"))
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["identity"].startswith(doc["token"] + ";info=<")
    assert doc["claims"]["attest"] == "B"


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("key_bytes", "extra"),
    [
        pytest.param(None, ["--attest", "A"], id="missing-key-file"),
        pytest.param(b"not a pem", ["--attest", "A"], id="garbage-key"),
        pytest.param(_pem(ec.generate_private_key(ec.SECP384R1())), ["--attest", "A"],
                     id="p384-key"),
        pytest.param(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
                     ["--attest", "A"], id="rsa-key"),
        pytest.param(RFC8225_A1_PRIVATE, [], id="shaken-without-attest"),
        pytest.param(RFC8225_A1_PRIVATE, ["--ppt", "div"], id="div-without-div"),
        pytest.param(RFC8225_A1_PRIVATE, ["--attest", "A", "--div", "1"], id="div-with-shaken"),
        pytest.param(RFC8225_A1_PRIVATE, ["--attest", "A", "--origid", ""], id="empty-origid"),
        pytest.param(RFC8225_A1_PRIVATE, ["--attest", "A", "--iat", "-5"], id="negative-iat"),
        pytest.param(RFC8225_A1_PRIVATE, ["--attest", "A", "--dest", "+1 212"], id="bad-dest"),
    ],
)  # fmt: skip
def test_sign_bad_input_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key_bytes: bytes | None,
    extra: list[str],
) -> None:
    key = tmp_path / "absent.pem" if key_bytes is None else _write(tmp_path, "k.pem", key_bytes)
    assert main(sign_args(key, *extra)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "stirscope sign: error:" in captured.err


def test_sign_http_x5u_exits_2(key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = sign_args(key_file, "--attest", "A")
    args[args.index(X5U)] = "http://cert.example.org/c.pem"
    assert main(args) == 2
    assert "https" in capsys.readouterr().err


def test_sign_argparse_rejects_bad_attest(key_file: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(sign_args(key_file, "--attest", "D"))
    assert exc.value.code == 2
