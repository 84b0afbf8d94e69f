"""Load STI-CA trust anchors from PEM bundles and directories (the file I/O ``shaken`` avoids)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from shaken.errors import Reason, ShakenError
from shaken.trust import TrustStore

# File names taken from a trust directory: PEM and DER certificates (as in an STI-PA
# trust-anchor list export or a c_rehash'd directory).
TRUST_SUFFIXES = frozenset({".pem", ".crt", ".cer", ".der"})


class TrustLoadError(Exception):
    """A trust path could not be read or held no certificate (a usage error, exit 2)."""


def trust_files(paths: Sequence[Path]) -> list[Path]:
    """Every certificate file named by ``paths`` (files as given, directories one level deep)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TRUST_SUFFIXES
                )
            )
        elif path.is_file():
            files.append(path)
        else:
            raise TrustLoadError(f"trust path not found: {path}")
    return files


def load_trust_store(paths: Sequence[Path]) -> TrustStore:
    """A ``TrustStore`` from PEM bundles, DER files and directories; empty is an error."""
    if not paths:
        raise TrustLoadError("no trust anchors given (use --trust PEM|DIR)")
    stores: list[TrustStore] = []
    for file in trust_files(paths):
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise TrustLoadError(f"cannot read {file}: {exc.strerror}") from exc
        try:
            stores.append(TrustStore.from_pem(data, name=str(file)))
        except ShakenError as exc:
            if exc.reason is not Reason.CHAIN_UNTRUSTED:
                raise TrustLoadError(f"{file}: {exc.detail}") from exc
    if not stores:
        raise TrustLoadError(
            "no certificate found in the trust paths: " + ", ".join(map(str, paths))
        )
    return TrustStore.merge(*stores)
