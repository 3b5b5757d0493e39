"""A channel's provider limits, and the pgqueue queue that enforces them across every worker.

A channel may declare, in ``chimeway.toml``, a ``rate_limit`` (sends started per ``rate_period``
seconds) and a ``concurrency`` (sends in flight at once), for a provider ``account`` (default: the
channel's name; channels naming one account share its limits). Each account gets a queue of its
own, ``chimeway_delivery.<account>``, declared to pgqueue with those numbers as its cluster-wide
``rate_limit`` and ``global_limit``: pgqueue's fetch admits its jobs, exactly, across every worker
process. The queue is the partition: one account's backlog never holds up another's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgqueue import QueueConfig

from .errors import ChimewayError

__all__ = ["ChannelLimits", "limited_queue"]

#: The queue of deliveries on channels without limits (see chimeway.dispatch.contract.QUEUE).
_BASE_QUEUE = "chimeway_delivery"


def limited_queue(account: str) -> str:
    """The queue that paces ``account``'s deliveries."""
    return f"{_BASE_QUEUE}.{account}"


@dataclass(frozen=True)
class ChannelLimits:
    """A provider account's limits: sends per period and sends in flight, across every worker."""

    account: str
    rate_limit: int | None = None
    rate_period: float = 1.0
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.rate_limit is None and self.concurrency is None:
            raise ChimewayError("a channel limit needs a rate_limit or a concurrency")

    @property
    def queue(self) -> str:
        return limited_queue(self.account)

    def queue_config(self, local_limit: int) -> dict[str, Any]:
        """The pgqueue queue settings that enforce these limits (``local_limit``: per worker)."""
        options: dict[str, Any] = {"limit": min(local_limit, self.concurrency or local_limit)}
        if self.concurrency is not None:
            options["global_limit"] = self.concurrency
        if self.rate_limit is not None:
            options.update(rate_limit=self.rate_limit, rate_period=self.rate_period)
        QueueConfig.parse(self.queue, options)  # pgqueue's own checks, at start
        return options
