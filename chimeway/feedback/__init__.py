"""Provider feedback: a provider's report that a message was delivered, bounced or complained of.

A provider (the SMTP relay, an email or SMS API) tells you what became of a message after it
accepted it, by webhook. :func:`receive` takes that webhook as it arrived (raw body and headers),
checks its Standard Webhooks signature (:func:`chimeway.webhooks.verify`, with its replay window),
reads it (:func:`parse_feedback`, or a parser of your own for a provider's format), finds the
delivery by the provider message id its attempt recorded, and applies the event once:

* ``bounced`` (a hard bounce) ends a ``succeeded`` or ``failed`` delivery ``cancelled`` /
  ``bounced``; the dispatch worker won't send it again;
* ``delivered`` and ``complained`` change no status;
* each is added to the delivery's ``metadata["provider_feedback"]`` (type, adapter, provider event
  id, time) and shows in :func:`chimeway.explain_delivery`'s timeline as ``provider_<type>``.

The same event again (the same adapter and provider event id: a replay, a provider's retry) finds
its entry and changes nothing. :func:`areceive` is the async twin. The ASGI endpoint in
:mod:`chimeway.feedback.asgi` (``pip install chimeway[feedback]``) serves this over HTTP.

The body :func:`parse_feedback` reads is a JSON object::

    {"type": "bounced", "provider_message_id": "<…@acme.test>", "provider_event_id": "evt_1"}

``provider_event_id`` defaults to the ``webhook-id`` header (a Standard Webhooks sender keeps it
the same on every retry of one event).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import psycopg

from pgqueue.targets import async_connection, sync_connection

from ..adapters.base import message_id
from ..errors import ChimewayError
from ..states import Reason
from ..store import queries_for
from ..webhooks import DEFAULT_TOLERANCE, VerifiedWebhook, WebhookVerificationError, verify

__all__ = [
    "FEEDBACK_TYPES",
    "MAX_BODY_BYTES",
    "FeedbackOutcome",
    "InvalidFeedback",
    "ProviderFeedback",
    "aapply_feedback",
    "apply_feedback",
    "areceive",
    "parse_feedback",
    "receive",
]

FeedbackType = Literal["delivered", "bounced", "complained"]
FEEDBACK_TYPES: Final[tuple[FeedbackType, ...]] = ("delivered", "bounced", "complained")
#: The largest webhook body read; a larger one is refused unread.
MAX_BODY_BYTES: Final = 64 * 1024
#: Provider events kept per delivery (the oldest go first); a replay is recognised among them.
KEEP_EVENTS: Final = 50
# The states a bounce ends: accepted then bounced, or failed and waiting for a retry.
_CANCELLABLE: Final = ["succeeded", "failed"]
_MAX_ID: Final = 255


class InvalidFeedback(ChimewayError, ValueError):
    """A provider webhook is malformed, unsigned or badly signed; nothing was written."""


@dataclass(frozen=True, slots=True)
class ProviderFeedback:
    """One provider event about one message, as read from its webhook."""

    type: FeedbackType
    provider_message_id: str
    provider_event_id: str


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    """What applying a provider event did.

    ``result`` is ``"applied"`` (the event was recorded; ``changed`` says whether it moved the
    status), ``"duplicate"`` (seen before: nothing written) or ``"unknown_message"`` (no attempt of
    that adapter recorded the message id: nothing written; the provider may retry later)."""

    result: Literal["applied", "duplicate", "unknown_message"]
    delivery_id: uuid.UUID | None = None
    status: str | None = None
    suppression_reason: str | None = None
    changed: bool = False


Parser = Callable[[Any, VerifiedWebhook], ProviderFeedback]


def _identifier(document: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = document.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidFeedback(f"{key} must be a non-empty string")
    if len(value) > _MAX_ID or not value.isprintable():
        raise InvalidFeedback(f"{key} must be at most {_MAX_ID} printable characters")
    return value


def parse_feedback(document: Any, webhook: VerifiedWebhook) -> ProviderFeedback:
    """Read Chimeway's feedback format (see the module doc); raises InvalidFeedback naming the field."""
    if not isinstance(document, Mapping):
        raise InvalidFeedback("the feedback must be a JSON object")
    kind = document.get("type")
    if kind not in FEEDBACK_TYPES:
        raise InvalidFeedback(f"type must be one of {', '.join(FEEDBACK_TYPES)}, got {kind!r}"[:200])
    return ProviderFeedback(
        kind,
        _identifier(document, "provider_message_id"),
        _identifier(document, "provider_event_id", webhook.message_id),
    )


def _read(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    parser: Parser,
    tolerance: float,
    now: float | None,
) -> ProviderFeedback:
    if len(body) > MAX_BODY_BYTES:
        raise InvalidFeedback(f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        webhook = verify(body, headers, secret, tolerance=tolerance, now=now)
    except WebhookVerificationError as exc:
        raise InvalidFeedback(str(exc)) from None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidFeedback("the body is not JSON") from None
    try:
        feedback = parser(document, webhook)
    except InvalidFeedback:
        raise
    except (LookupError, TypeError, ValueError) as exc:  # a provider parser meeting an odd body
        raise InvalidFeedback(f"the feedback can't be read: {type(exc).__name__}") from None
    if not isinstance(feedback, ProviderFeedback) or feedback.type not in FEEDBACK_TYPES:
        raise InvalidFeedback("the parser must return a ProviderFeedback of a known type")
    return feedback


def _params(adapter: str, feedback: ProviderFeedback, delivery_id: uuid.UUID) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "adapter": adapter,
        "event_id": feedback.provider_event_id,
        "type": feedback.type,
        "cancel": feedback.type == "bounced",
        "cancellable": _CANCELLABLE,
        "reason": Reason.BOUNCED,
        "keep": KEEP_EVENTS,
    }


def _lookup(adapter: str, feedback: ProviderFeedback) -> dict[str, Any]:
    if not isinstance(adapter, str) or not adapter:
        raise InvalidFeedback("adapter must be the name of the adapter that sent the message")
    # Stored as the attempt stored it (a long id as its SHA-256).
    return {"adapter": adapter, "provider_message_id": message_id(feedback.provider_message_id)}


def _outcome(delivery_id: uuid.UUID, row: tuple[Any, ...] | None) -> FeedbackOutcome:
    if row is None:
        return FeedbackOutcome("duplicate", delivery_id)
    status, reason, before = row
    return FeedbackOutcome("applied", delivery_id, status, reason, changed=status != before)


def apply_feedback(
    target: Any, adapter: str, feedback: ProviderFeedback, *, schema: str = "public"
) -> FeedbackOutcome:
    """Apply ``feedback`` to the delivery whose ``adapter`` attempt recorded its message id, once.

    ``target`` is a psycopg ``Connection`` or a SQLAlchemy ``Session``: the change is made in its
    transaction, and the caller commits."""
    queries = queries_for(schema)
    conn = sync_connection(target)
    found = conn.execute(queries.feedback_find_delivery, _lookup(adapter, feedback)).fetchone()
    if found is None:
        return FeedbackOutcome("unknown_message")
    row = conn.execute(queries.feedback_apply, _params(adapter, feedback, found[0])).fetchone()
    return _outcome(found[0], row)


async def aapply_feedback(
    target: Any, adapter: str, feedback: ProviderFeedback, *, schema: str = "public"
) -> FeedbackOutcome:
    """The async twin of :func:`apply_feedback` (a psycopg ``AsyncConnection`` or an ``AsyncSession``)."""
    queries = queries_for(schema)
    conn = await async_connection(target)
    found = await (await conn.execute(queries.feedback_find_delivery, _lookup(adapter, feedback))).fetchone()
    if found is None:
        return FeedbackOutcome("unknown_message")
    cursor = await conn.execute(queries.feedback_apply, _params(adapter, feedback, found[0]))
    return _outcome(found[0], await cursor.fetchone())


def receive(
    conn: psycopg.Connection[Any],
    *,
    adapter: str,
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    schema: str = "public",
    parser: Parser = parse_feedback,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> FeedbackOutcome:
    """Verify, read and apply one provider webhook, in a transaction block on ``conn`` (committed at
    its end, or a savepoint when ``conn`` is already in a transaction).

    Raises :class:`InvalidFeedback` (nothing written) when the webhook is unsigned, badly signed,
    outside the replay window, or malformed."""
    feedback = _read(body, headers, secret, parser, tolerance, now)
    with conn.transaction():
        return apply_feedback(conn, adapter, feedback, schema=schema)


async def areceive(
    conn: psycopg.AsyncConnection[Any],
    *,
    adapter: str,
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    schema: str = "public",
    parser: Parser = parse_feedback,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> FeedbackOutcome:
    """The async twin of :func:`receive`."""
    feedback = _read(body, headers, secret, parser, tolerance, now)
    async with conn.transaction():
        return await aapply_feedback(conn, adapter, feedback, schema=schema)
