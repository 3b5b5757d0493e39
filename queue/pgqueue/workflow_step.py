"""A workflow's step and its errors: the lowest layer of :mod:`pgqueue.workflow`, which the
inline runner (:mod:`pgqueue.workflow_inline`) shares."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from .errors import PgQueueError
from .job import NewJob

__all__ = ["DependencyCycleError", "MissingDependencyError", "OnDependencyFailure", "Step", "WorkflowError"]

#: what a cancelled or discarded dependency does to a step: cancel it too, or count as finished
OnDependencyFailure = Literal["cancel", "run"]


class WorkflowError(PgQueueError, ValueError):
    """A workflow that can't be inserted as given; nothing was written."""


class DependencyCycleError(WorkflowError):
    """The steps' dependencies form a cycle, so none of them could ever run."""


class MissingDependencyError(WorkflowError, LookupError):
    """A step depends on a step name or a job id that doesn't exist."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a workflow: a job, what it depends on, and what else it waits for."""

    name: str
    job: NewJob
    #: step names of this workflow, or ids of jobs already in the database (any workflow)
    deps: tuple[str | int, ...]
    on_dependency_failure: OnDependencyFailure
    #: a signal name to wait for, and how many seconds at most (None: for ever)
    signal: str | None
    signal_timeout: float | None
    #: not to run before this time, once its dependencies and signal are there
    not_before: datetime | None

    @property
    def waits(self) -> bool:
        return bool(self.deps) or self.signal is not None or self.not_before is not None
