"""Crash storm: three ``python -m pgqueue start`` nodes drain a queue while one is ``kill -9``-ed
every few seconds and replaced.

The controller snapshots the jobs each victim was executing the moment it died. Afterwards every
job must be completed (lost = 0), and a job may have run more than once only if every execution
before its last was made by a killed process while that job was in its snapshot. The recovery
time is the longest wait, over all kills, until none of the victim's jobs was still assigned to it
(rescue window + a lifeline round, longer when the victim was the leader and a new one had to be
elected first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .context import Context
from .database import Probe, insert_jobs
from .processes import Fleet, Process, clean_exits, fleet
from .report import ScenarioResult
from .workers import Busy

__all__ = ["KILL_RECOVERY", "Kill", "KillController", "crash_storm", "judge_duplicates"]

NODES = 3
HEARTBEAT_INTERVAL = 0.5
#: Long enough that a live node starved of CPU on a busy machine is not mistaken for a dead one.
RESCUE_WINDOW = 5.0
KILL_RECOVERY = "the longest time from a kill until none of the victim's jobs was still assigned to it"


@dataclass
class Kill:
    """One ``kill -9``: when, whom, and what it was running."""

    at: float
    node: str
    pid: int
    was_leader: bool
    #: job id → args of the jobs executing on the victim when it died
    in_flight: dict[int, Any]
    rescued_after: float | None = None


@dataclass
class KillController:
    """Keeps ``size`` nodes running and kills one every ``every`` seconds, at most ``max_kills``."""

    ctx: Context
    scenario: str
    probe: Probe
    start_node: Callable[[str], Process]
    every: float
    max_kills: int | None
    size: int = NODES
    nodes: list[Process] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    _started: int = 0

    def __post_init__(self) -> None:
        self.rng = self.ctx.rng(self.scenario)

    def start(self) -> None:
        while len([n for n in self.nodes if n.alive()]) < self.size:
            self._started += 1
            self.nodes.append(self.start_node(f"{self.scenario}-{self._started}"))

    def storm(
        self, done: Callable[[], bool], *, warm_up: int, timeout: float, progress: Callable[[], str]
    ) -> bool:
        """The whole storm: start the nodes, let ``warm_up`` executions begin (60 s at most), kill
        on schedule until ``done()`` (False if ``timeout`` passed first), then wait for the rescues
        of the last victim."""
        self.start()
        deadline = time.monotonic() + 60
        while self.probe.executions() < warm_up and time.monotonic() < deadline:
            time.sleep(0.1)
        finished = self.run(done, timeout, progress)
        self.wait_rescues(30)
        return finished

    def run(self, done: Callable[[], bool], timeout: float, progress: Callable[[], str]) -> bool:
        """Kill on schedule until ``done()``; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        next_kill = time.monotonic() + self.every
        next_report = time.monotonic() + 10
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= next_kill and (self.max_kills is None or len(self.kills) < self.max_kills):
                self.kill_one()
                next_kill = now + self.every
            if now >= next_report:
                self.ctx.say(self.scenario, f"{progress()}; {len(self.kills)} kills")
                next_report = now + 10
            self.track_rescues()
            time.sleep(0.2)
        return True

    def kill_one(self) -> Kill:
        victim = self.rng.choice([n for n in self.nodes if n.alive()])
        leader = self.probe.leader()
        at = time.monotonic()
        victim.kill()
        # Taken after the process is gone: whatever is still executing on it stays so until rescued.
        in_flight = self.probe.executing_on(victim.name)
        kill = Kill(at, victim.name, victim.pid, leader == victim.name, in_flight)
        self.kills.append(kill)
        self.start()
        return kill

    def ready(self, node: Process) -> bool:
        """Whether ``node`` has started its queue (its producer has registered)."""
        return self.probe.has_producer(node.name)

    def track_rescues(self) -> None:
        for kill in self.kills:
            if kill.rescued_after is None and not self.probe.executing_on(kill.node):
                kill.rescued_after = time.monotonic() - kill.at

    def wait_rescues(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(k.rescued_after is None for k in self.kills) and time.monotonic() < deadline:
            self.track_rescues()
            time.sleep(0.2)

    def _rescues(self) -> list[float]:
        # A victim that held no job had nothing to rescue: its "rescue" says nothing.
        return [k.rescued_after for k in self.kills if k.rescued_after is not None and k.in_flight]

    def figures(self) -> dict[str, Any]:
        rescues = sorted(self._rescues())
        return {
            "kills": len(self.kills),
            "kills of the leader": sum(k.was_leader for k in self.kills),
            "jobs in flight at kills": sum(len(k.in_flight) for k in self.kills),
            "slowest rescue after a kill (s)": round(rescues[-1], 1) if rescues else 0.0,
            "median rescue after a kill (s)": round(rescues[len(rescues) // 2], 1) if rescues else 0.0,
        }

    @property
    def recovery(self) -> float | None:
        rescues = self._rescues()
        return round(max(rescues), 1) if rescues else None


def judge_duplicates(
    executions: dict[int, list[tuple[int, str, int]]], kills: list[Kill]
) -> tuple[int, int, list[str]]:
    """(duplicate executions, unjustified ones, examples of the unjustified).

    A duplicate is any execution of a job beyond its first. It is justified when the execution it
    repeats was made by a process that was then killed while the job was in its snapshot.
    """
    in_flight_of = {kill.pid: set(kill.in_flight) for kill in kills}
    duplicates = unjustified = 0
    examples: list[str] = []
    for job_id, runs in executions.items():
        if len(runs) < 2:
            continue
        duplicates += len(runs) - 1
        for attempt, node, pid in runs[:-1]:
            if job_id not in in_flight_of.get(pid, set()):
                unjustified += 1
                if len(examples) < 5:
                    examples.append(
                        f"job {job_id}: attempt {attempt} on {node} (pid {pid}) ran again: {runs}"
                    )
    return duplicates, unjustified, examples


def crash_storm(ctx: Context) -> ScenarioResult:
    name = "crash-storm"
    total = 3_000 if ctx.short else 20_000
    # Jobs long enough that the full storm lasts a minute or more: twenty-odd kills, not a handful.
    work_ms = 25 if ctx.short else 100
    result = ScenarioResult(
        name,
        f"{NODES} `python -m pgqueue start` nodes drain {total:,} jobs of {work_ms} ms each; every few "
        "seconds one is killed with SIGKILL and a replacement started.",
        jobs=total,
        recovery_meaning=KILL_RECOVERY,
    )
    schema = ctx.server.new_schema("storm")
    ids = insert_jobs(ctx.server.dsn, schema, [Busy.new({"ms": work_ms}) for _ in range(total)])
    ctx.say(name, f"{total:,} jobs inserted in schema {schema}")
    with Probe(ctx.server.dsn, schema) as probe, fleet(ctx.logs_for(name)) as processes:
        controller = _controller(ctx, name, probe, processes, schema)
        drained = controller.storm(
            lambda: probe.count("completed") >= total,
            warm_up=50,
            timeout=ctx.pick(240, 900),
            progress=lambda: f"{probe.count('completed'):,}/{total:,} completed",
        )
        states = probe.states()
        executions = probe.executions_by_job()
        completed_ids = {row[0] for row in probe.rows("SELECT id FROM {s}.jobs WHERE state = 'completed'")}
        exits = clean_exits(controller.nodes, ready=controller.ready)

    result.lost = sum(1 for job_id in ids if job_id not in completed_ids or job_id not in executions)
    result.duplicates, result.unjustified, examples = judge_duplicates(executions, controller.kills)
    result.recovery = controller.recovery
    in_flight = sum(len(k.in_flight) for k in controller.kills)
    result.check("the queue drained within the deadline", drained, str(states))
    result.check("every job ended completed", states == {"completed": total}, str(states))
    result.check(
        "the storm killed at least one node while it held jobs",
        any(k.in_flight for k in controller.kills),
        f"{len(controller.kills)} kills, {in_flight} jobs in flight",
    )
    result.check(
        "every duplicate execution repeats one made by a killed process that held the job",
        result.unjustified == 0,
        "; ".join(examples) or f"{result.duplicates} duplicates, all of jobs in a victim's snapshot",
    )
    result.check(
        "duplicates are bounded by the jobs in flight at the kills",
        result.duplicates <= in_flight,
        f"{result.duplicates} <= {in_flight}",
    )
    result.figures.update(controller.figures())
    result.checks += exits
    return result


def _controller(ctx: Context, name: str, probe: Probe, processes: Fleet, schema: str) -> KillController:
    def start_node(node: str) -> Process:
        return processes.pgqueue(
            node,
            ctx.server.dsn,
            schema,
            queues="default:10",
            heartbeat_interval=HEARTBEAT_INTERVAL,
            rescue_window=RESCUE_WINDOW,
        )

    return KillController(
        ctx, name, probe, start_node, every=ctx.pick(2.5, 3.0), max_kills=4 if ctx.short else None
    )
