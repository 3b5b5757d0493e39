"""Jobs by queue and state at a bounded cost: exact up to a bound per state, estimated beyond it.

The dashboard and the metrics scrape both count jobs by queue and state; with millions of finished
jobs an exact count would read millions of index entries on every page and scrape. Each state is
therefore counted exactly, per queue, only while it holds at most a bound of jobs
(:data:`COUNT_EXACT_UP_TO` for finished states, :data:`LIVE_COUNT_EXACT_UP_TO` for the others);
a larger state is one total, estimated from the planner's statistics and shown as "≈". See
``queries/state_counts.part.sql``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["COUNT_EXACT_UP_TO", "LIVE_COUNT_EXACT_UP_TO", "StateCounts", "count_params"]

#: a finished state (completed, cancelled, discarded) with more jobs than this is estimated
COUNT_EXACT_UP_TO = 10_000
#: an unfinished state (available, scheduled, executing, retryable) with more jobs than this is estimated
LIVE_COUNT_EXACT_UP_TO = 100_000


def count_params() -> dict[str, int]:
    """The bounds, as the parameters of the statements that include ``state_counts.part.sql``."""
    return {"exact_up_to": COUNT_EXACT_UP_TO, "live_exact_up_to": LIVE_COUNT_EXACT_UP_TO}


@dataclass(frozen=True, slots=True)
class StateCounts:
    """Exact counts per queue and state, and estimated totals of the states beyond their bound."""

    #: queue → state → jobs, for states within their bound
    exact: dict[str, dict[str, int]]
    #: state → estimated jobs (never below the bound), for states beyond it
    estimated: dict[str, int]

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]]) -> StateCounts:
        """From rows of (queue, state, n): a NULL queue marks an estimate."""
        exact: dict[str, dict[str, int]] = {}
        estimated: dict[str, int] = {}
        for queue, state, n, *_ in rows:
            if queue is None:
                estimated[str(state)] = int(n)
            else:
                exact.setdefault(str(queue), {})[str(state)] = int(n)
        return cls(exact, estimated)

    def totals(self) -> dict[str, int]:
        """Jobs per state across queues (estimates included)."""
        totals: dict[str, int] = {}
        for states in self.exact.values():
            for state, count in states.items():
                totals[state] = totals.get(state, 0) + count
        for state, count in self.estimated.items():
            totals[state] = totals.get(state, 0) + count
        return totals
