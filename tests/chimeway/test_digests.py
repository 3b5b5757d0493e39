"""Digests: rules validated at definition, matching deliveries held in buckets, one digest delivery
per bucket at the window's end, members marked digested, explain telling both sides."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import pgqueue
from chimeway import Notifier, Recipient, atrigger, trigger
from chimeway.digests import (
    DIGEST_KEY,
    DigestFlushWorker,
    DigestRule,
    DigestRuleError,
    adefine_rule,
    define_rule,
    flush_window,
    list_rules,
)
from chimeway.explain import explain_delivery
from chimeway.models import Delivery, Notification

from .conftest import SessionFactory


@pytest.fixture
def new_session(sqlalchemy_url: str, schema: str) -> Iterator[SessionFactory]:
    """Sessions mapped to the test's schema, whose plain SQL (the digest tables have no models)
    finds it on the search_path too."""
    engine = create_engine(sqlalchemy_url, connect_args={"options": f"-csearch_path={schema}"})
    mapped = engine.execution_options(schema_translate_map={None: schema})
    yield lambda **options: Session(mapped, **options)
    engine.dispose()


class Comment(Notifier):
    """A comment on a project: every watcher hears of it by email and in the inbox."""

    notification_key = "comment_posted"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient | str]:
        return [f"user:{n}" for n in params["watchers"]]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return ["email", "in_app"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"title": f"{params['author']} commented on {params['project']}"}


def comment(session: Session, schema: str, n: int, watchers: Sequence[int], project: str = "apollo") -> Any:
    params = {"watchers": list(watchers), "author": f"author{n}", "project": project}
    return trigger(session, Comment(), params, idempotency_key=f"comment-{n}", queue_schema=schema)


def email_rule(**fields: Any) -> DigestRule:
    return DigestRule(
        **{"rule_key": "comments-hourly", "channel": "email", "match_notification_key": "comment_posted"}
        | {"window_minutes": 60}
        | fields
    )


def close_windows(session: Session) -> None:
    """Move every open bucket's window end (and its flush job) to now: the window has ended."""
    session.execute(text("UPDATE chimeway_digest_buckets SET window_ends_at = now() - interval '1 second'"))
    session.commit()


def statuses(session: Session) -> dict[str, int]:
    rows = session.execute(select(Delivery.status, Delivery.orchestration_state, Delivery.channel)).all()
    counts: dict[str, int] = {}
    for status, orchestration, channel in rows:
        key = f"{channel}:{status}:{orchestration}"
        counts[key] = counts.get(key, 0) + 1
    return counts


# --- definition ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"window_minutes": 0}, "window_minutes"),
        ({"window_minutes": -5}, "window_minutes"),
        ({"window_minutes": True}, "window_minutes"),
        ({"window_minutes": None, "daily_at": "09:00", "time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"window_minutes": None, "daily_at": "09:00", "time_zone": None}, "time_zone"),
        ({"window_minutes": None, "daily_at": "24:00", "time_zone": "Europe/Paris"}, "daily_at"),
        ({"window_minutes": 60, "daily_at": "09:00", "time_zone": "Europe/Paris"}, "window_minutes"),
        ({"window_minutes": 60, "time_zone": "Europe/Paris"}, "time_zone"),
        ({"match_category": "social"}, "match_notification_key"),
        ({"match_notification_key": None}, "match_notification_key"),
        ({"rule_key": "  "}, "rule_key"),
        ({"channel": ""}, "channel"),
    ],
)
def test_a_bad_rule_is_refused_at_definition_naming_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(DigestRuleError, match=f"^digest rule {field}: ") as caught:
        email_rule(**fields)
    assert caught.value.field == field


def test_an_overlapping_rule_is_refused_and_the_first_rule_stays(new_session: SessionFactory) -> None:
    with new_session() as session:
        first = define_rule(session, email_rule())
        session.commit()
        with pytest.raises(DigestRuleError, match="match_notification_key: another rule already holds"):
            define_rule(session, email_rule(rule_key="comments-daily", window_minutes=1440))
        # the caller's transaction is still usable, and the same rule again is a no-op
        assert define_rule(session, email_rule()) == first
        with pytest.raises(DigestRuleError, match="rule_key: 'comments-hourly' is already defined"):
            define_rule(session, email_rule(window_minutes=30))
        category = email_rule(rule_key="social", match_notification_key=None, match_category="social")
        define_rule(session, category)
        with pytest.raises(DigestRuleError, match="match_category: another rule already holds 'social'"):
            define_rule(
                session, email_rule(rule_key="social2", match_notification_key=None, match_category="social")
            )
        session.commit()
        assert [r.rule_key for r in list_rules(session)] == ["comments-hourly", "social"]


@pytest.mark.anyio
async def test_adefine_rule_defines_in_an_async_session(sa_async_session: AsyncSession) -> None:
    rule = email_rule(window_minutes=None, daily_at="08:30", time_zone="America/New_York")
    first = await adefine_rule(sa_async_session, rule)
    await sa_async_session.commit()
    assert await adefine_rule(sa_async_session, rule) == first
    with pytest.raises(DigestRuleError, match="match_notification_key"):
        await adefine_rule(sa_async_session, email_rule(rule_key="other"))


# --- holding -------------------------------------------------------------------------------------


def test_matching_deliveries_are_held_in_one_bucket_per_recipient_without_a_dispatch_job(
    new_session: SessionFactory, schema: str
) -> None:
    with new_session() as session:
        define_rule(session, email_rule())
        session.commit()
        results = [comment(session, schema, n, [1, 2]) for n in range(3)]
        session.commit()

        assert statuses(session) == {"email:pending:digest_held": 6, "in_app:pending:ready": 6}
        buckets = session.execute(
            text("SELECT recipient_id, member_count, flush_state FROM chimeway_digest_buckets ORDER BY 1")
        ).all()
        assert [tuple(b) for b in buckets] == [("user:1", 3, "pending"), ("user:2", 3, "pending")]
        jobs = pgqueue.all_jobs(session, schema=schema, limit=100)
        flushes = [j for j in jobs if j.worker == DigestFlushWorker.name]
        dispatches = {j.args["delivery_id"] for j in jobs if j.worker != DigestFlushWorker.name}
        # one flush job per bucket, scheduled at its window's end; dispatch jobs only for in_app
        assert len(flushes) == 2
        assert all(j.state == "scheduled" for j in flushes)
        in_app = session.scalars(select(Delivery.id).where(Delivery.channel == "in_app")).all()
        assert dispatches == {str(d) for d in in_app}
        assert sum(len(r.job_ids) for r in results) == 6


def test_a_rule_groups_by_a_param_and_a_category_rule_matches_by_category(
    new_session: SessionFactory, schema: str
) -> None:
    with new_session() as session:
        define_rule(session, email_rule(group_by="project"))
        define_rule(
            session,
            DigestRule("inbox-social", "in_app", match_category="social", window_minutes=5),
        )
        session.commit()
        comment(session, schema, 1, [1], project="apollo")
        comment(session, schema, 2, [1], project="gemini")
        comment(session, schema, 3, [1], project="apollo")
        social = {"watchers": [1], "author": "x", "project": "p", "category": "social"}
        trigger(session, Comment(), social, idempotency_key="social-1", queue_schema=schema)
        session.commit()
        rows = session.execute(
            text(
                "SELECT r.rule_key, b.grouping_value, b.member_count FROM chimeway_digest_buckets b "
                "JOIN chimeway_digest_rules r ON r.id = b.rule_id ORDER BY 1, 2"
            )
        ).all()
        # the social event's email goes to its 'p' bucket (key rule beats category rule on email)
        assert [tuple(r) for r in rows] == [
            ("comments-hourly", "apollo", 2),
            ("comments-hourly", "gemini", 1),
            ("comments-hourly", "p", 1),
            ("inbox-social", "", 1),
        ]


def test_a_suppressed_delivery_is_not_held(new_session: SessionFactory, schema: str) -> None:
    from chimeway.preferences import upsert_channel_preference

    with new_session() as session:
        define_rule(session, email_rule())
        upsert_channel_preference(session, "user:1", "comment_posted", "email", enabled=False)
        session.commit()
        comment(session, schema, 1, [1, 2])
        session.commit()
        assert statuses(session) == {
            "email:suppressed:ready": 1,
            "email:pending:digest_held": 1,
            "in_app:pending:ready": 2,
        }


@pytest.mark.anyio
async def test_atrigger_holds_too(sa_async_session: AsyncSession, schema: str) -> None:
    await adefine_rule(sa_async_session, email_rule())
    await sa_async_session.commit()
    params = {"watchers": [1, 2, 3], "author": "a", "project": "p"}
    await atrigger(sa_async_session, Comment(), params, idempotency_key="async-1", queue_schema=schema)
    await sa_async_session.commit()
    held = await sa_async_session.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.orchestration_state == "digest_held")
    )
    assert held == 3


# --- flushing ------------------------------------------------------------------------------------


def bucket_ids(session: Session) -> list[uuid.UUID]:
    return list(session.scalars(text("SELECT id FROM chimeway_digest_buckets ORDER BY recipient_id")))


def test_a_flush_emits_one_digest_per_bucket_and_marks_the_members_digested(
    new_session: SessionFactory, schema: str, dsn: str
) -> None:
    with new_session() as session:
        define_rule(session, email_rule())
        session.commit()
        for n in range(3):
            comment(session, schema, n, [1, 2])
        session.commit()
        first = bucket_ids(session)[0]
        with psycopg.connect(dsn, autocommit=True) as conn:
            # a window still open: nothing happens, and the caller learns how long to wait
            early = flush_window(conn, first, schema=schema)
            assert (early.buckets, early.digests) == (0, 0)
            assert early.wait is not None
            assert early.wait > 0
            close_windows(session)
            done = flush_window(conn, first, schema=schema)
            again = flush_window(conn, first, schema=schema)
        assert (done.buckets, done.digests, done.members) == (2, 2, 6)
        assert (again.buckets, again.digests, again.wait) == (0, 0, None)

        session.expire_all()
        digests = session.scalars(
            select(Delivery).where(Delivery.metadata_["notification_key"].astext == DIGEST_KEY)
        ).all()
        assert len(digests) == 2
        assert {d.status for d in digests} == {"pending"}
        members = session.scalars(select(Delivery).where(Delivery.status == "digested")).all()
        assert len(members) == 6
        assert {m.digest_delivery_id for m in members} == {d.id for d in digests}
        # the digest is one message: its notification carries the members' titles, in order
        note = session.get(Notification, digests[0].notification_id)
        assert note is not None
        assert note.metadata_["title"] == "3 new notifications"
        assert note.metadata_["body"].splitlines() == [f"author{n} commented on apollo" for n in range(3)]
        assert len(note.metadata_["items"]) == 3
        # each digest has its dispatch job
        jobs = pgqueue.all_jobs(session, schema=schema, limit=100)
        dispatched = {j.args.get("delivery_id") for j in jobs}
        assert {str(d.id) for d in digests} <= dispatched


def test_explain_shows_a_members_bucket_and_digest_and_a_digests_members(
    new_session: SessionFactory, schema: str, dsn: str
) -> None:
    with new_session() as session:
        define_rule(session, email_rule())
        session.commit()
        result = comment(session, schema, 1, [1])
        comment(session, schema, 2, [1])
        session.commit()
        member_id = next(
            d
            for d in result.delivery_ids
            if session.get(Delivery, d).channel == "email"  # type: ignore[union-attr]
        )
        held = explain_delivery(session, member_id)
        assert held.digest_membership is not None
        assert held.digest_membership.flush_state == "pending"
        assert held.why.startswith("held for digest rule 'comments-hourly' until its window ends at")
        assert "digest_held" in [e.event for e in held.timeline]

        close_windows(session)
        with psycopg.connect(dsn, autocommit=True) as conn:
            flush_window(conn, bucket_ids(session)[0], schema=schema)
        session.expire_all()
        member = explain_delivery(session, member_id)
        assert member.status == "digested"
        assert member.digest_membership is not None
        digest_id = member.digest_membership.digest_delivery_id
        assert member.why == f"digested: carried by digest delivery {digest_id} (rule 'comments-hourly')"
        assert [e.event for e in member.timeline][-2:] == ["digest_held", "digested"]

        assert digest_id is not None
        digest = explain_delivery(session, digest_id)
        assert digest.notification_key == DIGEST_KEY
        assert digest.digest is not None
        assert len(digest.digest.member_ids) == 2
        assert member_id in digest.digest.member_ids
        assert "digest_emitted" in [e.event for e in digest.timeline]


def test_a_delivery_for_a_bucket_flushed_meanwhile_is_sent_at_once(
    new_session: SessionFactory, schema: str, dsn: str
) -> None:
    with new_session() as session:
        define_rule(session, email_rule())
        session.commit()
        comment(session, schema, 1, [1])
        session.commit()
        # flushed, but its window end is moved back to the open window (a fan-out that began
        # before the window closed commits after the flush)
        close_windows(session)
        with psycopg.connect(dsn, autocommit=True) as conn:
            flush_window(conn, bucket_ids(session)[0], schema=schema)
        session.execute(
            text(
                "UPDATE chimeway_digest_buckets SET window_ends_at = "
                "chimeway_digest_window_end('fixed', 60, NULL, NULL, NULL, now())"
            )
        )
        session.commit()
        late = comment(session, schema, 2, [1])
        session.commit()
        email = next(d for d in late.delivery_ids if session.get(Delivery, d).channel == "email")  # type: ignore[union-attr]
        row = session.get(Delivery, email)
        assert row is not None
        assert (row.status, row.orchestration_state) == ("pending", "ready")
        jobs = pgqueue.all_jobs(session, schema=schema, limit=100)
        assert str(email) in {j.args.get("delivery_id") for j in jobs}


def test_two_concurrent_flushers_emit_each_bucket_once(
    new_session: SessionFactory, schema: str, dsn: str
) -> None:
    with new_session() as session:
        define_rule(session, email_rule())
        session.commit()
        for n in range(4):
            comment(session, schema, n, range(300))
        session.commit()
        close_windows(session)
        buckets = bucket_ids(session)
    barrier = threading.Barrier(2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def flusher(start: uuid.UUID) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                barrier.wait(timeout=10)
                results.append(flush_window(conn, start, schema=schema, chunk=25))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flusher, args=(b,)) for b in (buckets[0], buckets[-1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sum(r.digests for r in results) == 300
    assert sum(r.members for r in results) == 1200
    with new_session() as session:
        per_bucket = session.execute(
            text(
                "SELECT count(*), count(DISTINCT b.id), count(DISTINCT e.idempotency_key) "
                "FROM chimeway_digest_buckets b JOIN chimeway_deliveries d ON d.id = b.digest_delivery_id "
                "JOIN chimeway_notifications n ON n.id = d.notification_id "
                "JOIN chimeway_events e ON e.id = n.event_id"
            )
        ).one()
        assert tuple(per_bucket) == (300, 300, 300)
        assert statuses(session)["email:digested:digest_held"] == 1200
        digest_count = session.scalar(
            text("SELECT count(*) FROM chimeway_deliveries WHERE metadata ->> 'notification_key' = :k"),
            {"k": DIGEST_KEY},
        )
        assert digest_count == 300


# --- windows and pruning -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "minutes", "hour", "zone", "at", "ends", "starts"),
    [
        # fixed windows are aligned on the epoch
        ("fixed", 60, None, None, "2026-03-28 10:30Z", "2026-03-28 11:00Z", "2026-03-28 10:00Z"),
        ("fixed", 15, None, None, "2026-03-28 10:45Z", "2026-03-28 11:00Z", "2026-03-28 10:45Z"),
        # 09:00 in Paris, across the spring change (UTC+1 → UTC+2 on the night of the 29th)
        ("daily", None, 9, "Europe/Paris", "2026-03-28 10:00Z", "2026-03-29 07:00Z", "2026-03-28 08:00Z"),
        ("daily", None, 9, "Europe/Paris", "2026-03-28 07:59Z", "2026-03-28 08:00Z", "2026-03-27 08:00Z"),
    ],
)
def test_a_window_ends_on_its_boundary_in_its_time_zone(
    conn: psycopg.Connection[Any],
    schema: str,
    kind: str,
    minutes: int | None,
    hour: int | None,
    zone: str | None,
    at: str,
    ends: str,
    starts: str,
) -> None:
    row = conn.execute(
        f'SELECT "{schema}".chimeway_digest_window_end(%(k)s, %(m)s, %(h)s, 0, %(z)s, %(at)s::timestamptz),'
        f' "{schema}".chimeway_digest_window_start(%(k)s, %(m)s, %(z)s,'
        f' "{schema}".chimeway_digest_window_end(%(k)s, %(m)s, %(h)s, 0, %(z)s, %(at)s::timestamptz)),'
        " %(ends)s::timestamptz, %(starts)s::timestamptz",
        {"k": kind, "m": minutes, "h": hour, "z": zone, "at": at, "ends": ends, "starts": starts},
    ).fetchone()
    assert row is not None
    assert (row[0], row[1]) == (row[2], row[3])


def test_deleting_a_flushed_digests_event_keeps_its_members_digested(
    new_session: SessionFactory, schema: str, dsn: str
) -> None:
    with new_session() as session:
        define_rule(session, email_rule())
        session.commit()
        comment(session, schema, 1, [1])
        session.commit()
        close_windows(session)
        with psycopg.connect(dsn, autocommit=True) as conn:
            flush_window(conn, bucket_ids(session)[0], schema=schema)
        # pruning old history: the digest's event goes, with its notification and delivery
        session.execute(text("DELETE FROM chimeway_events WHERE notification_key = :k"), {"k": DIGEST_KEY})
        session.commit()
        member = session.scalars(select(Delivery).where(Delivery.channel == "email")).one()
        assert (member.status, member.digest_delivery_id) == ("digested", None)


def test_a_huge_group_value_still_groups_without_failing_the_trigger(
    new_session: SessionFactory, schema: str
) -> None:
    with new_session() as session:
        define_rule(session, email_rule(group_by="project"))
        session.commit()
        huge = "x" * 50_000
        comment(session, schema, 1, [1], project=huge)
        comment(session, schema, 2, [1], project=huge)
        comment(session, schema, 3, [1], project=huge + "y")
        session.commit()
        values = session.scalars(
            text("SELECT grouping_value FROM chimeway_digest_buckets ORDER BY member_count DESC")
        ).all()
        assert len(values) == 2
        assert all(len(v) <= 200 for v in values)
        assert values[0] != values[1]


def test_close_windows_ends_a_rules_open_windows_and_makes_their_flush_jobs_due(
    new_session: SessionFactory, schema: str, dsn: str
) -> None:
    from chimeway.digests import close_windows

    with new_session() as session:
        define_rule(session, email_rule())
        session.commit()
        comment(session, schema, 1, [1, 2])
        session.commit()
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert close_windows(conn, "comments-hourly", schema=schema) == 2
            assert close_windows(conn, "comments-hourly", schema=schema) == 0  # none open any more
            due = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE worker = %s AND scheduled_at <= now()").format(
                    sql.Identifier(schema, "jobs")
                ),
                (DigestFlushWorker.name,),
            ).fetchone()
            assert due == (2,)
            assert flush_window(conn, bucket_ids(session)[0], schema=schema).digests == 2


@pytest.mark.anyio
async def test_the_flush_job_snoozes_until_its_window_ends_then_flushes(
    new_session: SessionFactory, schema: str, dsn: str
) -> None:
    from chimeway.dispatch import Dispatcher, configure
    from pgqueue.testing import aperform_job

    with new_session() as session:
        define_rule(session, email_rule())
        session.commit()
        comment(session, schema, 1, [1])
        session.commit()
        bucket = str(bucket_ids(session)[0])
    configure(Dispatcher(dsn, schema=schema))
    try:
        early = await aperform_job(DigestFlushWorker, {"bucket_id": bucket})
        assert isinstance(early, pgqueue.Snooze)
        assert 0 < early.seconds <= 3600
        with new_session() as session:
            close_windows(session)
        assert await aperform_job(DigestFlushWorker, {"bucket_id": bucket}) is None
        bad = await aperform_job(DigestFlushWorker, {"bucket_id": "not-a-uuid"})
        assert isinstance(bad, pgqueue.Cancel)
    finally:
        configure(None)
    with new_session() as session:
        assert statuses(session) == {
            "email:digested:digest_held": 1,
            "email:pending:ready": 1,
            "in_app:pending:ready": 1,
        }
