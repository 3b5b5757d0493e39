"""The scenarios, by the name ``--only`` takes, in the order a full run takes them."""

from __future__ import annotations

from .chimeway_storm import chimeway_storm
from .context import Scenario
from .fuzz import fuzzed_config
from .hostile import hostile_input
from .outages import backend_terminations, postgres_restarts
from .poison import poison
from .rescue import long_jobs
from .soak import soak
from .storm import crash_storm
from .workflow_storm import workflow_storm

__all__ = ["SCENARIOS"]

SCENARIOS: dict[str, Scenario] = {
    "crash-storm": crash_storm,
    "chimeway-storm": chimeway_storm,
    "workflow-storm": workflow_storm,
    "pg-restarts": postgres_restarts,
    "backend-terminations": backend_terminations,
    "long-jobs": long_jobs,
    "soak": soak,
    "hostile-input": hostile_input,
    "poison": poison,
    "fuzzed-config": fuzzed_config,
}
