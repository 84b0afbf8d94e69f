"""Peers, providers and watch-list files: parsing, lookups, and malformed rows named by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from analyzer.traceback_directory import (
    DirectoryError,
    MatchBasis,
    PeerMap,
    ProviderDirectory,
    WatchList,
    split_endpoint,
    trunk_group,
)
from tests.conftest import FIXTURES

TB = FIXTURES / "traceback"
PEERS_HEADER = "match,name,spc,rmd_number,frn,signs\n"


def write(tmp_path: Path, text: str, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("ip", "port", "trunk", "name", "basis"),
    [
        ("192.0.2.10", 5060, None, "Transit One", MatchBasis.IP),
        ("192.0.2.11", 5080, None, "Transit One (backup trunk)", MatchBasis.IP_PORT),
        ("198.51.100.77", 5060, None, "Gateway Two", MatchBasis.CIDR),
        ("203.0.113.99", 5060, "TG-THREE", "Trunk Three Carrier", MatchBasis.TRUNK),
        ("192.0.2.10", 5060, "tg-three", "Trunk Three Carrier", MatchBasis.TRUNK),
    ],
    ids=["exact-ip", "ip-port", "cidr", "trunk-case-insensitive", "trunk-wins-over-ip"],
)
def test_peer_lookup_precedence(
    ip: str, port: int, trunk: str | None, name: str, basis: MatchBasis
) -> None:
    peers = PeerMap.load(str(TB / "peers.csv"))
    match = peers.lookup(ip, port, trunk)
    assert match is not None
    assert (match.peer.name, match.basis) == (name, basis)


@pytest.mark.parametrize(
    ("ip", "port"),
    [("192.0.2.11", 5060), ("192.0.2.200", 5060), ("2001:db8::1", 5060), ("not-an-ip", None)],
    ids=["ip-port-other-port", "unknown-ip", "ipv6-not-in-v4-cidr", "garbage"],
)
def test_peer_lookup_misses(ip: str, port: int | None) -> None:
    assert PeerMap.load(str(TB / "peers.csv")).lookup(ip, port, None) is None


def test_longest_prefix_wins_and_ipv6_endpoints(tmp_path: Path) -> None:
    text = PEERS_HEADER + (
        "10.0.0.0/8,Wide,,,,\n10.1.0.0/16,Narrow,,,,no\n[2001:db8::7]:5061,Six,,,,yes\n"
    )
    peers = PeerMap.load(write(tmp_path, text))
    narrow = peers.lookup("10.1.2.3", 5060, None)
    wide = peers.lookup("10.2.2.3", 5060, None)
    six = peers.lookup("2001:db8::7", 5061, None)
    assert narrow is not None
    assert narrow.peer.name == "Narrow"
    assert narrow.peer.signs is False
    assert wide is not None
    assert wide.peer.name == "Wide"
    assert wide.peer.signs is None
    assert six is not None
    assert six.basis is MatchBasis.IP_PORT
    assert six.peer.signs is True


def test_peers_file_is_recorded_as_evidence() -> None:
    peers = PeerMap.load(str(TB / "peers.csv"))
    assert peers.source is not None
    assert peers.source.rows == 4
    assert len(peers.source.sha256) == 64


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (PEERS_HEADER + "192.0.2.1,One,,,,\nbogus,Two,,,,\n", 3, "bad match"),
        (PEERS_HEADER + "192.0.2.1,One,,,,\n192.0.2.1,Two,,,,\n", 3, "duplicate match"),
        (PEERS_HEADER + "10.0.0.0/8,A,,,,\n10.0.0.0/8,B,,,,\n", 3, "duplicate match"),
        (PEERS_HEADER + "10.0.0.1/8,A,,,,\n", 2, "bad match"),
        (PEERS_HEADER + "192.0.2.1,,,,,\n", 2, "empty name"),
        (PEERS_HEADER + "192.0.2.1:70000,A,,,,\n", 2, "bad match"),
        (PEERS_HEADER + "192.0.2.1,A,,RMD-1,,\n", 2, "bad rmd_number"),
        (PEERS_HEADER + "192.0.2.1,A,,,123,\n", 2, "bad frn"),
        (PEERS_HEADER + "192.0.2.1,A,,,,maybe\n", 2, "bad signs"),
        (PEERS_HEADER + "192.0.2.1,A,!!,,,\n", 2, "bad spc"),
        (PEERS_HEADER + "192.0.2.1,A,,,,,extra\n", 2, "fields"),
        (PEERS_HEADER + "trunk:bad name,A,,,,\n", 2, "bad trunk"),
        ("# comment\nname,spc\nA,1234\n", 2, "header lacks column(s): match"),
        ("# only comments\n", None, "empty file"),
    ],
    ids=[
        "bad-match", "duplicate-ip", "duplicate-cidr", "cidr-host-bits", "empty-name",
        "port-range", "bad-rmd", "bad-frn", "bad-signs", "bad-spc", "too-many-fields",
        "bad-trunk", "missing-column", "empty",
    ],
)  # fmt: skip
def test_malformed_peers_rows_name_the_file_and_line(
    tmp_path: Path, text: str, line: int | None, fragment: str
) -> None:
    path = write(tmp_path, text, "peers.csv")
    with pytest.raises(DirectoryError) as info:
        PeerMap.load(path)
    assert info.value.line == line
    assert info.value.path == path
    assert fragment in str(info.value)
    if line is not None:
        assert f"peers.csv line {line}:" in str(info.value)


def test_unreadable_file_is_a_directory_error(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError):
        PeerMap.load(str(tmp_path / "missing.csv"))
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(PEERS_HEADER.encode() + b"192.0.2.1,Caf\xe9,,,,\n")
    with pytest.raises(DirectoryError, match="not UTF-8"):
        PeerMap.load(str(bad))


def test_providers_directory() -> None:
    directory = ProviderDirectory.load(str(TB / "providers.csv"))
    charlie = directory.lookup("9012c")
    assert charlie is not None
    assert charlie.name == "Charlie International Gateway Corp"
    assert (charlie.gateway_provider, charlie.foreign_voice_provider) == (True, False)
    assert charlie.rmd_number == "RMD0009012"
    assert directory.lookup("0000") is None
    assert directory.lookup(None) is None


def test_providers_accepts_an_ocn_column(tmp_path: Path) -> None:
    directory = ProviderDirectory.load(write(tmp_path, "ocn,name\n742D,Example Voice\n"))
    entry = directory.lookup("742D")
    assert entry is not None
    assert entry.name == "Example Voice"
    assert entry.frn is None


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("spc,name\n1234A,A\n1234a,B\n", 3, "duplicate spc"),
        ("spc,name\n1234A,\n", 2, "empty name"),
        ("spc,name\n,A\n", 2, "empty spc"),
        ("spc,name,frn\n1234A,A,12\n", 2, "bad frn"),
        ("spc,name,gateway_provider\n1234A,A,perhaps\n", 2, "bad gateway_provider"),
        ("name,rmd_number\nA,RMD1\n", 1, "header lacks column(s): spc"),
    ],
    ids=["duplicate", "empty-name", "empty-spc", "bad-frn", "bad-flag", "missing-spc"],
)
def test_malformed_providers_rows(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    with pytest.raises(DirectoryError) as info:
        ProviderDirectory.load(write(tmp_path, text, "providers.csv"))
    assert info.value.line == line
    assert fragment in str(info.value)


def test_watch_list() -> None:
    watch = WatchList.load(str(TB / "watchlist.txt"))
    assert watch.has_number("12025550111")
    assert watch.has_number("+13125550107")
    assert not watch.has_number("12025550101")
    assert not watch.has_number(None)
    assert watch.has_signer("5678b", None)
    assert not watch.has_signer("1234A", None)


def test_watch_list_origid_and_errors(tmp_path: Path) -> None:
    watch = WatchList.load(write(tmp_path, "origid:ABC-1  # a campaign\n\n", "w.txt"))
    assert watch.has_signer(None, "abc-1")
    with pytest.raises(DirectoryError) as info:
        WatchList.load(write(tmp_path, "+12025550111\nspc:\nnot a number\n", "w.txt"))
    assert info.value.line == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1:5060", ("192.0.2.1", 5060)),
        ("[2001:db8::1]:5061", ("2001:db8::1", 5061)),
        ("192.0.2.1", ("192.0.2.1", None)),
        (None, (None, None)),
    ],
    ids=["v4", "v6", "no-port", "none"],
)
def test_split_endpoint(text: str | None, expected: tuple[str | None, int | None]) -> None:
    assert split_endpoint(text) == expected


def test_trunk_group_from_request_uri() -> None:
    uri = "sip:+12025550143@sbc.example;user=phone;tgrp=tg-three;trunk-context=sbc.example"
    assert trunk_group(uri) == "tg-three"
    assert trunk_group("sip:+12025550143@sbc.example") is None
