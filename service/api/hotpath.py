"""The verification route answered from inside the HTTP protocol, without an ASGI task.

Theory of operation. A warm-cache verification costs the server less than the ASGI machinery
around it: a task per request, the scope's trip through uvicorn's proxy-header middleware,
FastAPI, Starlette's error and exception middleware, the observability middleware and the
route, and the ``receive``/``send`` coroutines each layer wraps. ``service.api.protocol``
holds back a ``POST /stir/v1/verification`` until its body is complete and, once the event
loop has read every connection that was ready, asks ``HotVerification.answer_all`` for the
answers of all such requests of that turn; everything here is synchronous and runs on the
event loop, as the warm path of ``service.api.stir`` already does. It answers only what it
can answer exactly as the ASGI path would: a 200 computed by ``stir.prepare_verification``,
the server's warm-cache verifier and ``stir.verification_answer`` (the same checks in the same
order, the same verifier and metrics), with the headers the route and the observability
middleware give it, counted and logged by the same ``Observer``. Anything else -- any
``ApiError``, a certificate to fetch, an unexpected exception -- is None, and the protocol
starts the ordinary ASGI task for the request with its body, which then answers it the
ordinary way (a fetch goes straight to the pool: ``COLD_SCOPE_KEY``). Nothing has been
counted or logged for it by then, so nothing is counted twice.

The requests of a turn go through each step together: all checked and mapped, then all
verified, then all answered, rather than each through every step before the next. Each step's
code and data then stay in the processor's caches from one request to the next instead of
being evicted by the other steps' (measured on a loaded server, 16 connections: ~20% more
requests per second than the same work request by request, which measured no faster than
answering each as its body completed). Every request of a turn is judged against one reading
of the server's clock, taken when its verification step begins; its counts and access line
are the ones it would have had alone, its verifier time its own, its request latency the time
from the start of the turn's answers to its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette import types as asgi
from starlette.applications import Starlette

from service.api.metrics import REQUEST_ID_HEADER, Observer, usable_request_id
from service.api.stir import (
    COLD_SCOPE_KEY,
    READ_HEADERS,
    PreparedVerification,
    prepare_verification,
    request_headers,
    verification_answer,
    verification_time,
)
from service.loop_source import WouldBlock
from shaken.result import VerificationResult

# Where create_app keeps its HotVerification (an attribute of ``app.state``).
HOT_ATTRIBUTE = "hot_verification"
_ID_HEADER = REQUEST_ID_HEADER.encode("latin-1")
# The route's headers and the client's request id, decoded in one walk of the request's.
_HOT_HEADERS = READ_HEADERS | {_ID_HEADER}
Headers = list[tuple[bytes, bytes]]
Answer = tuple[Headers, bytes]


class HotVerification:
    """Answers ``route`` (the verification route of ``app``) from the protocol."""

    def __init__(
        self, app: Starlette, route: APIRoute, observer: Observer, *, max_body_bytes: int
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.route = route
        self.path = route.path
        self.observer = observer

    def takes(self, scope: asgi.Scope) -> bool:
        """Whether the request is for this route as ``DirectRoutes`` would dispatch it."""
        return scope["method"] == "POST" and scope["path"] == self.path and not scope["root_path"]

    def answer_all(self, requests: Sequence[tuple[asgi.Scope, bytes]]) -> list[Answer | None]:
        """For each request (its scope and complete body), in order, the response headers
        (without uvicorn's defaults) and body of a 200, or None when the ASGI path must answer
        (module docstring)."""
        started = time.perf_counter()
        app = self.app
        prepared: list[tuple[PreparedVerification, dict[str, str]] | None] = []
        for scope, body in requests:
            read = request_headers(scope, _HOT_HEADERS)
            try:
                ready = prepare_verification(app, read, scope, body)
            except Exception:  # the ASGI path answers it (and logs what is not ours)
                ready = None
            prepared.append(None if ready is None else (ready, read))
        at = None
        verified: list[tuple[VerificationResult, float] | None] = []
        for (scope, _), item in zip(requests, prepared, strict=True):
            if item is None:
                verified.append(None)
                continue
            ready = item[0]
            if at is None:
                at = verification_time(ready.state)
            begun = time.perf_counter()
            try:
                result = ready.verify(ready.request, at)
            except WouldBlock:  # a certificate or CRL to fetch: the pool, on the ASGI path
                scope[COLD_SCOPE_KEY] = True
                verified.append(None)
                continue
            except Exception:
                verified.append(None)
                continue
            verified.append((result, time.perf_counter() - begun))
        return [
            None if item is None or done is None else self._answer(scope, *item, *done, started)
            for (scope, _), item, done in zip(requests, prepared, verified, strict=True)
        ]

    def _answer(
        self,
        scope: asgi.Scope,
        ready: PreparedVerification,
        read: dict[str, str],
        result: VerificationResult,
        seconds: float,
        started: float,
    ) -> Answer | None:
        observer = self.observer
        try:
            content = verification_answer(
                observer.metrics, result, seconds, ready.flavour, ready.request_id
            )
        except Exception:
            return None
        # ``observer.request_id(scope)`` and ``observer.finish`` as the middleware calls them
        # (the route set in the scope), from the headers already decoded.
        request_id = usable_request_id(read.get(REQUEST_ID_HEADER))
        if request_id is None:
            request_id = observer.new_request_id()
        scope["route"] = self.route
        observer.answered(
            "POST", self.path, scope["path"], request_id, 200, time.perf_counter() - started
        )
        return [
            (b"content-length", str(len(content)).encode("latin-1")),
            (b"content-type", b"application/json"),
            (_ID_HEADER, request_id.encode("latin-1")),
        ], content


def hot_route(app: Any) -> HotVerification | None:
    """The ``HotVerification`` of the app inside ``app`` (uvicorn wraps it in middleware that
    keep it as ``.app``), or None."""
    for _ in range(16):  # a bound: middleware chains are a few deep
        if app is None:
            return None
        state = getattr(app, "state", None)
        found = getattr(state, HOT_ATTRIBUTE, None) if state is not None else None
        if isinstance(found, HotVerification):
            return found
        app = getattr(app, "app", None)
    return None
