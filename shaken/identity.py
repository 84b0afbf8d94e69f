"""Parse one SIP Identity header value into its token and parameters, recording every defect.

Lenient parse, strict judgement: real signers emit quirky headers (quoted ``ppt``, a missing
``;`` before ``alg=``, folded lines, HTML-escaped copies from web pages), so the parser recovers
what it can and records each deviation as a ``Finding``; the verifier decides what is fatal.

Grammar (RFC 8224 section 4)::

    Identity = "Identity" HCOLON signed-identity-digest SEMI ident-info *( SEMI ident-info-params )
    ident-info = "info" EQUAL LAQUOT absoluteURI RAQUOT
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Literal

from shaken.errors import Finding, Reason, error, warning

# RFC 8224 section 4.1: an absent ``alg`` parameter means ES256.
DEFAULT_ALG = "ES256"

IdentityForm = Literal["full", "compact", "invalid"]

# A header name pasted together with the value ("Identity: ...", compact form "y:").
# RFC 8224 section 4 (long form) and the IANA SIP header registry (compact form ``y``).
_HEADER_NAME_RE = re.compile(r"^\s*(?:identity|y)\s*:\s*", re.IGNORECASE)
# RFC 3261 section 7.3.1 line folding: CRLF (or bare LF) followed by whitespace.
_FOLD_RE = re.compile(r"\r?\n[ \t]+")
# Entities seen when Identity values are copied from HTML documentation (Bandwidth SDK docs).
_HTML_ENTITY_RE = re.compile(r"&(?:lt|gt|quot|amp|#x?[0-9a-fA-F]+);")
# A separator inside angle brackets forces the slow, bracket-aware split.
_SEP_IN_BRACKETS_RE = {sep: re.compile(f"<[^>]*{sep}") for sep in (";", ",")}
# The shape nearly every signer emits (RFC 8224 section 4, ATIS examples): parsed in one
# regex match, with no finding; anything else takes the general path below. The parameters
# part on its own (groups: info URI, alg, the quote around ppt (empty when unquoted), ppt)
# serves callers that check the token's alphabet otherwise (a strict base64url decode of
# each segment accepts exactly these characters).
COMMON_PARAMS_RE = re.compile(
    r";info=<([^<>;\"\s]+)>(?:;alg=([A-Za-z0-9]+))?"
    r"(?:;ppt=(?P<quote>\"?)([A-Za-z0-9\-]+)(?P=quote))?"
)
# The whole value; groups: token, then those of COMMON_PARAMS_RE.
COMMON_FORM_RE = re.compile(
    r"([A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]+)" + COMMON_PARAMS_RE.pattern
)
# A token parameter name (RFC 3261 section 25.1 ``token``).
_PARAM_NAME_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


@dataclass(frozen=True, slots=True)
class IdentityHeader:
    """One parsed Identity header value.

    ``token`` is the PASSporT (full ``h.p.s`` or compact ``..s``); ``info`` is the URI without
    angle brackets; ``ppt`` has its quotes stripped; ``params`` keeps every parameter in order
    with lower-cased names and values as written. Token-level problems (base64, JSON,
    signature encoding) are reported by ``shaken.passport.decode_passport(header.token)``.
    RFC 8224 section 4.
    """

    raw: str
    token: str
    info: str | None
    alg: str | None
    ppt: str | None
    params: tuple[tuple[str, str | None], ...]
    findings: tuple[Finding, ...]
    form: IdentityForm

    @property
    def effective_alg(self) -> str:
        """The ``alg`` parameter, or ES256 when absent. RFC 8224 section 4.1."""
        return self.alg if self.alg is not None else DEFAULT_ALG

    @property
    def is_valid(self) -> bool:
        """True when no error finding was recorded (warnings are tolerated)."""
        return not any(f.is_error for f in self.findings)

    def param(self, name: str) -> str | None:
        """The first value of parameter ``name`` (case-insensitive) as written, else None."""
        wanted = name.lower()
        for key, value in self.params:
            if key == wanted:
                return value
        return None


def _split_outside_brackets(text: str, sep: str) -> list[str]:
    """Split on ``sep`` except inside ``<...>`` or a quoted string (RFC 3261 section 25.1)."""
    if '"' not in text and "<" not in text:
        return text.split(sep)
    if '"' not in text and _SEP_IN_BRACKETS_RE[sep].search(text) is None:
        return text.split(sep)  # the common case: no separator hides inside <...>
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, ch in enumerate(text):
        if quoted:
            if ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def split_identity_values(value: str) -> tuple[str, ...]:
    """Split an illegally comma-joined Identity value into its header values.

    The Identity grammar has no comma-list form, so RFC 3261 section 7.3.1 does not allow
    merging; some stacks do it anyway. Commas inside ``<...>`` or quotes are not separators.
    STANDARDS.md section 1.1; RFC 8224 section 4.
    """
    return tuple(part.strip() for part in _split_outside_brackets(value, ",") if part.strip())


def _token_form(token: str) -> IdentityForm:
    parts = token.split(".")
    if len(parts) != 3 or not parts[2]:
        return "invalid"
    if not parts[0] and not parts[1]:
        return "compact"
    if parts[0] and parts[1]:
        return "full"
    return "invalid"


def _unquote(value: str) -> tuple[str, bool]:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\"), True
    return value, False


def _split_param(text: str) -> tuple[str, str | None]:
    name, eq, value = text.partition("=")
    return name.strip().lower(), (value.strip() if eq else None)


def _parse_params(text: str, findings: list[Finding]) -> list[tuple[str, str | None]]:
    """Parse ``;``-separated generic-params, recovering from a missing ``;`` after ``info=<>``."""
    params: list[tuple[str, str | None]] = []
    for chunk in _split_outside_brackets(text, ";"):
        if not chunk.strip():
            findings.append(warning(Reason.MALFORMED_IDENTITY_HEADER, "empty parameter"))
            continue
        name, value = _split_param(chunk)
        if not _PARAM_NAME_RE.fullmatch(name):
            findings.append(
                error(Reason.MALFORMED_IDENTITY_HEADER, f"invalid parameter name {name!r}")
            )
        # Legacy Asterisk 16-18 and PortSIP write `info=<...>alg=ES256` (no ';'): split off
        # whatever follows the closing '>' as the next parameter.
        if value is not None and value.startswith("<") and ">" in value:
            close = value.index(">")
            rest = value[close + 1 :].strip()
            value = value[: close + 1]
            params.append((name, value))
            if rest:
                findings.append(
                    warning(
                        Reason.MALFORMED_IDENTITY_HEADER,
                        f"missing ';' after {name}=<...> before {rest[:20]!r}",
                    )
                )
                params.extend(_parse_params(rest, findings))
            continue
        params.append((name, value))
    return params


def _from_fast_match(value: str, match: re.Match[str]) -> IdentityHeader:
    token, info, alg, quote, ppt = match.groups()
    params: list[tuple[str, str | None]] = [("info", f"<{info}>")]
    if alg is not None:
        params.append(("alg", alg))
    findings: tuple[Finding, ...] = ()
    if ppt is not None:
        params.append(("ppt", f"{quote}{ppt}{quote}"))
    return IdentityHeader(
        raw=value,
        token=token,
        info=info,
        alg=alg,
        ppt=ppt,
        params=tuple(params),
        findings=findings,
        form=_token_form(token),
    )


def parse_identity_header(value: str) -> IdentityHeader:
    """Parse an Identity header value (``<token>;info=<uri>[;alg=..][;ppt=..]``); never raises.

    The token is everything before the first ``;`` (it cannot contain one). Parameter names are
    case-insensitive; ``ppt`` may be quoted; a missing ``alg`` means ES256. A pasted header name
    (``Identity:``), line folding and HTML entities are undone with a recorded warning.
    RFC 8224 section 4 and section 4.1; STANDARDS.md section 1.1 and section 10 steps 2-4.
    """
    fast = COMMON_FORM_RE.fullmatch(value)
    if fast is not None:
        return _from_fast_match(value, fast)
    return _parse_general(value)


def _parse_general(value: str) -> IdentityHeader:
    """The full lenient parser (also the reference the fast path is tested against)."""
    raw = value
    findings: list[Finding] = []
    pasted = _HEADER_NAME_RE.match(value)
    text = value[pasted.end() :] if pasted else value
    if "\n" in text and _FOLD_RE.search(text):
        findings.append(warning(Reason.MALFORMED_IDENTITY_HEADER, "folded header value"))
        text = _FOLD_RE.sub(" ", text)
    if "&" in text and _HTML_ENTITY_RE.search(text):
        findings.append(warning(Reason.MALFORMED_IDENTITY_HEADER, "HTML-escaped header value"))
        text = html.unescape(text)
    text = text.strip()

    token_part, semi, param_text = text.partition(";")
    token = "".join(token_part.split())
    if token != token_part.strip():
        findings.append(warning(Reason.MALFORMED_IDENTITY_HEADER, "whitespace inside the token"))
    if not token:
        findings.append(error(Reason.MALFORMED_IDENTITY_HEADER, "empty token"))
    if "," in token:
        findings.append(
            warning(Reason.COMMA_JOINED_IDENTITY, "comma in token: comma-joined Identity values?")
        )

    params = _parse_params(param_text, findings) if semi else []

    seen: dict[str, str | None] = {}
    for name, pvalue in params:
        if name in seen:
            findings.append(error(Reason.DUPLICATE_PARAM, f"parameter {name!r} repeated"))
            continue
        seen[name] = pvalue

    info: str | None = None
    info_value = seen.get("info")
    if "info" not in seen or not info_value:
        findings.append(error(Reason.MISSING_INFO_PARAM, "no info=<URI> parameter"))
    elif info_value.startswith("<") and info_value.endswith(">"):
        info = info_value[1:-1].strip()
        if not info:
            findings.append(error(Reason.MISSING_INFO_PARAM, "empty info=<> parameter"))
            info = None
    else:
        info = _unquote(info_value)[0].strip("<>")
        findings.append(
            warning(Reason.INFO_NOT_IN_ANGLE_BRACKETS, "info URI is not in angle brackets")
        )

    alg: str | None = None
    if "alg" in seen:
        alg = _unquote(seen["alg"] or "")[0]
        if not alg:
            findings.append(error(Reason.UNSUPPORTED_ALG, "empty alg parameter"))

    ppt: str | None = None
    if "ppt" in seen:
        # Quoted or not: both are normal practice (STANDARDS.md 1.1); nothing to record.
        ppt, _quoted = _unquote(seen["ppt"] or "")
        if not ppt:
            findings.append(error(Reason.MALFORMED_IDENTITY_HEADER, "empty ppt parameter"))
            ppt = None

    return IdentityHeader(
        raw=raw,
        token=token,
        info=info,
        alg=alg,
        ppt=ppt,
        params=tuple(params),
        findings=tuple(findings),
        form=_token_form(token),
    )
