"""A description of the machine a run happened on."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import psutil

from benchmarks.database import Server


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(server: Server, database_source: str) -> dict[str, Any]:
    memory = psutil.virtual_memory().total
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(memory / 1024**3, 1),
        "os": platform.platform(),
        "postgresql": server.version(),
        "postgresql_settings": server.settings(),
        "database_source": database_source,
        "runner_python": platform.python_version(),
        "runner_executable": sys.executable,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }
