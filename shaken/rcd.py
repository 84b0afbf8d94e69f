"""Rich Call Data integrity: ``rcdi`` digests over ``rcd`` values and fetched content (RFC 9795).

Each ``rcdi`` member maps an RFC 6901 JSON pointer into the ``rcd`` object to
``<alg>-<base64 digest>``. JSON values are hashed in their RFC 8225 section 9 serialisation
(a string with its quotes); URI-referenced content (``icn``, ``jcl``, URIs inside a jCard) is
hashed as the raw HTTP body bytes, which this sans-IO module receives in ``fetched``. A pointer
below ``/jcl`` addresses the fetched jCard (RFC 9795 section 6.1 extension of RFC 6901).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping

from shaken.errors import Finding, Reason, Severity, ShakenError, warning
from shaken.jose import canonical_json, loads_strict

# RFC 9795 section 6: the digest algorithms a verifier MUST support.
RCDI_ALGORITHMS: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
# rcd members whose string value is a URI to content hashed as bytes (RFC 9795 section 6.1).
_URI_MEMBERS = frozenset({"icn", "jcl"})


def rcdi_digest(value: object, alg: str = "sha256") -> str:
    """``<alg>-<base64>`` digest of a JSON value (RFC 8225 section 9 form) or of raw bytes.

    ``bytes`` are hashed as is (URI-referenced content); anything else is serialised first, so a
    string includes its quotes. Standard base64 without ``=`` padding, as the RFC examples
    print it. RFC 9795 section 6.1.
    """
    try:
        hasher = RCDI_ALGORITHMS[alg]
    except KeyError:
        raise ValueError(f"unsupported rcdi algorithm {alg!r}") from None
    data = value if isinstance(value, bytes) else canonical_json(value).encode("utf-8")
    digest = base64.b64encode(hasher(data).digest()).decode("ascii").rstrip("=")
    return f"{alg}-{digest}"


def _parse_digest(text: str) -> tuple[str, bytes]:
    alg, sep, b64 = text.partition("-")
    if not sep or alg not in RCDI_ALGORITHMS:
        raise ValueError(f"unsupported digest {text[:20]!r}")
    body = b64.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return alg, base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("digest is not base64") from None


def _pointer_tokens(pointer: str) -> list[str]:
    """RFC 6901 section 3-4: '/'-separated reference tokens with ~1 -> '/' and ~0 -> '~'."""
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _step(value: object, token: str) -> object:
    """One RFC 6901 section 4 evaluation step."""
    if isinstance(value, dict):
        if token not in value:
            raise ValueError(f"no member {token!r}")
        return value[token]
    if isinstance(value, list):
        # Array indices: '0' or digits without a leading zero; '-' never resolves.
        if not token.isdigit() or (token != "0" and token.startswith("0")):
            raise ValueError(f"bad array index {token!r}")
        index = int(token)
        if index >= len(value):
            raise ValueError(f"array index {index} out of range")
        return value[index]
    raise ValueError(f"cannot descend into {type(value).__name__}")


def _is_uri_slot(parent: object, token: str) -> bool:
    # jCard property = [name, params, value-type, value] (RFC 7095 section 3.3); a "uri"
    # value-type means the digest covers the referenced content.
    return isinstance(parent, list) and token == "3" and len(parent) >= 4 and parent[2] == "uri"


def _digest_target(
    rcd: Mapping[str, object], pointer: str, fetched: Mapping[str, bytes]
) -> bytes | str:
    """The bytes to hash for ``pointer``, or the URI whose content was not supplied."""
    tokens = _pointer_tokens(pointer)
    value: object = rcd
    parent: object = None
    for depth, token in enumerate(tokens):
        parent, value = value, _step(value, token)
        if depth == 0 and token == "jcl" and len(tokens) > 1:
            if not isinstance(value, str):
                raise ValueError("jcl is not a URI")
            if value not in fetched:
                return value
            try:  # RFC 9795 section 6.1: deeper tokens address inside the fetched jCard.
                value = loads_strict(b'{"_":' + fetched[value] + b"}")["_"]
            except ShakenError:
                raise ValueError("fetched jCard is not JSON") from None
    last = tokens[-1]
    uri_slot = (len(tokens) == 1 and last in _URI_MEMBERS) or (
        len(tokens) > 1 and tokens[0] in ("jcd", "jcl") and _is_uri_slot(parent, last)
    )
    if uri_slot:
        if not isinstance(value, str):
            raise ValueError(f"{pointer} is not a URI")
        return fetched.get(value, value)
    return canonical_json(value).encode("utf-8")


def check_rcdi(
    rcd: Mapping[str, object],
    rcdi: Mapping[str, object],
    fetched: Mapping[str, bytes] | None = None,
) -> list[Finding]:
    """Check every ``rcdi`` digest against ``rcd`` (and fetched URI content).

    A mismatching or unusable element is RCDI_MISMATCH (warning: only that element must not be
    used); a URI whose content is not in ``fetched`` is RCD_NOT_VERIFIED (info). Digests may be
    padded or unpadded base64. RFC 9795 sections 6 and 8.2; RFC 6901.
    """
    found: list[Finding] = []
    fetched = fetched or {}
    for pointer, expected in rcdi.items():
        try:
            if not isinstance(expected, str):
                raise ValueError("digest is not a string")
            alg, want = _parse_digest(expected)
            target = _digest_target(rcd, pointer, fetched)
        except (ValueError, RecursionError) as exc:
            found.append(warning(Reason.RCDI_MISMATCH, f"{pointer}: {exc}"))
            continue
        if isinstance(target, str):
            found.append(
                Finding(
                    Reason.RCD_NOT_VERIFIED,
                    f"{pointer}: content of {target} not supplied",
                    Severity.INFO,
                )
            )
            continue
        got = RCDI_ALGORITHMS[alg](target).digest()
        if not hmac.compare_digest(got, want):
            found.append(warning(Reason.RCDI_MISMATCH, f"{pointer}: {alg} digest mismatch"))
    return found
