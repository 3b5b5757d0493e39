"""One node process of the flow-control tests: ``python -m tests.flow.node NAME QUEUE-CONFIG-JSON``.

Runs the queue ``limited`` with the given configuration (local and cluster-wide limits) and the
workers of :mod:`tests.flow.workers` until SIGTERM. The database and schema come from the
environment (see :mod:`tests.flow.workers`).
"""

from __future__ import annotations

import json
import os
import sys

from pgqueue.plugins.lifeline import Lifeline
from pgqueue.plugins.stager import Stager
from pgqueue.runtime import Runtime
from tests.flow.workers import DSN_VARIABLE, SCHEMA_VARIABLE


def main() -> None:
    name, config = sys.argv[1], json.loads(sys.argv[2])
    runtime = Runtime(
        os.environ[DSN_VARIABLE],
        schema=os.environ[SCHEMA_VARIABLE],
        queues={"limited": config},
        workers=["tests.flow.workers"],
        node=name,
        plugins=[Stager(), Lifeline(rescue_window=2.0)],
        heartbeat_interval=0.5,
        shutdown_grace_period=2.0,
    )
    runtime.run()


if __name__ == "__main__":
    main()
