"""A worker process killed (SIGKILL) in the middle of a digest flush: what it committed stays, what
it had under way is rolled back, and the next worker emits the rest, each bucket exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from chimeway import Notifier, Recipient, trigger
from chimeway.digests import CHUNK, DIGEST_KEY, DigestFlushWorker, DigestRule, define_rule

from ..helpers import wait_until

WATCHERS = 1200  # buckets: two chunks commit before the third meets the locked bucket
COMMENTS = 3


class Comment(Notifier):
    notification_key = "comment_posted"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[Recipient | str]:
        return [f"user:{n:05d}" for n in range(params["watchers"])]

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return ["email"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"title": f"comment {params['n']}"}


@pytest.fixture
def db(dsn: str, schema: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        yield conn


def counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    row = db.execute(
        """
        SELECT (SELECT count(*) FROM chimeway_digest_buckets WHERE flush_state = 'emitted'),
               (SELECT count(*) FROM chimeway_digest_buckets WHERE flush_state = 'pending'),
               (SELECT count(*) FROM chimeway_deliveries WHERE metadata ->> 'notification_key' = %s),
               (SELECT count(*) FROM chimeway_deliveries WHERE status = 'digested'),
               (SELECT count(*) FROM chimeway_events WHERE idempotency_key LIKE 'chimeway-digest:%%')
        """,
        (DIGEST_KEY,),
    ).fetchone()
    assert row is not None
    return dict(zip(("emitted", "pending", "digests", "digested", "digest_events"), row, strict=True))


def sent_digests(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(*) FROM chimeway_deliveries WHERE metadata ->> 'notification_key' = %s"
        " AND status = 'succeeded'",
        (DIGEST_KEY,),
    ).fetchone()
    return int(row[0]) if row else 0


def waiting_flushers(db: psycopg.Connection[Any]) -> int:
    """Backends blocked on a lock in the flush's lock statement."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database() AND query LIKE %s",
        ("%FOR UPDATE OF b%",),
    ).fetchone()
    return int(row[0]) if row else 0


def start_worker(dsn: str, config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "chimeway.worker", "--config", str(config), "--log-level", "warning"],
        env={**os.environ, "DATABASE_URL": dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.system
@pytest.mark.slow
def test_a_worker_killed_mid_flush_leaves_every_bucket_emitted_exactly_once(
    sqlalchemy_url: str, dsn: str, schema: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    # Given 1,200 buckets of 3 held members each, whose window has ended
    engine = create_engine(sqlalchemy_url).execution_options(schema_translate_map={None: schema})
    with Session(engine) as session:
        define_rule(session, DigestRule("hourly", "email", "comment_posted", window_minutes=60))
        for n in range(COMMENTS):
            trigger(
                session,
                Comment(),
                {"watchers": WATCHERS, "n": n},
                idempotency_key=f"c{n}",
                queue_schema=schema,
            )
        session.commit()
    engine.dispose()
    db.execute("UPDATE chimeway_digest_buckets SET window_ends_at = now() - interval '1 second'")
    db.execute("UPDATE jobs SET scheduled_at = now() WHERE worker = %s", (DigestFlushWorker.name,))
    config = tmp_path / "chimeway.toml"
    config.write_text(f'schema = "{schema}"\nshutdown_grace = 1\nrescue_window = 1\n')

    # And a bucket in the third chunk held locked, so the flush stops there with work under way
    with psycopg.connect(dsn) as locker:
        locker.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        locker.execute(
            "SELECT id FROM chimeway_digest_buckets WHERE recipient_id = %s FOR UPDATE",
            (f"user:{WATCHERS - 1:05d}",),
        )
        worker = start_worker(dsn, config)
        try:
            # When the worker has committed two chunks and waits on the third, it is killed
            wait_until(lambda: counts(db)["emitted"] == 2 * CHUNK, timeout=120)
            wait_until(lambda: waiting_flushers(db) >= 1, timeout=60)
        finally:
            worker.kill()
            worker.wait(timeout=30)
        # Then what it committed stays, and the chunk under way left nothing behind
        assert counts(db) == {
            "emitted": 2 * CHUNK,
            "pending": WATCHERS - 2 * CHUNK,
            "digests": 2 * CHUNK,
            "digested": 2 * CHUNK * COMMENTS,
            "digest_events": 2 * CHUNK,
        }
        locker.rollback()

    # When a new worker comes up, it rescues the dead worker's flush jobs and finishes the window
    worker = start_worker(dsn, config)
    try:
        wait_until(lambda: counts(db)["pending"] == 0, timeout=120)
        # and the digests go out like any delivery (the channel falls back to the logger adapter)
        wait_until(lambda: sent_digests(db) == WATCHERS, timeout=120)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    # Then every bucket was emitted once, and every member is in exactly its bucket's digest
    assert counts(db) == {
        "emitted": WATCHERS,
        "pending": 0,
        "digests": WATCHERS,
        "digested": WATCHERS * COMMENTS,
        "digest_events": WATCHERS,
    }
    mismatched = db.execute(
        """
        SELECT count(*) FROM chimeway_digest_memberships AS m
        JOIN chimeway_digest_buckets AS b ON b.id = m.bucket_id
        JOIN chimeway_deliveries AS d ON d.id = m.delivery_id
        WHERE d.digest_delivery_id IS DISTINCT FROM b.digest_delivery_id
        """
    ).fetchone()
    assert mismatched == (0,)
    carried = db.execute(
        "SELECT min((metadata ->> 'member_count')::int), max((metadata ->> 'member_count')::int)"
        " FROM chimeway_deliveries WHERE metadata ->> 'notification_key' = %s",
        (DIGEST_KEY,),
    ).fetchone()
    assert carried == (COMMENTS, COMMENTS)
