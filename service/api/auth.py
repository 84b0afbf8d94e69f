"""API keys: bearer tokens checked against SHA-256 digests, never stored in clear.

Keys are high-entropy random strings (``secrets.token_urlsafe(32)``: 256 bits), so a plain
SHA-256 digest suffices (no password-stretching KDF is needed for keys nobody chose). Entries
are ``NAME:SHA256HEX[:SCOPES]`` (scopes ``verify``, ``sign`` and ``jobs`` joined by ``+``, such
as ``verify+sign+jobs``; default ``verify+sign``: access to analysis jobs and their results is
never granted by omission, so key files written before it existed keep their meaning),
one per line in the keys file (``#`` comments) or comma-separated in ``api_key_hashes``.
A presented token is hashed and compared with every entry in constant time.
RFC 6750 section 2.1 (Authorization: Bearer), section 3 (WWW-Authenticate).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from service.api.errors import ApiError, ErrorCode

# A SHA-256 digest in hex.
_DIGEST_RE = re.compile(r"[0-9a-fA-F]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# Bytes of randomness in a generated key: 256 bits, the SHA-256 output size.
KEY_BYTES = 32
# Keys files are small; a bound keeps a mistaken path (a log file...) from being slurped.
MAX_KEYS_FILE_BYTES = 1024 * 1024


class KeyFileError(Exception):
    """A keys file or entry is unreadable or malformed (a usage error at start-up)."""


class Scope(StrEnum):
    """What a key may do."""

    VERIFY = "verify"
    SIGN = "sign"
    # Analysis jobs and their results: upload captures, read calls, traceback, exports, web UI.
    JOBS = "jobs"


# Scopes of an entry that names none (the two that existed before ``jobs``).
DEFAULT_SCOPES = frozenset({Scope.VERIFY, Scope.SIGN})


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One accepted key: its name (for logs), SHA-256 digest and scopes."""

    name: str
    digest: bytes
    scopes: frozenset[Scope]


def hash_api_key(key: str) -> str:
    """The hex SHA-256 digest stored for ``key`` (FIPS 180-4)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_api_key() -> str:
    """A new random key (URL-safe base64 of ``KEY_BYTES`` random bytes)."""
    return secrets.token_urlsafe(KEY_BYTES)


def parse_entry(entry: str, where: str) -> ApiKey:
    """``NAME:SHA256HEX[:SCOPES]`` as an ``ApiKey``."""
    parts = entry.strip().split(":")
    if len(parts) not in (2, 3):
        raise KeyFileError(f"{where}: expected NAME:SHA256HEX[:SCOPES], got {entry.strip()!r}")
    name, digest = parts[0], parts[1]
    if _NAME_RE.fullmatch(name) is None:
        raise KeyFileError(f"{where}: bad key name {name!r}")
    if _DIGEST_RE.fullmatch(digest) is None:
        raise KeyFileError(f"{where}: {name}: not a SHA-256 hex digest (64 hex digits)")
    scopes = DEFAULT_SCOPES
    if len(parts) == 3:
        try:
            scopes = frozenset(Scope(s) for s in parts[2].split("+"))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise KeyFileError(f"{where}: {name}: scopes are {known}, joined by +") from None
    return ApiKey(name, bytes.fromhex(digest), scopes)


class KeyRing:
    """The accepted API keys."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)
        names = [k.name for k in self._keys]
        if len(set(names)) != len(names):
            raise KeyFileError("duplicate API key names")

    @classmethod
    def load(cls, path: Path | None, entries: Iterable[str] = ()) -> KeyRing:
        """Keys from a keys file (one entry a line) and inline entries."""
        keys: list[ApiKey] = []
        if path is not None:
            try:
                if path.stat().st_size > MAX_KEYS_FILE_BYTES:
                    raise KeyFileError(f"API keys file {path} is too large")
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyFileError(f"cannot read API keys file {path}: {exc}") from exc
            for number, line in enumerate(text.splitlines(), 1):
                content = line.split("#", 1)[0].strip()
                if content:
                    keys.append(parse_entry(content, f"{path}:{number}"))
        keys.extend(parse_entry(e, "api_key_hashes") for e in entries)
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, token: str) -> ApiKey | None:
        """The key ``token`` is, or None; every entry is compared (constant time each)."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header. RFC 6750 section 2.1."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def authorize(ring: KeyRing, authorization: str | None, scope: Scope) -> ApiKey:
    """The key behind an Authorization header, allowed ``scope``; else 401 (no or unknown
    token, with ``WWW-Authenticate``) or 403 (a key without the scope). RFC 6750 section 3."""
    token = bearer_token(authorization)
    if token is None:
        raise ApiError(
            ErrorCode.UNAUTHORIZED,
            "no bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="stirscope"'},
        )
    key = ring.authenticate(token)
    if key is None:
        raise ApiError(
            ErrorCode.UNAUTHORIZED,
            "unknown API key",
            headers={"WWW-Authenticate": 'Bearer realm="stirscope", error="invalid_token"'},
        )
    if scope not in key.scopes:
        raise ApiError(ErrorCode.FORBIDDEN, key.name, scope.value)
    return key
