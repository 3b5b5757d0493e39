"""Draw the report's PNG with matplotlib: ``python -m benchmarks.chart REPORT.json OUT.png``.

Standard library and matplotlib only, so it also runs in the runner environment
(``benchmarks/.envs/runner``) when the interpreter that ran the benchmarks has no matplotlib.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Json = dict[str, Any]
DASH = "\u2013"
TIMES = "\u00d7"


def _label(row: Json) -> str:
    parts = [row["system"], row["variant"]]
    if row["workload"] == "enqueue":
        parts.append(f"n={row['jobs']:,}")
    if row.get("concurrency") is not None:
        parts.append(f"c={row['concurrency']}")
    if row.get("processes", 1) > 1:
        parts.append(f"{TIMES}{row['processes']} procs")
    return " ".join(parts)


def _bars(ax: Any, rows: list[Json], title: str) -> None:
    rows = [r for r in rows if r["summary"].get("jobs_per_s")]
    if not rows:
        ax.set_visible(False)
        return
    stats = [r["summary"]["jobs_per_s"] for r in rows]
    medians = [s["median"] for s in stats]
    errors = [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]
    positions = list(range(len(rows)))
    colors = ["#888888" if r["system"] == "raw" else "#3b7dd8" for r in rows]
    ax.barh(positions, medians, xerr=errors, color=colors, capsize=2)
    ax.set_xlim(left=min(s["min"] for s in stats) / 3)
    ax.set_yticks(positions, [_label(r) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"jobs/s (median, min{DASH}max; log scale)")
    ax.set_title(title, fontsize=10)
    for pos, stat in zip(positions, stats, strict=True):
        ax.text(stat["max"] * 1.04, pos, f"{stat['median']:,.0f}", va="center", fontsize=6)


def _latency(ax: Any, rows: list[Json]) -> None:
    rows = [r for r in rows if r["summary"].get("latency_p50_ms")]
    if not rows:
        ax.set_visible(False)
        return
    width = 0.27
    for offset, (key, color) in enumerate(
        (("latency_p50_ms", "#3b7dd8"), ("latency_p95_ms", "#f0a030"), ("latency_p99_ms", "#d04040"))
    ):
        stats = [r["summary"][key] for r in rows]
        positions = [i + (offset - 1) * width for i in range(len(rows))]
        errors = [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]
        ax.barh(
            positions,
            [s["median"] for s in stats],
            height=width,
            xerr=errors,
            color=color,
            capsize=2,
            label=key.split("_")[1],
        )
    ax.set_yticks(list(range(len(rows))), [_label(r) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"commit to perform start, ms (median of repeats, min{DASH}max; log scale)")
    ax.set_title("W3 pickup latency", fontsize=10)
    ax.legend(fontsize=7)


def render(report: Json, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {w: [r for r in report["rows"] if r["workload"] == w] for w in ("enqueue", "drain", "latency")}
    heights = [max(1.5, 0.22 * len(rows) + 1.0) for rows in by.values()]
    fig, axes = plt.subplots(3, 1, figsize=(10, sum(heights) + 1), height_ratios=heights)
    _bars(axes[0], by["enqueue"], "W1 enqueue")
    _bars(axes[1], by["drain"], "W2 drain (completions visible in the database)")
    _latency(axes[2], by["latency"])
    machine = report["machine"]
    fig.suptitle(
        f"{report['mode']} run {report['started_at'][:16]} · {machine['cpu_model']}, "
        f"{machine['cpu_cores']} cores · PostgreSQL {machine['postgresql']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.chart REPORT.json OUT.png", file=sys.stderr)
        return 2
    render(json.loads(Path(argv[0]).read_text()), Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
