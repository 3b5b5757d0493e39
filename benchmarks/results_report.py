"""The Markdown report of ``python -m benchmarks.results_wait`` (its JSON report, rendered)."""

from __future__ import annotations

from typing import Any

__all__ = ["render"]


def render(report: dict[str, Any]) -> str:
    """The report as Markdown: the latency per round and per hop, then the drain against the baseline."""
    latency, cost = report["wake_up_latency"], report["no_result_cost"]
    lines = [
        f"# Results: awaiting a job ({report['mode']} mode)",
        "",
        f"Run on {report['at']}, {report['machine']}, in database `{report['database']}` (its own). "
        "One `python -m pgqueue start` node; the caller "
        "waits in `pgqueue.await_job` on an open connection for a job that sleeps 20 ms and returns "
        "`time.time()`; latency is from that return to the caller's. See `benchmarks/results_wait.py`.",
        "",
        f"**All {latency['waits']:,} waits: p50 {latency['p50_ms']} ms, p90 {latency['p90_ms']} ms, "
        f"p99 {latency['p99_ms']} ms, max {latency['max_ms']} ms**; the median round's p50 "
        f"{latency['median_round_p50_ms']} ms and p99 {latency['median_round_p99_ms']} ms.",
        "",
        "The last two columns are the floor, measured between the waits in the same round: a bare "
        "`NOTIFY` sent by another process, received by a `LISTEN`ing connection that then makes one "
        "round trip (`SELECT 1`). The same four processes and the same round trip as a wake-up, "
        "without pgqueue's statement or its work: what the machine's scheduling costs by itself.",
        "",
        "| round | load average (1 min) | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) "
        "| floor p50 | floor p99 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in latency["rounds"]:
        cells = [r["round"], r["load_average"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"]]
        cells += [r["floor_p50_ms"], r["floor_p99_ms"]]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    written_by = latency["acks_written_by"]
    lines += [
        "",
        f"Where the time went ({latency['traced_waits']:,} waits followed through the node's trace; "
        f"the awaited ack rode with a producer's fetch {written_by['producer']:,} times and was written "
        f"by the completer's own flush {written_by['completer']:,} times):",
        "",
        "| hop | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |",
        "|:---|---:|---:|---:|---:|",
    ]
    for name, spread in latency["hops"].items():
        lines.append(
            f"| {name} | {spread['p50_ms']} | {spread['p90_ms']} | {spread['p99_ms']} | {spread['max_ms']} |"
        )
    rates = cost["median_jobs_per_s"]
    lines += [
        "",
        f"**Jobs nobody awaits** (W2's shape: {cost['jobs']:,} no-op jobs preloaded, one node at "
        f"C=100), this tree against `{cost['baseline_commit']}` in the same run, "
        f"{len(cost['rates']['baseline'])} interleaved rounds each: median {rates['this tree']:,} jobs/s "
        f"against {rates['baseline']:,} jobs/s, ratio **{cost['ratio']:.3f}**.",
        "",
        "| tree | jobs/s per round |",
        "|:---|:---|",
    ]
    for name, values in cost["rates"].items():
        lines.append(f"| {name} | {', '.join(f'{v:,}' for v in values)} |")
    return "\n".join(lines) + "\n"
