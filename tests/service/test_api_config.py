"""Service configuration: flags > STIRSCOPE_* environment > TOML file > defaults, and the
checks that turn unusable settings into usage errors (exit 2) before anything starts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.cli import build_parser, main
from service.config import (
    DEFAULT_MAX_BODY_BYTES,
    ConfigError,
    LogFormat,
    config_from_settings,
    resolve_settings,
    settings_to_json,
)
from shaken.policy import CrlMode, TnMatch
from tests.service.api_client import ALPHA_KEY, TRUST, private_copy, write_keys


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def _resolve(
    argv: list[str], environ: dict[str, str], config: Path | None = None
) -> dict[str, object]:
    args = _args(*argv)
    return resolve_settings(vars(args), environ, config or args.config)


def test_defaults() -> None:
    settings = _resolve(["--trust", str(TRUST), "--open-verification"], {})
    config = config_from_settings(settings)
    assert (config.host, config.port, config.workers) == ("127.0.0.1", 8080, 1)
    assert config.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert config.log_format is LogFormat.JSON
    assert config.verifier.policy.freshness_s == 60
    assert config.verifier.fetch is False
    assert config.access_log is True


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "stirscope.toml"
    path.write_text(
        "\n".join(
            [
                'host = "0.0.0.0"',
                "port = 9000",
                "freshness = 120",
                'tn-match = "nanp"',
                'crl = "hard"',
                'trust = ["trust-dir"]',
                "open_verification = true",
                "workers = 3",
            ]
        ),
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("argv", "environ", "port", "freshness", "workers"),
    [
        ([], {}, 9000, 120, 3),
        ([], {"STIRSCOPE_PORT": "9100", "STIRSCOPE_FRESHNESS": "30"}, 9100, 30, 3),
        (["--port", "9200"], {"STIRSCOPE_PORT": "9100"}, 9200, 120, 3),
        (["--freshness", "60"], {"STIRSCOPE_FRESHNESS": "30"}, 9000, 60, 3),
        (["--workers", "1"], {"STIRSCOPE_WORKERS": "2"}, 9000, 120, 1),
    ],
    ids=["file", "env-over-file", "flag-over-env", "flag-equal-to-default-still-wins",
         "flag-workers"],
)  # fmt: skip
def test_precedence(
    toml: Path,
    argv: list[str],
    environ: dict[str, str],
    port: int,
    freshness: int,
    workers: int,
) -> None:
    settings = _resolve(["--config", str(toml), *argv], environ)
    config = config_from_settings(settings)
    assert config.host == "0.0.0.0"
    assert config.port == port
    assert config.verifier.policy.freshness_s == freshness
    assert config.workers == workers
    assert config.verifier.policy.tn_match is TnMatch.NANP
    assert config.verifier.policy.crl is CrlMode.HARD
    # Relative paths in the file are taken from the file's directory.
    assert config.verifier.trust == (toml.parent / "trust-dir",)


def test_config_file_from_environment(toml: Path) -> None:
    settings = _resolve([], {"STIRSCOPE_CONFIG": str(toml)})
    assert settings["port"] == 9000


def test_environment_lists_and_booleans(tmp_path: Path) -> None:
    environ = {
        "STIRSCOPE_TRUST": f"{tmp_path / 'a'}:{tmp_path / 'b'}",
        "STIRSCOPE_FETCH": "yes",
        "STIRSCOPE_OPEN_VERIFICATION": "1",
        "STIRSCOPE_ACCESS_LOG": "off",
    }
    config = config_from_settings(_resolve([], environ))
    assert config.verifier.trust == (tmp_path / "a", tmp_path / "b")
    assert config.verifier.fetch is True
    assert config.open_verification is True
    assert config.access_log is False


def test_flags_append_trust_over_environment(tmp_path: Path) -> None:
    environ = {"STIRSCOPE_TRUST": str(tmp_path / "env")}
    settings = _resolve(["--trust", "x", "--trust", "y", "--open-verification"], environ)
    assert config_from_settings(settings).verifier.trust == (Path("x"), Path("y"))


def test_settings_round_trip_through_json_for_workers(tmp_path: Path) -> None:
    import json

    keys = write_keys(tmp_path)
    settings = _resolve(["--trust", str(TRUST), "--api-keys", str(keys), "--workers", "2"], {})
    config = config_from_settings(settings)
    again = config_from_settings(json.loads(settings_to_json(config)))
    assert again == config


BAD = [
    ("no-trust", ["--open-verification"], {}, "no trust anchors"),
    ("no-keys", ["--trust", "t"], {}, "no API keys"),
    ("signing-without-keys", ["--trust", "t", "--open-verification", "--signing-key", "k",
                              "--signing-x5u", "https://x/y"], {}, "signing requires API keys"),
    ("key-without-x5u", ["--trust", "t", "--open-verification", "--signing-key", "k"], {},
     "both"),
    ("http-x5u", ["--trust", "t", "--api-keys", "k", "--signing-key", "k", "--signing-x5u",
                  "http://x/y"], {}, "https"),
    ("port-range", ["--trust", "t", "--open-verification", "--port", "70000"], {}, "port"),
    ("workers-zero", ["--trust", "t", "--open-verification", "--workers", "0"], {}, "workers"),
    ("env-not-int", ["--trust", "t", "--open-verification"], {"STIRSCOPE_PORT": "http"},
     "integer"),
    ("env-not-bool", ["--trust", "t"], {"STIRSCOPE_OPEN_VERIFICATION": "maybe"}, "boolean"),
    ("env-bad-choice", ["--trust", "t", "--open-verification"], {"STIRSCOPE_CRL": "sometimes"},
     "not one of"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "environ", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_unusable_settings(argv: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_settings(_resolve(argv, environ))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("port = ", "config file"),
        ("colour = 'blue'", "unknown setting"),
        ("port = '8080'", "integer"),
        ("trust = 5", "list"),
    ],
    ids=["not-toml", "unknown-key", "wrong-type", "trust-not-list"],
)
def test_bad_config_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        _resolve(["--config", str(path)], {})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        _resolve(["--config", str(tmp_path / "absent.toml")], {})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no trust anchors"),
        (["--trust", "/nonexistent/trust.pem", "--open-verification"], "trust path not found"),
        (["--trust", "{trust}", "--api-keys", "/nonexistent/keys"], "cannot read API keys"),
        (["--trust", "{trust}", "--api-keys", "{keys}", "--signing-key", "{loose}",
          "--signing-x5u", "https://certs.alpha.example/alpha.pem"], "group or others"),
    ],
    ids=["no-trust", "missing-trust", "missing-keys", "loose-key-mode"],
)  # fmt: skip
def test_serve_reports_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    values = {
        "trust": str(TRUST),
        "keys": str(write_keys(tmp_path)),
        "loose": str(private_copy(ALPHA_KEY, tmp_path, 0o644)),
    }
    argv = [a.format(**values) for a in extra]
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_new_api_key(capsys: pytest.CaptureFixture[str]) -> None:
    from service.api.auth import KeyRing

    assert main(["serve", "--new-api-key", "ops"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].split()[-1]
    entry = out[1].split()[-1]
    ring = KeyRing.load(None, [entry])
    found = ring.authenticate(key)
    assert found is not None
    assert found.name == "ops"


def test_shared_cache_from_flag_and_environment() -> None:
    flag = _resolve(
        ["--trust", str(TRUST), "--open-verification", "--cache", "redis://r:6379/1"], {}
    )
    assert config_from_settings(flag).verifier.cache == "redis://r:6379/1"
    env = _resolve(
        ["--trust", str(TRUST), "--open-verification"], {"STIRSCOPE_CACHE": "redis://e/0"}
    )
    assert config_from_settings(env).verifier.cache == "redis://e/0"
    off = _resolve(["--trust", str(TRUST), "--open-verification"], {})
    assert config_from_settings(off).verifier.cache is None


def test_bad_shared_cache_url_is_a_config_error() -> None:
    settings = _resolve(["--trust", str(TRUST), "--open-verification", "--cache", "http://x/"], {})
    with pytest.raises(ConfigError, match="--cache"):
        config_from_settings(settings)
