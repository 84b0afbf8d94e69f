"""Header fields as received: order, repeats and spelling kept; lookups by canonical name."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Compact forms, from the IANA "Header Fields" registry of the SIP parameters
# (https://www.iana.org/assignments/sip-parameters), RFC 3261 section 7.3.3 and the RFCs cited.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",  # RFC 3841
    "b": "Referred-By",  # RFC 3892
    "c": "Content-Type",  # RFC 3261
    "d": "Request-Disposition",  # RFC 3841
    "e": "Content-Encoding",  # RFC 3261
    "f": "From",  # RFC 3261
    "i": "Call-ID",  # RFC 3261
    "j": "Reject-Contact",  # RFC 3841
    "k": "Supported",  # RFC 3261
    "l": "Content-Length",  # RFC 3261
    "m": "Contact",  # RFC 3261
    "o": "Event",  # RFC 6665
    "r": "Refer-To",  # RFC 3515
    "s": "Subject",  # RFC 3261
    "t": "To",  # RFC 3261
    "u": "Allow-Events",  # RFC 6665
    "v": "Via",  # RFC 3261
    "x": "Session-Expires",  # RFC 4028
    "y": "Identity",  # RFC 8224
}

# Canonical spelling of well-known header names (RFC 3261 section 20 and the extension RFCs).
_KNOWN = [
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Additional-Identity",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Attestation-Info",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Content-Transfer-Encoding",
    "Date",
    "Diversion",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "Geolocation",
    "History-Info",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Max-Forwards",
    "MIME-Version",
    "Min-Expires",
    "Min-SE",
    "Organization",
    "Origination-Id",
    "P-Access-Network-Info",
    "P-Asserted-Identity",
    "P-Called-Party-ID",
    "P-Charging-Vector",
    "P-Preferred-Identity",
    "Path",
    "Priority",
    "Priority-Verstat",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Remote-Party-ID",
    "Replaces",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Resource-Priority",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Service-Route",
    "Session-Expires",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
]
CANONICAL_NAMES: dict[str, str] = {name.lower(): name for name in _KNOWN}
for _short, _long in COMPACT_FORMS.items():
    CANONICAL_NAMES[_short] = _long

# Headers whose grammar is a comma-separated list (RFC 3261 section 7.3.1 allows combining
# them); every other header keeps commas literally (From, To, Date, Identity, unknown ones...).
LIST_HEADERS = frozenset(
    name.lower()
    for name in [
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Diversion",
        "Error-Info",
        "History-Info",
        "In-Reply-To",
        "Path",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Require",
        "Route",
        "Service-Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    ]
)

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


def canonical_name(name: str) -> str:
    """Canonical spelling of a header name: compact forms expanded, known names normalised.

    Unknown names are returned as written. RFC 3261 section 7.3.3.
    """
    return CANONICAL_NAMES.get(name.lower(), name)


def _header_key(name: str) -> str:
    """`header_key` by its definition (the reference of its memo)."""
    lowered = name.lower()
    return CANONICAL_NAMES.get(lowered, lowered).lower()


# `header_key` of the names lookups pass (mostly literals: "from", "p-asserted-identity"),
# remembered: every accessor asks for one per call. Bounded: cleared when full, since callers
# may pass names taken from the wire.
_KEY_MEMO: dict[str, str] = {}
_MAX_KEY_MEMO = 1_024


def header_key(name: str) -> str:
    """Lookup key: lower-case canonical name (compact and long forms share one key).

    RFC 3261 section 7.3.1.
    """
    key = _KEY_MEMO.get(name)
    if key is None:
        key = _header_key(name)
        if len(_KEY_MEMO) >= _MAX_KEY_MEMO:
            _KEY_MEMO.clear()
        _KEY_MEMO[name] = key
    return key


def is_token(text: str) -> bool:
    """True if ``text`` matches the ``token`` production. RFC 3261 section 25.1."""
    return bool(text) and all(ch in _TOKEN_CHARS for ch in text)


def split_commas(value: str) -> list[str]:
    """Split a list header value on commas outside quotes and angle brackets.

    Backslash escapes inside quoted strings are honoured; empty elements are kept (as "")
    so callers can flag them. RFC 3261 section 7.3.1.
    """
    if "," not in value:
        return [value.strip()]
    parts: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return parts


@dataclass(frozen=True, slots=True)
class Header:
    """One header field line as received: the name as written, the unfolded value, the byte
    offset of the line in the raw message and the length of its raw bytes (folds included).

    RFC 3261 section 7.3.
    """

    name: str
    value: str
    offset: int
    length: int

    @property
    def canonical_name(self) -> str:
        return canonical_name(self.name)

    @property
    def key(self) -> str:
        return header_key(self.name)


class Headers:
    """Ordered header fields; lookups are case-insensitive and compact-form aware.

    Built once by the parser and never changed afterwards (the lists are private).
    RFC 3261 section 7.3.
    """

    __slots__ = ("_keys", "_lengths", "_names", "_offsets", "_values")

    def __init__(
        self,
        names: list[str],
        values: list[str],
        offsets: list[int],
        lengths: list[int],
        keys: list[str],
    ) -> None:
        self._names = names
        self._values = values
        self._offsets = offsets
        self._lengths = lengths
        self._keys = keys

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]]) -> Headers:
        """Headers without byte positions (offsets -1), e.g. for building messages."""
        names = [n for n, _ in pairs]
        return cls(
            names,
            [v for _, v in pairs],
            [-1] * len(names),
            [0] * len(names),
            [header_key(n) for n in names],
        )

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[Header]:
        for i in range(len(self._names)):
            yield Header(self._names[i], self._values[i], self._offsets[i], self._lengths[i])

    def __getitem__(self, index: int) -> Header:
        return Header(
            self._names[index], self._values[index], self._offsets[index], self._lengths[index]
        )

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and header_key(name) in self._keys

    def __repr__(self) -> str:
        return f"Headers({list(zip(self._names, self._values, strict=True))!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._names == other._names and self._values == other._values

    __hash__ = None  # type: ignore[assignment]

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of the first header with this name (any spelling or compact form)."""
        key = header_key(name)
        keys = self._keys
        # Two scans in C (membership, then position) cost less than one in Python.
        if key in keys:
            return self._values[keys.index(key)]
        return default

    def get_all(self, name: str) -> list[str]:
        """Values of every header line with this name, in order (lines are not comma-split)."""
        return self._lines(header_key(name))

    def _lines(self, key: str) -> list[str]:
        """Values of the lines whose lookup key is ``key``, in order; the common counts (none,
        one) found by scans in C rather than a comprehension over every header."""
        keys = self._keys
        count = keys.count(key)
        if count == 0:
            return []
        if count == 1:
            return [self._values[keys.index(key)]]
        return [v for k, v in zip(keys, self._values, strict=True) if k == key]

    def fields(self, name: str) -> list[Header]:
        """Every header line with this name as `Header` values (offsets included)."""
        key = header_key(name)
        keys = self._keys
        count = keys.count(key)
        if count < 2:  # as in `_lines`: none or one found by scans in C
            return [self[keys.index(key)]] if count else []
        return [self[i] for i, k in enumerate(keys) if k == key]

    def values(self, name: str) -> list[str]:
        """All values of a header, list headers split on commas (quotes and <> respected).

        RFC 3261 section 7.3.1.
        """
        key = header_key(name)
        lines = self._lines(key)
        if key not in LIST_HEADERS:
            return lines
        out: list[str] = []
        for line in lines:
            out.extend(split_commas(line))
        return out

    def items(self) -> list[tuple[str, str]]:
        """(name as written, value) pairs in order."""
        return list(zip(self._names, self._values, strict=True))

    def names(self) -> list[str]:
        return list(self._names)
