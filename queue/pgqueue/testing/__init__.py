"""Helpers for testing code that uses pgqueue: run jobs directly, drain queues, check what is
enqueued, and run jobs inline at insert.

* :func:`perform_job` runs a worker through the real executor (timeout, result classification)
  without touching the database, and returns what ``perform`` returned.
* :func:`drain_queue` runs a queue's jobs to completion in the calling thread, acking each one,
  and counts the outcomes (Oban's ``drain_queue``).
* :func:`all_enqueued`, :func:`assert_enqueued`, :func:`refute_enqueued` inspect waiting jobs.
* ``with inline():`` makes ``insert``/``ainsert`` perform jobs at once instead of writing them.
"""

from __future__ import annotations

from .enqueued import all_enqueued, assert_enqueued, refute_enqueued
from .inline_mode import inline
from .run import DrainResult, adrain_queue, aperform_job, build_job, drain_queue, perform_job

__all__ = [
    "DrainResult",
    "adrain_queue",
    "all_enqueued",
    "aperform_job",
    "assert_enqueued",
    "build_job",
    "drain_queue",
    "inline",
    "perform_job",
    "refute_enqueued",
]
