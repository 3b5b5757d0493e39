"""Workflows: jobs that wait for other jobs, for a named signal, or until a time.

A :class:`Workflow` is a DAG of named steps, each an unsaved job built by ``Worker.new``.
:func:`insert_workflow` (and its async twin :func:`ainsert_workflow`) writes the whole DAG in the
caller's transaction, as :func:`pgqueue.insert_all` does jobs: roll it back and nothing exists.

A step that waits is stored as an ordinary ``scheduled`` job parked at :data:`PARKED`, a
far-future instant the stager never reaches, with a row in ``pgqueue_workflow_waits`` saying what
it waits for. Nothing polls for readiness: when a dependency reaches a final state, a trigger on
the jobs table (armed only on jobs something depends on) counts it on each dependent, in the
statement that finished the dependency, and moves the dependents nothing holds any more on:
``available`` (its queue woken), ``scheduled`` at its ``not_before`` or signal deadline, or
``cancelled`` when a dependency failed under the ``"cancel"`` policy. See
``sql/pgqueue/0006_workflows.up.sql`` for why it is shaped so.

Bad input is refused before anything is written: a cycle, a dependency on a step that isn't in
the workflow or on a job id that doesn't exist, a step that waits and also sets its own schedule.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import middleware
from .drivers import AsyncWriter, SyncWriter
from .insert import ainline_runner, awrite_jobs, inline_runner, write_jobs
from .job import Job, NewJob
from .store import queries_for
from .targets import async_writer, sync_writer
from .workflow_inline import arun_inline, run_inline
from .workflow_step import (
    DependencyCycleError,
    MissingDependencyError,
    OnDependencyFailure,
    Step,
    WorkflowError,
)

__all__ = [
    "PARKED",
    "DependencyCycleError",
    "MissingDependencyError",
    "OnDependencyFailure",
    "Step",
    "Workflow",
    "WorkflowError",
    "ainsert_workflow",
    "insert_workflow",
]

#: where a waiting job's ``scheduled_at`` points: past every stager horizon (the testing drain
#: stages up to 9999-01-01) and still a Python datetime in every time zone
PARKED = datetime(9999, 6, 1, tzinfo=UTC)

_MAX_SIGNAL_NAME = 255


class Workflow:
    """A DAG of jobs to insert in one call; ``workflow_id`` names it in every job's meta.

    Reuse an id to add jobs to a workflow that is already running: steps may depend on the ids
    of its jobs (or of any other job) as well as on the names of steps added here.
    """

    def __init__(self, workflow_id: str | None = None) -> None:
        if workflow_id is not None and (not isinstance(workflow_id, str) or not workflow_id):
            raise WorkflowError(f"workflow_id must be a non-empty string, got {workflow_id!r}")
        self.id = workflow_id if workflow_id is not None else uuid.uuid4().hex
        self._steps: dict[str, Step] = {}

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(self._steps.values())

    def add(
        self,
        name: str,
        job: NewJob,
        *,
        deps: Iterable[str | int] = (),
        on_dependency_failure: OnDependencyFailure = "cancel",
        wait_for_signal: str | None = None,
        signal_timeout: float | None = None,
        not_before: datetime | None = None,
    ) -> str:
        """Add step ``name`` running ``job``; returns ``name`` so later steps can depend on it."""
        if not isinstance(name, str) or not name:
            raise WorkflowError(f"step name must be a non-empty string, got {name!r}")
        if name in self._steps:
            raise WorkflowError(f"step {name!r} is already in workflow {self.id!r}")
        if not isinstance(job, NewJob):
            raise WorkflowError(
                f"step {name!r}: job must be built with Worker.new(...), got {type(job).__name__}"
            )
        if isinstance(deps, str | int):
            raise WorkflowError(f"step {name!r}: deps must be a list of step names or job ids, got {deps!r}")
        dep_list = tuple(deps)
        for dep in dep_list:
            if isinstance(dep, bool) or not isinstance(dep, str | int):
                raise WorkflowError(
                    f"step {name!r}: a dependency must be a step name or a job id, got {dep!r}"
                )
        if len(set(dep_list)) != len(dep_list):
            raise WorkflowError(f"step {name!r}: deps lists a dependency twice: {list(dep_list)!r}")
        if on_dependency_failure not in ("cancel", "run"):
            raise WorkflowError(
                f"step {name!r}: on_dependency_failure must be 'cancel' or 'run', "
                f"got {on_dependency_failure!r}"
            )
        if wait_for_signal is not None and (
            not isinstance(wait_for_signal, str) or not 1 <= len(wait_for_signal) <= _MAX_SIGNAL_NAME
        ):
            raise WorkflowError(
                f"step {name!r}: wait_for_signal must be a signal name of 1 to 255 characters, "
                f"got {wait_for_signal!r}"
            )
        if signal_timeout is not None:
            if wait_for_signal is None:
                raise WorkflowError(f"step {name!r}: signal_timeout needs wait_for_signal")
            if (
                isinstance(signal_timeout, bool)
                or not isinstance(signal_timeout, int | float)
                or not (0 < signal_timeout < 10 * 365 * 86400)
            ):
                raise WorkflowError(
                    f"step {name!r}: signal_timeout must be a positive number of seconds, "
                    f"got {signal_timeout!r}"
                )
        if not_before is not None and (not isinstance(not_before, datetime) or not_before.tzinfo is None):
            raise WorkflowError(f"step {name!r}: not_before must be an aware datetime, got {not_before!r}")
        step = Step(
            name, job, dep_list, on_dependency_failure, wait_for_signal,
            float(signal_timeout) if signal_timeout is not None else None, not_before,
        )  # fmt: skip
        if step.waits and (job.scheduled_at is not None or job.schedule_in is not None):
            raise WorkflowError(
                f"step {name!r} waits (deps, a signal or not_before) and also sets scheduled_at/"
                "schedule_in on its job; give the time as not_before instead"
            )
        if job.unique is not None:
            raise WorkflowError(f"step {name!r}: a workflow step can't be a unique job")
        self._steps[name] = step
        return name


@dataclass(frozen=True, slots=True)
class _Plan:
    """A validated workflow: the jobs to write, in step order, and what the link needs."""

    workflow: Workflow
    jobs: list[NewJob]
    existing: list[int]
    signals: list[str]

    def link_params(self, saved: Mapping[str, Job]) -> dict[str, Any]:
        job_ids: list[int] = []
        dep_ids: list[int] = []
        waits: list[dict[str, Any]] = []
        for step in self.workflow.steps:
            if not step.waits:
                continue
            job_id = saved[step.name].id
            for dep in step.deps:
                job_ids.append(job_id)
                dep_ids.append(saved[dep].id if isinstance(dep, str) else dep)
            waits.append(
                {
                    "job_id": job_id,
                    "on_failure": step.on_dependency_failure,
                    "signal": step.signal,
                    "timeout": step.signal_timeout,
                    "not_before": step.not_before.isoformat() if step.not_before else None,
                }
            )
        return {"job_ids": job_ids, "dep_ids": dep_ids, "waits": json.dumps(waits)}

    def waiting_ids(self, saved: Mapping[str, Job]) -> list[int]:
        return [saved[step.name].id for step in self.workflow.steps if step.waits]

    def given(self, jobs: Sequence[NewJob]) -> _Plan:
        """This plan with the jobs the insert middleware passed on: one per step, in step order.
        A middleware may change a job (its meta, say) but can't un-park a step that waits."""
        steps = self.workflow.steps
        if len(jobs) != len(steps) or not all(isinstance(job, NewJob) for job in jobs):
            raise WorkflowError(
                f"an insert middleware must pass on one job per step of workflow {self.workflow.id!r} "
                f"({len(steps)}), in order; got {len(jobs)}"
            )
        parked = [
            job._replace(scheduled_at=PARKED, schedule_in=None) if step.waits else job
            for step, job in zip(steps, jobs, strict=True)
        ]
        return _Plan(self.workflow, parked, self.existing, self.signals)

    def by_name(self, jobs: Sequence[Job]) -> dict[str, Job]:
        return {step.name: job for step, job in zip(self.workflow.steps, jobs, strict=True)}


def _plan(workflow: Workflow) -> _Plan:
    if not isinstance(workflow, Workflow):
        raise TypeError(f"insert_workflow takes a Workflow, got {type(workflow).__name__}")
    steps = workflow.steps
    if not steps:
        raise WorkflowError(f"workflow {workflow.id!r} has no steps")
    names = {step.name for step in steps}
    existing: set[int] = set()
    for step in steps:
        for dep in step.deps:
            if isinstance(dep, int):
                existing.add(dep)
            elif dep not in names:
                raise MissingDependencyError(
                    f"step {step.name!r} depends on {dep!r}, which is not a step of workflow {workflow.id!r}"
                )
            elif dep == step.name:
                raise DependencyCycleError(f"step {step.name!r} depends on itself")
    _check_acyclic(steps)
    jobs = [_with_workflow(workflow.id, step) for step in steps]
    signals = sorted({step.signal for step in steps if step.signal is not None})
    return _Plan(workflow, jobs, sorted(existing), signals)


def _check_acyclic(steps: Sequence[Step]) -> None:
    """Refuse a cycle among the steps, naming it (steps of one insert are the only new edges,
    and jobs already in the database can't depend on them, so a cycle can only be here)."""
    graph = {step.name: [d for d in step.deps if isinstance(d, str)] for step in steps}
    done: set[str] = set()
    for start in graph:
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                path.append(node)
                on_path.add(node)
            deps = graph[node]
            if index < len(deps):
                stack.append((node, index + 1))
                nxt = deps[index]
                if nxt in on_path:
                    cycle = [*path[path.index(nxt) :], nxt]
                    raise DependencyCycleError("the steps' dependencies form a cycle: " + " -> ".join(cycle))
                if nxt not in done:
                    stack.append((nxt, 0))
            else:
                path.pop()
                on_path.discard(node)
                done.add(node)


def _with_workflow(workflow_id: str, step: Step) -> NewJob:
    meta = {**step.job.meta, "workflow": {"id": workflow_id, "step": step.name}}
    job = step.job._replace(meta=meta, meta_json=json.dumps(meta, separators=(",", ":")))
    if step.waits:
        job = job._replace(scheduled_at=PARKED, schedule_in=None)
    return job


def _missing(plan: _Plan, rows: Sequence[Sequence[Any]]) -> None:
    found = {int(row[0]) for row in rows}
    missing = [job_id for job_id in plan.existing if job_id not in found]
    if missing:
        raise MissingDependencyError(
            f"workflow {plan.workflow.id!r} depends on job ids that don't exist: {missing!r}"
        )


def _refreshed(jobs: list[Job], rows: Sequence[Sequence[Any]]) -> list[Job]:
    by_id = {int(row[0]): row for row in rows}
    refreshed: list[Job] = []
    for job in jobs:
        row = by_id.get(job.id)
        refreshed.append(
            job
            if row is None
            else job._replace(state=row[1], scheduled_at=row[2], cancelled_at=row[3], errors=row[4])
        )
    return refreshed


def insert_workflow(
    target: Any, workflow: Workflow, *, schema: str = "public", notify: bool = True
) -> dict[str, Job]:
    """Insert every step of ``workflow`` in the transaction of ``target``; returns the saved jobs
    by step name (a step that waits comes back ``scheduled`` at :data:`PARKED`).

    ``target`` is anything :func:`pgqueue.insert_all` takes. Existing jobs the workflow depends on
    are locked until the transaction ends (so none finishes unseen meanwhile): keep it short.
    The steps' jobs go through the insert middleware (and tracing) as one ``insert_all`` would,
    and under ``pgqueue.testing.inline()`` they run at once in dependency order (see
    :mod:`pgqueue.workflow_inline`).
    """
    plan = _plan(workflow)

    def insert(jobs: Sequence[NewJob]) -> list[Job]:
        given = plan.given(jobs)
        runner = inline_runner.get()
        if runner is not None:
            return run_inline(plan.workflow.steps, given.jobs, runner)
        with sync_writer(target) as writer:
            return _write(writer, given, schema, notify)

    saved = middleware.run_insert(plan.jobs, insert) if middleware.installed() else insert(plan.jobs)
    return plan.by_name(saved)


def _write(writer: SyncWriter, plan: _Plan, schema: str, notify: bool) -> list[Job]:
    queries = queries_for(schema)
    if plan.existing:
        _missing(plan, writer.execute(queries.workflow_lock_deps, {"ids": plan.existing}))
    if plan.signals:
        writer.execute(queries.workflow_lock_signals, {"names": plan.signals})
    jobs = write_jobs(writer, plan.jobs, schema, notify)
    saved = plan.by_name(jobs)
    waiting = plan.waiting_ids(saved)
    if not waiting:
        return jobs
    writer.execute(queries.workflow_link, plan.link_params(saved))
    writer.execute(queries.workflow_release, {"ids": waiting})
    return _refreshed(jobs, writer.execute(queries.workflow_states, {"ids": waiting}))


async def ainsert_workflow(
    target: Any, workflow: Workflow, *, schema: str = "public", notify: bool = True
) -> dict[str, Job]:
    """The async twin of :func:`insert_workflow` (anything :func:`pgqueue.ainsert_all` takes)."""
    plan = _plan(workflow)

    async def insert(jobs: Sequence[NewJob]) -> list[Job]:
        given = plan.given(jobs)
        runner = ainline_runner.get()
        if runner is not None:
            return await arun_inline(plan.workflow.steps, given.jobs, runner)
        async with async_writer(target) as writer:
            return await _awrite(writer, given, schema, notify)

    if middleware.installed():
        return plan.by_name(await middleware.run_ainsert(plan.jobs, insert))
    return plan.by_name(await insert(plan.jobs))


async def _awrite(writer: AsyncWriter, plan: _Plan, schema: str, notify: bool) -> list[Job]:
    queries = queries_for(schema)
    if plan.existing:
        _missing(plan, await writer.execute(queries.workflow_lock_deps, {"ids": plan.existing}))
    if plan.signals:
        await writer.execute(queries.workflow_lock_signals, {"names": plan.signals})
    jobs = await awrite_jobs(writer, plan.jobs, schema, notify)
    saved = plan.by_name(jobs)
    waiting = plan.waiting_ids(saved)
    if not waiting:
        return jobs
    await writer.execute(queries.workflow_link, plan.link_params(saved))
    await writer.execute(queries.workflow_release, {"ids": waiting})
    return _refreshed(jobs, await writer.execute(queries.workflow_states, {"ids": waiting}))
