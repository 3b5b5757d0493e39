"""Notifiers: what an application declares for each kind of notification it sends.

::

    class OrderShipped(chimeway.Notifier):
        notification_key = "order_shipped"

        def recipients(self, params):
            return [chimeway.Recipient(f"user:{params['user_id']}")]

        def channels(self, params, recipient):
            return ["email", "in_app"]

        def build(self, params, recipient):
            return {"subject": "Your order shipped", "order": params["order_id"]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .journeys.definition import Journey

__all__ = ["Notifier", "Recipient"]


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who receives a notification: an opaque identity ("user:42") and its type."""

    identity: str
    type: str = "user"


class Notifier:
    """Subclass and set ``notification_key`` (and ``version``); override the three methods.

    ``recipients(params)`` → the recipients; ``channels(params, recipient)`` → channel names
    (default ``["in_app"]``); ``build(params, recipient)`` → the content stored on the
    notification (a JSON object; keys that look like secrets are dropped, see
    :mod:`chimeway.redaction`).

    ``delayed_fallback_channels(params, recipient)`` → the channels (some of ``channels``, never
    ``in_app``) sent only if the notification is still unread ``fallback_delay`` seconds later:
    their dispatch jobs are scheduled that far out, and a notification read by then suppresses
    them (``already_read``). Default: none.

    ``journey`` (a :class:`chimeway.journeys.Journey`) replaces ``channels``: the notification goes
    out step by step, one channel per step, instead of on every channel at once.
    """

    notification_key: str = ""
    version: int = 1
    #: the preference category; defaults to the trigger params' "category" key
    category: str | None = None
    #: seconds a delayed fallback channel waits for the notification to be read
    fallback_delay: float = 900.0
    #: the steps its notifications go through (chimeway.journeys); None: every channel at once
    journey: Journey | None = None

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient | str]:
        raise TypeError(f"{type(self).__name__} must define recipients(params)")

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return ["in_app"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {}

    def delayed_fallback_channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return []
