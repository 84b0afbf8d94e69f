"""Shared helpers for the SIP layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SIP_FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sip"


def crlf(text: str) -> bytes:
    """A message written with LF in the test source, sent with CRLF as on the wire."""
    return text.replace("\n", "\r\n").encode("utf-8")


@pytest.fixture(scope="session")
def invite_identity() -> bytes:
    return (SIP_FIXTURES / "invite_identity.sip").read_bytes()
