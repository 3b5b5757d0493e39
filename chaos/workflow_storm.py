"""Workflow storm: three ``python -m pgqueue start`` nodes run fan-out/fan-in workflows and
batches with callbacks while one is ``kill -9``-ed every few seconds and replaced.

Each workflow is a root, parts that depend on it, a join that depends on every part and a final
step after the join; each batch has a callback for ``completed`` and one for ``finished``. Every
step checks, as it starts, that the jobs it depends on have completed, and every callback that its
batch got where its event says; what one finds unfinished goes to ``early_runs``. Readiness is
decided by the ack statements in PostgreSQL, so a node killed mid-step either committed its ack
(and released the dependents) or did not (and the step is rescued, runs again, and releases them
then): never early, never twice, never not at all. The verdict holds the run to exactly that, with
the crash storm's rule for repeats: a step may run again only after a killed process held it.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

import pgqueue

from .context import Context
from .database import Probe
from .processes import Fleet, Process, clean_exits, fleet
from .recording import EARLY_RUNS_DDL
from .report import ScenarioResult
from .storm import HEARTBEAT_INTERVAL, KILL_RECOVERY, RESCUE_WINDOW, KillController, judge_duplicates
from .workers import BatchCallback, Busy, FlowStep

__all__ = ["workflow_storm"]

NODES = 3
#: fan-out width: the root, these parts, the join and the final step make a workflow
PARTS = 4
STEPS_PER_WORKFLOW = PARTS + 3
CALLBACKS_PER_BATCH = 2  # on_completed and on_finished; no member fails, so none for discarded


def _insert_workflows(ctx: Context, dsn: str, schema: str, count: int, step_ms: tuple[int, int]) -> list[int]:
    rng = ctx.rng("workflow-storm")
    ids: list[int] = []
    with psycopg.connect(dsn) as conn:
        for number in range(count):
            flow = pgqueue.Workflow(f"storm-{number}")

            def step(name: str, deps: list[str], flow: pgqueue.Workflow = flow) -> str:
                return flow.add(name, FlowStep.new({"ms": rng.randint(*step_ms)}), deps=deps)

            root = step("root", [])
            parts = [step(f"part-{i}", [root]) for i in range(PARTS)]
            step("final", [step("join", parts)])
            ids += [job.id for job in pgqueue.insert_workflow(conn, flow, schema=schema).values()]
            conn.commit()
    return ids


def _insert_batches(
    dsn: str, schema: str, count: int, members: int, member_ms: int
) -> tuple[list[int], list[int]]:
    """The batches' ids and their members' ids."""
    batch_ids: list[int] = []
    member_ids: list[int] = []
    with psycopg.connect(dsn) as conn:
        for number in range(count):
            batch = pgqueue.insert_batch(
                conn,
                [Busy.new({"ms": member_ms}, queue="batch") for _ in range(members)],
                on_completed=BatchCallback.new({"batch": number}, queue="batch"),
                on_finished=BatchCallback.new({"batch": number}, queue="batch"),
                schema=schema,
            )
            conn.commit()
            batch_ids.append(batch.id)
            member_ids += [job.id for job in batch.jobs]
    return batch_ids, member_ids


def _callbacks(probe: Probe) -> dict[tuple[int, str], list[int]]:
    """(batch id, event) → the ids of the callback jobs inserted for it."""
    found: dict[tuple[int, str], list[int]] = {}
    for job_id, batch_id, event in probe.rows(
        "SELECT id, (meta -> 'batch' ->> 'id')::bigint, meta -> 'batch' ->> 'event'"
        " FROM {s}.jobs WHERE meta ? 'batch' ORDER BY id"
    ):
        found.setdefault((int(batch_id), str(event)), []).append(int(job_id))
    return found


def workflow_storm(ctx: Context) -> ScenarioResult:
    name = "workflow-storm"
    workflows = int(ctx.pick(48, 200))
    batches, members = int(ctx.pick(3, 10)), int(ctx.pick(60, 200))
    step_ms, member_ms = (60, 500), 150
    steps = workflows * STEPS_PER_WORKFLOW
    total = steps + batches * (members + CALLBACKS_PER_BATCH)
    result = ScenarioResult(
        name,
        f"{NODES} `python -m pgqueue start` nodes run {workflows} fan-out/fan-in workflows (root, "
        f"{PARTS} parts, join, final: {steps} steps of {step_ms[0]}-{step_ms[1]} ms) and {batches} "
        f"batches of {members} jobs with completed/finished callbacks; every few seconds one node is "
        "killed with SIGKILL and a replacement started.",
        jobs=total,
        recovery_meaning=KILL_RECOVERY,
    )
    schema = ctx.server.new_schema("flows")
    with psycopg.connect(ctx.server.dsn, autocommit=True) as conn:
        conn.execute(EARLY_RUNS_DDL.format(sql.Identifier(schema)))
    step_ids = _insert_workflows(ctx, ctx.server.dsn, schema, workflows, step_ms)
    batch_ids, member_ids = _insert_batches(ctx.server.dsn, schema, batches, members, member_ms)
    ctx.say(name, f"{workflows} workflows and {batches} batches inserted in schema {schema}")
    with Probe(ctx.server.dsn, schema) as probe, fleet(ctx.logs_for(name)) as processes:
        controller = _controller(ctx, name, probe, processes, schema)
        finished = controller.storm(
            lambda: probe.count("completed") >= total,
            warm_up=20,
            timeout=ctx.pick(180, 600),
            progress=lambda: f"{probe.count('completed'):,}/{total:,} completed",
        )
        states = probe.states()
        executions = probe.executions_by_job()
        early = probe.rows("SELECT job_id, attempt, waited_for, seen FROM {s}.early_runs ORDER BY at")
        callbacks = _callbacks(probe)
        completed = {int(row[0]) for row in probe.rows("SELECT id FROM {s}.jobs WHERE state = 'completed'")}
        rescued = _rescued(probe)
        waits = probe.rows(
            "SELECT count(*), count(*) FILTER (WHERE pending = 0 AND failed_deps = 0)"
            " FROM {s}.pgqueue_workflow_waits"
        )[0]
        unresolved = probe.value(
            "SELECT count(*) FROM {s}.pgqueue_workflow_deps AS d WHERE NOT EXISTS"
            " (SELECT 1 FROM {s}.pgqueue_workflow_resolved AS r WHERE r.dep_id = d.dep_id)"
        )
        progress = probe.rows(
            "SELECT id, total, completed, discarded, cancelled, finished_at IS NOT NULL"
            " FROM {s}.pgqueue_batches ORDER BY id"
        )
        exits = clean_exits(controller.nodes, ready=controller.ready)

    step_set = set(step_ids)
    callback_ids = {job_id for ids in callbacks.values() for job_id in ids}
    member_set = set(member_ids)
    every_job = step_set | member_set | callback_ids
    result.lost = sum(1 for job_id in every_job if job_id not in executions or job_id not in completed)
    result.duplicates, result.unjustified, examples = judge_duplicates(executions, controller.kills)
    result.recovery = controller.recovery
    beyond_rescues = {
        job_id: len(runs) for job_id, runs in executions.items() if len(runs) > 1 + rescued.get(job_id, 0)
    }
    steps_in_flight = sum(1 for k in controller.kills for job_id in k.in_flight if job_id in step_set)
    members_in_flight = sum(1 for k in controller.kills for job_id in k.in_flight if job_id in member_set)
    expected_callbacks = {(batch_id, event) for batch_id in batch_ids for event in ("completed", "finished")}
    result.check("every job finished within the deadline", finished, str(states))
    result.check(
        "every step, member and callback ended completed", states == {"completed": total}, str(states)
    )
    result.check(
        "no step started before every job it depends on had completed",
        not [row for row in early if row[0] in step_set],
        "; ".join(f"job {r[0]} attempt {r[1]} saw {r[2]} {r[3]}" for r in early[:5] if r[0] in step_set)
        or f"{len(step_set)} steps checked their dependencies as they started",
    )
    result.check(
        "every step ran to completion (none never ran)",
        all(job_id in executions for job_id in step_set),
        f"{sum(1 for job_id in step_set if job_id in executions)} of {len(step_set)} steps on record",
    )
    result.check(
        "no job ran more often than its rescues explain",
        not beyond_rescues,
        f"job id: runs {dict(list(beyond_rescues.items())[:5])}"
        if beyond_rescues
        else f"{sum(rescued.values())} rescues, {result.duplicates} repeated runs",
    )
    result.check(
        "every repeated run repeats one made by a killed process that held the job",
        result.unjustified == 0,
        "; ".join(examples) or f"{result.duplicates} repeats, all of jobs in a victim's snapshot",
    )
    result.check(
        "every dependency was counted exactly once, nothing left waiting",
        waits == (steps - workflows, steps - workflows) and unresolved == 0,
        f"waits (all, released) {waits}, of {steps - workflows}; unresolved dependencies {unresolved}",
    )
    result.check(
        "each batch fired its completed and finished callbacks exactly once, discarded never",
        set(callbacks) == expected_callbacks and all(len(ids) == 1 for ids in callbacks.values()),
        str({f"{b} {e}": len(ids) for (b, e), ids in sorted(callbacks.items())}),
    )
    result.check(
        "no callback ran before its batch got where its event says",
        not [row for row in early if row[0] in callback_ids],
        "; ".join(f"job {r[0]} saw {r[2]}: {r[3]}" for r in early[:5] if r[0] in callback_ids)
        or f"{len(callback_ids)} callbacks checked their batch as they started",
    )
    result.check(
        "every batch's counts equal its members' outcomes",
        [tuple(row[1:]) for row in progress] == [(members, members, 0, 0, True)] * batches,
        str(progress),
    )
    result.check(
        "the storm killed a node while it ran workflow steps",
        steps_in_flight > 0,
        f"{len(controller.kills)} kills; in flight: {steps_in_flight} steps, {members_in_flight} members",
    )
    result.figures.update(controller.figures())
    result.figures["workflow steps in flight at kills"] = steps_in_flight
    result.figures["batch members in flight at kills"] = members_in_flight
    result.figures["rescued jobs"] = len(rescued)
    result.checks += exits
    return result


def _rescued(probe: Probe) -> dict[int, int]:
    """job id → how many times the lifeline rescued it (``meta.rescued``)."""
    rows: list[Any] = probe.rows("SELECT id, (meta ->> 'rescued')::int FROM {s}.jobs WHERE meta ? 'rescued'")
    return {int(job_id): int(count) for job_id, count in rows}


def _controller(ctx: Context, name: str, probe: Probe, processes: Fleet, schema: str) -> KillController:
    def start_node(node: str) -> Process:
        return processes.pgqueue(
            node,
            ctx.server.dsn,
            schema,
            queues="default:4,batch:2",
            heartbeat_interval=HEARTBEAT_INTERVAL,
            rescue_window=RESCUE_WINDOW,
        )

    return KillController(
        ctx, name, probe, start_node, every=ctx.pick(2.5, 3.0), max_kills=4 if ctx.short else None, size=NODES
    )
