"""The short form of the reliability suite (``python -m chaos --short``), as CI runs it.

One real run of every scenario: crash storms of ``python -m pgqueue start`` nodes (plain jobs, then
workflows and batches) and ``python -m chimeway.worker`` processes, PostgreSQL restarts and
terminated backends, a frozen node, a one-minute soak, hostile rows and notifications, fuzzed flags
and configuration files. The suite starts its own embedded PostgreSQL, so it never touches the
shared test database. Its report goes to the test's temporary directory; the test reads the JSON
and holds every scenario to its verdict.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaos.suite import SCENARIOS

# Four minutes of crash storms: a CI step of its own (`make test-chaos`), beside `make test`.
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.chaos]

REPOSITORY = Path(__file__).resolve().parents[2]
#: The short form takes about three minutes on two busy cores; the deadline only catches a hang.
DEADLINE = 900


@pytest.fixture(scope="module")
def short_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``python -m chaos --short`` once for the module; its process and its JSON report."""
    results = tmp_path_factory.mktemp("chaos-results")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
    }
    env.pop("CHAOS_DSN", None)
    logs = results / "logs"
    command = [sys.executable, "-m", "chaos", "--short", "--results", str(results), "--logs", str(logs)]
    process = subprocess.Popen(
        command, cwd=REPOSITORY, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGKILL: the suite then stops the worker processes and the server it started.
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
        pytest.fail(f"python -m chaos --short still ran after {DEADLINE} s:\n{stderr[-4000:]}")
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    latest = results / "chaos-latest-short.json"
    if not latest.exists():
        pytest.fail(f"python -m chaos --short wrote no report (exit {process.returncode}):\n{stderr[-4000:]}")
    report = json.loads(latest.read_text(encoding="utf-8"))
    return done, report


def _failures(report: dict[str, Any]) -> str:
    lines = []
    for result in report["results"]:
        if result["verdict"] != "PASS":
            failed = [f"{c['claim']}: {c['detail']}" for c in result["checks"] if not c["ok"]]
            lines.append(f"{result['name']} {result['verdict']} {result['error'] or ''} {failed}")
    return "\n".join(lines)


@pytest.mark.timeout(DEADLINE + 60)
def test_short_chaos_run_passes_every_scenario_and_exits_zero(
    short_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    done, report = short_run
    assert [r["name"] for r in report["results"]] == list(SCENARIOS)
    assert _failures(report) == "", done.stderr[-4000:]
    assert report["passed"] is True
    assert done.returncode == 0, done.stdout[-2000:]


@pytest.mark.timeout(DEADLINE + 60)
def test_short_chaos_run_loses_no_job_and_leaves_no_delivery_unfinished(
    short_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _done, report = short_run
    by_name = {r["name"]: r for r in report["results"]}
    assert {name: r["lost"] for name, r in by_name.items() if r["lost"]} == {}
    assert by_name["chimeway-storm"]["non_terminal"] == 0
    assert {name: r["unjustified"] for name, r in by_name.items() if r["unjustified"]} == {}
    # The storms must have done their job: processes were killed while holding work.
    for storm in ("crash-storm", "chimeway-storm"):
        assert by_name[storm]["figures"]["kills"] >= 1
        assert by_name[storm]["figures"]["jobs in flight at kills"] >= 1
        assert by_name[storm]["jobs"] >= 1_000
    # The workflow storm killed nodes while they ran steps, so rescued steps and their dependents
    # were tested, not only steps that happened to finish between kills.
    workflows = by_name["workflow-storm"]["figures"]
    assert workflows["kills"] >= 1
    assert workflows["workflow steps in flight at kills"] >= 1


@pytest.mark.timeout(DEADLINE + 60)
def test_short_chaos_run_prints_the_table(
    short_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    done, _report = short_run
    header = next(line for line in done.stdout.splitlines() if line.startswith("scenario"))
    assert header.split() == ["scenario", "jobs", "lost", "duplicates", "recovery", "verdict"]
    for name in SCENARIOS:
        assert any(line.startswith(name) for line in done.stdout.splitlines()), name
