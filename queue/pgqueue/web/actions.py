"""The dashboard's actions (POST): retry, cancel and delete jobs, one or many; pause, resume and
scale queues; sign out.

Every action passes the same gate (:func:`_gate`): refused in read-only mode, refused without the
session's CSRF token. Job actions first show a confirmation page; the confirmed form carries the
state the operator saw, and the change applies only to jobs still in that state, so an action on
a job that moved meanwhile (or a form sent twice) changes nothing and says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..control import send_signal
from ..errors import ConfigError
from ..job import JobState
from ..manage import acancel_all_jobs, adelete_all_jobs, aretry_all_jobs
from ..options import validate_queue
from ..producer import QueueConfig
from ..store import JobFilter
from .auth import SESSION_COOKIE
from .context import Dashboard, root_of
from .filters import BadInput, parse_job_id

__all__ = ["JOB_ACTIONS", "routes"]

#: action → (the function applying it to a filter, its past tense for the notice)
JOB_ACTIONS: dict[str, tuple[Callable[..., Awaitable[int]], str]] = {
    "retry": (aretry_all_jobs, "retried"),
    "cancel": (acancel_all_jobs, "cancelled"),
    "delete": (adelete_all_jobs, "deleted"),
}
_STATES = {s.value for s in JobState}
#: a bulk action takes at most this many jobs (one page of the list)
MAX_BULK = 100

Handler = Callable[[Request, FormData], Awaitable[Response]]


def _gate(dashboard: Dashboard, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def gated(request: Request) -> Response:
        if dashboard.read_only:
            raise HTTPException(403)
        principal = request.scope.get("pgqueue_principal")
        form = await request.form(max_fields=MAX_BULK + 10, max_files=0)
        csrf = form.get("csrf")
        if not principal or not dashboard.sessions.check_csrf(
            principal, csrf if isinstance(csrf, str) else None
        ):
            raise HTTPException(403)
        return await handler(request, form)

    return gated


def _root(request: Request) -> str:
    return root_of(request.scope)


def _redirect(request: Request, path: str, **params: Any) -> Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return RedirectResponse(f"{_root(request)}{path}{'?' + query if query else ''}", status_code=303)


def _field(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _expected_state(form: FormData) -> str:
    state = _field(form, "state")
    if state not in _STATES:
        raise BadInput("state", f"must be one of {', '.join(sorted(_STATES))}")
    return state


def _job_ids(form: FormData) -> list[int]:
    ids = []
    for raw in form.getlist("ids"):
        job_id = parse_job_id(raw) if isinstance(raw, str) else None
        if job_id is None:
            raise BadInput("ids", "must be job ids")
        ids.append(job_id)
    if not ids:
        raise BadInput("ids", "select at least one job")
    if len(ids) > MAX_BULK:
        raise BadInput("ids", f"at most {MAX_BULK} jobs at once")
    return ids


def routes(dashboard: Dashboard) -> list[Route]:
    async def job_action(request: Request, form: FormData) -> Response:
        action = request.path_params["action"]
        job_id = parse_job_id(request.path_params["job_id"])
        if action not in JOB_ACTIONS or job_id is None:
            raise HTTPException(404)
        state = _expected_state(form)
        if _field(form, "confirmed") != "yes":
            job = await dashboard.reads.job(job_id)
            if job is None:
                raise HTTPException(404)
            return dashboard.render(
                request,
                "confirm.html",
                {
                    "title": "Confirm",
                    "action": action,
                    "ids": [job_id],
                    "state": state,
                    "target": f"/jobs/{job_id}/{action}",
                },
            )
        apply, done = JOB_ACTIONS[action]
        async with dashboard.pool.connection() as conn:
            changed = await apply(conn, JobFilter(ids=[job_id], state=state), schema=dashboard.schema)
        if not changed:
            now = await dashboard.reads.job_state(job_id)
            return _redirect(request, f"/jobs/{job_id}" if now else "/jobs", notice="unchanged", now=now)
        if action == "delete":
            return _redirect(request, "/jobs", notice="deleted")
        return _redirect(request, f"/jobs/{job_id}", notice=done)

    async def bulk_action(request: Request, form: FormData) -> Response:
        action = _field(form, "action")
        if action not in JOB_ACTIONS:
            raise BadInput("action", f"must be one of {', '.join(JOB_ACTIONS)}")
        ids, state = _job_ids(form), _expected_state(form)
        if _field(form, "confirmed") != "yes":
            return dashboard.render(
                request,
                "confirm.html",
                {"title": "Confirm", "action": action, "ids": ids, "state": state, "target": "/jobs/bulk"},
            )
        apply, _ = JOB_ACTIONS[action]
        async with dashboard.pool.connection() as conn:
            changed = await apply(conn, JobFilter(ids=ids, state=state), schema=dashboard.schema)
        return _redirect(request, "/jobs", state=state, notice="bulk", n=changed)

    async def queue_action(request: Request, form: FormData) -> Response:
        action = request.path_params["action"]
        queue = request.path_params["queue"]
        if action not in ("pause", "resume", "scale"):
            raise HTTPException(404)
        try:
            validate_queue(queue)
        except ConfigError:
            raise HTTPException(404) from None
        params: dict[str, Any] = {}
        if action == "scale":
            limit = _field(form, "limit")
            if not limit.isdigit() or len(limit) > 6:
                raise BadInput("limit", "must be a whole number of at least 1")
            try:
                QueueConfig.parse(queue, int(limit))
            except (ConfigError, ValueError) as exc:
                raise BadInput("limit", str(exc)) from None
            params["limit"] = int(limit)
        async with dashboard.pool.connection() as conn:
            await send_signal(conn, dashboard.schema, action, queue=queue, params=params)
        notice = {"pause": "paused", "resume": "resumed", "scale": "scaled"}[action]
        return _redirect(request, "/", notice=notice)

    async def logout(request: Request, form: FormData) -> Response:
        response = _redirect(request, "/login")
        response.delete_cookie(SESSION_COOKIE, path=f"{_root(request)}/")
        return response

    async def logout_gate(request: Request) -> Response:
        # Signing out is allowed in read-only mode too; it still needs the CSRF token.
        principal = request.scope.get("pgqueue_principal")
        form = await request.form(max_fields=4, max_files=0)
        csrf = form.get("csrf")
        if not principal or not dashboard.sessions.check_csrf(
            principal, csrf if isinstance(csrf, str) else None
        ):
            raise HTTPException(403)
        return await logout(request, form)

    return [
        Route("/jobs/bulk", _gate(dashboard, bulk_action), methods=["POST"]),
        Route("/jobs/{job_id}/{action}", _gate(dashboard, job_action), methods=["POST"]),
        Route("/queues/{queue}/{action}", _gate(dashboard, queue_action), methods=["POST"]),
        Route("/logout", logout_gate, methods=["POST"]),
    ]
