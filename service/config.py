"""Service configuration: a TOML file, ``STIRSCOPE_*`` environment variables and flags.

Theory of operation: every setting has one name (the flag's dest: ``api_keys``, ``tn_match``),
a kind and a default (``SETTINGS``). ``resolve_settings`` layers, lowest first: defaults, the
TOML file (``--config`` / ``STIRSCOPE_CONFIG``; flat keys, relative paths taken from the file's
directory), the environment (``STIRSCOPE_<NAME>``), then the flags that were actually given
(their argparse default is ``None``). ``config_from_settings`` checks the merged values and builds
a ``ServeConfig``. The merged settings are plain JSON, so ``--workers N`` hands them to each
worker process, which builds its own verifier from them.

Also here: the signing key loader (permission-checked) and the JSON log format.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from analyzer.sharedcache import check_cache_url
from analyzer.storage import DEFAULT_LEASE_S
from analyzer.verifying import VerifierConfig
from shaken.policy import (
    DEFAULT_CLOCK_SKEW_S,
    DEFAULT_FRESHNESS_S,
    CrlMode,
    Originator,
    Policy,
    TnMatch,
)

ENV_PREFIX = "STIRSCOPE_"
# The config file may be named by the environment as well as by --config.
CONFIG_ENV = "STIRSCOPE_CONFIG"
# Loopback by default: exposing the service is a deliberate choice (--host 0.0.0.0).
DEFAULT_HOST = "127.0.0.1"
# The conventional alternative HTTP port; ATIS-1000082 fixes none (STANDARDS.md section 8.1).
DEFAULT_PORT = 8080
# Request bodies: an Identity header is ~1 kB (RFC 8224 section 4) and a request holds at most
# analyzer.atis.MAX_IDENTITIES of them plus identities; 64 KiB covers that with room to spare.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
# A PEM private key is a few hundred bytes; refuse to slurp anything absurd.
MAX_KEY_FILE_BYTES = 64 * 1024
# Permission bits that must be clear on a signing key file: no access for group or others.
KEY_FILE_FORBIDDEN_MODE = 0o077
# Analysis uploads (POST /v1/jobs): a whole request body. 1 GiB holds a busy SBC's hour of SIP
# with RTP; larger captures are better analysed with `stirscope analyze --db` on the host.
DEFAULT_MAX_UPLOAD_BYTES = 1024**3
# Upper bound a deployment may configure (a request body larger than this is a mistake).
MAX_UPLOAD_BYTES_LIMIT = 64 * 1024**3
# Analysis jobs run at once per service process (each is one CPU-bound thread).
DEFAULT_JOB_WORKERS = 1
# The SQLite file under the data directory when no --db URL is given (embedded, zero set-up).
DEFAULT_DB_FILE = "stirscope.db"
UPLOADS_SUBDIR = "uploads"


class ConfigError(Exception):
    """A configuration value is missing, malformed or unsafe (a usage error, exit 2)."""


class Kind(StrEnum):
    STR = "str"
    INT = "int"
    BOOL = "bool"
    PATH = "path"
    PATHS = "paths"
    STRS = "strs"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration setting: its kind, default and allowed values (if a choice)."""

    kind: Kind
    default: object
    choices: tuple[str, ...] = ()


SETTINGS: dict[str, Setting] = {
    "host": Setting(Kind.STR, DEFAULT_HOST),
    "port": Setting(Kind.INT, DEFAULT_PORT),
    "workers": Setting(Kind.INT, 1),
    # Trust and certificates: the options of `stirscope verify`.
    "trust": Setting(Kind.PATHS, []),
    "certs": Setting(Kind.PATHS, []),
    "fetch": Setting(Kind.BOOL, False),
    "ca_bundle": Setting(Kind.PATH, None),
    "unsafe_allow_private": Setting(Kind.BOOL, False),
    # Shared certificate/CRL cache for several instances (redis://HOST:PORT/DB), optional.
    "cache": Setting(Kind.STR, None),
    "freshness": Setting(Kind.INT, DEFAULT_FRESHNESS_S),
    "clock_skew": Setting(Kind.INT, DEFAULT_CLOCK_SKEW_S),
    "no_date_check": Setting(Kind.BOOL, False),
    "originator": Setting(
        Kind.STR, Originator.PAI_THEN_FROM.value, tuple(o.value for o in Originator)
    ),
    "tn_match": Setting(Kind.STR, TnMatch.EXACT.value, tuple(m.value for m in TnMatch)),
    "crl": Setting(Kind.STR, CrlMode.SOFT.value, tuple(m.value for m in CrlMode)),
    # Access: API key hashes (file and/or inline entries) and the open verification switch.
    "api_keys": Setting(Kind.PATH, None),
    "api_key_hashes": Setting(Kind.STRS, []),
    "open_verification": Setting(Kind.BOOL, False),
    # Signing (STI-AS): the private key file and the certificate URL put in x5u/info.
    "signing_key": Setting(Kind.PATH, None),
    "signing_x5u": Setting(Kind.STR, None),
    "max_body_bytes": Setting(Kind.INT, DEFAULT_MAX_BODY_BYTES),
    "log_level": Setting(Kind.STR, "info", LOG_LEVELS),
    "log_format": Setting(Kind.STR, LogFormat.JSON.value, tuple(f.value for f in LogFormat)),
    "access_log": Setting(Kind.BOOL, True),
    # Analysis jobs: the results store, where uploads go, their size limit, worker threads,
    # and the lease owner name of this instance (several instances may share one PostgreSQL).
    "data_dir": Setting(Kind.PATH, None),
    "db": Setting(Kind.STR, None),
    "upload_dir": Setting(Kind.PATH, None),
    "max_upload_bytes": Setting(Kind.INT, DEFAULT_MAX_UPLOAD_BYTES),
    "job_workers": Setting(Kind.INT, DEFAULT_JOB_WORKERS),
    "instance": Setting(Kind.STR, None),
    # Seconds a claimed job stays this instance's without a heartbeat: how soon another
    # instance takes over the job of one that died (renewed every quarter of it).
    "job_lease": Setting(Kind.INT, int(DEFAULT_LEASE_S)),
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``stirscope serve`` needs; ``clock`` is injectable for tests.

    ``settings`` keeps the merged plain values (JSON) that built this configuration.
    """

    verifier: VerifierConfig
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    api_keys: Path | None = None
    api_key_hashes: tuple[str, ...] = ()
    open_verification: bool = False
    signing_key: Path | None = None
    signing_x5u: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_level: str = "info"
    log_format: LogFormat = LogFormat.JSON
    access_log: bool = True
    # Analysis jobs: enabled when ``db`` is set (``config_from_settings`` always sets it; a
    # configuration built in code may leave it out to serve verification and signing only).
    db: str | None = None
    upload_dir: Path | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    job_workers: int = DEFAULT_JOB_WORKERS
    instance: str | None = None
    job_lease_s: float = DEFAULT_LEASE_S
    clock: Callable[[], float] = field(default=time.time, compare=False)
    settings: Mapping[str, object] = field(default_factory=dict, compare=False)

    @property
    def signing_enabled(self) -> bool:
        return self.signing_key is not None

    @property
    def jobs_enabled(self) -> bool:
        return self.db is not None


def _coerce(
    name: str, value: object, origin: str, base: Path | None, *, text: bool = False
) -> object:
    """A raw value as the setting's kind; ``text``: an environment string, parsed (TOML and
    flag values must already have the right type)."""
    spec = SETTINGS[name]
    where = f"{origin}: {name}"
    if value is None:
        return None
    if spec.kind is Kind.BOOL:
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if spec.kind is Kind.INT:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if spec.kind in (Kind.PATHS, Kind.STRS):
        items: list[object]
        if text and isinstance(value, str):
            separator = os.pathsep if spec.kind is Kind.PATHS else ","
            items = [v.strip() for v in value.split(separator) if v.strip()]
        elif isinstance(value, str):
            items = [value]
        elif isinstance(value, list):
            items = list(value)
        else:
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{where}: expected a list of strings")
        if spec.kind is Kind.PATHS:
            return [_path(str(v), base) for v in items]
        return [str(v) for v in items]
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if spec.kind is Kind.PATH:
        return _path(value, base) if value else None
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(spec.choices)}")
    return value


def _path(text: str, base: Path | None) -> str:
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return str(path)


def read_config_file(path: Path) -> dict[str, object]:
    """The settings of a TOML file (flat keys named like the flags, ``-`` or ``_``)."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    out: dict[str, object] = {}
    base = path.resolve().parent
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in SETTINGS:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        out[name] = _coerce(name, value, f"config file {path}", base)
    return out


def env_settings(environ: Mapping[str, str]) -> dict[str, object]:
    """The settings given as ``STIRSCOPE_<NAME>`` (lists: ``os.pathsep`` or comma separated)."""
    out: dict[str, object] = {}
    for name in SETTINGS:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            out[name] = _coerce(name, environ[key], f"environment {key}", None, text=True)
    return out


def flag_settings(flags: Mapping[str, object]) -> dict[str, object]:
    """The settings given as flags: every known name whose value is not ``None`` (or empty)."""
    out: dict[str, object] = {}
    for name in SETTINGS:
        value = flags.get(name)
        if value is None or (isinstance(value, list) and not value):
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list):
            value = [str(v) for v in value]
        out[name] = _coerce(name, value, "flag", None)
    return out


def resolve_settings(
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: Path | None = None,
) -> dict[str, object]:
    """Merged plain settings: flags > environment > file > defaults."""
    merged: dict[str, object] = {
        name: (list(spec.default) if isinstance(spec.default, list) else spec.default)
        for name, spec in SETTINGS.items()
    }
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = Path(environ[CONFIG_ENV])
    if config_file is not None:
        merged.update(read_config_file(config_file))
    merged.update(env_settings(environ))
    merged.update(flag_settings(flags))
    return merged


def _opt_path(value: object) -> Path | None:
    return Path(str(value)) if value is not None else None


def _int(settings: Mapping[str, object], name: str, low: int, high: int) -> int:
    value = settings[name]
    if not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def default_data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_DATA_HOME/stirscope`` (XDG Base Directory Specification: default
    ``~/.local/share``): where the default SQLite store and uploads live."""
    base = environ.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(base) / "stirscope"


def config_from_settings(
    settings: Mapping[str, object], *, clock: Callable[[], float] = time.time
) -> ServeConfig:
    """Check merged settings and build the configuration (``ConfigError`` when unusable)."""
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    values = {name: settings.get(name, spec.default) for name, spec in SETTINGS.items()}
    trust = values["trust"]
    if not isinstance(trust, list) or not trust:
        raise ConfigError(
            "no trust anchors: give --trust PEM|DIR, STIRSCOPE_TRUST or trust = [...] "
            "(an empty trust store is an error)"
        )
    certs = values["certs"]
    assert isinstance(certs, list)
    policy = Policy(
        freshness_s=_int(values, "freshness", 0, 86_400),
        clock_skew_s=_int(values, "clock_skew", 0, 86_400),
        check_date=not values["no_date_check"],
        originator=Originator(str(values["originator"])),
        tn_match=TnMatch(str(values["tn_match"])),
        crl=CrlMode(str(values["crl"])),
    )
    cache = values["cache"]
    if cache is not None:
        problem = check_cache_url(str(cache))
        if problem is not None:
            raise ConfigError(f"--cache: {problem}")
    verifier = VerifierConfig(
        cache=str(cache) if cache is not None else None,
        trust=tuple(Path(str(p)) for p in trust),
        certs_dirs=tuple(Path(str(p)) for p in certs),
        fetch=bool(values["fetch"]),
        ca_bundle=_opt_path(values["ca_bundle"]),
        unsafe_allow_private=bool(values["unsafe_allow_private"]),
        policy=policy,
    )
    signing_key = _opt_path(values["signing_key"])
    x5u = values["signing_x5u"]
    if (signing_key is None) != (x5u is None):
        raise ConfigError("signing needs both --signing-key PEM and --signing-x5u URL")
    if isinstance(x5u, str):
        parts = urlsplit(x5u)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"--signing-x5u must be an https URL, got {x5u!r}")
    hashes = values["api_key_hashes"]
    assert isinstance(hashes, list)
    api_keys = _opt_path(values["api_keys"])
    open_verification = bool(values["open_verification"])
    if api_keys is None and not hashes:
        if signing_key is not None:
            raise ConfigError("signing requires API keys: give --api-keys FILE")
        if not open_verification:
            raise ConfigError(
                "no API keys: give --api-keys FILE, or --open-verification to serve "
                "verification without keys"
            )
    data_dir = _opt_path(values["data_dir"]) or default_data_dir()
    db = values["db"]
    if db is not None and (not isinstance(db, str) or not db.strip()):
        raise ConfigError("db must be a database URL or a file path")
    upload_dir = _opt_path(values["upload_dir"]) or data_dir / UPLOADS_SUBDIR
    instance = values["instance"]
    return ServeConfig(
        verifier=verifier,
        host=str(values["host"]),
        port=_int(values, "port", 0, 65_535),
        workers=_int(values, "workers", 1, 256),
        api_keys=api_keys,
        api_key_hashes=tuple(str(h) for h in hashes),
        open_verification=open_verification,
        signing_key=signing_key,
        signing_x5u=x5u if isinstance(x5u, str) else None,
        max_body_bytes=_int(values, "max_body_bytes", 1024, 16 * 1024 * 1024),
        log_level=str(values["log_level"]),
        log_format=LogFormat(str(values["log_format"])),
        access_log=bool(values["access_log"]),
        db=db if isinstance(db, str) else str(data_dir / DEFAULT_DB_FILE),
        upload_dir=upload_dir,
        max_upload_bytes=_int(values, "max_upload_bytes", 1024, MAX_UPLOAD_BYTES_LIMIT),
        job_workers=_int(values, "job_workers", 0, 64),
        job_lease_s=float(_int(values, "job_lease", 1, 3600)),
        instance=str(instance) if instance else None,
        clock=clock,
        settings=dict(values),
    )


def settings_to_json(config: ServeConfig) -> str:
    """The merged settings as JSON, for worker processes (``config_from_settings`` reads it)."""
    return json.dumps(dict(config.settings), sort_keys=True)


def load_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load a P-256 signing key, refusing files that group or others may access.

    The key is the STI-AS credential (ATIS-1000080 section 5: the SP keeps its private key
    secret); the service never returns it. RFC 8225 section 6 (ES256 needs P-256).
    """
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"signing key {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & KEY_FILE_FORBIDDEN_MODE:
        raise ConfigError(
            f"signing key {path} is accessible by group or others (mode {mode:04o}); "
            f"restrict it: chmod 600 {path}"
        )
    if info.st_size > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"signing key {path} is too large to be a PEM key")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{path} is not an EC P-256 key (ES256 requires P-256)")
    return key


# -- logging -----------------------------------------------------------------------------------

# LogRecord attributes that are not "extra" fields.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
# The line encoder, built once (``json.dumps`` with options builds one per call); a value JSON
# cannot represent is written as its ``str``.
_LINE_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)
MICROSECONDS = 1_000_000
# The end of a log time for each millisecond (``iso_time``): a lookup, not a format per line.
_MILLISECONDS = tuple(f".{ms:03d}+00:00" for ms in range(1000))
# Characters of batched lines (``LineBatchingHandler``) after which they are written at once
# rather than at the end of the loop turn: 64 KiB, the pipe buffer of Linux (pipe(7)), so a
# batch seldom needs more than one write of a pipe to stderr.
LINE_BATCH_CHARS = 64 * 1024


class LineBatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` that also takes lines already formatted (the access log's, one per
    request, or what makes it: ``write_soon_rendered``) and writes those of one turn of the
    event loop together, at the end of that turn.

    Theory of operation. ``write_soon`` appends a line to the batch; the first line of a batch
    schedules one ``flush`` with ``loop.call_soon``, which runs once the callbacks already due
    (the other connections' reads of this turn) have run, so a busy server writes and flushes
    once per turn rather than once per request. A batch past ``LINE_BATCH_CHARS`` is written
    at once; a line given where no loop runs, with no batch pending, is not taken (its caller
    writes it at once). Everything else this handler writes -- each record it emits,
    ``flush``, ``close`` and ``setStream`` (which flush), the logging module's shutdown (which
    flushes) -- first writes the batch, so the stream gets every line in the order it came,
    as the same bytes.
    The batch is kept under the handler's lock: any thread may emit or flush meanwhile.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        # Lines with their terminators, and lines to render when written (``render, args``).
        self._batch: list[str | tuple[Callable[..., str], tuple[Any, ...]]] = []
        self._batch_chars = 0

    def write_soon(self, line: str) -> bool:
        """Write ``line`` (its terminator included) at the end of the running loop's turn;
        False, nothing done, when no loop runs in this thread (the caller writes it now)."""
        return self._add(line, len(line))

    def write_soon_rendered(
        self, render: Callable[..., str], args: tuple[Any, ...], size: int
    ) -> bool:
        """``write_soon(render(*args) + terminator)``, ``render`` called when the batch is
        written rather than now: on a busy server the lines of a turn are made together, after
        its answers, not one between every two (measured: ~7 us less per request on the
        service's hot path). ``size``: about the line's length (for ``LINE_BATCH_CHARS``).
        ``render`` must not fail: a failure is reported as a failed write of the batch."""
        return self._add((render, args), size)

    def _add(self, item: str | tuple[Callable[..., str], tuple[Any, ...]], size: int) -> bool:
        """Only a batch's first item looks the loop up (a system call: the loop is checked
        against the process id); the others join the batch its flush will write."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            batch = self._batch
            if not batch:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    return False
                loop.call_soon(self.flush)
            batch.append(item)
            chars = self._batch_chars + size
            self._batch_chars = chars
            if chars >= LINE_BATCH_CHARS:
                self._write_batch()
        return True

    def _write_batch(self) -> None:
        """Write the batch (the caller holds the lock); report a failure as ``emit`` would."""
        batch = self._batch
        self._batch = []
        self._batch_chars = 0
        try:
            first = batch[0]
            if len(batch) == 1 and isinstance(first, str):
                text = first
            else:
                terminator = self.terminator
                text = "".join(
                    [
                        item if isinstance(item, str) else item[0](*item[1]) + terminator
                        for item in batch
                    ]
                )
            self.stream.write(text)
        except Exception:
            self.handleError(
                logging.makeLogRecord({"msg": "%d batched lines", "args": (len(batch),)})
            )

    def emit(self, record: logging.LogRecord) -> None:
        if self._batch:
            with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
                if self._batch:
                    self._write_batch()
        super().emit(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            if self._batch:
                self._write_batch()
            super().flush()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields.

    It formats the access log line of every request, so it is kept lean: the text of the
    current second is computed once per second (``datetime.isoformat`` is most of the cost of
    a timestamp) and the milliseconds appended to it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (POSIX second, its ISO 8601 text): one tuple, so threads never see a torn pair.
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        entry: dict[str, object] = {
            "time": self.iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (key, value)
            for key, value in fields.items()
            if key not in _RECORD_FIELDS and key[:1] != "_" and key != "color_message"
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _LINE_ENCODER.encode(entry)

    def access_line(
        self, created: float, logger: str, message: str, fields: Mapping[str, object]
    ) -> str:
        """What ``format`` gives for an INFO record of ``logger`` created at ``created`` with
        ``message`` and the ``extra`` ``fields`` (no arguments, no exception), built without a
        ``LogRecord``: the access log writes one per request (``service.api.metrics``)."""
        entry: dict[str, object] = {
            "time": self.iso_time(created),
            "level": "info",
            "logger": logger,
            "message": message,
        }
        entry.update(fields)
        return _LINE_ENCODER.encode(entry)

    def iso_time(self, created: float) -> str:
        """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``: the
        microseconds rounded half-even as ``fromtimestamp`` rounds them, then truncated."""
        if created < 0:  # before 1970: not worth a second code path
            return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        second = int(created)
        # The fraction as ``math.modf`` gives it: a double minus its integer part is exact.
        micro = round((created - second) * MICROSECONDS)
        if micro >= MICROSECONDS:
            second += 1
            micro -= MICROSECONDS
        cached, text = self._second
        if cached != second:
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, text)
        return text + _MILLISECONDS[micro // 1000]


def logging_config(level: str, log_format: LogFormat) -> dict[str, object]:
    """A ``logging.config.dictConfig`` for the service and uvicorn (stderr, one format)."""
    formatter: dict[str, object] = (
        {"()": f"{__name__}.JsonFormatter"}
        if log_format is LogFormat.JSON
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handler = {
        "class": f"{__name__}.LineBatchingHandler",
        "formatter": "default",
        "stream": "ext://sys.stderr",
    }
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "stirscope": {"handlers": ["default"], "level": upper, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
