"""The operator's data files for traceback: peers (ingress -> provider), providers (SPC -> name)
and a watch list (numbers and signers).

Peers CSV (``--peers``), one interconnect per row, header row required:

============  ========  ===================================================================
column        required  meaning
============  ========  ===================================================================
match         yes       ``198.51.100.7``, ``198.51.100.7:5060``, ``[2001:db8::7]:5060``,
                        ``198.51.100.0/24`` or ``trunk:NAME`` (RFC 4904 ``tgrp`` of the
                        Request-URI)
name          yes       the provider's name as we know it (our interconnect agreement)
spc           no        its OCN/SPC (column ``ocn`` is accepted as well)
rmd_number    no        its Robocall Mitigation Database filing number, ``RMD`` + digits
frn           no        its FCC Registration Number, 10 digits
signs         no        ``yes`` when the peer is expected to sign (or pass signed) traffic
============  ========  ===================================================================

Providers CSV (``--providers``): ``spc`` (or ``ocn``) and ``name`` required; optional
``rmd_number``, ``frn``, ``gateway_provider`` and ``foreign_voice_provider`` (``yes``/``no``,
the RMD filing's role flags). The RMD export has no OCN/SPC column (TRACEBACK.md section 3.1),
so this file is the operator's own join of SPC to company.

Watch list (``--watch``): one entry per line, ``#`` starts a comment: a calling number
(``+12025550101``, ``12025550101``, or a prefix ending in ``*``), ``spc:CODE`` for a signer or
``origid:VALUE`` for a signer's origination identifier.

Malformed rows raise ``DirectoryError`` naming the file and the line. Lines starting with
``#`` and blank lines are skipped in every file. Matching is deterministic: a trunk rule wins,
then an exact IP:port, then an exact IP, then the longest CIDR prefix.
TRACEBACK.md sections 3 and 6; RFC 4904 section 5 (tgrp).
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

# SPC: a 4-character OCN or a 5-character RespOrg ID (TRACEBACK.md section 2.3, ATIS-1000080);
# some test and legacy codes are longer: accept 3 to 8 letters and digits.
SPC_RE = re.compile(r"^[A-Za-z0-9]{3,8}$")
# RMD filing numbers look like RMD0001410 (TRACEBACK.md section 3.1, view 2).
RMD_RE = re.compile(r"^RMD\d{1,10}$")
# FCC Registration Numbers are 10 digits (47 CFR 1.8002).
FRN_RE = re.compile(r"^\d{10}$")
# A calling number in the watch list: E.164 digits (ITU-T E.164 section 6: at most 15).
NUMBER_RE = re.compile(r"^\+?(\d{1,15})(\*?)$")
TRUNK_RE = re.compile(r"^[A-Za-z0-9._~%!$&'()*+,;=-]{1,64}$")
# Request-URI ``tgrp`` parameter (RFC 4904 section 5).
TGRP_RE = re.compile(r";tgrp=([^;?>]+)", re.IGNORECASE)
YES = frozenset({"yes", "y", "true", "1"})
NO = frozenset({"no", "n", "false", "0"})
# A data file larger than this is refused (a peers or providers map is thousands of rows).
MAX_FILE_BYTES = 64 * 1024 * 1024


class DirectoryError(ValueError):
    """A malformed peers/providers/watch-list file: ``path line N: what is wrong``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path} line {line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True, slots=True)
class DataFile:
    """A data file as evidence: the name given, its SHA-256 and the rows read."""

    name: str
    sha256: str
    rows: int

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "sha256": self.sha256, "rows": self.rows}


class MatchBasis(StrEnum):
    """Which kind of peers rule matched an ingress."""

    TRUNK = "trunk"
    IP_PORT = "ip_port"
    IP = "ip"
    CIDR = "cidr"


@dataclass(frozen=True, slots=True)
class Peer:
    """One interconnect of our network (a row of the peers file)."""

    match: str
    name: str
    spc: str | None
    rmd_number: str | None
    frn: str | None
    signs: bool | None
    line: int


@dataclass(frozen=True, slots=True)
class PeerMatch:
    peer: Peer
    basis: MatchBasis


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    """One provider of the providers file (SPC/OCN -> name, RMD number, FRN, role flags)."""

    spc: str
    name: str
    rmd_number: str | None
    frn: str | None
    gateway_provider: bool | None
    foreign_voice_provider: bool | None
    line: int


def _read(path: str, kind: str) -> tuple[str, str]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DirectoryError(path, None, f"cannot read {kind} file: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise DirectoryError(path, None, f"{kind} file larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DirectoryError(path, None, f"{kind} file is not UTF-8") from exc
    return text, hashlib.sha256(data).hexdigest()


def _csv_rows(
    path: str, text: str, required: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; the header is the first non-comment line."""
    lines = [
        (n, line)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise DirectoryError(path, None, "empty file (a header row is required)")
    header_line, header_text = lines[0]
    header = [h.strip().lower() for h in next(csv.reader([header_text]))]
    if "ocn" in header and "spc" not in header:
        header[header.index("ocn")] = "spc"
    missing = [c for c in required if c not in header]
    if missing:
        raise DirectoryError(path, header_line, f"header lacks column(s): {', '.join(missing)}")
    for n, line in lines[1:]:
        try:
            cells = next(csv.reader(io.StringIO(line)))
        except csv.Error as exc:
            raise DirectoryError(path, n, f"bad CSV: {exc}") from exc
        if len(cells) > len(header):
            raise DirectoryError(path, n, f"{len(cells)} fields, header has {len(header)}")
        cells += [""] * (len(header) - len(cells))
        yield n, {k: v.strip() for k, v in zip(header, cells, strict=True)}


def _optional(
    path: str, line: int, row: dict[str, str], column: str, pattern: re.Pattern[str]
) -> str | None:
    value = row.get(column) or None
    if value is not None and not pattern.match(value):
        raise DirectoryError(path, line, f"bad {column} {value!r}")
    return value


def _flag(path: str, line: int, row: dict[str, str], column: str) -> bool | None:
    value = (row.get(column) or "").lower()
    if not value:
        return None
    if value in YES:
        return True
    if value in NO:
        return False
    raise DirectoryError(path, line, f"bad {column} {row[column]!r} (yes or no)")


def _required(path: str, line: int, row: dict[str, str], column: str) -> str:
    value = row.get(column, "")
    if not value:
        raise DirectoryError(path, line, f"empty {column}")
    return value


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_K = TypeVar("_K", str, tuple[str, int])


@dataclass(slots=True)
class PeerMap:
    """Ingress (trunk, source IP:port, IP or CIDR) -> the peer that delivered a call."""

    source: DataFile | None = None
    trunks: dict[str, Peer] = field(default_factory=dict)
    endpoints: dict[tuple[str, int], Peer] = field(default_factory=dict)
    hosts: dict[str, Peer] = field(default_factory=dict)
    networks: list[tuple[_Network, Peer]] = field(default_factory=list)

    @classmethod
    def load(cls, path: str) -> PeerMap:
        """Read a peers CSV (module docstring); ``DirectoryError`` names a malformed line."""
        text, digest = _read(path, "peers")
        peers = cls()
        rows = 0
        for line, row in _csv_rows(path, text, ("match", "name")):
            peer = Peer(
                match=_required(path, line, row, "match"),
                name=_required(path, line, row, "name"),
                spc=_optional(path, line, row, "spc", SPC_RE),
                rmd_number=_optional(path, line, row, "rmd_number", RMD_RE),
                frn=_optional(path, line, row, "frn", FRN_RE),
                signs=_flag(path, line, row, "signs"),
                line=line,
            )
            peers._add(path, peer)
            rows += 1
        peers.networks.sort(key=lambda item: (-item[0].prefixlen, str(item[0])))
        peers.source = DataFile(path, digest, rows)
        return peers

    def _add(self, path: str, peer: Peer) -> None:
        key = peer.match
        if key.lower().startswith("trunk:"):
            name = key[6:]
            if not TRUNK_RE.match(name):
                raise DirectoryError(path, peer.line, f"bad trunk name {name!r}")
            self._put(path, peer, self.trunks, name.lower())
            return
        try:
            endpoint = _parse_endpoint(key)
            if endpoint is not None:
                self._put(path, peer, self.endpoints, endpoint)
                return
            if "/" in key:
                network = ipaddress.ip_network(key, strict=True)
                if any(n == network for n, _ in self.networks):
                    raise DirectoryError(path, peer.line, f"duplicate match {key!r}")
                self.networks.append((network, peer))
                return
            self._put(path, peer, self.hosts, str(ipaddress.ip_address(key)))
        except ValueError as exc:
            if isinstance(exc, DirectoryError):
                raise
            raise DirectoryError(
                path, peer.line, f"bad match {key!r} (IP, IP:port, CIDR or trunk:NAME)"
            ) from exc

    @staticmethod
    def _put(path: str, peer: Peer, table: dict[_K, Peer], key: _K) -> None:
        if key in table:
            first = table[key].line
            raise DirectoryError(
                path, peer.line, f"duplicate match {peer.match!r} (first on line {first})"
            )
        table[key] = peer

    def lookup(self, ip: str | None, port: int | None, trunk: str | None) -> PeerMatch | None:
        """The peer for an ingress: trunk, then IP:port, then IP, then the longest prefix."""
        if trunk is not None and trunk.lower() in self.trunks:
            return PeerMatch(self.trunks[trunk.lower()], MatchBasis.TRUNK)
        if ip is None:
            return None
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if port is not None and (str(address), port) in self.endpoints:
            return PeerMatch(self.endpoints[(str(address), port)], MatchBasis.IP_PORT)
        if str(address) in self.hosts:
            return PeerMatch(self.hosts[str(address)], MatchBasis.IP)
        for network, peer in self.networks:
            if address.version == network.version and address in network:
                return PeerMatch(peer, MatchBasis.CIDR)
        return None


def _parse_endpoint(text: str) -> tuple[str, int] | None:
    """``IPv4:port`` or ``[IPv6]:port`` (RFC 3986 section 3.2.2), else None."""
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$", text) or re.match(
        r"^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$", text
    )
    if m is None:
        return None
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return str(ipaddress.ip_address(m.group(1))), port


def split_endpoint(text: str | None) -> tuple[str | None, int | None]:
    """``ip:port`` as the analyzer writes it (IPv6 in brackets) -> (ip, port)."""
    if not text:
        return None, None
    m = re.match(r"^\[(.+)\]:(\d+)$", text) or re.match(r"^([^:]+):(\d+)$", text)
    if m is None:
        return text, None
    return m.group(1), int(m.group(2))


def trunk_group(request_uri: str | None) -> str | None:
    """The ``tgrp`` parameter of a Request-URI (RFC 4904 section 5), if any."""
    if not request_uri:
        return None
    m = TGRP_RE.search(request_uri)
    return m.group(1) if m else None


@dataclass(slots=True)
class ProviderDirectory:
    """SPC/OCN -> provider name, RMD number, FRN and RMD role flags (``--providers``)."""

    source: DataFile | None = None
    by_spc: dict[str, ProviderEntry] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> ProviderDirectory:
        """Read a providers CSV (module docstring); ``DirectoryError`` names a bad line."""
        text, digest = _read(path, "providers")
        directory = cls()
        rows = 0
        for line, row in _csv_rows(path, text, ("spc", "name")):
            spc = _required(path, line, row, "spc")
            if not SPC_RE.match(spc):
                raise DirectoryError(path, line, f"bad spc {spc!r}")
            entry = ProviderEntry(
                spc=spc,
                name=_required(path, line, row, "name"),
                rmd_number=_optional(path, line, row, "rmd_number", RMD_RE),
                frn=_optional(path, line, row, "frn", FRN_RE),
                gateway_provider=_flag(path, line, row, "gateway_provider"),
                foreign_voice_provider=_flag(path, line, row, "foreign_voice_provider"),
                line=line,
            )
            key = spc.upper()
            if key in directory.by_spc:
                first = directory.by_spc[key].line
                raise DirectoryError(path, line, f"duplicate spc {spc!r} (first on line {first})")
            directory.by_spc[key] = entry
            rows += 1
        directory.source = DataFile(path, digest, rows)
        return directory

    def lookup(self, spc: str | None) -> ProviderEntry | None:
        return self.by_spc.get(spc.upper()) if spc else None


@dataclass(slots=True)
class WatchList:
    """Calling numbers (exact or prefix), signer SPCs and origids to select calls by."""

    source: DataFile | None = None
    numbers: set[str] = field(default_factory=set)
    prefixes: list[str] = field(default_factory=list)
    spcs: set[str] = field(default_factory=set)
    origids: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, path: str) -> WatchList:
        """Read a watch list (module docstring); ``DirectoryError`` names a bad line."""
        text, digest = _read(path, "watch list")
        watch = cls()
        rows = 0
        for n, raw in enumerate(text.splitlines(), start=1):
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            rows += 1
            kind, _, value = entry.partition(":")
            if value and kind.lower() == "spc" and SPC_RE.match(value.strip()):
                watch.spcs.add(value.strip().upper())
                continue
            if value and kind.lower() == "origid" and value.strip():
                watch.origids.add(value.strip().lower())
                continue
            m = NUMBER_RE.match(entry.replace(" ", "").replace("-", ""))
            if m is None:
                raise DirectoryError(
                    path, n, f"bad entry {entry!r} (a number, number prefix*, spc:X or origid:X)"
                )
            if m.group(2):
                watch.prefixes.append(m.group(1))
            else:
                watch.numbers.add(m.group(1))
        watch.prefixes.sort()
        watch.source = DataFile(path, digest, rows)
        return watch

    def has_number(self, tn: str | None) -> bool:
        """``tn`` in canonical digits (RFC 8224 section 8.3), as call records hold it."""
        if not tn:
            return False
        digits = tn.lstrip("+")
        return digits in self.numbers or any(digits.startswith(p) for p in self.prefixes)

    def has_signer(self, spc: str | None, origid: str | None) -> bool:
        return bool(spc and spc.upper() in self.spcs) or bool(
            origid and origid.lower() in self.origids
        )
