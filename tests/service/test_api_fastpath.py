"""The lean verification path: the same answers as the ordinary ways, only cheaper.

* ``DirectRoutes`` and the router reach the same ``handle``: one answer per request, errors
  included; the request id is echoed and the route counted either way;
* a warm verification runs on the event loop (no thread pool), a cold one in the pool, with the
  same verdict, and loop-served certificates count as cache hits;
* the dict mappers equal the response models' own dump, member order included;
* the flavour query, duplicate headers and a client gone mid-body read as before;
* the JSON log time is ``datetime.isoformat``'s to the millisecond, rounding included;
* the request body's JSON reads as ``json.loads`` reads it, value or error, and the Accept
  values taken without a parse are ones the parse accepts;
* ``stirscope serve`` runs on httptools and uvloop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api import stir
from service.api.app import create_app
from service.api.direct import DirectRoutes
from service.api.errors import ApiError, ErrorCode
from service.api.models import (
    AtisVerificationResponse,
    AtisVerificationResult,
    GppVerificationResponse,
    GppVerificationResult,
    GppVerifyResult,
    GppVerifyResultItem,
    atis_verification,
    gpp_verification,
)
from service.api.protocol import StirHttpProtocol
from service.api.state import STATE_ATTRIBUTE, ServiceState, app_state
from service.cmd_serve import UVICORN_HTTP, UVICORN_LOOP
from service.config import JsonFormatter
from shaken.errors import phrase_for
from shaken.result import PassportResult, VerificationResult
from tests.service.api_client import (
    CALL_TIME,
    KEYS,
    ApiClient,
    atis_body,
    bearer,
    fixture_call,
    gpp_body,
    make_config,
    running,
    serve_in_process,
)

URL = "/stir/v1/verification"
AUTH = bearer("verifier")
CALLS = [
    "invite_alpha_a.sip",
    "invite_charlie_c.sip",
    "invite_diverted.sip",
    "invite_tampered.sip",
    "invite_untrusted.sip",
    "invite_revoked.sip",
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
    with serve_in_process(make_config(tmp_path_factory.mktemp("fast"))) as api:
        yield api


def _unsupported_ppt(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its Identity header's ppt parameter one the verifier ignores."""
    inner = body["verificationRequest"]
    inner["identity"] = inner["identity"].replace(';ppt="shaken"', ';ppt="x-unknown"')
    return body


def _body(kind: str, name: str) -> dict[str, Any]:
    call = fixture_call(name)
    if kind == "3gpp":
        return gpp_body(call)
    body = atis_body(call)
    if kind == "atis-unsupported-ppt":
        return _unsupported_ppt(body)
    if kind == "atis-no-time":
        body["verificationRequest"]["time"] = None
    return body


BODIES = [
    *(("atis", name) for name in CALLS),
    *(("3gpp", name) for name in CALLS),
    ("atis-unsupported-ppt", CALLS[0]),
    ("atis-no-time", CALLS[0]),
]


# -- one answer, whichever way the request is dispatched ----------------------------------------


def _asgi_call(
    app: FastAPI, asgi: Any, body: bytes, headers: dict[str, str], query: bytes = b""
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One POST to the verification route through ``asgi`` (the app or its bare router)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 40000),
        "root_path": "",
        "path": URL,
        "raw_path": URL.encode(),
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "app": app,
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        async with app.router.lifespan_context(app):
            await asgi(scope, receive, send)

    asyncio.run(call())
    start, content = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), content


REQUESTS = [
    ("pass", json.dumps(atis_body(fixture_call(CALLS[0]))).encode(), {}, b""),
    ("fail-3gpp", json.dumps(gpp_body(fixture_call(CALLS[3]))).encode(), {}, b""),
    ("asks-3gpp", json.dumps(atis_body(fixture_call(CALLS[0]))).encode(), {}, b"flavour=3gpp"),
    ("bad-json", b'{"verificationRequest": ', {}, b""),
    ("no-key", b"{}", {"Authorization": ""}, b""),
    ("text-plain", b"{}", {"Content-Type": "text/plain"}, b""),
    ("bad-flavour", b"{}", {}, b"flavour=oma"),
]


@pytest.mark.parametrize(
    ("body", "extra", "query"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_direct_dispatch_answers_as_the_router(
    tmp_path: Path, body: bytes, extra: dict[str, str], query: bytes
) -> None:
    headers = {"Content-Type": "application/json", **AUTH, **extra}
    app = create_app(make_config(tmp_path))
    direct = _asgi_call(app, app, body, headers, query)
    routed = _asgi_call(app, app.router, body, headers, query)
    assert direct[0] == routed[0]
    assert direct[2] == routed[2]
    assert direct[1][b"content-type"] == routed[1][b"content-type"] == b"application/json"
    assert b"x-requestid" in direct[1]  # the observability middleware saw it


def test_unexpected_error_on_the_direct_path_is_a_json_500(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path))
    with running(app, raise_app_exceptions=False) as api:
        state: ServiceState = app.state.stirscope

        def broken(*args: object, **kwargs: object) -> VerificationResult:
            raise RuntimeError("secret internals")

        state.verify_cached = broken
        body = atis_body(fixture_call(CALLS[0]))
        response = api.post(URL, json=body, headers={**AUTH, "X-RequestID": "ref-7"})
        metrics = api.get("/metrics").text
    assert response.status_code == 500
    detail = response.json()["requestError"]["serviceException"]
    assert detail["code"] == "internal_error"
    assert detail["variables"] == ["ref-7"]
    assert "secret" not in response.text
    counted = 'method="POST",route="/stir/v1/verification",status="500"'
    assert f"stirscope_http_requests_total{{{counted}}} 1.0" in metrics


# -- warm verifications on the event loop -----------------------------------------------------


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that counts what it was given."""

    submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_warm_verifications_run_on_the_loop_cold_ones_in_the_pool(tmp_path: Path) -> None:
    with serve_in_process(make_config(tmp_path)) as api:
        state: ServiceState = api.app.state.stirscope
        pool = CountingExecutor(2)
        state.executor.shutdown()
        state.executor = pool
        body = atis_body(fixture_call(CALLS[0]))
        cold = api.post(URL, json=body, headers=AUTH)
        assert pool.submitted == 1  # the certificate had to be fetched first
        warm = [api.post(URL, json=body, headers=AUTH) for _ in range(3)]
        assert pool.submitted == 1  # served from memory, on the loop
        metrics = api.get("/metrics").text
    assert {r.json()["verificationResponse"]["verstat"] for r in [cold, *warm]} == {
        "TN-Validation-Passed"
    }
    assert all(r.json() == cold.json() for r in warm)
    hits = [line for line in metrics.splitlines() if 'event="hits"' in line]
    certificate_hits = [line for line in hits if "certificate_cache" in line]
    assert float(certificate_hits[0].rsplit(" ", 1)[1]) >= 3  # loop hits are cache hits


# -- the dict mappers are the response models' dump ---------------------------------------------


def _atis_reference(result: VerificationResult) -> dict[str, object]:
    best = result.best
    body = AtisVerificationResult(
        verstat=result.verstat.value,
        reasoncode=result.status_code if not result.passed else None,
        reasontext=result.reason_phrase if not result.passed else None,
        reason=result.reason.value if result.reason else None,
        attest=best.attest if best is not None and not best.ignored else None,
        origid=best.origid if best is not None and not best.ignored else None,
    )
    return AtisVerificationResponse(verificationResponse=body).model_dump(exclude_none=True)


def _gpp_item_reference(p: PassportResult) -> GppVerifyResultItem:
    primary = p.primary
    return GppVerifyResultItem(
        verifyResult=GppVerifyResult(
            ppt=p.ppt,
            status="pass" if p.valid else "fail",
            reasonCode=p.status_code,
            reasonText=phrase_for(p.status_code) if primary else None,
            reasonDescription=primary.detail if primary else None,
            reason=primary.reason.value if primary else None,
            passport=p.identity.partition(";")[0].strip(),
            validClaims=p.claims if p.valid else None,
        )
    )


def _gpp_reference(result: VerificationResult, request_id: str | None) -> dict[str, object]:
    used = [p for p in result.passports if not p.ignored]
    body = GppVerificationResult(
        verstatValue=result.verstat.value,
        verifyResults=[_gpp_item_reference(p) for p in used if p.ppt not in ("div", "div-o")],
        divResult=[_gpp_item_reference(p) for p in used if p.ppt in ("div", "div-o")] or None,
        requestId=request_id,
    )
    return GppVerificationResponse(verificationResponse=body).model_dump(exclude_none=True)


def _keys(value: object) -> object:
    """Every member name in document order (dict equality ignores order)."""
    if isinstance(value, dict):
        return [(k, _keys(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_keys(v) for v in value]
    return None


@pytest.mark.parametrize(("kind", "name"), BODIES, ids=[f"{k}-{n}" for k, n in BODIES])
def test_mappers_equal_the_models_dump(client: ApiClient, kind: str, name: str) -> None:
    state: ServiceState = client.app.state.stirscope
    core, _, request_id = stir.verification_input(_body(kind, name))
    result = state.verifier.verify(core, at=datetime.fromtimestamp(CALL_TIME + 5, UTC))
    for mapped, reference in (
        (atis_verification(result), _atis_reference(result)),
        (gpp_verification(result, request_id), _gpp_reference(result, request_id)),
        (gpp_verification(result, "req-9"), _gpp_reference(result, "req-9")),
    ):
        assert mapped == reference
        assert _keys(mapped) == _keys(reference)


def test_unsupported_ppt_case_is_an_ignored_passport(client: ApiClient) -> None:
    state: ServiceState = client.app.state.stirscope
    core, _, _ = stir.verification_input(_unsupported_ppt(atis_body(fixture_call(CALLS[0]))))
    result = state.verifier.verify(core, at=datetime.fromtimestamp(CALL_TIME + 5, UTC))
    assert [p.ignored for p in result.passports] == [True]


# -- request details read as Starlette reads them -----------------------------------------------


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("flavour=atis&flavour=3gpp", "verstatValue"),
        ("flavour=3gpp&flavour=atis", "verstat"),
        ("fl%61vour=3gpp", "verstatValue"),
        ("other=1&flavour=3gpp", "verstatValue"),
        ("", "verstat"),
    ],
    ids=["last-wins", "last-wins-atis", "percent-encoded-name", "among-others", "none"],
)
def test_flavour_query(client: ApiClient, query: str, key: str) -> None:
    body = atis_body(fixture_call(CALLS[0]))
    response = client.post(f"{URL}?{query}", json=body, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["verificationResponse"][key] == "TN-Validation-Passed"


def test_the_first_of_repeated_headers_counts(client: ApiClient) -> None:
    body = json.dumps(atis_body(fixture_call(CALLS[0]))).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/xml"),
        ("Accept", "application/json"),
        ("Authorization", f"Bearer {KEYS['verifier'][0]}"),
        ("Authorization", "Bearer wrong"),
    ]
    response = client.post(URL, content=body, headers=headers)
    assert response.status_code == 406
    assert response.json()["requestError"]["serviceException"]["variables"] == ["application/xml"]


def test_client_gone_mid_body_gets_no_answer(client: ApiClient) -> None:
    sent: list[Message] = []
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"verificationRequest"', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": URL,
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {KEYS['verifier'][0]}".encode()),
        ],
        "app": client.app,
    }
    asyncio.run(stir.serve_verification(scope, receive, send))
    assert sent == []
    assert messages == []


# -- the JSON log time --------------------------------------------------------------------------

TIMES = [0.0, 1e-7, 0.0005, 0.9994999, 0.9995, 0.9999994, 0.9999995, 0.9999996, 59.9999996,
         CALL_TIME + 0.0005, CALL_TIME + 0.4995, CALL_TIME + 0.9999995, CALL_TIME + 0.123456789,
         253_402_300_799.9994, -1.5]  # fmt: skip


@pytest.mark.parametrize("created", TIMES)
def test_log_time_is_isoformat_to_the_millisecond(created: float) -> None:
    formatter = JsonFormatter()
    formatter.iso_time(created - 1)  # another second cached first
    want = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    assert formatter.iso_time(created) == want
    assert formatter.iso_time(created) == want  # and from the cache


# -- the server stack ----------------------------------------------------------------------------


def test_serve_runs_on_httptools_and_uvloop() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    config = uvicorn.Config(
        app, http=UVICORN_HTTP, loop=UVICORN_LOOP, lifespan="off", log_config=None
    )
    config.load()
    assert issubclass(config.http_protocol_class, HttpToolsProtocol)  # httptools, not h11
    assert config.http_protocol_class is StirHttpProtocol
    factory = config.get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("body", "extra", "query"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_fastapi_endpoint_answers_as_the_direct_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: bytes,
    extra: dict[str, str],
    query: bytes,
) -> None:
    """The route's endpoint, run by FastAPI's own request machinery (``APIRoute.handle``),
    gives the bytes ``serve_verification`` gives."""
    headers = {"Content-Type": "application/json", **AUTH, **extra}
    app = create_app(make_config(tmp_path))
    direct = _asgi_call(app, app, body, headers, query)
    monkeypatch.setattr(stir._VerificationRoute, "handle", APIRoute.handle)

    async def through(self: DirectRoutes, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    monkeypatch.setattr(DirectRoutes, "__call__", through)
    standard = _asgi_call(app, app, body, headers, query)
    assert (standard[0], standard[2]) == (direct[0], direct[2])
    assert standard[1][b"content-type"] == b"application/json"


# -- the request body's JSON and Accept header, read without the general machinery ---------

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _loads_outcome(parse: Callable[[bytes], Any], body: bytes) -> tuple[str, Any]:
    try:
        return ("value", parse(body))
    except (ValueError, RecursionError) as exc:
        return (type(exc).__name__, str(exc))


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        _JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.text(), _JSON_VALUES, max_size=4).map(
            lambda v: json.dumps(v, ensure_ascii=False).encode()
        ),
        st.binary(max_size=40).map(lambda b: b"{" + b),
        st.builds(
            lambda v, pad, tail: json.dumps(v).encode() + pad + tail,
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
            st.sampled_from([b"", b" ", b"\r\n\t ", b"\x0b", b"\xc2\xa0"]),
            st.sampled_from([b"", b"{}", b"x", b"\xff", b"\x00"]),
        ),
        st.sampled_from(
            [b"", b"{", b"{\x00", b"{}\x00\x00", b'{"a":"\xed\xa0\x80"}', b"\xef\xbb\xbf{}"]
        ),
        st.text(max_size=30).map(lambda t: ("{" + t).encode("utf-16-le")),
    )
)
def test_body_json_reads_as_json_loads(body: bytes) -> None:
    """``stir._loads`` gives what ``json.loads`` gives: the value, or the same error."""
    assert _loads_outcome(stir._loads, body) == _loads_outcome(json.loads, body)


def test_deep_body_json_fails_as_json_loads() -> None:
    body = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    assert _loads_outcome(stir._loads, body)[0] == _loads_outcome(json.loads, body)[0]


@pytest.mark.parametrize("accept", sorted(stir._JSON_ACCEPTS))
def test_accept_values_taken_at_once_are_accepted(accept: str) -> None:
    assert stir._accepts_json(accept)


def test_app_state_reads_the_stored_state(tmp_path: Path) -> None:
    """The state ``app_state`` reads from Starlette's storage is the attribute's, and its error
    is the same before the lifespan and while stopping."""
    app = create_app(make_config(tmp_path))
    with pytest.raises(ApiError) as before:
        app_state(app)
    assert before.value.code is ErrorCode.NOT_READY

    async def run() -> None:
        async with app.router.lifespan_context(app):
            state = getattr(app.state, STATE_ATTRIBUTE)
            assert app_state(app) is state
            state.ready = False
            with pytest.raises(ApiError) as stopping:
                app_state(app)
            assert stopping.value.code is ErrorCode.NOT_READY
            state.ready = True

    asyncio.run(run())
