"""What every scenario is given: the server, the run's form, a place for logs, and a way to speak."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .database import Server
from .report import ScenarioResult

__all__ = ["Context", "Scenario"]


@dataclass
class Context:
    server: Server
    short: bool
    logs: Path
    seed: int
    started: float = field(default_factory=time.monotonic)

    def rng(self, name: str) -> random.Random:
        """A random source per scenario, reproducible from the run's seed."""
        return random.Random(f"{self.seed}:{name}")

    def say(self, scenario: str, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[chaos {elapsed:6.1f}s] {scenario}: {message}", file=sys.stderr, flush=True)

    def pick(self, short: float, full: float) -> float:
        return short if self.short else full

    def logs_for(self, scenario: str) -> Path:
        path = self.logs / scenario
        path.mkdir(parents=True, exist_ok=True)
        return path


#: A scenario: given the context, runs and says what it found.
Scenario = Callable[[Context], ScenarioResult]
