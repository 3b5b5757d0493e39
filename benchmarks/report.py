"""Turn measurements into the JSON report, the Markdown tables and the chart files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.environments import REPO_DIR, runner_env_python, runner_has
from benchmarks.metrics import latency_summary, spread
from benchmarks.workloads import RowSpec

Json = dict[str, Any]
DASH = "\u2013"
TIMES = "\u00d7"
RESULTS_DIR = REPO_DIR / "benchmarks" / "results"
TITLES = {
    "enqueue": "W1 enqueue",
    "drain": "W2 drain",
    "latency": "W3 pickup latency",
}


def _ok(measurements: Iterable[Json]) -> list[Json]:
    return [m for m in measurements if "error" not in m]


def summarize(row: RowSpec, measurements: list[Json]) -> Json:
    good = _ok(measurements)
    summary: Json = {
        "jobs_per_s": spread(m.get("jobs_per_s") for m in good),
        "peak_rss_mb": spread(m.get("peak_rss_mb") for m in good),
        "xacts_per_job": spread(m.get("xacts_per_job") for m in good),
        "cpu_ms_per_job": spread(1000 * m["cpu_s"] / m["jobs"] for m in good if m.get("cpu_s") is not None),
    }
    if row.workload == "latency":
        for key in ("p50", "p95", "p99"):
            summary[f"latency_{key}_ms"] = spread(
                m["latency_ms"].get(key) for m in good if m.get("latency_ms")
            )
        pooled = [v / 1000 for m in good for v in m.get("latencies_ms", [])]
        summary["latency_pooled_ms"] = latency_summary(pooled)
    checks = [m["check"] for m in measurements if "check" in m]
    summary["check"] = {
        "ok": bool(checks) and all(c["ok"] for c in checks) and len(good) == len(measurements),
        "lost": sum(max(0, int(c.get("lost", 0))) for c in checks),
        "duplicates": sum(int(c.get("duplicates", 0)) for c in checks),
        "errors": [m["error"] for m in measurements if "error" in m],
    }
    return summary


def row_record(row: RowSpec, measurements: list[Json]) -> Json:
    return {
        "workload": row.workload,
        "system": row.system,
        "variant": row.variant,
        "settings": row.settings,
        "jobs": row.jobs,
        "concurrency": row.concurrency,
        "processes": row.processes,
        "measurements": measurements,
        "summary": summarize(row, measurements),
    }


# ---------------------------------------------------------------------------------------------
# Markdown


def _num(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def _cell(stats: Json | None, digits: int = 0) -> str:
    if not stats:
        return "—"
    median, low, high = stats["median"], stats["min"], stats["max"]
    if stats.get("n", 1) == 1:
        return _num(median, digits)
    return f"{_num(median, digits)} ({_num(low, digits)}{DASH}{_num(high, digits)})"


def _check(summary: Json, measurements: list[Json]) -> str:
    check = summary["check"]
    if check["ok"]:
        return f"ok {TIMES}{len(measurements)}"
    parts = []
    if check["lost"]:
        parts.append(f"{check['lost']} lost")
    if check["duplicates"]:
        parts.append(f"{check['duplicates']} run twice")
    if check["errors"]:
        first = check["errors"][0].splitlines()[0][:120]
        parts.append(f"{len(check['errors'])} failed: {first}")
    return "; ".join(parts) or "not verified"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def _concurrency(row: Json) -> str:
    return "—" if row["concurrency"] is None else str(row["concurrency"])


def _enqueue_cells(row: Json) -> list[str]:
    s = row["summary"]
    return [
        row["system"],
        row["variant"],
        f"{row['jobs']:,}",
        _cell(s["jobs_per_s"]),
        _cell(s["peak_rss_mb"]),
        _cell(s["xacts_per_job"], 3),
        _check(s, row["measurements"]),
    ]


def _drain_cells(row: Json) -> list[str]:
    s = row["summary"]
    return [
        row["system"],
        row["variant"],
        _concurrency(row),
        str(row["processes"]),
        f"{row['jobs']:,}",
        _cell(s["jobs_per_s"]),
        _cell(s["peak_rss_mb"]),
        _cell(s["xacts_per_job"], 2),
        _cell(s["cpu_ms_per_job"], 2),
        _check(s, row["measurements"]),
    ]


def _latency_cells(row: Json) -> list[str]:
    s = row["summary"]
    return [
        row["system"],
        row["variant"],
        f"{row['jobs']:,} {TIMES}{len(row['measurements'])}",
        _cell(s["latency_p50_ms"], 1),
        _cell(s["latency_p95_ms"], 1),
        _cell(s["latency_p99_ms"], 1),
        _cell(s["peak_rss_mb"]),
        _cell(s["xacts_per_job"], 2),
        _check(s, row["measurements"]),
    ]


TABLES: dict[str, tuple[list[str], Callable[[Json], list[str]]]] = {
    "enqueue": (
        ["System", "Mode", "Jobs", "jobs/s", "Peak RSS MB", "Xacts/job", "Check"],
        _enqueue_cells,
    ),
    "drain": (
        [
            "System",
            "Variant",
            "Conc.",
            "Procs",
            "Jobs",
            "jobs/s",
            "Peak RSS MB",
            "Xacts/job",
            "CPU ms/job",
            "Check",
        ],
        _drain_cells,
    ),
    "latency": (
        ["System", "Variant", "Jobs", "p50 ms", "p95 ms", "p99 ms", "Peak RSS MB", "Xacts/job", "Check"],
        _latency_cells,
    ),
}

EXPLAIN = {
    "enqueue": "Jobs/s timed inside the adapter (connections already open). `single`: one job per "
    "transaction through the system's one-job call; the other modes are its bulk calls. Peak RSS is "
    "the enqueuing process's; xacts/job from `pg_stat_database`.",
    "drain": "A backlog pre-inserted with the system's bulk call; jobs/s from the first perform to the "
    "first poll that sees every completion in the database. Conc. is the per-process concurrency "
    "(— where the variant does not take one). Peak RSS is the worker processes' (summed); CPU is "
    "theirs, per job.",
    "latency": "An idle worker (concurrency 10); jobs inserted one per transaction "
    "20 ms apart by a separate process; latency from the time right after the insert's commit to the "
    "start of the job's perform. Cells are the median of the repeats' percentiles "
    f"(min{DASH}max); "
    "xacts/job include the inserts and the worker's idle polling.",
}


def _machine_line(machine: Json) -> str:
    pg = machine["postgresql_settings"]
    settings = ", ".join(f"{k}={v}" for k, v in sorted(pg.items()))
    return (
        f"{machine['cpu_model']}, {machine['cpu_cores']} cores, {machine['memory_gib']} GiB RAM; "
        f"{machine['os']}; PostgreSQL {machine['postgresql']} ({settings}; {machine['database_source']} "
        f"server, shared with the workers); runner Python {machine['runner_python']}; "
        f"load average at start {machine['load_average_at_start']}, at end "
        f"{machine.get('load_average_at_end', '?')}"
    )


def markdown(report: Json) -> str:
    lines = [
        f"# Job-queue benchmarks: {report['mode']} mode",
        "",
        f"Run `{report['run_id']}` on {report['started_at']} (UTC), total runtime "
        f"{report['duration_s'] / 60:.1f} min. Cells: median of {report['plan']['repeats']} repeats "
        f"(min{DASH}max). Every system ran alone, one after another.",
        "",
        f"**Machine:** {_machine_line(report['machine'])}.",
        "",
        "## Systems",
        "",
    ]
    system_rows = []
    for name, system in report["systems"].items():
        info = system.get("info") or {}
        status = "measured" if system["status"] == "ok" else f"**skipped**: {system['reason']}"
        system_rows.append([name, info.get("version", "—"), info.get("python", "—"), status])
    lines += _table(["System", "Version", "Python", "Status"], system_rows)
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    for workload, (header, cells) in TABLES.items():
        rows = [row for row in report["rows"] if row["workload"] == workload]
        if not rows:
            continue
        lines += ["", f"## {TITLES[workload]}", "", EXPLAIN[workload], ""]
        lines += _table(header, (cells(row) for row in rows))
    lines += ["", "## Settings per system and variant", ""]
    seen: set[tuple[str, str]] = set()
    for row in report["rows"]:
        if row["workload"] == "enqueue" or (row["system"], row["variant"]) in seen:
            continue
        seen.add((row["system"], row["variant"]))
        lines.append(f"- **{row['system']} / {row['variant']}**: {row['settings']}")
    for name, system in report["systems"].items():
        for note in (system.get("info") or {}).get("notes", []):
            lines.append(f"- {name}: {note}")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Files


def render_chart(json_path: Path, png_path: Path) -> str | None:
    """Draw the PNG with matplotlib here, or in the runner environment; return an error or None."""
    if runner_has("matplotlib"):
        from benchmarks.chart import render

        render(json.loads(json_path.read_text()), png_path)
        return None
    try:
        python = runner_env_python()
    except Exception as exc:  # any failure to build the environment only costs the chart
        return f"no chart: the runner environment could not be built ({exc})"
    done = subprocess.run(
        [str(python), "-m", "benchmarks.chart", str(json_path), str(png_path)],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        return f"no chart: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
    return None


def write(report: Json) -> dict[str, Path]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{report['timestamp']}-{report['mode']}"
    paths = {ext: RESULTS_DIR / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    error = render_chart(paths["json"], paths["png"])
    if error:
        report["notes"].append(error)
        paths["json"].write_text(json.dumps(report, indent=1) + "\n")
        del paths["png"]
    paths["md"].write_text(markdown(report))
    for ext, path in list(paths.items()):
        latest = RESULTS_DIR / f"latest-{report['mode']}.{ext}"
        shutil.copyfile(path, latest)
        paths[f"latest-{ext}"] = latest
    print(f"[bench] wrote {', '.join(str(p.relative_to(REPO_DIR)) for p in paths.values())}", file=sys.stderr)
    return paths
