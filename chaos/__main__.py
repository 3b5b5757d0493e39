"""``python -m chaos [--short] [--only SCENARIO,…] [--dsn DSN]``: run the reliability proof suite.

Prints the table at the end, writes it to ``benchmarks/results/``, and exits non-zero when any
scenario did not pass (a lost job, a non-terminal delivery, an unjustified duplicate, or any other
claim that failed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import psycopg

from .context import Context
from .database import open_server
from .report import RESULTS, Report, ScenarioResult, render_table, utc_now, write_report
from .suite import SCENARIOS

__all__ = ["main", "run"]


def _only(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {unknown[0] if unknown else value!r}; choose from {', '.join(SCENARIOS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the short form CI runs (a few minutes)")
    parser.add_argument("--only", type=_only, default=None, metavar="SCENARIO,…", help="run only these")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("CHAOS_DSN") or None,
        help="run on this server instead of a private embedded one (default: $CHAOS_DSN)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed the kill schedule (default: random)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="where the reports go (default: benchmarks/results)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only; write no report")
    return parser


def run(
    *,
    short: bool,
    only: Sequence[str] | None = None,
    dsn: str | None = None,
    seed: int | None = None,
    logs: Path | None = None,
    results: Path | None = RESULTS,
) -> Report:
    """Run the chosen scenarios (all by default); the report is returned, and written to ``results``."""
    names = list(only or SCENARIOS)
    started, clock = utc_now(), time.monotonic()
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
    log_root = logs or Path(tempfile.mkdtemp(prefix="chaos-logs-"))
    server = open_server(dsn)
    description = f"{server.description} {server.version()}"
    print(
        f"[chaos] {'short' if short else 'full'} form, scenarios: {', '.join(names)}; seed {seed}; "
        f"{description}; logs in {log_root}",
        file=sys.stderr,
        flush=True,
    )
    found: list[ScenarioResult] = []
    try:
        ctx = Context(server, short, log_root, seed)
        for name in names:
            scenario_started = time.monotonic()
            ctx.say(name, "starting")
            try:
                result = SCENARIOS[name](ctx)
            except Exception as exc:
                traceback.print_exc()
                result = ScenarioResult(name, "(did not finish)", error=f"{type(exc).__name__}: {exc}")
            result.seconds = round(time.monotonic() - scenario_started, 1)
            ctx.say(name, f"{result.verdict} in {result.seconds:.0f}s")
            found.append(result)
    finally:
        server.close()
    report = Report("short" if short else "full", started, time.monotonic() - clock, description, found)
    if results is not None:
        for path in write_report(report, results):
            print(f"[chaos] wrote {path}", file=sys.stderr)
    return report


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A SIGTERM (a cancelled CI job) unwinds like Ctrl-C: every process and server the suite
    # started is stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(
            short=args.short,
            only=args.only,
            dsn=args.dsn,
            seed=args.seed,
            logs=args.logs,
            results=None if args.no_write else args.results,
        )
    except (RuntimeError, psycopg.Error) as exc:
        # No server to run on: the embedded extra is missing, or --dsn does not answer.
        print(f"chaos: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print()
    print(render_table(report.results))
    print()
    print(f"chaos ({report.form} form): {'PASS' if report.passed else 'FAIL'} in {report.seconds:.0f} s")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
