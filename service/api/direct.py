"""Direct dispatch of the hot routes: a request whose method and path name one of them goes
straight to that route, past the router's search and the framework layers in between.

Theory of operation. FastAPI finds a route by matching the request against every route of every
included router in turn, behind its exception middleware and its exit-stack middleware; for the
verification route that walk costs more than the route's own JSON work. A route given here
answers its own errors (``ApiError`` bodies) and holds nothing an exit stack would close (no
dependencies, no uploads), so this middleware, placed inside the observability middleware,
looks its ``(method, path)`` up in a dict and calls its ``handle`` with ``scope["route"]`` set
as the router would set it (the metrics label it by template). The router keeps the routes: a
request the lookup does not take (another method, a ``root_path`` prefix) reaches the same
``handle`` the ordinary way, so both ways give one answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send


class DirectRoutes:
    """Pure ASGI middleware: ``routes`` served by (method, path) without the router's search."""

    def __init__(self, app: ASGIApp, *, routes: Iterable[APIRoute]) -> None:
        self.app = app
        self._routes = {
            (method, route.path): route for route in routes for method in route.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self._routes.get((scope["method"], scope["path"]))
            if route is not None:
                scope["route"] = route
                await route.handle(scope, receive, send)
                return
        await self.app(scope, receive, send)
