"""STI-AS side: build and sign PASSporTs and the Identity header value that carries them.

Used for test fixtures, the ``stirscope sign`` command and interoperability checks. Inputs are
validated (a signer must not emit what our own verifier rejects): the assembled payload goes
through ``check_claims`` and any error raises ``ValueError``. Output is RFC 8225 section 9 JSON
signed with deterministic ECDSA (RFC 6979), so the same input always gives the same token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from shaken.claims import ATTEST_LEVELS
from shaken.errors import Reason
from shaken.es256 import sign_es256
from shaken.jose import b64url_encode, canonical_json
from shaken.passport import ES256, PASSPORT_TYP, check_claims, decode_passport

# RFC 8224 section 8.3: canonical telephone numbers are 1*( DIGIT / "#" / "*" ).
_TN_RE = re.compile(r"[0-9#*]+")
# RFC 8225 section 8.1 / IANA "PASSporT Extensions": a ppt is a short token.
_PPT_RE = re.compile(r"[A-Za-z0-9\-_.]+")
# Full-form token characters (base64url segments and dots), RFC 7515 section 7.1.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]+")


def _require_tn(value: object, what: str) -> str:
    if not isinstance(value, str) or _TN_RE.fullmatch(value) is None:
        raise ValueError(
            f"{what} {value!r} is not a canonical telephone number (digits, '#', '*' only; "
            "no '+', RFC 8224 section 8.3)"
        )
    return value


def _require_https(x5u: str) -> str:
    parts = urlsplit(x5u)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"x5u must be an https URL, got {x5u!r} (RFC 8225 section 4.3)")
    if any(ch in x5u for ch in '<>" \t\r\n;'):
        raise ValueError(f"x5u contains characters that cannot go into info=<...>: {x5u!r}")
    return x5u


def shaken_payload(
    *, attest: str, orig_tn: str, dest_tns: Sequence[str], iat: int, origid: str
) -> dict[str, object]:
    """Claims of a SHAKEN PASSporT. RFC 8588 sections 4-5, RFC 8225 section 5."""
    if not isinstance(attest, str) or attest not in ATTEST_LEVELS:
        raise ValueError(f"attest must be one of A, B, C; got {attest!r} (RFC 8588 section 4)")
    if not isinstance(origid, str) or not origid:
        raise ValueError("origid must be a non-empty string (RFC 8588 section 5)")
    return {
        "attest": attest,
        "dest": {"tn": sorted(_require_tn(t, "dest") for t in _non_empty(dest_tns))},
        "iat": _require_iat(iat),
        "orig": {"tn": _require_tn(orig_tn, "orig")},
        "origid": origid,
    }


def div_payload(
    *, orig_tn: str, dest_tns: Sequence[str], div_tn: str, iat: int, div_hi: str | None = None
) -> dict[str, object]:
    """Claims of a ``div`` PASSporT: ``div`` is the previous destination. RFC 8946 section 3."""
    div: dict[str, object] = {"tn": _require_tn(div_tn, "div")}
    if div_hi is not None:
        div["hi"] = div_hi
    return {
        "dest": {"tn": sorted(_require_tn(t, "dest") for t in _non_empty(dest_tns))},
        "div": div,
        "iat": _require_iat(iat),
        "orig": {"tn": _require_tn(orig_tn, "orig")},
    }


def _non_empty(values: Sequence[str]) -> Sequence[str]:
    if isinstance(values, str) or not values:
        raise ValueError("dest needs at least one telephone number (a list)")
    return values


def _require_iat(iat: object) -> int:
    if not isinstance(iat, int) or isinstance(iat, bool) or iat < 0:
        raise ValueError(f"iat must be a non-negative integer NumericDate, got {iat!r}")
    return iat


def unsafe_sign_jws(
    private_key: ec.EllipticCurvePrivateKey,
    header: Mapping[str, object],
    payload: Mapping[str, object],
    *,
    deterministic: bool = True,
) -> str:
    """Sign arbitrary header/payload as an ES256 JWS without any validation (for negative tests).

    RFC 7515 section 5.1, RFC 8225 section 6.
    """
    h64 = b64url_encode(canonical_json(header).encode("utf-8"))
    p64 = b64url_encode(canonical_json(payload).encode("utf-8"))
    signing_input = f"{h64}.{p64}".encode("ascii")
    signature = sign_es256(private_key, signing_input, deterministic=deterministic)
    return f"{h64}.{p64}.{b64url_encode(signature)}"


def sign_passport(
    private_key: ec.EllipticCurvePrivateKey,
    *,
    x5u: str,
    payload: Mapping[str, object],
    ppt: str | None = "shaken",
    deterministic: bool = True,
) -> str:
    """Sign ``payload`` as a full-form PASSporT with header ``{alg, ppt?, typ, x5u}``.

    Raises ``ValueError`` when x5u is not https, the key is not P-256, or the payload fails
    ``check_claims`` for ``ppt``. RFC 8225 sections 4, 6 and 9; RFC 8224 section 4.1.
    """
    header: dict[str, object] = {"alg": ES256, "typ": PASSPORT_TYP, "x5u": _require_https(x5u)}
    if ppt is not None:
        if _PPT_RE.fullmatch(ppt) is None:
            raise ValueError(f"invalid ppt {ppt!r}")
        header["ppt"] = ppt
    token = unsafe_sign_jws(private_key, header, payload, deterministic=deterministic)
    problems = [f for f in check_claims(decode_passport(token)) if f.is_error]
    if problems:
        raise ValueError("; ".join(f"{f.reason.value}: {f.detail}" for f in problems))
    return token


def identity_header_value(
    token: str, *, x5u: str, ppt: str | None = "shaken", alg: str = ES256
) -> str:
    """``<token>;info=<x5u>;alg=ES256;ppt="shaken"``: the Identity header field value.

    ``ppt`` is written quoted, as in RFC 8946 section 4.1, RFC 8443 and the ATIS examples;
    verifiers accept both forms (STANDARDS.md section 1.1). RFC 8224 section 4.
    """
    if _TOKEN_RE.fullmatch(token) is None:
        raise ValueError(f"not a JWS compact token: {token[:40]!r}")
    if alg != ES256:
        raise ValueError(f"{Reason.UNSUPPORTED_ALG.value}: only ES256 is signed here")
    value = f"{token};info=<{_require_https(x5u)}>;alg={alg}"
    if ppt is not None:
        if _PPT_RE.fullmatch(ppt) is None:
            raise ValueError(f"invalid ppt {ppt!r}")
        value += f';ppt="{ppt}"'
    return value
