"""Build the dashboard as an ASGI application: :func:`create_app`.

Mount it in a Starlette/FastAPI app (``app.mount("/queue", create_app(...))``) or serve it with
``python -m pgqueue web``. The app opens its pool on startup and closes it on shutdown, unless it
was given a pool, which stays the caller's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ..migrate import validate_schema_name
from . import actions, pages
from .auth import SESSION_COOKIE, Authenticator, Credentials, Sessions
from .context import Dashboard, Extension, Redactor, default_redact
from .filters import MAX_QUERY_BYTES, BadInput

__all__ = ["create_app"]

#: a request body larger than this is refused (a bulk action lists at most a page of ids)
MAX_BODY_BYTES = 256 * 1024
_OPEN_PATHS = ("/login", "/static/")


def create_app(
    dsn: str | None = None,
    *,
    pool: AsyncConnectionPool[Any] | None = None,
    schema: str = "public",
    token: str | None = None,
    basic_auth: str | tuple[str, str] | None = None,
    authenticate: Authenticator | None = None,
    insecure_no_auth: bool = False,
    read_only: bool = False,
    secret: bytes | None = None,
    redact: Redactor = default_redact,
    extensions: Sequence[Extension] = (),
    counts_seconds: float = 1.0,
) -> Starlette:
    """The dashboard for the queue in ``schema``, reading through ``pool`` (or a pool on ``dsn``).

    Authentication is required: a ``token`` (16+ characters), ``basic_auth`` (``"user:password"``)
    or an ``authenticate(connection)`` callable returning the user's name or None. ``read_only``
    hides and refuses every action. ``secret`` signs session cookies (default: random per
    process). ``redact`` cleans args and meta before they are shown. ``counts_seconds``: how long
    the counts by state are reused across pages, live-count polls and tabs (0: count every time).
    """
    validate_schema_name(schema)
    if (dsn is None) == (pool is None):
        raise ValueError("give the dashboard either a dsn or a pool")
    if isinstance(basic_auth, str):
        basic_auth = Credentials.parse_basic(basic_auth)
    credentials = Credentials(
        token=token,
        basic_user=basic_auth[0] if basic_auth else None,
        basic_password=basic_auth[1] if basic_auth else None,
        authenticate=authenticate,
        insecure_no_auth=insecure_no_auth,
    )
    own_pool = pool is None
    the_pool = pool or AsyncConnectionPool(dsn or "", min_size=1, max_size=4, open=False)
    if isinstance(counts_seconds, bool) or not isinstance(counts_seconds, (int, float)) or counts_seconds < 0:
        raise ValueError(f"counts_seconds must be a number of seconds, 0 or more, got {counts_seconds!r}")
    dashboard = Dashboard(
        the_pool,
        schema,
        credentials,
        Sessions(secret),
        read_only,
        redact,
        extensions,
        counts_seconds=float(counts_seconds),
    )
    # Mounted inside another app, this app's lifespan never runs: its own pool opens on first use.
    dashboard.opens_pool = own_pool

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if own_pool:
            await dashboard.open_pool()
        try:
            yield
        finally:
            if own_pool:
                await the_pool.close()

    routes: list[Any] = [
        *pages.routes(dashboard),
        *actions.routes(dashboard),
        Mount("/static", StaticFiles(packages=[("pgqueue.web", "static")]), name="static"),
    ]
    for extension in extensions:
        routes.append(Mount(f"/{extension.name}", routes=list(extension.routes(dashboard))))

    async def bad_input(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadInput)
        return dashboard.render(request, "error.html", {"title": "Bad request", "message": str(exc)}, 400)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 401:
            return PlainTextResponse("Unauthorized", 401)
        title = {404: "Not found", 403: "Forbidden", 405: "Method not allowed"}.get(exc.status_code, "Error")
        return dashboard.render(request, "error.html", {"title": title, "message": title}, exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("Internal Server Error", 500)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={BadInput: bad_input, HTTPException: http_error, 500: server_error},
    )
    app.state.dashboard = dashboard
    app.add_middleware(_Guard, dashboard=dashboard)
    return app


class _Guard:
    """Refuses oversized requests, cross-origin posts and anyone not signed in, before routing."""

    def __init__(self, app: ASGIApp, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            await PlainTextResponse(f"Bad request: query string over {MAX_QUERY_BYTES} bytes", 400)(
                scope, receive, send
            )
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            await PlainTextResponse("Request body too large", 413)(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD") and not _same_origin(headers):
            await PlainTextResponse("Forbidden", 403)(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        scope["pgqueue_root"] = root.rstrip("/")
        local = path[len(root) :] if root and path.startswith(root) else path
        if local.startswith(_OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        principal = await self._principal(HTTPConnection(scope))
        if principal is None:
            await self._refuse(scope, receive, send, headers)
            return
        scope["pgqueue_principal"] = principal
        if self.dashboard.opens_pool:
            await self.dashboard.open_pool()
        await self.app(scope, receive, send)

    async def _principal(self, conn: HTTPConnection) -> str | None:
        credentials = self.dashboard.credentials
        if credentials.insecure_no_auth and credentials.authenticate is None:
            return "anonymous"
        principal = self.dashboard.sessions.principal(conn.cookies.get(SESSION_COOKIE))
        if principal is None:
            principal = credentials.from_header(conn.headers.get("authorization"))
        if principal is None:
            principal = await credentials.from_callable(conn)
        return principal

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        wants_page = scope["method"] == "GET" and "text/html" in headers.get("accept", "")
        if wants_page and (self.dashboard.credentials.token or self.dashboard.credentials.basic_user):
            response: Response = self.dashboard.render(
                Request(scope, receive), "login.html", {"failed": False}, 401
            )
        else:
            response = PlainTextResponse("Unauthorized", 401)
        await response(scope, receive, send)


def _same_origin(headers: Headers) -> bool:
    """False when the browser says the request comes from another origin (CSRF's first check)."""
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == headers.get("host", "")
