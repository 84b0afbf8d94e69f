"""The JOSE building blocks a PASSporT needs: strict base64url, strict JSON, canonical JSON.

Strict on input (a verifier must not accept two spellings of one token), exact on output (a
signer and a compact-form rebuild must produce the RFC 8225 section 9 bytes).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence

from shaken.errors import Reason, ShakenError

# RFC 4648 section 5: base64url differs from base64 only in these two characters.
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
# Tolerant alphabet seen in legacy signers (Asterisk 16-18: standard base64 with '=' padding).
_B64_ANY_RE = re.compile(r"[A-Za-z0-9_\-+/]*={0,2}")


def b64url_decode(s: str) -> bytes:
    """Decode unpadded base64url strictly (alphabet ``A-Za-z0-9-_``, no ``=``, no whitespace).

    Raises ``ShakenError(Reason.INVALID_BASE64)``. RFC 7515 section 2 and Appendix C.
    """
    # '+', '/' and '=' would survive the translation below, so refuse them first; strict
    # binascii then rejects every other non-alphabet character (whitespace included).
    if "+" in s or "/" in s or "=" in s or not s.isascii():
        raise ShakenError(Reason.INVALID_BASE64, "characters outside the base64url alphabet")
    if len(s) % 4 == 1:
        raise ShakenError(Reason.INVALID_BASE64, f"impossible base64url length {len(s)}")
    data = s.encode("ascii").translate(_URL_TO_STD) + b"=" * (-len(s) % 4)
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        raise ShakenError(Reason.INVALID_BASE64, "not base64url") from None


def b64url_decode_lenient(s: str) -> bytes | None:
    """Best-effort decode of standard or url-safe base64, padded or not; None when hopeless.

    Only for forensics (showing what a malformed legacy token claimed): never for verification.
    RFC 4648 sections 4 and 5.
    """
    if _B64_ANY_RE.fullmatch(s) is None:
        return None
    body = s.rstrip("=").replace("+", "-").replace("/", "_")
    if len(body) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - excluded by the checks
        return None


def b64url_encode(data: bytes) -> str:
    """Encode as base64url without padding. RFC 7515 section 2."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _reject_constant(name: str) -> object:
    raise ValueError(f"non-standard JSON constant {name}")


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ShakenError(Reason.DUPLICATE_JSON_KEY, f"duplicate JSON key {key!r}")
        result[key] = value
    return result


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)


def loads_strict(data: bytes) -> dict[str, object]:
    """Parse UTF-8 JSON that must be an object; duplicate keys and NaN/Infinity are rejected.

    Raises ``ShakenError`` with ``DUPLICATE_JSON_KEY`` or ``INVALID_JSON``. RFC 7515 section 5.2
    step 4 (duplicate Header Parameter names), RFC 8259 section 4, RFC 8225 section 5.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ShakenError(Reason.INVALID_JSON, f"not UTF-8: {exc.reason}") from None
    try:
        value = _DECODER.decode(text)  # also rejects trailing data ("Extra data")
    except ValueError as exc:  # json.JSONDecodeError is a ValueError; also _reject_constant
        raise ShakenError(Reason.INVALID_JSON, str(exc)) from None
    except RecursionError:
        raise ShakenError(Reason.INVALID_JSON, "JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ShakenError(
            Reason.INVALID_JSON, f"expected a JSON object, got {type(value).__name__}"
        )
    return value


def _check_integers_only(obj: object) -> None:
    # Concrete types first: this runs on every decoded PASSporT (ABC checks are slow).
    stack = [obj]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is dict or (kind is not list and isinstance(item, Mapping)):
            for key, value in item.items():  # type: ignore[attr-defined]
                if type(key) is not str:
                    raise ValueError(f"JSON object keys must be strings, got {key!r}")
                stack.append(value)
        elif kind is list or kind is tuple:
            stack.extend(item)  # type: ignore[arg-type]
        elif isinstance(item, float):
            raise ValueError(f"RFC 8225 section 9 allows integers only, got {item!r}")
        elif isinstance(item, Sequence) and not isinstance(item, str | bytes):
            stack.extend(item)


# One encoder for all calls: json.dumps with non-default options builds a new one each time,
# which costs more than the encoding of a PASSporT-sized object.
_ENCODER_OPTIONS = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode_basestring = getattr(json.encoder, "c_encode_basestring", None)
# The C encoder with the arguments JSONEncoder.iterencode passes, built once: without
# circular-reference markers it holds no per-call state (decoded JSON cannot be circular;
# _check_integers_only would loop on a cycle first), so every call and thread can share it.
_C_ENCODER = (
    None
    if _c_make_encoder is None or _c_encode_basestring is None
    else _c_make_encoder(
        None, _ENCODER_OPTIONS.default, _c_encode_basestring, None, ":", ",", True, False, False
    )
)


def _encode(obj: object) -> str:
    if _C_ENCODER is None:  # pragma: no cover - PyPy etc.
        return _ENCODER_OPTIONS.encode(obj)
    return "".join(_C_ENCODER(obj, 0))


def canonical_json(obj: object) -> str:
    """Serialise per RFC 8225 section 9: members sorted by code point, no whitespace, integers.

    Non-ASCII characters are written as UTF-8 (not ``\\u`` escapes). Raises ``ValueError`` for
    floats or non-string keys. RFC 8225 section 9.
    """
    _check_integers_only(obj)
    return _encode(obj)


class _NotFastPath(Exception):
    """Internal: the input needs the strict (slow) decoder."""


def _no_float(text: str) -> object:
    raise _NotFastPath(text)


# The C scanner with no Python hooks except on floats and NaN/Infinity, which abort the fast path.
_FAST_DECODER = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_float)
# Its scanner alone: canonical JSON has no surrounding whitespace to skip, and the comparison
# with the re-serialisation below rejects trailing data, so ``decode``'s wrapping is not needed.
_FAST_SCAN: Callable[[str, int], tuple[object, int]] = _FAST_DECODER.scan_once  # type: ignore[attr-defined]


def loads_canonical(data: bytes) -> dict[str, object] | None:
    """The JSON object in ``data`` if ``data`` is exactly its RFC 8225 section 9 serialisation.

    The common case on the hot path: a canonical object is decoded by the C scanner alone, and
    equality with its own canonical re-serialisation proves there were no duplicate keys (a
    duplicate would be dropped, and the re-serialisation would differ), no floats, no
    whitespace. Returns None for anything else; callers then use ``loads_strict``, which gives
    the exact reason. RFC 8225 section 9; RFC 7515 section 5.2.
    """
    try:
        text = data.decode("utf-8")
        value = _FAST_SCAN(text, 0)[0]
        if type(value) is dict and _encode(value) == text:
            return value
    except (ValueError, StopIteration, _NotFastPath, RecursionError):
        pass
    return None


def loads_canonical_segment(segment: str) -> dict[str, object] | None:
    """``loads_canonical`` of a strict base64url segment; None for anything else (never raises).

    What a JWS segment carries when its signer followed RFC 8225 section 9; the callers that
    get None take the strict path, which names the problem. RFC 7515 section 2 and 5.2.
    """
    try:
        data = b64url_decode(segment)
    except ShakenError:
        return None
    return loads_canonical(data)
