"""Long jobs: never rescued while their node lives; rescued once it freezes, and the frozen node's
late answer refused by the fence.

Four ``python -m pgqueue start`` nodes: a leader (runs the lifeline, no work of its own), a healthy
node running a job that lasts many rescue windows, a victim node whose job is frozen with
``SIGSTOP``, and a rescuer started once the victim froze. The victim's job answers ``Cancel`` on
its first (un-rescued) attempt; after ``SIGCONT`` that answer arrives while the rescuer still runs
attempt 2. The victim is then stopped with SIGTERM, which flushes every ack it holds, so by the
time it has exited its stale answer has certainly reached the database, and must have been refused:
the job is still executing attempt 2, and ends ``completed`` with attempt 2 by the rescuer, no error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pgqueue.plugins.lifeline import Lifeline

from .context import Context
from .database import Probe, insert_jobs
from .processes import Process, clean_exits, fleet, wait_until
from .report import ScenarioResult
from .workers import Long

__all__ = ["long_jobs"]

HEARTBEAT_INTERVAL = 0.5
#: how often the leader's lifeline looks for orphans (the CLI keeps the plugin's default)
LIFELINE_INTERVAL = Lifeline().interval


@dataclass(frozen=True)
class _Row:
    state: str
    attempt: int
    node: str
    meta: dict[str, Any]
    errors: list[Any]
    cancelled: bool


def _job(probe: Probe, job_id: int) -> _Row:
    (row,) = probe.rows(
        "SELECT state::text, attempt, attempted_by[1], meta, errors, cancelled_at IS NOT NULL"
        " FROM {s}.jobs WHERE id = %s",
        (job_id,),
    )
    state, attempt, node, meta, errors, cancelled = row
    return _Row(str(state), int(attempt), str(node), meta, errors, bool(cancelled))


def long_jobs(ctx: Context) -> ScenarioResult:
    name = "long-jobs"
    window = ctx.pick(3.0, 5.0)
    healthy_seconds = ctx.pick(15.0, 60.0)
    result = ScenarioResult(
        name,
        f"A job running {healthy_seconds:.0f} s ({healthy_seconds / window:.0f} rescue windows of "
        f"{window:.0f} s) on a healthy node, and one on a node frozen with SIGSTOP, then thawed.",
        jobs=2,
        recovery_meaning="time from SIGSTOP until the frozen node's job ran again on the rescuer",
    )
    schema = ctx.server.new_schema("long")
    with Probe(ctx.server.dsn, schema) as probe, fleet(ctx.logs_for(name)) as processes:

        def node(label: str, queues: str, log_level: str = "warning") -> Process:
            return processes.pgqueue(
                f"{name}-{label}",
                ctx.server.dsn,
                schema,
                queues=queues,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                rescue_window=window,
                log_level=log_level,
            )

        leader = node("leader", "idle:1")
        wait_until(lambda: probe.leader() == leader.name, timeout=60, message="the first node never led")
        healthy = node("healthy", "healthy:1")
        victim = node("victim", "frozen:1")
        (healthy_job,) = insert_jobs(
            ctx.server.dsn, schema, [Long.new({"seconds": healthy_seconds}, queue="healthy")]
        )
        (frozen_job,) = insert_jobs(
            ctx.server.dsn,
            schema,
            [Long.new({"seconds": 4, "rescued_seconds": 10, "stale_answer": True}, queue="frozen")],
        )
        wait_until(
            lambda: (
                _job(probe, frozen_job).state == "executing" and _job(probe, healthy_job).state == "executing"
            ),
            timeout=60,
            message="the long jobs never started",
        )
        time.sleep(0.5)

        # Freeze the victim mid-job; its heartbeats stop, its sockets stay open.
        victim.freeze()
        frozen_at = time.monotonic()
        ctx.say(name, f"froze {victim.name} (pid {victim.pid}) while it ran job {frozen_job}")
        rescuer = node("rescuer", "frozen:1")

        healthy_samples: list[tuple[str, int]] = []

        def rescued() -> bool:
            job = _job(probe, healthy_job)
            healthy_samples.append((job.state, job.attempt))
            now = _job(probe, frozen_job)
            return now.state == "executing" and now.attempt == 2 and now.node == rescuer.name

        wait_until(
            rescued, timeout=window + 60, interval=0.1, message="the frozen node's job was never rescued"
        )
        result.recovery = round(time.monotonic() - frozen_at, 1)
        ctx.say(name, f"rescued after {result.recovery:.1f}s; thawing {victim.name}")

        # Thaw it while the rescuer still runs attempt 2: its late Cancel must bounce off the fence.
        victim.thaw()
        wait_until(
            lambda: probe.value(
                "SELECT count(*) FROM {s}.executions WHERE job_id = %s AND attempt = 1", (frozen_job,)
            ),
            timeout=60,
            message="the thawed node never finished its stale attempt",
        )
        # A graceful stop writes every ack the node still holds before it exits.
        victim_exit = victim.stop(30)
        during = _job(probe, frozen_job)
        wait_until(
            lambda: (
                _job(probe, frozen_job).state == "completed" and _job(probe, healthy_job).state == "completed"
            ),
            timeout=healthy_seconds + 120,
            interval=0.2,
            message="the long jobs never completed",
        )
        healthy_samples.append((_job(probe, healthy_job).state, _job(probe, healthy_job).attempt))
        final = _job(probe, frozen_job)
        healthy_final = _job(probe, healthy_job)
        executions = probe.executions_by_job()
        exits = clean_exits([leader, healthy, victim, rescuer])

    healthy_runs = executions.get(healthy_job, [])
    frozen_runs = executions.get(frozen_job, [])
    result.lost = sum(1 for job in (healthy_final, final) if job.state != "completed")
    result.duplicates = max(0, len(frozen_runs) - 1) + max(0, len(healthy_runs) - 1)
    # The frozen job's second run is what a frozen node makes unavoidable; the healthy one's never is.
    result.unjustified = max(0, len(healthy_runs) - 1) + max(0, len(frozen_runs) - 2)
    result.check(
        f"the healthy node's {healthy_seconds:.0f} s job ran once and was never rescued",
        healthy_runs == [(1, healthy.name, healthy.pid)]
        and healthy_final.attempt == 1
        and "rescued" not in healthy_final.meta
        and all(attempt == 1 for _state, attempt in healthy_samples),
        f"executions {healthy_runs}, meta {healthy_final.meta}",
    )
    result.check(
        "the frozen node's job was not rescued before the rescue window had passed",
        result.recovery >= window - HEARTBEAT_INTERVAL,
        f"rescued {result.recovery:.1f} s after SIGSTOP, window {window:.0f} s",
    )
    result.check(
        "the thawed node's late answer was refused while the rescuer ran attempt 2",
        during.state == "executing" and during.attempt == 2 and not during.cancelled,
        f"once the thawed node had exited: {during.state}, attempt {during.attempt}",
    )
    result.check(
        "the thawed node then stopped cleanly, its acks flushed",
        victim_exit == 0,
        f"exit status {victim_exit}",
    )
    result.check(
        "the job's final state and attempt come from the rescuer",
        final.state == "completed"
        and final.attempt == 2
        and final.node == rescuer.name
        and final.meta.get("rescued") == 1
        and final.errors == []
        and not final.cancelled,
        f"{final.state}, attempt {final.attempt} by {final.node}, meta {final.meta}, errors {final.errors}",
    )
    result.check(
        "both of the frozen job's executions are on record: the stale one and the rescuer's",
        frozen_runs == [(1, victim.name, victim.pid), (2, rescuer.name, rescuer.pid)],
        str(frozen_runs),
    )
    result.checks += exits
    result.figures["rescue window (s)"] = window
    result.figures["healthy job's run (s)"] = healthy_seconds
    result.figures["lifeline rounds during the healthy job (about)"] = int(
        healthy_seconds // LIFELINE_INTERVAL
    )
    return result
