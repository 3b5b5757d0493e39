"""``make demo``: Chimeway end to end, on whatever database :mod:`pgqueue.localdb` finds.

Migrates a fresh schema, starts a local webhook receiver that fails some requests on purpose,
gives one recipient quiet hours that hold right now, triggers a few hundred notifications over a
``webhook`` channel and a ``logger`` channel, holds some emails for a daily digest and closes its
window (:mod:`chimeway.demo_digests`), runs the real worker process (``python -m
chimeway.worker``) until every delivery has ended or been deferred, then prints a summary by status
and reason, the story of one delivery that needed a retry, the story of the deferred one, and one
recipient's inbox and one digest email with the story of a member it carries.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from pgqueue.localdb import find_database

from . import demo_digests, inbox, policy
from .config import Settings
from .deliveries import explain_delivery, terminal_states
from .migrations import migrate_all
from .models import Delivery, DeliveryAttempt
from .notifier import Notifier, Recipient
from .testing import ScriptedWebhookServer
from .trigger import trigger
from .worker import engine_for, session_factory

SCHEMA = "chimeway_demo"
EVENTS = 100
RECIPIENTS_PER_EVENT = 3
RETRY_BACKOFF = 0.2
DEADLINE = 90.0
#: the recipient whose quiet hours hold during the demo, and where they live
NIGHT_OWL = "user:7"
NIGHT_OWL_ZONE = "Pacific/Auckland"
#: the recipient whose inbox the demo shows
INBOX_OF = "user:0"


def receiver_script(recipient: str) -> Sequence[int]:
    """What the receiver answers each attempt for a recipient, by the recipient's number."""
    number = int(recipient.rsplit(":", 1)[-1])
    return {
        0: [500, 200],  # fails once, then succeeds: retried
        1: [410],  # gone: bounced, never retried
        2: [400],  # rejected: permanent, never retried
        3: [503],  # always failing: retries exhausted after 5 attempts
        4: [429, 429, 200],  # throttled twice
    }.get(number % 10, [200])


class OrderShipped(Notifier):
    notification_key = "order_shipped"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient]:
        return [Recipient(f"user:{user}") for user in params["users"]]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return ["webhook", "in_app"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"text": f"Order {params['order']} has shipped"}


def _reset_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(dsn) as conn:
        for status in migrate_all(conn, SCHEMA):
            print(f"  {status.component} schema at version {status.version}")


class CommentPosted(Notifier):
    notification_key = "comment_posted"
    category = "comments"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient]:
        return [Recipient(params["to"])]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"text": f"{params['author']} commented on your order"}


def _quiet_hours_now() -> policy.QuietHours:
    """Quiet hours in NIGHT_OWL_ZONE that began an hour ago and end in eight hours."""
    local = datetime.now(ZoneInfo(NIGHT_OWL_ZONE))
    minute = local.hour * 60 + local.minute
    start, end = (minute - 60) % 1440, (minute + 480) % 1440
    return policy.QuietHours(clock_time(*divmod(start, 60)), clock_time(*divmod(end, 60)), NIGHT_OWL_ZONE)


def _trigger_all(sessions: Any) -> int:
    planned = 0
    with sessions() as session:
        policy.upsert_settings(session, NIGHT_OWL, quiet_hours=_quiet_hours_now())
        for number, author in enumerate(("Ada", "Grace")):
            trigger(
                session,
                CommentPosted(),
                {"to": INBOX_OF, "author": author},
                idempotency_key=f"comment-{number}",
                queue_schema=SCHEMA,
            )
            planned += 1
        for order in range(EVENTS):
            users = [order * RECIPIENTS_PER_EVENT + i for i in range(RECIPIENTS_PER_EVENT)]
            result = trigger(
                session,
                OrderShipped(),
                {"order": order, "users": users},
                idempotency_key=f"order-shipped-{order}",
                queue_schema=SCHEMA,
            )
            planned += len(result.delivery_ids)
        planned += demo_digests.trigger_updates(session, SCHEMA)
        session.commit()
    return planned


def _counts(session: Session) -> tuple[int, int]:
    """All deliveries, and those settled: ended, or deferred until quiet hours end."""
    total = session.scalar(select(func.count()).select_from(Delivery)) or 0
    settled = (
        session.scalar(
            select(func.count()).where(
                Delivery.status.in_(terminal_states()) | (Delivery.orchestration_state == "deferred")
            )
        )
        or 0
    )
    return int(total), int(settled)


_last_line = [0.0]


def _progress(done: int, total: int, elapsed: float) -> None:
    width = 40
    filled = int(width * done / total) if total else width
    bar = f"  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} ended  {elapsed:4.1f}s"
    if sys.stdout.isatty():
        sys.stdout.write("\r" + bar)
    elif elapsed - _last_line[0] >= 3 or (total and done == total):
        # Not a terminal (CI, a pipe): a line every few seconds instead of a redrawn bar.
        _last_line[0] = elapsed
        sys.stdout.write(bar + "\n")
    sys.stdout.flush()


def _summary(session: Session) -> None:
    status = case((Delivery.orchestration_state == "deferred", "deferred"), else_=Delivery.status)
    rows = session.execute(
        select(Delivery.channel, status, Delivery.suppression_reason, func.count())
        .group_by(Delivery.channel, status, Delivery.suppression_reason)
        .order_by(Delivery.channel, status, Delivery.suppression_reason)
    ).all()
    attempts = session.scalar(select(func.count()).select_from(DeliveryAttempt))
    print("\n  channel   status      reason               deliveries")
    print("  " + "-" * 54)
    for channel, status, reason, count in rows:
        print(f"  {channel:<9} {status:<11} {reason or '-':<20} {count:>10}")
    print(f"\n  {attempts} attempts recorded in all")


def _explain_a_retry(session: Session) -> None:
    retried = session.scalar(
        select(Delivery.id)
        .join(DeliveryAttempt, DeliveryAttempt.delivery_id == Delivery.id)
        .where(Delivery.status == "succeeded")
        .group_by(Delivery.id)
        .having(func.count() >= 2)
        .limit(1)
    )
    if retried is not None:
        _tell(session, retried)


def _explain_the_deferred(session: Session) -> None:
    deferred = session.scalar(
        select(Delivery.id)
        .where(Delivery.orchestration_state == "deferred")
        .order_by(Delivery.channel)
        .limit(1)
    )
    if deferred is not None:
        print(f"\n  {NIGHT_OWL} has quiet hours in {NIGHT_OWL_ZONE} right now: their deliveries wait.")
        _tell(session, deferred)


def _show_inbox(session: Session) -> None:
    page = inbox.list_for_recipient(session, INBOX_OF, limit=10)
    print(f"\n  The inbox of {INBOX_OF}, newest first:")
    for item in page.items:
        state = "read" if item.read_at else "unread"
        print(
            f"    {item.inserted_at:%H:%M:%S}  {item.notification_key:<15} {state:<7} "
            f"{item.content.get('text')}"
        )
    before = inbox.counts(session, INBOX_OF)
    inbox.mark_read(session, INBOX_OF, page.items[0].id)
    inbox.mark_all_seen(session, INBOX_OF)
    session.commit()
    after = inbox.counts(session, INBOX_OF)
    print(
        f"  Badge: {before.unread} unread, {before.unseen} new; after reading the newest and opening "
        f"the inbox: {after.unread} unread, {after.unseen} new"
    )


def _tell(session: Session, delivery_id: Any) -> None:
    story = explain_delivery(session, delivery_id)
    print(f"\n  The story of delivery {story.delivery_id} ({story.channel} to {story.recipient}):")
    for entry in story.timeline:
        detail = ", ".join(f"{k}={v}" for k, v in entry.detail.items() if v is not None)
        print(f"    {entry.at:%H:%M:%S.%f}  {entry.event:<22} {detail}")
    print(f"  Why: {story.why}")


def main() -> int:
    started = time.monotonic()
    print("Chimeway demo")
    found = find_database()
    print(f"- migrating schema {SCHEMA!r} (dropped first if it exists)")
    _reset_schema(found.dsn)
    settings = Settings(database_url=found.dsn, schema=SCHEMA)
    engine = engine_for(settings, pool_size=2)
    sessions = session_factory(engine, SCHEMA)

    with ScriptedWebhookServer(receiver_script) as receiver, tempfile.TemporaryDirectory() as tmp:
        print(f"- webhook receiver on {receiver.url}: it fails some requests on purpose (5xx, 429, 410, 400)")
        planned = _trigger_all(sessions)
        print(
            f"- triggered {EVENTS} events for {EVENTS * RECIPIENTS_PER_EVENT} recipients: "
            f"{planned} deliveries (and two comments for {INBOX_OF}'s inbox)"
        )
        print(f"- {NIGHT_OWL} has quiet hours now in {NIGHT_OWL_ZONE}: their deliveries will be deferred")
        rule = demo_digests.RULE
        closed = demo_digests.close_digest_windows(found.dsn, SCHEMA)
        print(
            f"- digest rule {rule.rule_key!r} holds {len(demo_digests.UPDATES) * len(demo_digests.WATCHERS)} "
            f"project-update emails, a bucket per watcher and project, until {rule.daily_at} "
            f"{rule.time_zone}; closing its {closed} windows now sends one digest email per bucket"
        )
        config = Path(tmp) / "chimeway.toml"
        config.write_text(
            f'schema = "{SCHEMA}"\nqueue_limit = 20\nretry_backoff = {RETRY_BACKOFF}\nrescue_window = 5\n'
            f'shutdown_grace = 5\n\n[channels.webhook]\nadapter = "webhook"\n'
            f'config = {{ url = "{receiver.url}", timeout = 5 }}\n\n[channels.in_app]\nadapter = "logger"\n'
        )
        print(f"- retry backoff shortened to {RETRY_BACKOFF}s for the demo (the default is 15 s + 2^attempt)")
        log = Path(tmp) / "worker.log"
        env = {**os.environ, "DATABASE_URL": found.dsn, "PYTHONUNBUFFERED": "1"}
        with log.open("w") as log_file:
            worker = subprocess.Popen(
                [sys.executable, "-m", "chimeway.worker", "--config", str(config)],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            print(f"- started the worker: python -m chimeway.worker (pid {worker.pid})")
            try:
                finished = _wait_for_all(sessions, worker, started)
                if sys.stdout.isatty():
                    print()
            finally:
                worker.send_signal(signal.SIGTERM)
                code = worker.wait(30)
        print(f"- worker stopped on SIGTERM with exit code {code}")
        if not finished:
            print("\n".join(log.read_text().splitlines()[-20:]), file=sys.stderr)
            print("demo: not every delivery ended in time", file=sys.stderr)
            return 1

    with sessions() as session:
        _summary(session)
        _explain_a_retry(session)
        _explain_the_deferred(session)
        demo_digests.show_digest(session)
        _show_inbox(session)
    engine.dispose()
    print(f"\nDone in {time.monotonic() - started:.1f}s. Schema {SCHEMA!r} keeps the rows for a look.")
    return 0 if code == 0 else 1


def _wait_for_all(sessions: Any, worker: subprocess.Popen[bytes], started: float) -> bool:
    deadline = time.monotonic() + DEADLINE
    total, ended = 0, 0
    while time.monotonic() < deadline:
        with sessions() as session:
            total, ended = _counts(session)
        _progress(ended, total, time.monotonic() - started)
        if total and ended == total:
            return True
        if worker.poll() is not None:
            return False
        time.sleep(0.2)
    return False


if __name__ == "__main__":
    sys.exit(main())
