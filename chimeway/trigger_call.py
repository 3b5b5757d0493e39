"""One trigger call, checked before any I/O: its errors, its result, the validation of what the
caller and the notifier hand in, and the fan-out it asks :mod:`chimeway.planning` to write.

:func:`chimeway.trigger.trigger` does the writing; everything here is pure (it asks the notifier for
recipients, channels and content, and builds statements without running them).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from . import telemetry
from .dispatch import dispatch_job
from .errors import ChimewayError
from .journeys.definition import Journey
from .journeys.start import Start
from .models import Event
from .notifier import Notifier, Recipient
from .planning import FanOut, UuidList
from .redaction import redact

__all__ = ["PlanningFailed", "TriggerCall", "TriggerError", "TriggerResult"]

_MAX_CHANNEL_LENGTH = 128  # the deliveries table's check
_MAX_FALLBACK_DELAY = 30 * 86_400.0
# json.dumps(..., allow_nan=False) would build an encoder on every call (once per recipient)
_ENCODER = json.JSONEncoder(allow_nan=False)
# An escaped NUL in JSON text (after an even number of backslashes): jsonb can't store it.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class TriggerError(ChimewayError, ValueError):
    """The trigger call itself is invalid (idempotency key, params, notifier)."""


class PlanningFailed(ChimewayError):
    """The notifier failed while planning (its recipients, channels or build raised)."""

    def __init__(self, step: str, error: BaseException) -> None:
        self.step = step
        self.error = error
        super().__init__(f"planning failed: {step}: {type(error).__name__}: {error}")


@dataclass(frozen=True, slots=True)
class TriggerResult:
    """What a trigger created (or, for a duplicate key, the event that already existed).

    Ids, not ORM objects, so a fan-out to 100,000 recipients returns in no time: load rows with
    your session when you need them. ``recipients`` and ``notification_ids`` are parallel, in the
    order of the recipients' identities; ``delivery_ids`` follow the same order, then the channel
    name. ``suppressed`` maps the deliveries suppressed at planning to their reason; every other
    delivery is pending with one dispatch job (``job_ids``, in the same order; the jobs of delayed
    fallback channels, scheduled ``fallback_delay`` out, come last).
    """

    event: Event
    duplicate: bool
    recipients: Sequence[Recipient] = ()
    notification_ids: Sequence[uuid.UUID] = ()
    delivery_ids: Sequence[uuid.UUID] = ()
    suppressed: Mapping[uuid.UUID, str] = field(default_factory=lambda: MappingProxyType({}))
    job_ids: Sequence[int] = ()
    #: a journey notifier's runs, one per notification in the same order (chimeway.journeys)
    run_ids: Sequence[uuid.UUID] = ()


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TriggerError(f"{what} must be a string, got {value!r}")
    if "\x00" in value:
        raise TriggerError(f"{what} must not contain NUL characters, got {value!r}")
    return value


def _normalize_recipients(raw: Sequence[Recipient | str]) -> list[Recipient]:
    by_identity: dict[str, Recipient] = {}
    for item in raw:
        recipient = Recipient(item) if isinstance(item, str) else item
        if not isinstance(recipient, Recipient):
            raise TriggerError(f"recipients must be Recipient objects or identity strings, got {item!r}")
        identity = recipient.identity.strip() if isinstance(recipient.identity, str) else ""
        if identity and identity not in by_identity:
            _check_text(identity, "a recipient's identity")
            _check_text(recipient.type, "a recipient's type")
            if identity != recipient.identity:
                recipient = Recipient(identity, recipient.type)
            by_identity[identity] = recipient
    return [by_identity[key] for key in sorted(by_identity)]


def _bad_channels(raw: object) -> TriggerError:
    return TriggerError(f"channels must be a list of strings, got {raw!r}")


class _Channels:
    """Validates and normalises what ``channels()`` returns; remembers each distinct answer, since
    most notifiers give every recipient the same list."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, ...], list[str]] = {}

    def __call__(self, raw: Sequence[str]) -> list[str]:
        if isinstance(raw, str):
            raise _bad_channels(raw)
        try:
            key = tuple(raw)
            known = self._seen.get(key)
        except TypeError:  # not iterable, or unhashable items
            raise _bad_channels(raw) from None
        if known is None:
            if not all(isinstance(c, str) for c in key):
                raise _bad_channels(raw)
            known = sorted({c.strip() for c in raw if c.strip()})
            for channel in known:
                _check_text(channel, "a channel")
                if len(channel) > _MAX_CHANNEL_LENGTH:
                    raise TriggerError(
                        f"channel names are at most {_MAX_CHANNEL_LENGTH} characters, got {channel[:40]!r}…"
                    )
            self._seen[key] = known
        return known


def _fallbacks(raw: object, channels: Sequence[str]) -> frozenset[str]:
    """The delayed fallback channels a notifier named, checked against the recipient's channels."""
    if isinstance(raw, str) or not isinstance(raw, Sequence | frozenset | set | tuple):
        raise TriggerError(f"delayed_fallback_channels must be a list of strings, got {raw!r}")
    if not raw:
        return frozenset()
    names = set()
    for item in raw:
        if not isinstance(item, str):
            raise TriggerError(f"delayed_fallback_channels must be a list of strings, got {raw!r}")
        name = item.strip()
        if name == "in_app":
            raise TriggerError(
                "delayed_fallback_channels must not include 'in_app' (the inbox it falls back from)"
            )
        if name not in channels:
            raise TriggerError(
                f"delayed fallback channel {name!r} is not one of the recipient's channels {list(channels)!r}"
            )
        names.add(name)
    return frozenset(names)


def _fallback_delay(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _MAX_FALLBACK_DELAY:
        raise TriggerError(
            f"fallback_delay must be a number of seconds from 0 to {_MAX_FALLBACK_DELAY:g}, got {value!r}"
        )
    return float(value)


def _json_text(value: Any, what: str) -> str:
    """``value`` redacted, as JSON text; TriggerError unless it is a JSON object the database takes."""
    if not isinstance(value, Mapping):
        raise TriggerError(f"{what} must be a mapping, got {type(value).__name__}")
    try:
        text = _ENCODER.encode(redact(value))
    except RecursionError:
        raise TriggerError(f"{what} is nested too deeply to store") from None
    except (TypeError, ValueError) as exc:
        raise TriggerError(f"{what} must contain only JSON values: {exc}") from None
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise TriggerError(f"{what} must not contain NUL characters")
    return text


def _call(step: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise PlanningFailed(step, exc) from exc


@dataclass(frozen=True)
class TriggerCall:
    """One validated trigger call: what the event row gets, before any I/O."""

    notifier: Notifier
    params: Mapping[str, Any]
    idempotency_key: str
    correlation_id: str | None
    payload: dict[str, Any]
    fallback_delay: float

    @classmethod
    def check(
        cls, notifier: Notifier, params: Mapping[str, Any], idempotency_key: str, correlation_id: str | None
    ) -> TriggerCall:
        if not isinstance(idempotency_key, str) or not idempotency_key.strip():
            raise TriggerError(f"idempotency_key must be a non-blank string, got {idempotency_key!r}")
        if not isinstance(notifier, Notifier) or not notifier.notification_key:
            raise TriggerError(
                f"notifier must be a chimeway.Notifier with a notification_key, got {notifier!r}"
            )
        payload = json.loads(_json_text(params, "params"))
        delay = _fallback_delay(notifier.fallback_delay)
        if notifier.journey is not None and not isinstance(notifier.journey, Journey):
            raise TriggerError(
                f"notifier.journey must be a chimeway.journeys.Journey, got {notifier.journey!r}"
            )
        if notifier.journey is not None:
            Start(notifier.journey, notifier.notification_key, payload).first_due_in()  # a bad wait_until
        return cls(notifier, params, idempotency_key, correlation_id, payload, delay)

    def journey_start(self) -> Start | None:
        journey = self.notifier.journey
        return None if journey is None else Start(journey, self.key, self.payload)

    @property
    def key(self) -> str:
        return self.notifier.notification_key

    def insert_event(self) -> Any:
        # The unique index on the key decides a race: the loser waits for the winner's commit
        # and inserts nothing.
        return (
            pg_insert(Event)
            .values(
                notification_key=self.key,
                notification_version=self.notifier.version,
                idempotency_key=self.idempotency_key,
                payload=self.payload,
                correlation_id=self.correlation_id,
            )
            .on_conflict_do_nothing(index_elements=[Event.idempotency_key])
            .returning(Event)
        )

    def existing_event(self) -> Any:
        return select(Event).where(Event.idempotency_key == self.idempotency_key)

    def fan_out(self, event: Event) -> FanOut:
        """Ask the notifier for the recipients; the fan-out asks for the rest as it writes."""
        notifier, params = self.notifier, self.params
        recipients = _normalize_recipients(_call("recipients", notifier.recipients, params))
        category = notifier.category or self.payload.get("category")
        channels = _Channels()
        common: dict[str, Any] = {
            "event_id": event.id,
            "notification_key": self.key,
            # a blank category is no category (the inbox's column refuses blanks)
            "category": (category.strip() or None) if isinstance(category, str) else None,
            "correlation_id": self.correlation_id,
            "recipients": recipients,
            "content_of": lambda r: _json_text(_call("build", notifier.build, params, r), "build()"),
            "job_template": dispatch_job(uuid.UUID(int=0)),
        }
        if notifier.journey is not None:
            # the runs plan each step's delivery; the fan-out writes the notifications only
            return FanOut(**common, channels_of=lambda r: ())
        return FanOut(
            **common,
            channels_of=lambda r: channels(_call("channels", notifier.channels, params, r)),
            fallbacks_of=lambda r, names: _fallbacks(
                _call("delayed_fallback_channels", notifier.delayed_fallback_channels, params, r), names
            ),
            fallback_delay=self.fallback_delay,
        )

    def plan_span(self, event: Event) -> Any:
        return telemetry.span(
            ("chimeway", "deliveries", "plan"), {"notification_key": self.key, "event_id": event.id}
        )

    def result(
        self, event: Event, plan: FanOut, span: dict[str, Any], start: Start | None = None
    ) -> TriggerResult:
        span.update(
            notifications=len(plan.notification_ids),
            deliveries=len(plan.delivery_ids),
            suppressed=len(plan.reasons),
            jobs=len(plan.job_ids),
        )
        return TriggerResult(
            event,
            False,
            plan.recipients,
            UuidList(plan.notification_ids),
            UuidList(plan.delivery_ids),
            MappingProxyType(dict(plan.suppressed())),
            plan.job_ids,
            tuple(start.run_ids) if start is not None else (),
        )
