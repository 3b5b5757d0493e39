"""A module no chaos process may ever import: the hostile-input scenario names it in job rows.

Importing it leaves a marker file (at ``$CHAOS_CANARY_FILE``), so the scenario can prove that a
``worker`` column naming ``chaos.canary.Canary`` made no process import code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pgqueue

CANARY_VARIABLE = "CHAOS_CANARY_FILE"

_marker = os.environ.get(CANARY_VARIABLE)
if _marker:
    Path(_marker).write_text(f"imported by pid {os.getpid()}\n", encoding="utf-8")


class Canary(pgqueue.Worker):
    """Would succeed if it ever ran; it must not even be imported."""

    def perform(self, job: pgqueue.Job) -> None:
        return None
