"""Workers ``benchmarks.results_wait`` runs through ``python -m pgqueue start``.

``Noop`` does nothing and returns nothing (the drains: jobs nobody awaits). ``Stamp`` sleeps
``args["ms"]`` (so its waiter is listening before it finishes), then returns the wall-clock time it
finished, which its waiter subtracts from the time it was woken.

With ``PGQUEUE_BENCH_TRACE`` set to a file, the node appends one JSON line per finished job
(``{"job": id, "at": when its ack was handed to the completer}``) and per statement that may
carry acks (``{"statement": "producer" | "completer", "sent": …, "returned": …}``: a producer's
fetch, or the completer's own flush), in wall-clock seconds, for the benchmark to follow each
awaited job's ack from the worker to the database.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, TextIO

import anyio
import orjson

import pgqueue
from pgqueue import telemetry

TRACE_VARIABLE = "PGQUEUE_BENCH_TRACE"


class Noop(pgqueue.Worker, queue="bench", name="bench.ResultsNoop"):
    async def perform(self, job: pgqueue.Job) -> None:
        return None


class Stamp(pgqueue.Worker, queue="stamp", name="bench.Stamp"):
    async def perform(self, job: pgqueue.Job) -> float:
        await anyio.sleep(job.args["ms"] / 1000)
        return time.time()


def _tracer(out: TextIO) -> telemetry.Handler:
    def handle(event: tuple[str, ...], measurements: Mapping[str, float], meta: Mapping[str, Any]) -> None:
        now = time.time()
        if event == ("job", "stop"):
            line: dict[str, Any] = {"job": meta["id"], "at": now}
        elif event == ("producer", "fetch"):
            # a producer's fetch carries the acks waiting in the completer, if any
            line = {"statement": "producer", "sent": now - measurements["duration"], "returned": now}
        else:
            line = {"statement": "completer", "sent": now - measurements["duration"], "returned": now}
        out.write(orjson.dumps(line).decode() + "\n")

    return handle


if os.environ.get(TRACE_VARIABLE):
    telemetry.attach(
        "bench-results-trace",
        _tracer(open(os.environ[TRACE_VARIABLE], "a", buffering=1)),  # noqa: SIM115 (the node's lifetime)
        [("job", "stop"), ("producer", "fetch"), ("completer", "flush")],
    )
