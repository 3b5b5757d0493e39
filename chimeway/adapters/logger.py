"""The default adapter: logs that a delivery happened (channel and ids, never content) and succeeds."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .base import Delivered, DeliveryContext

__all__ = ["LoggerAdapter"]

_log = logging.getLogger("chimeway.adapters.logger")
_DELIVERED = Delivered({"adapter": "logger", "logged": True})


class LoggerAdapter:
    """Writes one INFO line per delivery on the ``chimeway.adapters.logger`` logger.

    ``deliver`` is ``async``: it never waits on anything, so the dispatch worker runs it on its
    event loop instead of handing each call to a thread.
    """

    name = "logger"

    async def deliver(self, delivery: DeliveryContext, config: Mapping[str, Any]) -> Delivered:
        # Ids only: the content and the recipient's identity may be personal data.
        if _log.isEnabledFor(logging.INFO):
            _log.info(
                "chimeway delivery %s on channel %s (notification %s, attempt %d)",
                delivery.delivery_id,
                delivery.channel,
                delivery.notification_id,
                delivery.attempt_number,
            )
        return Delivered(dict(_DELIVERED.meta))
