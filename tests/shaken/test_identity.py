"""Identity header parsing (RFC 8224 section 4): every reason, the quirks, and a fuzz property."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shaken.errors import Reason, Severity
from shaken.identity import (
    IdentityHeader,
    _parse_general,
    parse_identity_header,
    split_identity_values,
)

TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJpYXQiOjF9.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"
COMPACT = "..c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"
INFO = "https://cert.example.org/passport.cer"


def reasons(header: IdentityHeader, severity: Severity | None = None) -> set[Reason]:
    return {f.reason for f in header.findings if severity is None or f.severity is severity}


@pytest.mark.parametrize(
    ("value", "token", "info", "alg", "ppt", "form"),
    [
        pytest.param(
            f"{TOKEN};info=<{INFO}>;alg=ES256;ppt=shaken",
            TOKEN,
            INFO,
            "ES256",
            "shaken",
            "full",
            id="canonical-unquoted-ppt",
        ),
        pytest.param(
            f'{TOKEN};info=<{INFO}>;alg=ES256;ppt="shaken"',
            TOKEN,
            INFO,
            "ES256",
            "shaken",
            "full",
            id="quoted-ppt",
        ),
        pytest.param(f"{TOKEN};info=<{INFO}>", TOKEN, INFO, None, None, "full", id="no-alg-no-ppt"),
        pytest.param(
            f"{COMPACT};info=<{INFO}>", COMPACT, INFO, None, None, "compact", id="compact"
        ),
        pytest.param(
            f"{TOKEN} ; INFO = <{INFO}> ; ALG=ES256 ; PPT=div",
            TOKEN,
            INFO,
            "ES256",
            "div",
            "full",
            id="case-and-whitespace",
        ),
        pytest.param(
            f"{TOKEN};ppt=shaken;alg=ES256;info=<{INFO}>",
            TOKEN,
            INFO,
            "ES256",
            "shaken",
            "full",
            id="param-order",
        ),
        pytest.param(
            f"Identity: {TOKEN};info=<{INFO}>",
            TOKEN,
            INFO,
            None,
            None,
            "full",
            id="pasted-header-name",
        ),
        pytest.param(
            f"y:{TOKEN};info=<{INFO}>", TOKEN, INFO, None, None, "full", id="compact-header-name"
        ),
        pytest.param(f"{TOKEN}", TOKEN, None, None, None, "full", id="bare-token"),
        pytest.param("abc;info=<x>", "abc", "x", None, None, "invalid", id="one-segment"),
        pytest.param(
            f"{TOKEN};info=<{INFO}>;alg=ES256;ppt=shaken;foo=bar;flag",
            TOKEN,
            INFO,
            "ES256",
            "shaken",
            "full",
            id="extension-params",
        ),
    ],
)
def test_parse_fields(
    value: str, token: str, info: str | None, alg: str | None, ppt: str | None, form: str
) -> None:
    header = parse_identity_header(value)
    assert (header.token, header.info, header.alg, header.ppt, header.form) == (
        token,
        info,
        alg,
        ppt,
        form,
    )
    assert header.raw == value


@pytest.mark.parametrize(
    ("value", "expected", "severity"),
    [
        pytest.param(f"{TOKEN};alg=ES256;ppt=shaken", Reason.MISSING_INFO_PARAM, Severity.ERROR,
                     id="missing-info"),
        pytest.param(f"{TOKEN}", Reason.MISSING_INFO_PARAM, Severity.ERROR, id="no-params"),
        pytest.param(f"{TOKEN};info=<>", Reason.MISSING_INFO_PARAM, Severity.ERROR,
                     id="empty-info"),
        pytest.param(f"{TOKEN};info=", Reason.MISSING_INFO_PARAM, Severity.ERROR,
                     id="info-no-value"),
        pytest.param(f"{TOKEN};info=<{INFO}>;info=<https://b.example/c>", Reason.DUPLICATE_PARAM,
                     Severity.ERROR, id="duplicate-info"),
        pytest.param(f"{TOKEN};info=<{INFO}>;ppt=shaken;PPT=div", Reason.DUPLICATE_PARAM,
                     Severity.ERROR, id="duplicate-ppt-case"),
        pytest.param(f"{TOKEN};info={INFO}", Reason.INFO_NOT_IN_ANGLE_BRACKETS, Severity.WARNING,
                     id="info-without-brackets"),
        pytest.param(f"{TOKEN};info=<{INFO}>alg=ES256;ppt=shaken",
                     Reason.MALFORMED_IDENTITY_HEADER, Severity.WARNING,
                     id="missing-semicolon-before-alg"),
        pytest.param(f"{TOKEN}X,{TOKEN};info=<{INFO}>", Reason.COMMA_JOINED_IDENTITY,
                     Severity.WARNING, id="comma-joined"),
        pytest.param(f";info=<{INFO}>", Reason.MALFORMED_IDENTITY_HEADER, Severity.ERROR,
                     id="empty-token"),
        pytest.param("", Reason.MALFORMED_IDENTITY_HEADER, Severity.ERROR, id="empty-value"),
        pytest.param(f"{TOKEN};info=<{INFO}>;alg=", Reason.UNSUPPORTED_ALG, Severity.ERROR,
                     id="empty-alg"),
        pytest.param(f"{TOKEN};info=<{INFO}>;ppt=", Reason.MALFORMED_IDENTITY_HEADER,
                     Severity.ERROR, id="empty-ppt"),
        pytest.param(f"{TOKEN};info=<{INFO}>;;alg=ES256", Reason.MALFORMED_IDENTITY_HEADER,
                     Severity.WARNING, id="empty-param"),
        pytest.param(f"{TOKEN};info=<{INFO}>;a b=c", Reason.MALFORMED_IDENTITY_HEADER,
                     Severity.ERROR, id="bad-param-name"),
        pytest.param(f"{TOKEN[:20]}\r\n {TOKEN[20:]};info=<{INFO}>",
                     Reason.MALFORMED_IDENTITY_HEADER, Severity.WARNING, id="folded"),
        pytest.param(f"{TOKEN};info&#x3D;&lt;{INFO}&gt;", Reason.MALFORMED_IDENTITY_HEADER,
                     Severity.WARNING, id="html-escaped"),
    ],
)  # fmt: skip
def test_findings(value: str, expected: Reason, severity: Severity) -> None:
    assert expected in reasons(parse_identity_header(value), severity)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(f"{TOKEN};info=<{INFO}>;alg=ES256;ppt=shaken", id="unquoted"),
        pytest.param(f"{TOKEN};info=<{INFO}>", id="minimal"),
        pytest.param(f"{TOKEN};info=<{INFO}>;ppt=shaken;alg=ES256;x=1", id="extension"),
    ],
)
def test_clean_headers_have_no_findings(value: str) -> None:
    header = parse_identity_header(value)
    assert header.findings == ()
    assert header.is_valid


def test_missing_semicolon_recovers_alg_and_ppt() -> None:
    header = parse_identity_header(f"{TOKEN};info=<{INFO}>alg=ES256;ppt=shaken")
    assert (header.info, header.alg, header.ppt) == (INFO, "ES256", "shaken")
    assert header.is_valid  # only a warning
    assert [name for name, _ in header.params] == ["info", "alg", "ppt"]


def test_folded_and_html_escaped_values_recover() -> None:
    folded = parse_identity_header(f"{TOKEN[:20]}\r\n {TOKEN[20:]};\r\n info=<{INFO}>")
    assert (folded.token, folded.info) == (TOKEN, INFO)
    escaped = parse_identity_header(f"{TOKEN};info&#x3D;&lt;{INFO}&gt;;ppt&#x3D;shaken")
    assert (escaped.token, escaped.info, escaped.ppt) == (TOKEN, INFO, "shaken")


@pytest.mark.parametrize(
    ("alg", "effective"),
    [
        pytest.param(None, "ES256", id="absent-means-es256"),
        pytest.param("ES256", "ES256", id="explicit"),
        pytest.param("HS256", "HS256", id="other"),
    ],
)
def test_effective_alg(alg: str | None, effective: str) -> None:
    suffix = f";alg={alg}" if alg else ""
    assert parse_identity_header(f"{TOKEN};info=<{INFO}>{suffix}").effective_alg == effective


def test_params_keep_order_lowercase_names_and_raw_values() -> None:
    header = parse_identity_header(f'{TOKEN};INFO=<{INFO}>;Alg=ES256;PPT="div";flag')
    assert header.params == (
        ("info", f"<{INFO}>"),
        ("alg", "ES256"),
        ("ppt", '"div"'),
        ("flag", None),
    )
    assert header.param("PPT") == '"div"'
    assert header.param("missing") is None


def test_first_duplicate_wins() -> None:
    header = parse_identity_header(f"{TOKEN};info=<{INFO}>;info=<https://other.example/c>")
    assert header.info == INFO


def test_info_with_semicolon_inside_brackets() -> None:
    header = parse_identity_header(f"{TOKEN};info=<https://a.example/x;y=1>;ppt=shaken")
    assert (header.info, header.ppt) == ("https://a.example/x;y=1", "shaken")


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        pytest.param(f"{TOKEN};info=<{INFO}>", 1, id="single"),
        pytest.param(f"{TOKEN};info=<{INFO}>, {COMPACT};info=<{INFO}>", 2, id="two"),
        pytest.param(f"{TOKEN};info=<https://a.example/x,y>", 1, id="comma-inside-brackets"),
        pytest.param(" , ", 0, id="only-separators"),
    ],
)
def test_split_identity_values(value: str, parts: int) -> None:
    assert len(split_identity_values(value)) == parts


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_parse_never_raises(value: str) -> None:
    header = parse_identity_header(value)
    assert header.form in ("full", "compact", "invalid")
    assert header.raw == value


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab.;=<>\"', \r\n\t&#x3D;ltgINFOppy:"))
def test_parse_never_raises_on_delimiter_soup(value: str) -> None:
    parse_identity_header(value)
    split_identity_values(value)


b64url_segment = st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(b64url_segment, b64url_segment, b64url_segment.filter(bool)),
    st.from_regex(r"https://[a-z0-9.]{1,20}(:[0-9]{2,4})?/[A-Za-z0-9_./%-]{0,30}", fullmatch=True),
    st.sampled_from([None, "ES256", "ES384"]),
    st.sampled_from([None, "shaken", '"shaken"', "div", '"div-o"']),
)
def test_fast_path_equals_general_parser(
    parts: tuple[str, str, str], info: str, alg: str | None, ppt: str | None
) -> None:
    value = ".".join(parts) + f";info=<{info}>"
    value += f";alg={alg}" if alg else ""
    value += f";ppt={ppt}" if ppt else ""
    assert parse_identity_header(value) == _parse_general(value)
