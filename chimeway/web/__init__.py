"""Chimeway's pages in the queue's dashboard: deliveries, a delivery's story, an event's trace.

An extension of :mod:`pgqueue.web` (the dependency points from chimeway to pgqueue, never back)::

    python -m pgqueue web --extension chimeway.web:extension

or, when mounting: ``create_app(pool=pool, authenticate=…, extensions=[chimeway.web.extension()],
redact=chimeway.web.redact)``. Nothing here shows event payloads or notification content; what it
shows (ids, recipient, channel, outcomes) is what Chimeway's telemetry carries too.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg.rows import dict_row
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pgqueue.web import Dashboard
from pgqueue.web.recent import Recent

from .. import redaction
from ..errors import DeliveryNotFound
from ..explain import explain_delivery
from ..metrics import DeliveryCollector
from ..states import STATUSES
from ..store import queries_for

__all__ = ["ChimewayPages", "extension", "redact"]

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")
_PAGE = 50
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
_MAX_UUID = uuid.UUID(int=2**128 - 1)


def redact(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    """Chimeway's redaction policy, for the dashboard's ``redact`` option."""
    return redaction.redact(mapping)


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _bad_request(dashboard: Dashboard, request: Request, message: str) -> Response:
    return dashboard.render(request, "error.html", {"title": "Bad request", "message": message}, 400)


class ChimewayPages:
    """The :class:`pgqueue.web.Extension` for Chimeway, on the dashboard's schema and pool."""

    name = "chimeway"
    title = "Deliveries"

    def __init__(self) -> None:
        self._engine: Engine | None = None

    def redact(self, mapping: Mapping[Any, Any]) -> dict[Any, Any]:
        """Chimeway's redaction policy: the dashboard shows args and meta through it."""
        return redact(mapping)

    def template_dir(self) -> Path | None:
        return Path(__file__).parent / "templates"

    def collectors(self, dashboard: Dashboard) -> Sequence[Any]:
        conninfo = dashboard.pool.conninfo
        if not isinstance(conninfo, str):
            return []
        return [DeliveryCollector(conninfo, dashboard.schema, dashboard.counts_seconds)]

    def _session(self, dashboard: Dashboard) -> Session:
        if self._engine is None:
            conninfo, options = dashboard.pool.conninfo, dashboard.pool.kwargs
            if not isinstance(conninfo, str):
                raise TypeError("the delivery pages need a pool made from a connection string")
            kwargs: dict[str, Any] = dict(options) if isinstance(options, dict) else {}
            self._engine = create_engine(
                "postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo, **kwargs), pool_size=2
            ).execution_options(schema_translate_map={None: dashboard.schema})
        return Session(self._engine)

    def routes(self, dashboard: Dashboard) -> Sequence[BaseRoute]:
        queries = queries_for(dashboard.schema)
        statuses = list(STATUSES)

        async def read_summary() -> dict[str, dict[str, int]]:
            async with dashboard.pool.connection() as conn:
                counts = await (await conn.execute(queries.web_delivery_counts)).fetchall()
            by_channel: dict[str, dict[str, int]] = {}
            for ch, st, n in counts:
                by_channel.setdefault(ch, {})[st] = int(n)
            return by_channel

        # Counting every delivery is this page's dearest read: shared by requests close together.
        summary = Recent(read_summary, dashboard.counts_seconds)

        async def deliveries(request: Request) -> Response:
            params = request.query_params
            status = params.get("status") or None
            channel = params.get("channel") or None
            if status is not None and status not in statuses:
                return _bad_request(dashboard, request, f"status: must be one of {', '.join(statuses)}")
            if channel is not None and (len(channel) > 64 or not set(channel) <= _NAME_CHARS):
                return _bad_request(dashboard, request, "channel: letters, digits and _ . : - only")
            cursor_at, cursor_id = _FAR_FUTURE, _MAX_UUID
            if params.get("before"):
                at_text, _, id_text = params["before"].partition("~")
                key = _uuid(id_text)
                try:
                    when = datetime.fromisoformat(at_text)
                except ValueError:
                    when = None
                if key is None or when is None:
                    return _bad_request(dashboard, request, "before: not a page cursor")
                cursor_at, cursor_id = when, key
            found: dict[str, Any] = {}

            async def read_summary_into() -> None:
                found["summary"] = await summary.get()

            # The page and the summary read different indexes: side by side, on two connections.
            async with anyio.create_task_group() as group:
                group.start_soon(read_summary_into)
                async with dashboard.pool.connection() as conn:
                    cur = conn.cursor(row_factory=dict_row)
                    rows = await (
                        await cur.execute(
                            queries.web_deliveries_before
                            if status is None
                            else queries.web_deliveries_status_before,
                            {
                                "status": status,
                                "channel": channel,
                                "cursor_at": cursor_at,
                                "cursor_id": cursor_id,
                                "limit": _PAGE + 1,
                            },
                            # never on a generic plan: the best one depends on status and channel
                            prepare=False,
                        )
                    ).fetchall()
            by_channel: dict[str, dict[str, int]] = found["summary"]
            more = len(rows) > _PAGE
            rows = rows[:_PAGE]
            older = f"{rows[-1]['inserted_at'].isoformat()}~{rows[-1]['id']}" if more and rows else None
            return dashboard.render(
                request,
                "chimeway/deliveries.html",
                {
                    "title": "Deliveries",
                    "rows": rows,
                    "older": older,
                    "status": status,
                    "channel": channel,
                    "statuses": statuses,
                    "by_channel": by_channel,
                },
            )

        async def delivery(request: Request) -> Response:
            key = _uuid(request.path_params["delivery_id"])
            if key is None:
                raise HTTPException(404)

            def explain() -> Any:
                with self._session(dashboard) as session:
                    return explain_delivery(session, key)

            try:
                story = await anyio.to_thread.run_sync(explain)
            except DeliveryNotFound:
                raise HTTPException(404) from None
            timeline = [(e.at, e.event, redact(e.detail)) for e in story.timeline]
            return dashboard.render(
                request,
                "chimeway/delivery.html",
                {"title": f"Delivery {story.delivery_id}", "story": story, "timeline": timeline},
            )

        async def event(request: Request) -> Response:
            key = _uuid(request.path_params["event_id"])
            if key is None:
                raise HTTPException(404)
            async with dashboard.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                rows = await (await cur.execute(queries.web_event_trace, {"event_id": key})).fetchall()
            if not rows:
                raise HTTPException(404)
            return dashboard.render(
                request,
                "chimeway/event.html",
                {"title": f"Event {key}", "event_id": key, "first": rows[0], "rows": rows},
            )

        return [
            Route("/", deliveries),
            Route("/deliveries/{delivery_id}", delivery),
            Route("/events/{event_id}", event),
        ]


def extension() -> ChimewayPages:
    """A fresh :class:`ChimewayPages` (what ``--extension chimeway.web:extension`` loads)."""
    return ChimewayPages()
