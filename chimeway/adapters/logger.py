"""The default adapter: logs that a delivery happened (channel and ids, never content) and succeeds."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .base import Delivered, DeliveryContext

__all__ = ["LoggerAdapter"]

_log = logging.getLogger("chimeway.adapters.logger")


class LoggerAdapter:
    """Writes one INFO line per delivery on the ``chimeway.adapters.logger`` logger."""

    name = "logger"

    def deliver(self, delivery: DeliveryContext, config: Mapping[str, Any]) -> Delivered:
        # Ids only: the content and the recipient's identity may be personal data.
        _log.info(
            "chimeway delivery %s on channel %s (notification %s, attempt %d)",
            delivery.delivery_id,
            delivery.channel,
            delivery.notification_id,
            delivery.attempt_number,
        )
        return Delivered({"adapter": "logger", "logged": True})
