"""SIP, SIPS and tel URIs: parsed views that keep the text as written."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from sip.defects import Defect, SipReason

Params = tuple[tuple[str, str | None], ...]


def split_params(text: str, defects: list[Defect] | None = None) -> Params:
    """Parse ``name[=value]`` items separated by ``;`` (quotes respected, LWS around ``=`` and
    ``;`` dropped). Empty items are skipped and reported as ``empty_parameter``.

    RFC 3261 section 25.1 (``generic-param``, ``uri-parameters``).
    """
    items: list[str] = []
    if '"' in text:
        start = 0
        in_quotes = False
        i = 0
        while i < len(text):
            ch = text[i]
            if in_quotes:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_quotes = False
            elif ch == '"':
                in_quotes = True
            elif ch == ";":
                items.append(text[start:i])
                start = i + 1
            i += 1
        items.append(text[start:])
    else:
        items = text.split(";")
    out: list[tuple[str, str | None]] = []
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name:
            if defects is not None:
                defects.append(Defect.of(SipReason.EMPTY_PARAMETER, repr(text)))
            continue
        out.append((name, value.strip() if eq else None))
    return tuple(out)


def find_param(params: Params, name: str) -> str | None:
    """Value of a parameter by case-insensitive name ("" for a flag); None when absent."""
    lowered = name.lower()
    for key, value in params:
        if key.lower() == lowered:
            return "" if value is None else value
    return None


def has_param(params: Params, name: str) -> bool:
    lowered = name.lower()
    return any(key.lower() == lowered for key, _ in params)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


@dataclass(frozen=True, slots=True)
class Uri:
    """A URI as found in a SIP message.

    For ``sip``/``sips``: ``user`` (still %-escaped, may hold tel parameters as in
    ``+15715550001;verstat=...``), ``password``, ``host``, ``port``, URI ``params`` and
    ``headers``. For ``tel``: ``user`` is the telephone-subscriber number and ``params`` its
    tel parameters. Other schemes keep only ``opaque`` (everything after the colon).

    RFC 3261 section 19.1.1, RFC 3966 section 3.
    """

    raw: str
    scheme: str
    user: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    params: Params = ()
    headers: Params = ()
    opaque: str = ""

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def is_tel(self) -> bool:
        return self.scheme == "tel"

    def param(self, name: str) -> str | None:
        """URI parameter value by case-insensitive name ("" for a flag, None if absent)."""
        return find_param(self.params, name)

    @property
    def user_number(self) -> str | None:
        """The user part without its tel parameters (``+15715550001`` for
        ``+15715550001;verstat=TN-Validation-Passed``). RFC 3261 section 19.1.6."""
        if self.user is None:
            return None
        return self.user.partition(";")[0]

    @property
    def user_params(self) -> Params:
        """tel parameters inside the user part (3GPP TS 24.229 section 7.2A.20 placement)."""
        if self.user is None or ";" not in self.user:
            return ()
        return split_params(self.user.partition(";")[2])

    @property
    def is_user_phone(self) -> bool:
        """``user=phone`` is present (case-insensitive value). RFC 3261 section 19.1.1."""
        value = self.param("user")
        return value is not None and value.lower() == "phone"

    @property
    def verstat(self) -> str | None:
        """The ``verstat`` value wherever it was put: a tel parameter (tel URI or inside the
        user part) or a SIP URI parameter. 3GPP TS 24.229 section 7.2A.20."""
        if self.is_tel:
            return self.param("verstat")
        value = find_param(self.user_params, "verstat")
        return value if value is not None else self.param("verstat")

    @property
    def unescaped_user(self) -> str | None:
        """The user part with %-escapes decoded. RFC 3261 section 19.1.2."""
        return None if self.user is None else unquote(self.user, errors="surrogateescape")

    def __str__(self) -> str:
        return self.raw


def _split_hostport(text: str, defects: list[Defect]) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            defects.append(Defect.of(SipReason.MALFORMED_URI, f"unterminated IPv6 host {text!r}"))
            return text, None
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            defects.append(Defect.of(SipReason.MALFORMED_URI, f"junk after host {text!r}"))
            return host, None
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            return host, None
    if port_text.isascii() and port_text.isdigit() and len(port_text) <= 5:
        port = int(port_text)
        if port <= 65535:
            return host, port
    defects.append(Defect.of(SipReason.MALFORMED_URI, f"invalid port {port_text!r}"))
    return host, None


def parse_uri_checked(text: str) -> tuple[Uri, list[Defect]]:
    """Parse a URI, returning the value and the defects found (never raises).

    RFC 3261 section 19.1.1 (SIP), RFC 3966 section 3 (tel), RFC 3986 section 3 (others).
    """
    defects: list[Defect] = []
    raw = text
    scheme, colon, rest = text.partition(":")
    scheme_l = scheme.lower()
    if not colon or not scheme or not scheme[0].isalpha():
        defects.append(Defect.of(SipReason.MALFORMED_URI, f"no scheme in {text!r}"))
        return Uri(raw=raw, scheme="", opaque=text), defects
    if any(ch in rest for ch in " \t\r\n"):
        defects.append(Defect.of(SipReason.MALFORMED_URI, f"whitespace in URI {text!r}"))
    if scheme_l == "tel":
        number, _, param_text = rest.partition(";")
        if not number:
            defects.append(Defect.of(SipReason.MALFORMED_URI, "tel URI without a number"))
        params = split_params(param_text, defects) if param_text else ()
        return Uri(raw=raw, scheme="tel", user=number, params=params), defects
    if scheme_l not in ("sip", "sips"):
        return Uri(raw=raw, scheme=scheme_l, opaque=rest), defects
    user: str | None = None
    password: str | None = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, hostpart = rest[:at], rest[at + 1 :]
        user, pcolon, pw = userinfo.partition(":")
        password = pw if pcolon else None
        if not user:
            defects.append(Defect.of(SipReason.MALFORMED_URI, f"empty user in {text!r}"))
    else:
        hostpart = rest
    hostpart, qmark, header_text = hostpart.partition("?")
    headers = split_params(header_text.replace("&", ";")) if qmark else ()
    hostport, _, param_text = hostpart.partition(";")
    params = split_params(param_text, defects) if param_text else ()
    host, port = _split_hostport(hostport, defects)
    if not host:
        defects.append(Defect.of(SipReason.MALFORMED_URI, f"no host in {text!r}"))
    return (
        Uri(
            raw=raw,
            scheme=scheme_l,
            user=user,
            password=password,
            host=host,
            port=port,
            params=params,
            headers=headers,
        ),
        defects,
    )


def parse_uri(text: str) -> Uri:
    """Parse a ``sip:``/``sips:``/``tel:`` (or any other) URI leniently; never raises.

    RFC 3261 section 19.1.1, RFC 3966 section 3.
    """
    return parse_uri_checked(text.strip())[0]


def _replace_param(param_text: str, name: str, value: str) -> str:
    """``;a=1;verstat=x`` -> the same with ``name`` replaced (or appended)."""
    params = [(k, v) for k, v in split_params(param_text) if k.lower() != name.lower()]
    params.append((name, value))
    return format_params(tuple(params))


def _uri_with_param(uri_text: str, name: str, value: str) -> str:
    uri = parse_uri(uri_text)
    if uri.is_tel:
        scheme, _, rest = uri_text.strip().partition(":")
        number, _, param_text = rest.partition(";")
        return f"{scheme}:{number}{_replace_param(param_text, name, value)}"
    if not uri.is_sip:
        raise ValueError(f"cannot add a parameter to a {uri.scheme or 'schemeless'} URI")
    text = uri_text.strip()
    scheme = text.partition(":")[0]
    rest = text.partition(":")[2]
    at = rest.rfind("@")
    userinfo, hostpart = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    hostpart, qmark, header_text = hostpart.partition("?")
    hostport, _, param_text = hostpart.partition(";")
    tail = f"?{header_text}" if qmark else ""
    if uri.is_user_phone and at >= 0:
        # 3GPP TS 24.229 section 7.2A.20 defines verstat as a tel-URI parameter; a SIP URI with
        # user=phone carries tel parameters inside its user part (RFC 3261 section 19.1.6), so
        # that is where it goes. A stale copy among the SIP URI parameters is removed.
        user, ucolon, pw = userinfo.partition(":")
        number, _, user_params = user.partition(";")
        new_user = number + _replace_param(user_params, name, value)
        userinfo = new_user + (f":{pw}" if ucolon else "")
        kept = tuple((k, v) for k, v in split_params(param_text) if k.lower() != name.lower())
        return f"{scheme}:{userinfo}@{hostport}{format_params(kept)}{tail}"
    # A user part that is not a telephone-subscriber: a plain SIP URI parameter (Telnyx style).
    prefix = f"{userinfo}@" if at >= 0 else ""
    return f"{scheme}:{prefix}{hostport}{_replace_param(param_text, name, value)}{tail}"


def add_uri_param(text: str, name: str, value: str) -> str:
    """Add or replace a URI parameter (e.g. ``verstat``) on a URI or a name-addr.

    ``text`` may be a bare URI or a header value in name-addr form (``"Name" <sip:..>;tag=1``);
    for a name-addr the URI inside ``<>`` is changed and header parameters are kept. A bare
    value without ``<>`` is treated as one URI. Placement: tel URIs get a tel parameter; SIP
    URIs with ``user=phone`` get it inside the user part, where 3GPP puts tel parameters
    (``sip:+15715550001;verstat=TN-Validation-Passed@host;user=phone``); other SIP URIs get a
    URI parameter after the host.

    3GPP TS 24.229 section 7.2A.20; RFC 3261 section 19.1.6.
    """
    lt = text.find("<")
    gt = text.find(">", lt + 1)
    if lt >= 0 and gt > lt:
        return text[: lt + 1] + _uri_with_param(text[lt + 1 : gt], name, value) + text[gt:]
    return _uri_with_param(text, name, value)
