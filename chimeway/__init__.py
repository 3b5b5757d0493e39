"""Chimeway: durable, explainable notification delivery on top of pgqueue.

The names an application needs are importable from here::

    from chimeway import Notifier, Recipient, trigger, enqueue_in, explain_delivery

The delivery state machine is :mod:`chimeway.deliveries`; adapters are in
:mod:`chimeway.adapters`; the inbox is :mod:`chimeway.inbox`; digests (one message per window
instead of one per notification) are :mod:`chimeway.digests`; the tables are created by
:mod:`chimeway.migrations` (or ``python -m chimeway migrate``).
"""

from __future__ import annotations

from .adapters import Adapter, Delivered, DeliveryContext, Failed
from .deliveries import AttemptOutcome, explain_delivery
from .dispatch import DispatchWorker, aenqueue_in, enqueue_in
from .errors import ChimewayError, DeliveryNotFound, InvalidValue, NotificationNotFound
from .explain import Explanation
from .migrations import migrate_all
from .notifier import Notifier, Recipient
from .trigger import PlanningFailed, TriggerError, TriggerResult, atrigger, trigger

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AttemptOutcome",
    "ChimewayError",
    "Delivered",
    "DeliveryContext",
    "DeliveryNotFound",
    "DispatchWorker",
    "Explanation",
    "Failed",
    "InvalidValue",
    "NotificationNotFound",
    "Notifier",
    "PlanningFailed",
    "Recipient",
    "TriggerError",
    "TriggerResult",
    "__version__",
    "aenqueue_in",
    "atrigger",
    "enqueue_in",
    "explain_delivery",
    "migrate_all",
    "trigger",
]
