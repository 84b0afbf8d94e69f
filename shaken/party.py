"""Identities as PASSporTs carry them: a telephone number or a URI (RFC 8225 section 5.2.1)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PartyKind(StrEnum):
    TN = "tn"
    URI = "uri"


@dataclass(frozen=True, slots=True)
class Party:
    """One identity: ``kind`` is ``tn`` (canonical per RFC 8224 section 8.3) or ``uri``.

    RFC 8225 section 5.2.1.
    """

    kind: PartyKind
    value: str

    @classmethod
    def tn(cls, value: str) -> Party:
        return cls(PartyKind.TN, value)

    @classmethod
    def uri(cls, value: str) -> Party:
        return cls(PartyKind.URI, value)

    def to_json(self) -> dict[str, str]:
        return {self.kind.value: self.value}

    def __str__(self) -> str:
        return self.value
