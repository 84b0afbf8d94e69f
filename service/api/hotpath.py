"""The verification route answered from inside the HTTP protocol, without an ASGI task.

Theory of operation. A warm-cache verification costs the server less than the ASGI machinery
around it: a task per request, the scope's trip through uvicorn's proxy-header middleware,
FastAPI, Starlette's error and exception middleware, the observability middleware and the
route, and the ``receive``/``send`` coroutines each layer wraps. ``service.api.protocol``
holds back a ``POST /stir/v1/verification`` until its body is complete and asks
``HotVerification.answer`` for the answer; everything here is synchronous and runs on the
event loop, as the warm path of ``service.api.stir`` already does. It answers only what it
can answer exactly as the ASGI path would: a 200 computed by ``stir.verification_now`` (the
same checks in the same order, the same verifier and metrics), with the headers the route
and the observability middleware give it, counted and logged by the same ``Observer``.
Anything else -- any ``ApiError``, a certificate to fetch, an unexpected exception -- returns
None, and the protocol starts the ordinary ASGI task for the request with its body, which
then answers it the ordinary way (a fetch goes straight to the pool: ``COLD_SCOPE_KEY``).
Nothing has been counted or logged for it by then, so nothing is counted twice.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi.routing import APIRoute
from starlette import types as asgi
from starlette.applications import Starlette

from service.api.metrics import REQUEST_ID_HEADER, Observer, usable_request_id
from service.api.stir import READ_HEADERS, request_headers, verification_now

# Where create_app keeps its HotVerification (an attribute of ``app.state``).
HOT_ATTRIBUTE = "hot_verification"
_ID_HEADER = REQUEST_ID_HEADER.encode("latin-1")
# The route's headers and the client's request id, decoded in one walk of the request's.
_HOT_HEADERS = READ_HEADERS | {_ID_HEADER}
Headers = list[tuple[bytes, bytes]]


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

    def answer(self, scope: asgi.Scope, body: bytes) -> tuple[Headers, bytes] | None:
        """The response headers (without uvicorn's defaults) and body of a 200, or None when
        the ASGI path must answer (module docstring)."""
        started = time.perf_counter()
        observer = self.observer
        read = request_headers(scope, _HOT_HEADERS)
        try:
            content = verification_now(self.app, read, scope, body, observer.metrics)
        except Exception:  # the ASGI path answers it (and logs what is not ours)
            return None
        if content is None:
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
        headers = [
            (b"content-length", str(len(content)).encode("latin-1")),
            (b"content-type", b"application/json"),
            (_ID_HEADER, request_id.encode("latin-1")),
        ]
        return headers, content


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
