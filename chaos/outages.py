"""Database outages: PostgreSQL restarted twice under a running drain, and every backend of the
workers terminated in a loop.

Two ``python -m pgqueue start`` nodes run while a feeder inserts jobs at a steady rate, so there is
always work in flight when the database goes away. No node is killed, so no job may run twice and
none may be lost; both nodes must stay up and stop cleanly. The notifier must come back: afterwards
each node again holds a ``LISTEN`` connection, and the pickup latency of single jobs on an idle
queue (measured before and after, from the jobs' own ``inserted_at``/``attempted_at``) is back
to what it was.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from .context import Context
from .database import Probe, Server, insert_jobs, private_server, with_application_name
from .load import Feeder
from .processes import Fleet, Process, clean_exits, fleet, wait_until
from .report import ScenarioResult
from .workers import Busy

__all__ = ["backend_terminations", "pickup_latencies", "postgres_restarts"]

NODES = 2
#: far longer than any outage here, so a live node's jobs must never be handed to the lifeline
RESCUE_WINDOW = 10.0
PROBE_QUEUE = "probe"
APPLICATION_PREFIX = "chaos-outage-"


def pickup_latencies(dsn: str, schema: str, probe: Probe, count: int, rng: Any) -> list[float]:
    """Insert ``count`` single jobs on the idle probe queue, one at a time; seconds until each started."""
    latencies: list[float] = []
    for _ in range(count):
        (job_id,) = insert_jobs(dsn, schema, [Busy.new({}, queue=PROBE_QUEUE)])
        wait_until(
            functools.partial(_has_state, probe, job_id, "completed"),
            timeout=30,
            interval=0.02,
            message=f"probe job {job_id} was not picked up within 30 s",
        )
        seconds = probe.value(
            "SELECT extract(epoch FROM attempted_at - inserted_at)::float8 FROM {s}.jobs WHERE id = %s",
            (job_id,),
        )
        latencies.append(float(seconds))
        # A random phase, so a node that only polled (once a second) could not look prompt.
        time.sleep(rng.uniform(0.1, 0.4))
    return latencies


def _has_state(probe: Probe, job_id: int, state: str) -> bool:
    return bool(probe.value("SELECT state::text = %s FROM {s}.jobs WHERE id = %s", (state, job_id)))


def _listening_nodes(probe: Probe, names: list[str]) -> set[str]:
    rows = probe.rows(
        "SELECT DISTINCT application_name FROM pg_stat_activity"
        " WHERE application_name = ANY(%s) AND query ILIKE 'LISTEN%%'",
        ([APPLICATION_PREFIX + n for n in names],),
    )
    return {str(row[0])[len(APPLICATION_PREFIX) :] for row in rows}


@contextmanager
def _outage_server(ctx: Context, *, must_restart: bool) -> Iterator[Server]:
    if must_restart and not ctx.server.private:
        with private_server() as server:
            yield server
    else:
        with nullcontext(ctx.server) as server:
            yield server


@dataclass
class _Run:
    """The parts both outage scenarios share: nodes, a feeder, latency probes and the verdict."""

    ctx: Context
    name: str
    server: Server
    result: ScenarioResult
    rate: int = 150

    def __post_init__(self) -> None:
        self.schema = self.server.new_schema(self.name.replace("-", "_")[:12])
        self.probe = Probe(self.server.dsn, self.schema)
        self.feeder = Feeder(self.server.dsn, self.schema, self.rate)
        self.nodes: list[Process] = []
        self.rng = self.ctx.rng(self.name)

    def start_nodes(self, processes: Fleet) -> None:
        for index in range(1, NODES + 1):
            node = f"{self.name}-{index}"
            dsn = with_application_name(self.server.dsn, APPLICATION_PREFIX + node)
            self.nodes.append(
                processes.pgqueue(
                    node, dsn, self.schema, queues=f"default:10,{PROBE_QUEUE}:1", rescue_window=RESCUE_WINDOW
                )
            )
        names = [n.name for n in self.nodes]
        wait_until(
            lambda: (
                self.probe.value("SELECT count(*) FROM {s}.pgqueue_producers") >= 2 * NODES
                and _listening_nodes(self.probe, names) == set(names)
            ),
            timeout=60,
            message="the nodes did not start listening within 60 s",
        )

    def latencies(self) -> list[float]:
        return pickup_latencies(
            self.server.dsn, self.schema, self.probe, 8 if self.ctx.short else 20, self.rng
        )

    def wait_listening(self, since: float, timeout: float = 60.0) -> float:
        """Seconds from ``since`` until every node holds a LISTEN connection again."""
        names = [n.name for n in self.nodes]
        wait_until(
            lambda: _listening_nodes(self.probe, names) == set(names),
            timeout=timeout,
            interval=0.1,
            message="a node's notifier did not reconnect",
        )
        return time.monotonic() - since

    def judge(self, before: list[float], after: list[float]) -> None:
        result, probe = self.result, self.probe
        rows = probe.rows(
            "SELECT (args ->> 'seq')::int, state::text FROM {s}.jobs WHERE queue = 'default'", timeout=60
        )
        state_of = {int(seq): state for seq, state in rows}
        committed = set(self.feeder.committed)
        present_uncertain = [s for s in self.feeder.uncertain if s in state_of]
        result.jobs = len(committed) + len(present_uncertain)
        result.lost = sum(1 for s in committed if state_of.get(s) != "completed")
        result.lost += sum(1 for s in present_uncertain if state_of[s] != "completed")
        executions = probe.executions_by_job()
        result.duplicates = sum(len(runs) - 1 for runs in executions.values() if len(runs) > 1)
        # No process was killed: nothing justifies running a job twice.
        result.unjustified = result.duplicates
        result.check(
            "every job the feeder committed ended completed", result.lost == 0, f"{result.jobs:,} jobs"
        )
        result.check(
            "no job ran twice (no process died)", result.duplicates == 0, f"{result.duplicates} duplicates"
        )
        result.check(
            "the nodes stayed up through the outages",
            all(n.alive() for n in self.nodes),
            ", ".join(
                f"{n.name}: {'up' if n.alive() else f'exited {n.popen.returncode}'}" for n in self.nodes
            ),
        )
        p50_before, p50_after = statistics.median(before), statistics.median(after)
        # A node whose notifier never came back would find jobs only by its 1 s poll: a median near 0.5 s.
        bound = max(0.25, 3 * p50_before)
        result.check(
            "pickup latency is back to normal afterwards (the notifier came back)",
            p50_after <= bound,
            f"median {p50_before * 1000:.0f} ms before, {p50_after * 1000:.0f} ms after "
            f"(allowed {bound * 1000:.0f} ms)",
        )
        result.figures.update(
            {
                "pickup p50 before (ms)": round(p50_before * 1000, 1),
                "pickup max before (ms)": round(max(before) * 1000, 1),
                "pickup p50 after (ms)": round(p50_after * 1000, 1),
                "pickup max after (ms)": round(max(after) * 1000, 1),
                "feeder batches that failed": self.feeder.failures,
                "jobs of uncertain batches that exist": len(present_uncertain),
            }
        )


def _drain(run: _Run, timeout: float) -> bool:
    """Wait until no job is left unfinished; False if ``timeout`` passed first."""

    def done() -> bool:
        rows = run.probe.rows(
            "SELECT count(*) FROM {s}.jobs WHERE state NOT IN ('completed', 'discarded', 'cancelled')"
        )
        return int(rows[0][0]) == 0

    try:
        wait_until(done, timeout=timeout, interval=0.2)
    except AssertionError:
        return False
    return True


def _scenario(
    ctx: Context,
    name: str,
    title: str,
    recovery_meaning: str,
    outage: Callable[[_Run], float],
    *,
    must_restart: bool,
) -> ScenarioResult:
    result = ScenarioResult(name, title, recovery_meaning=recovery_meaning)
    with _outage_server(ctx, must_restart=must_restart) as server:
        run = _Run(ctx, name, server, result)
        try:
            with fleet(ctx.logs_for(name)) as processes:
                run.start_nodes(processes)
                before = run.latencies()
                run.feeder.start()
                try:
                    result.recovery = round(outage(run), 1)
                finally:
                    run.feeder.stop()
                drained = _drain(run, timeout=120)
                result.check("the queue drained after the outages", drained, str(run.probe.states()))
                after = run.latencies()
                run.judge(before, after)
                result.checks += clean_exits(run.nodes)
        finally:
            run.probe.close()
    return result


def postgres_restarts(ctx: Context) -> ScenarioResult:
    spacing = ctx.pick(4.0, 15.0)

    def outage(run: _Run) -> float:
        recoveries: list[float] = []
        for number in (1, 2):
            time.sleep(spacing)
            before = run.probe.executions()
            run.ctx.say(run.name, f"restarting PostgreSQL ({number} of 2) with {before:,} executions so far")
            started = time.monotonic()
            run.server.restart()
            # Recovered once the nodes are listening again and work flows: 50 more executions.
            wait_until(functools.partial(run.probe.has_executed, run.probe.executions() + 50), timeout=120)
            listening = run.wait_listening(started)
            recoveries.append(max(time.monotonic() - started, listening))
        run.result.figures["recovery per restart (s)"] = ", ".join(f"{r:.1f}" for r in recoveries)
        time.sleep(spacing)
        return max(recoveries)

    return _scenario(
        ctx,
        "pg-restarts",
        "Two `python -m pgqueue start` nodes drain a steady stream of jobs on a private PostgreSQL "
        "that is restarted twice (`pg_ctl restart -m fast`) under them.",
        "the longest time from a restart until both nodes listened again and work flowed",
        outage,
        must_restart=True,
    )


def backend_terminations(ctx: Context) -> ScenarioResult:
    duration = ctx.pick(8.0, 30.0)

    def outage(run: _Run) -> float:
        time.sleep(2)
        terminated = rounds = 0
        ends = time.monotonic() + duration
        last = time.monotonic()
        while time.monotonic() < ends:
            rows = run.probe.rows(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (f"{APPLICATION_PREFIX}{run.name}-%",),
            )
            terminated += sum(1 for (ok,) in rows if ok)
            rounds += 1
            last = time.monotonic()
            time.sleep(run.rng.uniform(0.3, 1.0))
        run.result.figures["termination rounds"] = rounds
        run.result.figures["backends terminated"] = terminated
        run.result.check(
            "the loop terminated the workers' backends",
            terminated >= rounds,
            f"{terminated} in {rounds} rounds",
        )
        return run.wait_listening(last)

    return _scenario(
        ctx,
        "backend-terminations",
        f"Two `python -m pgqueue start` nodes drain a steady stream of jobs while every backend they "
        f"hold (pool, listener, workers' own connections) is terminated in a loop for {duration:.0f} s.",
        "time from the last termination until both nodes listened again",
        outage,
        must_restart=False,
    )
