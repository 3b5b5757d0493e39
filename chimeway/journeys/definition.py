"""A journey's definition: ordered steps, each a channel, a wait and a condition, validated once.

No I/O here. :class:`Journey` checks itself when it is made, so a bad definition fails at import
time of the notifier that declares it, not on some recipient's third step. Its JSON form
(:meth:`Journey.steps_json`) is what the database stores; a run advances from that row alone.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..errors import ChimewayError

__all__ = ["BUILTIN_CHANNELS", "CONDITIONS", "Condition", "Journey", "JourneyError", "Step"]

#: The outcomes a step's condition may name: how the step it looks at (``after``) ended.
#: ``temporary_failure`` fires early, on that delivery's first failed attempt.
Condition = Literal[
    "delivered",
    "suppressed",
    "temporary_failure",
    "retries_exhausted",
    "permanent_failure",
    "bounced",
    "cancelled",
    "skipped",
]
CONDITIONS: Final[tuple[Condition, ...]] = (
    "delivered",
    "suppressed",
    "temporary_failure",
    "retries_exhausted",
    "permanent_failure",
    "bounced",
    "cancelled",
    "skipped",
)
#: The channels a journey may use without naming its own (``Journey(channels=...)``).
BUILTIN_CHANNELS: Final = frozenset({"in_app", "email", "sms", "push", "chat", "webhook"})
_MAX_DELAY: Final = 366 * 86_400.0
_MAX_STEPS: Final = 50


class JourneyError(ChimewayError, ValueError):
    """A journey definition is invalid; the message names the step and the field."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step: send on ``channel`` once its wait is over, if its condition holds.

    ``order`` places it (unique in the journey). The wait starts when the previous step settles
    (its delivery's outcome is known, or it was skipped): ``delay`` seconds, and no earlier than
    the timestamp in the trigger params' ``wait_until`` key (ISO 8601 with an offset), if named.
    ``when`` lists the outcomes of step ``after`` (a key; default the previous step) for which
    this step is sent; empty means always. ``template`` = (key, version) renders the delivery
    with :mod:`chimeway.rendering`, from the notification's content.
    """

    order: int
    channel: str
    key: str = ""
    delay: float = 0.0
    wait_until: str | None = None
    when: Collection[Condition] = ()
    after: str | None = None
    template: tuple[str, int] | None = None

    @property
    def name(self) -> str:
        return self.key or f"step{self.order}"

    def to_json(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "key": self.name,
            "channel": self.channel,
            "delay": self.delay,
            "wait_until": self.wait_until,
            "when": sorted(self.when),
            "after": self.after,
            "template": list(self.template) if self.template else None,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Step:
        template = raw.get("template")
        return cls(
            order=int(raw["order"]),
            channel=str(raw["channel"]),
            key=str(raw["key"]),
            delay=float(raw.get("delay") or 0.0),
            wait_until=raw.get("wait_until"),
            when=tuple(raw.get("when") or ()),
            after=raw.get("after"),
            template=(str(template[0]), int(template[1])) if template else None,
        )


def _where(step: Step) -> str:
    return f"step {step.order} ({step.name!r})" if step.key else f"step {step.order}"


def _check_step(step: object, channels: Collection[str]) -> Step:
    if not isinstance(step, Step):
        raise JourneyError(f"steps must be chimeway.journeys.Step objects, got {step!r}")
    order = step.order
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise JourneyError(f"a step's order must be an integer >= 1, got {order!r}")
    where = _where(step)
    if not isinstance(step.key, str) or (step.key and not step.key.strip()):
        raise JourneyError(f"{where}: key must be a non-blank string, got {step.key!r}")
    if not isinstance(step.channel, str) or step.channel not in channels:
        raise JourneyError(
            f"{where}: unknown channel {step.channel!r}; known channels: {sorted(channels)} "
            "(name others with Journey(channels=...))"
        )
    delay = step.delay
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= _MAX_DELAY:
        raise JourneyError(
            f"{where}: delay must be a number of seconds from 0 to {_MAX_DELAY:g}, got {delay!r}"
        )
    if step.wait_until is not None and (not isinstance(step.wait_until, str) or not step.wait_until.strip()):
        raise JourneyError(
            f"{where}: wait_until must name a key of the trigger params, got {step.wait_until!r}"
        )
    if isinstance(step.when, str):
        raise JourneyError(f"{where}: when must be a list of outcomes, got the string {step.when!r}")
    unknown = [c for c in step.when if c not in CONDITIONS]
    if unknown:
        raise JourneyError(f"{where}: unknown outcome(s) {unknown!r} in when; valid: {list(CONDITIONS)}")
    template = step.template
    if template is not None and (
        not isinstance(template, tuple)
        or len(template) != 2
        or not isinstance(template[0], str)
        or not template[0].strip()
        or isinstance(template[1], bool)
        or not isinstance(template[1], int)
        or template[1] < 1
    ):
        raise JourneyError(f"{where}: template must be (key, version >= 1), got {template!r}")
    return step


def _check_graph(steps: Sequence[Step]) -> None:
    """Every ``after`` names an earlier step: following them never comes back (no cycle)."""
    by_key = {s.name: s for s in steps}
    for step in steps:
        if step.after is None:
            continue
        if step.after not in by_key:
            raise JourneyError(
                f"{_where(step)}: after names no step: {step.after!r}; steps: {sorted(by_key)}"
            )
        # walk the chain of `after` links from this step: a cycle comes back to a step seen before
        path = [step.name]
        current: Step | None = step
        while current is not None and current.after is not None:
            nxt = by_key[current.after]
            if nxt.name in path:
                cycle = " -> ".join([*path[path.index(nxt.name) :], nxt.name])
                raise JourneyError(f"{_where(step)}: the steps' after links form a cycle: {cycle}")
            path.append(nxt.name)
            current = nxt
        if by_key[step.after].order >= step.order:
            raise JourneyError(
                f"{_where(step)}: after must name an earlier step, but {step.after!r} has order "
                f"{by_key[step.after].order}"
            )


@dataclass(frozen=True)
class Journey:
    """An ordered series of steps a notifier's notification goes through (see :class:`Step`).

    ``key`` and ``version`` name the definition: the database keeps one per pair, and a changed
    definition needs a new version (runs in flight keep following theirs). ``end_on`` and
    ``advance_on`` are application events (``chimeway.journeys.signal``) that end a run, or end
    the wait of its current step. ``stop_when_read``: a run whose notification was read ends
    before its next step. Channels are checked against ``channels`` (default
    :data:`BUILTIN_CHANNELS`).
    """

    key: str
    version: int
    steps: Sequence[Step]
    end_on: Collection[str] = ()
    advance_on: Collection[str] = ()
    stop_when_read: bool = True
    channels: Collection[str] | None = None
    ordered: tuple[Step, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key.strip():
            raise JourneyError(f"a journey's key must be a non-blank string, got {self.key!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise JourneyError(f"journey {self.key!r}: version must be an integer >= 1, got {self.version!r}")
        if isinstance(self.steps, str | bytes) or not isinstance(self.steps, Sequence) or not self.steps:
            raise JourneyError(f"journey {self.key!r}: steps must be a non-empty list of Step")
        if len(self.steps) > _MAX_STEPS:
            raise JourneyError(f"journey {self.key!r}: at most {_MAX_STEPS} steps, got {len(self.steps)}")
        known = BUILTIN_CHANNELS if self.channels is None else frozenset(self.channels)
        steps = [_check_step(s, known) for s in self.steps]
        seen: dict[int, Step] = {}
        for step in steps:
            if step.order in seen:
                raise JourneyError(
                    f"journey {self.key!r}: duplicate step order {step.order} "
                    f"({seen[step.order].name!r} and {step.name!r})"
                )
            seen[step.order] = step
        names: dict[str, Step] = {}
        channels: dict[str, Step] = {}
        for step in sorted(steps, key=lambda s: s.order):
            if step.name in names:
                raise JourneyError(f"journey {self.key!r}: duplicate step key {step.name!r}")
            names[step.name] = step
            if step.channel in channels:
                raise JourneyError(
                    f"journey {self.key!r}: {_where(step)} uses channel {step.channel!r} like "
                    f"{_where(channels[step.channel])}; a notification has one delivery per channel"
                )
            channels[step.channel] = step
        ordered = tuple(sorted(steps, key=lambda s: s.order))
        _check_graph(ordered)
        for name, events in (("end_on", self.end_on), ("advance_on", self.advance_on)):
            if isinstance(events, str) or not all(isinstance(e, str) and e.strip() for e in events):
                raise JourneyError(
                    f"journey {self.key!r}: {name} must be a list of event names, got {events!r}"
                )
        both = set(self.end_on) & set(self.advance_on)
        if both:
            raise JourneyError(f"journey {self.key!r}: events both end and advance a run: {sorted(both)}")
        object.__setattr__(self, "ordered", ordered)

    def steps_json(self) -> str:
        """The stored form of the steps, in order."""
        return json.dumps([s.to_json() for s in self.ordered], sort_keys=True)
