"""Soak: one ``python -m pgqueue start`` node under a steady stream of jobs, with the pruner on.

A feeder inserts ``RATE`` jobs a second for the whole run; the node runs them and prunes finished
jobs older than ``--prune-after``. Every few seconds the suite samples the worker's resident memory,
the jobs table's rows, dead tuples and size on disk, and how many jobs have run. The claims: no
job lost or run twice; memory flat (end vs. after warm-up); the table's rows held near what the
pruner's schedule allows; dead tuples and size bounded (the last third no higher than the middle
third allows); throughput steady (completions in the last third vs. the first).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from pgqueue.plugins.pruner import Pruner

from .context import Context
from .database import Probe
from .load import Feeder
from .processes import clean_exits, fleet, wait_until
from .report import ScenarioResult

__all__ = ["soak"]

RATE = 250
#: how often the CLI's pruner runs, and how many jobs one round may delete (the plugin's defaults)
PRUNE_INTERVAL = Pruner().interval
PRUNE_LIMIT = Pruner().limit
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    at: float
    rss_kib: int
    rows: int
    dead: int
    size: int
    executed: int
    backlog: int


def _sample(probe: Probe, started: float, rss_kib: int) -> Sample:
    (row,) = probe.rows(
        "SELECT (SELECT count(*) FROM {s}.jobs),"
        " coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = '{s}.jobs'::regclass), 0),"
        " pg_total_relation_size('{s}.jobs'::regclass),"
        " (SELECT count(*) FROM {s}.executions),"
        " (SELECT count(*) FROM {s}.jobs WHERE state = 'available')"
    )
    rows, dead, size, executed, backlog = (int(v) for v in row)
    return Sample(round(time.monotonic() - started, 1), rss_kib, rows, dead, size, executed, backlog)


def _middle_and_last_thirds(samples: list[Sample], duration: float) -> tuple[list[Sample], list[Sample]]:
    middle = [s for s in samples if duration / 3 < s.at <= 2 * duration / 3]
    last = [s for s in samples if s.at > 2 * duration / 3]
    return middle, last


def soak(ctx: Context) -> ScenarioResult:
    name = "soak"
    duration = ctx.pick(60.0, 600.0)
    prune_after = ctx.pick(5.0, 30.0)
    every = ctx.pick(2.0, 5.0)
    result = ScenarioResult(
        name,
        f"One `python -m pgqueue start` node runs a steady {RATE} jobs/s for {duration:.0f} s with "
        f"`--prune-after {prune_after:g}` (the pruner runs every {PRUNE_INTERVAL:g} s, at most "
        f"{PRUNE_LIMIT:,} jobs a round).",
    )
    schema = ctx.server.new_schema("soak")
    feeder = Feeder(ctx.server.dsn, schema, RATE, ms=0.0)
    samples: list[Sample] = []
    with Probe(ctx.server.dsn, schema) as probe, fleet(ctx.logs_for(name)) as processes:
        node = processes.pgqueue(
            f"{name}-1", ctx.server.dsn, schema, queues="default:20", prune_after=prune_after
        )
        wait_until(lambda: probe.leader() == node.name, timeout=60, message="the soak node never led")
        window_start = probe.value("SELECT clock_timestamp()")
        started = time.monotonic()
        feeder.start()
        try:
            next_report = started + 15
            while (now := time.monotonic()) - started < duration:
                samples.append(_sample(probe, started, node.rss_kib() or 0))
                if now >= next_report:
                    last = samples[-1]
                    ctx.say(
                        name, f"{last.executed:,} run, {last.rows:,} rows, RSS {last.rss_kib // 1024} MiB"
                    )
                    next_report = now + 15
                time.sleep(max(0.0, every - (time.monotonic() - now)))
        finally:
            feeder.stop()
        window_end = probe.value("SELECT clock_timestamp()")
        samples.append(_sample(probe, started, node.rss_kib() or 0))
        inserted = set(feeder.committed_ids)
        wait_until(
            lambda: probe.executions() >= len(inserted),
            timeout=120,
            interval=0.5,
            message="the soak's last jobs never ran",
        )
        executions = probe.executions_by_job()
        thirds = [
            int(n)
            for (n,) in probe.rows(
                "SELECT count(e.job_id) FROM generate_series(0, 2) AS t(i) LEFT JOIN {s}.executions AS e"
                " ON e.at >= %(start)s + (%(end)s - %(start)s) * t.i / 3.0"
                " AND e.at < %(start)s + (%(end)s - %(start)s) * (t.i + 1) / 3.0"
                " AND e.job_id = ANY(%(ids)s) GROUP BY t.i ORDER BY t.i",
                {"start": window_start, "end": window_end, "ids": sorted(inserted)},
            )
        ]
        alive = node.alive()
        exits = clean_exits([node])

    result.jobs = len(inserted)
    result.lost = sum(1 for job_id in inserted if job_id not in executions)
    result.duplicates = sum(len(runs) - 1 for runs in executions.values() if len(runs) > 1)
    result.unjustified = result.duplicates  # nothing was killed
    _judge(result, samples, thirds, duration, prune_after, alive, full=not ctx.short)
    result.checks += exits
    return result


def _judge(
    result: ScenarioResult,
    samples: list[Sample],
    thirds: list[int],
    duration: float,
    prune_after: float,
    alive: bool,
    *,
    full: bool,
) -> None:
    middle, last = _middle_and_last_thirds(samples, duration)
    warm = next((s for s in samples if s.at >= duration / 10), samples[0])
    end = samples[-1]
    growth_mib = (end.rss_kib - warm.rss_kib) / 1024
    allowed_mib = max(32.0, warm.rss_kib / 1024 * 0.5)
    # Finished jobs live at most prune_after plus one pruner interval (and a round's duration).
    row_bound = int(RATE * (prune_after + PRUNE_INTERVAL + 10))
    peak_rows = max(s.rows for s in samples)
    peak_dead = max(s.dead for s in samples)
    peak_dead_late = max(s.dead for s in last)
    peak_dead_mid = max(s.dead for s in middle)
    peak_size_late = max(s.size for s in last)
    peak_size_mid = max(s.size for s in middle)
    result.check("no job was lost", result.lost == 0, f"{result.jobs:,} jobs inserted")
    result.check("no job ran twice", result.duplicates == 0, f"{result.duplicates} duplicates")
    result.check("the node stayed up", alive)
    result.check(
        "worker memory stays flat (RSS after warm-up vs. at the end)",
        growth_mib <= allowed_mib,
        f"{warm.rss_kib / 1024:.0f} MiB at {warm.at:.0f} s, {end.rss_kib / 1024:.0f} MiB at the end "
        f"(+{growth_mib:.1f} MiB, allowed +{allowed_mib:.0f})",
    )
    result.check(
        "the pruner holds the table near its schedule's bound",
        peak_rows <= row_bound and peak_rows < result.jobs,
        f"at most {peak_rows:,} rows (bound {row_bound:,}) while {result.jobs:,} jobs passed through",
    )
    # Each job leaves at most three dead versions (claimed, finished, pruned): more dead tuples than
    # the rows the pruner lets live could have left means vacuum is not keeping up.
    result.check(
        "dead tuples stay within what the live rows can leave behind",
        peak_dead <= 3 * row_bound,
        f"peak {peak_dead:,} (bound {3 * row_bound:,})",
    )
    if full:
        # Plateaus: the last third may not climb above the middle one (steady state by then).
        result.check(
            "dead tuples plateau (last third vs. middle third)",
            peak_dead_late <= 1.5 * peak_dead_mid + RATE * 10,
            f"peak {peak_dead_mid:,} in the middle third, {peak_dead_late:,} in the last",
        )
        result.check(
            "table size on disk plateaus (last third vs. middle third)",
            peak_size_late <= 1.25 * peak_size_mid + MIB,
            f"peak {peak_size_mid / MIB:.1f} MiB in the middle third, "
            f"{peak_size_late / MIB:.1f} MiB in the last",
        )
    else:
        result.figures["size and dead-tuple plateaus"] = (
            f"judged in the full form only: {duration:.0f} s is {duration / PRUNE_INTERVAL:.0f} pruner rounds"
        )
    result.check(
        "throughput does not decay (completions in the last third vs. the first)",
        len(thirds) == 3 and thirds[2] >= 0.9 * thirds[0],
        f"{thirds} jobs per third of the run",
    )
    result.figures.update(
        {
            "rate (jobs/s)": RATE,
            "worker RSS after warm-up (MiB)": round(warm.rss_kib / 1024, 1),
            "worker RSS at the end (MiB)": round(end.rss_kib / 1024, 1),
            "peak rows in jobs": peak_rows,
            "peak dead tuples": peak_dead,
            "jobs table size at the end (MiB)": round(end.size / MIB, 1),
            "peak jobs table size (MiB)": round(max(s.size for s in samples) / MIB, 1),
            "peak backlog (available jobs)": max(s.backlog for s in samples),
            "completions per third": ", ".join(f"{n:,}" for n in thirds),
        }
    )
    result.series["samples"] = [asdict(s) for s in samples]
