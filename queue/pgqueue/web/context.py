"""The dashboard's shared state and the seam extensions plug into.

An :class:`Extension` adds pages under ``/<name>/`` and a link in the navigation, renders with the
dashboard's templates (its own directory first), and may add metric collectors to ``/metrics``.
This is how Chimeway's delivery pages join the queue's dashboard without pgqueue importing it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, select_autoescape
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute

from .auth import Credentials, Sessions
from .reads import Reads

__all__ = ["Dashboard", "Extension", "Redactor", "default_redact", "root_of"]

Redactor = Callable[[Mapping[Any, Any]], Mapping[Any, Any]]

_SENSITIVE = ("password", "passwd", "secret", "token", "apikey", "authorization", "cookie", "privatekey")


def default_redact(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    """Drop keys whose names look like secrets, at any depth (an extension may supply its own)."""

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {
                k: clean(v)
                for k, v in value.items()
                if not any(f in str(k).lower().replace("_", "").replace("-", "") for f in _SENSITIVE)
            }
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return dict(clean(mapping))


def root_of(scope: Mapping[str, Any]) -> str:
    """The path the dashboard is mounted at ("" at the root), also inside an extension's mount.

    The dashboard's outer middleware records it; ``root_path`` alone would name the extension's
    own mount point on its pages."""
    return str(scope.get("pgqueue_root", scope.get("root_path", ""))).rstrip("/")


class Extension(Protocol):
    """Pages another package adds to the dashboard (see ``chimeway.web``)."""

    #: the URL segment its pages live under, and its navigation label
    name: str
    title: str

    def template_dir(self) -> Path | None:
        """A directory of Jinja templates its pages render (None: it has none)."""
        ...

    def routes(self, dashboard: Dashboard) -> Sequence[BaseRoute]:
        """Its routes, relative to ``/<name>``; they are served behind the dashboard's auth."""
        ...

    def collectors(self, dashboard: Dashboard) -> Sequence[Any]:
        """``prometheus_client`` collectors to add to the dashboard's ``/metrics``."""
        ...


@dataclass
class Dashboard:
    """What every page handler needs: the reads, the pool, auth, templates and settings."""

    pool: AsyncConnectionPool[Any]
    schema: str
    credentials: Credentials
    sessions: Sessions
    read_only: bool
    redact: Redactor
    extensions: Sequence[Extension] = ()
    #: whether the dashboard opens (and closes) the pool itself
    opens_pool: bool = False
    #: how long counts by state (and an extension's summaries) may be reused; 0: read every time
    counts_seconds: float = 1.0
    reads: Reads = field(init=False)
    env: Environment = field(init=False)
    _opening: anyio.Lock = field(init=False, default_factory=anyio.Lock)
    _opened: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.reads = Reads(self.pool, self.schema, self.counts_seconds)
        loaders: list[Any] = [
            FileSystemLoader(str(d)) for e in self.extensions if (d := e.template_dir()) is not None
        ]
        loaders.append(PackageLoader("pgqueue.web", "templates"))
        self.env = Environment(loader=ChoiceLoader(loaders), autoescape=select_autoescape(default=True))
        self.env.filters["ts"] = _timestamp

    async def open_pool(self) -> None:
        """Open the dashboard's own pool once (at startup, or on the first request when mounted)."""
        if self._opened:
            return
        async with self._opening:
            if not self._opened:
                await self.pool.open(wait=True, timeout=10)
                self._opened = True

    def render(
        self, request: Request, template: str, context: Mapping[str, Any] | None = None, status: int = 200
    ) -> HTMLResponse:
        principal = request.scope.get("pgqueue_principal")
        values = {
            "request": request,
            "root": root_of(request.scope),
            "principal": principal,
            "csrf": self.sessions.csrf_token(principal) if principal else "",
            "read_only": self.read_only,
            "nav": [(e.name, e.title) for e in self.extensions],
            **(context or {}),
        }
        html = self.env.get_template(template).render(values)
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)


_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _timestamp(value: Any) -> str:
    if value is None:
        return "—"
    try:
        return str(value.strftime("%Y-%m-%d %H:%M:%S"))
    except AttributeError:
        return str(value)
