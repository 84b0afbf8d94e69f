"""name-addr / addr-spec values (From, To, Contact, P-Asserted-Identity, Diversion, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from sip.defects import Defect, SipReason
from sip.headers import is_token
from sip.uri import Params, Uri, find_param, parse_uri_checked, split_params


@dataclass(frozen=True, slots=True)
class NameAddr:
    """``[display-name] <URI> *(;param)`` or ``addr-spec *(;param)``.

    ``display_name`` is unquoted with backslash escapes resolved (None when absent);
    ``params`` are the header parameters (``tag``, ``expires``, ``reason``...).
    RFC 3261 section 20.10 and section 25.1 (``name-addr``, ``addr-spec``).
    """

    raw: str
    uri: Uri
    display_name: str | None = None
    params: Params = ()

    def param(self, name: str) -> str | None:
        """Header parameter by case-insensitive name ("" for a flag, None when absent)."""
        return find_param(self.params, name)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter. RFC 3261 section 19.3."""
        return self.param("tag")


def _unquote(text: str, start: int) -> tuple[str, int] | None:
    """Read a quoted-string starting at ``text[start] == '"'``; returns (content, end index
    after the closing quote) or None when unterminated. RFC 3261 section 25.1."""
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    return None


def parse_name_addr_checked(text: str) -> tuple[NameAddr | None, list[Defect]]:
    """Parse one name-addr or addr-spec with header parameters; never raises.

    Lenient: a token display name glued to ``<`` (RFC 4475 section 3.1.1.5 "lwsdisp"), spaces
    inside ``<>`` and unquoted non-token display names are accepted and reported.
    RFC 3261 section 20.10 and section 25.1.
    """
    defects: list[Defect] = []
    s = text.strip()
    display: str | None = None
    if s.startswith('"'):
        quoted = _unquote(s, 0)
        if quoted is None:
            defects.append(Defect.of(SipReason.MALFORMED_NAME_ADDR, f"unterminated quote: {s!r}"))
            return None, defects
        display, end = quoted
        rest = s[end:].lstrip()
        if not rest.startswith("<"):
            defects.append(Defect.of(SipReason.MALFORMED_NAME_ADDR, f"no <URI> after name: {s!r}"))
            return None, defects
        lt = end + (len(s[end:]) - len(rest))
    else:
        lt = s.find("<")
        if lt > 0:
            display = s[:lt].strip()
            if not all(is_token(word) for word in display.split()):
                defects.append(
                    Defect.of(
                        SipReason.MALFORMED_NAME_ADDR, f"unquoted non-token name: {display!r}"
                    )
                )
    if lt >= 0:
        gt = s.find(">", lt + 1)
        if gt < 0:
            defects.append(Defect.of(SipReason.MALFORMED_NAME_ADDR, f"missing '>': {s!r}"))
            return None, defects
        uri_text = s[lt + 1 : gt]
        if uri_text != uri_text.strip():
            defects.append(Defect.of(SipReason.MALFORMED_NAME_ADDR, f"spaces inside <>: {s!r}"))
            uri_text = uri_text.strip()
        param_text = s[gt + 1 :].strip()
        if param_text and not param_text.startswith(";"):
            defects.append(Defect.of(SipReason.MALFORMED_NAME_ADDR, f"junk after '>': {s!r}"))
            param_text = param_text.partition(";")[2]
        else:
            param_text = param_text[1:]
    else:
        # addr-spec form: parameters after the URI belong to the header (RFC 3261 section 20.10).
        uri_text, _, param_text = s.partition(";")
        uri_text = uri_text.strip()
        if any(ch in uri_text for ch in "?, "):
            defects.append(
                Defect.of(SipReason.MALFORMED_NAME_ADDR, f"addr-spec needs <> here: {s!r}")
            )
    uri, uri_defects = parse_uri_checked(uri_text)
    defects.extend(uri_defects)
    params = split_params(param_text, defects) if param_text else ()
    return NameAddr(raw=text.strip(), uri=uri, display_name=display, params=params), defects


def parse_name_addr(text: str) -> NameAddr | None:
    """Parse one name-addr/addr-spec; None when it cannot be read at all.

    RFC 3261 section 20.10.
    """
    return parse_name_addr_checked(text)[0]
