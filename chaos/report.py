"""What a scenario found, and the report of a run: a table on stdout, Markdown and JSON on disk.

Each scenario returns a :class:`ScenarioResult`: the headline numbers (jobs, lost, duplicates,
recovery time) and the list of :class:`Check` s behind its verdict. The run's report goes to
``benchmarks/results/chaos-<timestamp>-<form>.{md,json}`` with ``chaos-latest-<form>.*`` copies.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Check", "Report", "ScenarioResult", "render_table", "write_report"]

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@dataclass
class Check:
    """One claim a scenario makes, whether it held, and the evidence."""

    claim: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    """The outcome of one scenario. ``verdict`` is PASS only when every check held."""

    name: str
    title: str
    jobs: int = 0
    lost: int = 0
    duplicates: int = 0
    #: duplicates that no kill of the process that ran them explains
    unjustified: int = 0
    #: Chimeway deliveries left in a status that is not final
    non_terminal: int = 0
    #: seconds; what it measures is in ``recovery_meaning``
    recovery: float | None = None
    recovery_meaning: str = ""
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    #: raw measurements, kept in the JSON report only
    series: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def check(self, claim: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(claim, bool(ok), detail))
        return bool(ok)

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        failed = any(not c.ok for c in self.checks)
        if failed or self.lost or self.unjustified or self.non_terminal or not self.checks:
            return "FAIL"
        return "PASS"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict
        return data


@dataclass
class Report:
    form: str
    started: datetime
    seconds: float
    server: str
    results: list[ScenarioResult]

    @property
    def passed(self) -> bool:
        return all(r.verdict == "PASS" for r in self.results)

    def environment(self) -> dict[str, Any]:
        return {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "server": self.server,
        }


_COLUMNS = ("scenario", "jobs", "lost", "duplicates", "recovery", "verdict")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _row(result: ScenarioResult) -> tuple[str, ...]:
    duplicates = str(result.duplicates)
    if result.duplicates:
        justified = result.duplicates - result.unjustified
        duplicates += f" ({justified} justified)"
    recovery = "-" if result.recovery is None else f"{result.recovery:.1f} s"
    lost = str(result.lost)
    if result.non_terminal:
        lost += f" (+{result.non_terminal} non-terminal)"
    return (result.name, f"{result.jobs:,}", lost, duplicates, recovery, result.verdict)


def render_table(results: Sequence[ScenarioResult], *, markdown: bool = False) -> str:
    """The run's table: scenario, jobs, lost, duplicates, recovery time, verdict."""
    rows = [_COLUMNS, *(_row(r) for r in results)]
    if markdown:
        lines = [
            "| " + " | ".join(rows[0]) + " |",
            "|" + "|".join([":---", *["---:"] * (len(_COLUMNS) - 2), ":---:"]) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    rendered = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(widths[i]) if i in (0, 5) else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        rendered.append("  ".join(cells).rstrip())
        if index == 0:
            rendered.append("  ".join("-" * w for w in widths))
    return "\n".join(rendered)


def _format_figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def render_details(result: ScenarioResult) -> str:
    """A scenario's checks and figures, as Markdown."""
    lines = [f"### {result.name} — {result.verdict}", "", result.title, ""]
    if result.error:
        lines += [f"**The scenario could not finish:** `{result.error}`", ""]
    if result.recovery_meaning:
        lines += [f"Recovery time: {result.recovery_meaning}.", ""]
    for check in result.checks:
        mark = "✓" if check.ok else "✗"
        lines.append(f"- {mark} {check.claim}" + (f" — {check.detail}" if check.detail else ""))
    if result.figures:
        lines += ["", "| figure | value |", "|:---|---:|"]
        lines += [
            f"| {_cell(key)} | {_cell(_format_figure(value))} |" for key, value in result.figures.items()
        ]
    lines += ["", f"Took {result.seconds:.0f} s.", ""]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    env = report.environment()
    head = [
        f"# Chaos run ({report.form} form), {report.started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Verdict: **{'PASS' if report.passed else 'FAIL'}** in {report.seconds:.0f} s "
        f"on {env['cpus']} CPUs, Python {env['python']}, {report.server}.",
        "",
        f"Reproduce: `make chaos{' SHORT=1' if report.form == 'short' else ''}` "
        f"(or `python -m chaos{' --short' if report.form == 'short' else ''}`).",
        "",
        render_table(report.results, markdown=True),
        "",
        "## Scenarios",
        "",
    ]
    return "\n".join(head + [render_details(r) for r in report.results])


def write_report(report: Report, directory: Path = RESULTS) -> list[Path]:
    """Write the Markdown and JSON reports and refresh the ``chaos-latest-<form>`` copies."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = report.started.strftime("%Y%m%dT%H%M%SZ")
    base = directory / f"chaos-{stamp}-{report.form}"
    markdown = base.with_suffix(".md")
    document = base.with_suffix(".json")
    markdown.write_text(render_markdown(report), encoding="utf-8")
    payload = {
        "form": report.form,
        "started": report.started.isoformat(),
        "seconds": round(report.seconds, 1),
        "passed": report.passed,
        "environment": report.environment(),
        "results": [r.as_json() for r in report.results],
    }
    document.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    written = [markdown, document]
    for path in (markdown, document):
        latest = directory / f"chaos-latest-{report.form}{path.suffix}"
        shutil.copyfile(path, latest)
        written.append(latest)
    return written


def utc_now() -> datetime:
    return datetime.now(UTC)
