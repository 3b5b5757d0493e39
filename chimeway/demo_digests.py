"""The digest part of ``make demo``: project updates held for a daily email digest, sent early.

Three watchers each hear of five project updates by email. A digest rule holds those emails for
the day (until 09:00 in Paris), one bucket per watcher and project; the demo then closes the
window as an operator would (:func:`chimeway.digests.close_windows`), so the worker's flush job
emits one digest email per bucket at once, and prints the story of a member and of its digest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy import select
from sqlalchemy.orm import Session

from .digests import DIGEST_KEY, DigestRule, close_windows, define_rule
from .explain import explain_delivery
from .models import Delivery, Notification
from .notifier import Notifier, Recipient
from .trigger import trigger

__all__ = ["RULE", "UPDATES", "WATCHERS", "close_digest_windows", "show_digest", "trigger_updates"]

WATCHERS = ("user:900", "user:901", "user:902")
UPDATES = (
    ("apollo", "Ada"),
    ("apollo", "Grace"),
    ("gemini", "Linus"),
    ("apollo", "Barbara"),
    ("gemini", "Ken"),
)
RULE = DigestRule(
    "project-updates-daily",
    "email",
    match_notification_key="project_updated",
    group_by="project",
    daily_at="09:00",
    time_zone="Europe/Paris",
)


class ProjectUpdated(Notifier):
    notification_key = "project_updated"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient]:
        return [Recipient(watcher) for watcher in WATCHERS]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return ["email"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"title": f"{params['author']} updated {params['project']}"}


def trigger_updates(session: Session, schema: str) -> int:
    """Define the rule and trigger the updates (the caller commits); returns the deliveries held."""
    define_rule(session, RULE)
    held = 0
    for number, (project, author) in enumerate(UPDATES):
        params = {"project": project, "author": author}
        result = trigger(
            session, ProjectUpdated(), params, idempotency_key=f"project-update-{number}", queue_schema=schema
        )
        held += len(result.delivery_ids) - len(result.job_ids)
    return held


def close_digest_windows(dsn: str, schema: str) -> int:
    """Send the day's digests now instead of at 09:00 in Paris; returns the buckets closed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return close_windows(conn, RULE.rule_key, schema=schema)


def show_digest(session: Session) -> None:
    """Print one digest email (its message, its members) and the story of one of its members."""
    digest = session.scalar(
        select(Delivery)
        .where(Delivery.metadata_["notification_key"].astext == DIGEST_KEY)
        .order_by(Delivery.actor_id, Delivery.inserted_at)
        .limit(1)
    )
    if digest is None:
        return
    story = explain_delivery(session, digest.id)
    note = session.get(Notification, digest.notification_id)
    message = note.metadata_ if note is not None else {}
    print(f"\n  The digest email to {story.recipient} ({story.status}): {message.get('title')}")
    for line in str(message.get("body", "")).splitlines():
        print(f"    - {line}")
    if story.digest is not None and story.digest.member_ids:
        member = explain_delivery(session, story.digest.member_ids[0])
        print(f"  It carries {len(story.digest.member_ids)} held emails; the story of the first:")
        for entry in member.timeline:
            detail = ", ".join(f"{k}={v}" for k, v in entry.detail.items() if v is not None)
            print(f"    {entry.at:%H:%M:%S.%f}  {entry.event:<22} {detail}")
        print(f"  Why: {member.why}")
