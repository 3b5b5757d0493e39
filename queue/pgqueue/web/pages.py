"""The dashboard's pages (GET): queues, jobs, one job, nodes, batches, live counts, sign-in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..job import Job, JobState
from .auth import SESSION_COOKIE, SESSION_SECONDS
from .chart import chart
from .context import Dashboard, root_of
from .filters import parse_job_id, parse_job_query
from .waiting import is_parked, may_wait

__all__ = ["NOTICES", "routes", "timeline"]

STATES = [s.value for s in JobState]
T = TypeVar("T")

#: the messages an action's redirect may ask a page to show, by code (never text from the URL)
NOTICES = {
    "retried": "Retried: the job is available again.",
    "cancelled": "Cancelled.",
    "deleted": "Deleted.",
    "bulk": "Done: {n} job(s) changed.",
    "unchanged": "Nothing was done: the job is {state} now, not what the page showed. Look again.",
    "paused": "Pause sent to every node running the queue.",
    "resumed": "Resume sent to every node running the queue.",
    "scaled": "New limit sent to every node running the queue.",
}


def _notice(request: Request) -> str | None:
    code = request.query_params.get("notice", "")
    text = NOTICES.get(code)
    if text is None:
        return None
    state = request.query_params.get("now", "")
    count = request.query_params.get("n", "0")
    return text.format(
        state=state if state in STATES else "gone", n=int(count) if count.isdigit() and len(count) < 9 else 0
    )


def timeline(job: Job) -> list[tuple[datetime, str, str]]:
    """The job's life as dated entries, oldest first: inserted, scheduled, each error, the end."""
    entries: list[tuple[datetime, str, str]] = [(job.inserted_at, "inserted", f"into queue {job.queue}")]
    if job.scheduled_at > job.inserted_at and not is_parked(job.state, job.scheduled_at):
        entries.append((job.scheduled_at, "scheduled", "due to run"))
    for error in job.errors or []:
        at = error.get("at") if isinstance(error, dict) else None
        when = _parse_at(at) or job.inserted_at
        text = str(error.get("error", "")) if isinstance(error, dict) else str(error)
        entries.append(
            (when, f"attempt {error.get('attempt', '?')} failed", text.splitlines()[0][:200] if text else "")
        )
    if job.attempted_at is not None:
        by = " on " + job.attempted_by[0] if job.attempted_by else ""
        entries.append((job.attempted_at, f"attempt {job.attempt} started", by.strip()))
    for at, label in (
        (job.completed_at, "completed"),
        (job.cancelled_at, "cancelled"),
        (job.discarded_at, "discarded"),
    ):
        if at is not None:
            entries.append((at, label, ""))
    return sorted(entries, key=lambda entry: entry[0])


class _Soon(Generic[T]):
    """The result of an awaitable run in a task group."""

    def __init__(self, call: Callable[[], Awaitable[T]]) -> None:
        self.call = call
        self._value: T | None = None

    async def run(self) -> None:
        self._value = await self.call()

    @property
    def value(self) -> T:
        assert self._value is not None
        return self._value


def _parse_at(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _metrics_registry(dashboard: Dashboard) -> Any:
    """The registry ``/metrics`` serves: the queue's gauges and each extension's collectors."""
    from prometheus_client import CollectorRegistry

    from ..metrics import QueueCollector

    registry = CollectorRegistry()
    conninfo = dashboard.pool.conninfo
    if isinstance(conninfo, str):
        registry.register(QueueCollector(conninfo, dashboard.schema, dashboard.counts_seconds))
    for extension in dashboard.extensions:
        for collector in extension.collectors(dashboard):
            registry.register(collector)
    return registry


def routes(dashboard: Dashboard) -> list[Route]:
    async def queues(request: Request) -> Response:
        # The counts and the chart read different indexes: run them side by side on two connections.
        async with anyio.create_task_group() as group:
            overview_soon = _Soon(dashboard.reads.overview)
            minutes_soon = _Soon(dashboard.reads.throughput)
            group.start_soon(overview_soon.run)
            group.start_soon(minutes_soon.run)
        overview, minutes = overview_soon.value, minutes_soon.value
        names = sorted(
            set(overview.counts.exact) | {p.queue for p in overview.producers} | set(overview.executing)
        )
        by_queue: dict[str, list[Any]] = {}
        for producer in overview.producers:
            by_queue.setdefault(producer.queue, []).append(producer)
        return dashboard.render(
            request,
            "queues.html",
            {
                "title": "Queues",
                "overview": overview,
                "queues": names,
                "producers_by_queue": by_queue,
                "states": STATES,
                "totals": overview.totals(),
                "chart": chart(minutes, datetime.now(UTC)),
                "notice": _notice(request),
            },
        )

    async def jobs(request: Request) -> Response:
        query = parse_job_query(request.query_params)
        page = await dashboard.reads.jobs(
            query.job_filter(), state=query.state, before=query.before, after=query.after, limit=query.limit
        )
        return dashboard.render(
            request,
            "jobs.html",
            {"title": "Jobs", "query": query, "page": page, "states": STATES, "notice": _notice(request)},
        )

    async def job(request: Request) -> Response:
        job_id = parse_job_id(request.path_params["job_id"])
        found = await dashboard.reads.job(job_id) if job_id is not None else None
        if found is None:
            raise HTTPException(404)
        parked = {found.id: is_parked(found.state, found.scheduled_at)}
        may = may_wait(found.state, found.attempted_at)
        waiting = (await dashboard.reads.waiting(parked)).get(found.id) if may else None
        return dashboard.render(
            request,
            "job.html",
            {
                "title": f"Job {found.id}",
                "job": found,
                "args": dashboard.redact(found.args) if isinstance(found.args, dict) else found.args,
                "meta": dashboard.redact(found.meta),
                "timeline": timeline(found),
                "waiting": waiting,
                "notice": _notice(request),
            },
        )

    async def nodes(request: Request) -> Response:
        producers, leader = await dashboard.reads.nodes()
        return dashboard.render(
            request, "nodes.html", {"title": "Nodes", "producers": producers, "leader": leader}
        )

    async def batches(request: Request) -> Response:
        found = await dashboard.reads.batches()
        return dashboard.render(request, "batches.html", {"title": "Batches", "batches": found})

    async def counts(request: Request) -> Response:
        state_counts = await dashboard.reads.counts.get()
        return JSONResponse(
            {"totals": state_counts.totals(), "estimated": sorted(state_counts.estimated)},
            headers={"Cache-Control": "no-store"},
        )

    metrics_registry = _metrics_registry(dashboard)

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await anyio.to_thread.run_sync(generate_latest, metrics_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    async def login_page(request: Request) -> Response:
        return dashboard.render(request, "login.html", {"title": "Sign in", "failed": False})

    async def login(request: Request) -> Response:
        form = await request.form(max_fields=4, max_files=0)
        user = str(form.get("user", "") or "") or None
        secret = str(form.get("secret", "") or "")
        principal = dashboard.credentials.check_secret(user, secret)
        if principal is None:
            return dashboard.render(request, "login.html", {"title": "Sign in", "failed": True}, 401)
        root = root_of(request.scope)
        response = RedirectResponse(f"{root}/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            dashboard.sessions.issue(principal),
            max_age=SESSION_SECONDS,
            path=f"{root}/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    return [
        Route("/", queues, name="queues"),
        Route("/jobs", jobs, name="jobs"),
        Route("/jobs/{job_id}", job, name="job"),
        Route("/nodes", nodes, name="nodes"),
        Route("/batches", batches, name="batches"),
        Route("/api/counts", counts, name="counts"),
        Route("/metrics", metrics, name="metrics"),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
    ]
