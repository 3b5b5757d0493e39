"""``python -m benchmarks [--full] [--only SYSTEM[,SYSTEM]] [--workloads W1,W2,W3]``."""

from __future__ import annotations

from benchmarks.environments import reexec_if_needed


def _main() -> int:
    # psutil and psycopg are needed before anything else is imported.
    reexec_if_needed()
    from benchmarks.runner import main

    return main()


raise SystemExit(_main())
