"""``stirscope serve``: the HTTP verification (STI-VS) and signing (STI-AS) service.

``stirscope serve [--host H] [--port P] [--workers N] [--config FILE] [--api-keys FILE]
[--signing-key PEM --signing-x5u URL] [--open-verification] [--db URL] [--upload-dir DIR]
[--max-upload-bytes N] [--job-workers N]`` plus the trust, certificate and policy options of
``stirscope verify``. Analysis jobs (``/v1/jobs``) and the investigator web UI (``/ui/``) keep
their results in ``--db`` (an SQLite file under the data directory by default; PostgreSQL for
several instances) and the uploaded captures in ``--upload-dir``. Settings come from flags >
``STIRSCOPE_*`` environment > TOML file > defaults (``service.config``). SIGTERM or Ctrl-C
stops it gracefully: in-flight requests finish, running analysis jobs go back to the queue,
then the verifier is closed; exit 0. Exit 2 on configuration errors.
"""

from __future__ import annotations

import argparse
import logging.config
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from analyzer.trustload import TrustLoadError, load_trust_store
from service.api.auth import KeyFileError, KeyRing, generate_api_key, hash_api_key
from service.cmd_verify import add_verifier_options
from service.config import (
    LOG_LEVELS,
    ConfigError,
    LogFormat,
    ServeConfig,
    config_from_settings,
    load_signing_key,
    logging_config,
    resolve_settings,
    settings_to_json,
)

EXIT_OK = 0
EXIT_USAGE = 2
# Seconds in-flight requests get after SIGTERM before connections are closed: the common
# orchestrator grace period (Kubernetes terminationGracePeriodSeconds defaults to 30).
GRACEFUL_SHUTDOWN_S = 30
# uvicorn's HTTP/1.1 protocol: httptools (C, from uvicorn[standard]) with one send per response
# and the verification route answered inline (service.api.protocol), named because "auto" would
# fall back to h11 (pure Python, several times the cost per request) without a word if
# httptools went missing. The event loop stays "auto": uvloop wherever it is installed
# (uvicorn[standard] installs it except on Windows), asyncio's elsewhere.
UVICORN_HTTP = "service.api.protocol:StirHttpProtocol"
UVICORN_LOOP = "auto"

# Options of add_verifier_options whose argparse defaults must not mask lower layers
# (environment, config file): their defaults become None and service.config supplies them.
_LAYERED_VERIFIER_OPTIONS = (
    "trust",
    "certs",
    "fetch",
    "ca_bundle",
    "unsafe_allow_private",
    "cache",
    "freshness",
    "clock_skew",
    "no_date_check",
    "originator",
    "tn_match",
    "crl",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP verification/signing service (ATIS-1000082 API)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = parser.add_argument_group("service")
    net.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    net.add_argument("--port", type=int, help="TCP port (default 8080)")
    net.add_argument("--workers", type=int, metavar="N", help="worker processes (default 1)")
    net.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    net.add_argument(
        "--max-body-bytes", type=int, metavar="N", help="request body limit (default 65536)"
    )
    net.add_argument("--log-level", choices=LOG_LEVELS, help="log level (default info)")
    net.add_argument(
        "--log-format", choices=[f.value for f in LogFormat], help="log format (default json)"
    )
    net.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log every request (default on)",
    )
    jobs = parser.add_argument_group("analysis jobs and web UI")
    jobs.add_argument(
        "--db",
        metavar="URL",
        help="results store: sqlite:///PATH, a file path, or postgresql://USER@HOST/DB "
        "(default: stirscope.db under the data directory)",
    )
    jobs.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the default store and uploads live (default $XDG_DATA_HOME/stirscope)",
    )
    jobs.add_argument(
        "--upload-dir",
        type=Path,
        metavar="DIR",
        help="uploaded captures (default DATA_DIR/uploads)",
    )
    jobs.add_argument(
        "--max-upload-bytes",
        type=int,
        metavar="N",
        help="largest upload request, all captures together (default 1 GiB)",
    )
    jobs.add_argument(
        "--job-workers",
        type=int,
        metavar="N",
        help="analysis jobs run at once by each process (default 1; 0 = none here)",
    )
    jobs.add_argument(
        "--instance",
        metavar="NAME",
        help="this instance's name among those sharing the store (default host:port)",
    )
    jobs.add_argument(
        "--job-lease",
        type=int,
        metavar="S",
        help="seconds before another instance takes over the job of one that stopped "
        "renewing it (default 60)",
    )
    access = parser.add_argument_group("access and signing")
    access.add_argument(
        "--api-keys",
        type=Path,
        metavar="FILE",
        help="API key hashes, one NAME:SHA256HEX[:SCOPES] a line (scopes verify, sign, "
        "jobs joined by +; default verify+sign)",
    )
    access.add_argument(
        "--open-verification",
        action="store_true",
        default=None,
        help="serve verification without an API key (signing always needs one)",
    )
    access.add_argument(
        "--signing-key", type=Path, metavar="PEM", help="P-256 signing key (mode 600)"
    )
    access.add_argument("--signing-x5u", metavar="URL", help="https URL of the signing cert")
    tools = parser.add_argument_group("one-shot actions")
    tools.add_argument("--openapi", action="store_true", help="print the OpenAPI document and exit")
    tools.add_argument(
        "--new-api-key",
        metavar="NAME",
        help="print a new random API key and its keys-file line, then exit",
    )
    add_verifier_options(parser)
    parser.set_defaults(run=run, **dict.fromkeys(_LAYERED_VERIFIER_OPTIONS))


def _fail(message: str) -> int:
    print(f"stirscope serve: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """Resolve the configuration, check it, and serve until SIGTERM/SIGINT."""
    if args.openapi:
        from service.api.app import openapi_json

        sys.stdout.write(openapi_json())
        return EXIT_OK
    if args.new_api_key is not None:
        key = generate_api_key()
        print(f"key:  {key}")
        print(f"line: {args.new_api_key}:{hash_api_key(key)}:verify+sign+jobs")
        return EXIT_OK
    try:
        config = _checked_config(args)
    except (ConfigError, TrustLoadError, KeyFileError) as exc:
        return _fail(str(exc))
    serve(config)
    return EXIT_OK


def _checked_config(args: argparse.Namespace) -> ServeConfig:
    """Merged settings, with the files they name read once now, so that mistakes are reported
    as usage errors before any worker starts (each worker reads them again for itself)."""
    settings = resolve_settings(vars(args), os.environ, args.config)
    config = config_from_settings(settings)
    load_trust_store(config.verifier.trust)
    KeyRing.load(config.api_keys, config.api_key_hashes)
    if config.signing_key is not None:
        load_signing_key(config.signing_key)
    return config


def _ignore(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the signal that stopped it once shutdown is complete; the shutdown
    was graceful, so the process should exit 0 rather than die by that signal."""


def serve(config: ServeConfig) -> None:
    """Run uvicorn with one process (the app object) or ``config.workers`` processes (each
    builds its own app from the settings handed down in the environment)."""
    import uvicorn

    from service.api.app import WORKER_SETTINGS_ENV, create_app

    log_config = logging_config(config.log_level, config.log_format)
    logging.config.dictConfig(log_config)
    common: dict[str, object] = {
        "host": config.host,
        "port": config.port,
        "log_config": log_config,
        "access_log": False,
        "lifespan": "on",
        "http": UVICORN_HTTP,
        "loop": UVICORN_LOOP,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "server_header": False,
    }
    previous = signal.signal(signal.SIGTERM, _ignore)
    try:
        if config.workers == 1:
            uvicorn.run(create_app(config), **common)  # type: ignore[arg-type]
        else:
            os.environ[WORKER_SETTINGS_ENV] = settings_to_json(config)
            uvicorn.run(
                "service.api.app:create_app_from_environment",
                factory=True,
                workers=config.workers,
                **common,  # type: ignore[arg-type]
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
