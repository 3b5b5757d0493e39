"""The data the inbox benchmark (:mod:`benchmarks.inbox`) reads and writes: a million notifications
loaded by the server in one statement per table, and a 100,000-notification fan-out insert timed
against each schema version."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from chimeway.migrations import CHIMEWAY, migrate_all
from pgqueue.migrate import PGQUEUE, migrate

SCHEMA = "bench_inbox"
FANOUT_SCHEMA = "bench_inbox_fanout"
FANOUT_ROWS = 100_000
TABLES = ("chimeway_events", "chimeway_notifications")

# One statement per table: events (five to a timestamp, ten recipients each), then their
# notifications, each with its state drawn by its age, then the heavy recipient's. Recipient k of
# event e is (e * 7919 + k * recipients / 10) mod recipients: ten distinct ones.
LOAD = """
SELECT setseed(0.42);
INSERT INTO {events} (id, notification_key, notification_version, idempotency_key, inserted_at)
SELECT md5('event' || e)::uuid, 'comment_posted', 1, 'bench-' || e,
       now() - interval '90 days' + (e / 5) * (interval '90 days' / (%(events)s / 5))
FROM generate_series(0, %(events)s - 1) AS e;
INSERT INTO {notifications} (event_id, recipient_identity, recipient_type, metadata, category,
                             inserted_at, seen_at, read_at, archived_at)
SELECT ev.id, 'user:' || ((e * 7919 + k * (%(recipients)s / 10)) %% %(recipients)s), 'user',
       jsonb_build_object('subject', 'New comment on your post', 'body', repeat('x', 80), 'n', e),
       (ARRAY['comments', 'comments', 'mentions', 'billing', 'security', NULL])[1 + floor(random() * 6)::int],
       ev.inserted_at,
       CASE WHEN random() < CASE WHEN old THEN 0.98 ELSE 0.5 END THEN ev.inserted_at END,
       CASE WHEN random() < CASE WHEN old THEN 0.85 ELSE 0.3 END THEN ev.inserted_at END,
       CASE WHEN random() < CASE WHEN ev.inserted_at < now() - interval '30 days' THEN 0.35 ELSE 0.03 END
            THEN ev.inserted_at END
FROM generate_series(0, %(events)s - 1) AS e
JOIN {events} AS ev ON ev.id = md5('event' || e)::uuid
CROSS JOIN generate_series(0, 9) AS k
CROSS JOIN LATERAL (SELECT ev.inserted_at < now() - interval '7 days' AS old) AS age;
INSERT INTO {events} (id, notification_key, notification_version, idempotency_key, inserted_at)
SELECT md5('heavy' || h)::uuid, 'comment_posted', 1, 'heavy-' || h,
       now() - interval '90 days' + h * (interval '90 days' / %(heavy)s)
FROM generate_series(0, %(heavy)s - 1) AS h;
INSERT INTO {notifications} (event_id, recipient_identity, recipient_type, metadata, category,
                             inserted_at, seen_at, read_at, archived_at)
SELECT ev.id, 'user:heavy', 'user', jsonb_build_object('subject', 'Build finished', 'n', h),
       CASE WHEN h %% 200 = 0 THEN 'security' ELSE 'builds' END,
       ev.inserted_at, ev.inserted_at,
       CASE WHEN h < %(heavy)s - 40 THEN ev.inserted_at END,
       CASE WHEN h %% 5 = 0 THEN ev.inserted_at END
FROM generate_series(0, %(heavy)s - 1) AS h
JOIN {events} AS ev ON ev.id = md5('heavy' || h)::uuid;
"""


def drop(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def load(dsn: str, notifications: int, recipients: int, heavy: int) -> float:
    drop(dsn, SCHEMA)
    with psycopg.connect(dsn) as conn:
        migrate_all(conn, SCHEMA)
        for table in TABLES:  # no autovacuum, so no autoanalyze either: no statistics until we ask
            conn.execute(
                sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(
                    sql.Identifier(SCHEMA, table)
                )
            )
        conn.commit()
        names = {
            "events": sql.Identifier(SCHEMA, TABLES[0]),
            "notifications": sql.Identifier(SCHEMA, TABLES[1]),
        }
        started = time.perf_counter()
        params = {"events": notifications // 10, "recipients": recipients, "heavy": heavy}
        for statement in LOAD.split(";\n"):
            if statement.strip():
                conn.execute(sql.SQL(statement).format(**names), params)
        conn.commit()
        return time.perf_counter() - started


def statistics_state(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, c.reltuples, (SELECT count(*) FROM pg_statistic s WHERE s.starelid = c.oid),"
            " current_setting('autovacuum') FROM pg_class c WHERE c.relnamespace = to_regnamespace(%s)"
            " AND c.relname = ANY(%s)",
            (SCHEMA, list(TABLES)),
        ).fetchall()
    return {
        name: {"reltuples": tuples, "pg_statistic_rows": stats, "autovacuum": av}
        for name, tuples, stats, av in rows
    }


def fanout_cost(dsn: str, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Seconds to INSERT 100,000 notifications (100,000 recipients, one event) in one statement
    and commit, per schema variant and recipient order; variants interleaved within each repeat."""
    variants = ("chimeway 0001", "0002, NOTIFY trigger disabled", "0002", "0002, with a category")
    orders = {"identities sorted": "identity", "identities shuffled": "md5(identity)"}
    results: dict[str, dict[str, list[float]]] = {order: {v: [] for v in variants} for order in orders}
    for _ in range(repeats):
        for order, key in orders.items():
            for variant in variants:
                drop(dsn, FANOUT_SCHEMA)
                with psycopg.connect(dsn) as conn:
                    migrate(conn, FANOUT_SCHEMA, PGQUEUE)
                    migrate(conn, FANOUT_SCHEMA, CHIMEWAY, to_version=1 if variant == variants[0] else 2)
                    notifications = sql.Identifier(FANOUT_SCHEMA, "chimeway_notifications")
                    if variant == variants[1]:
                        conn.execute(
                            sql.SQL(
                                "ALTER TABLE {} DISABLE TRIGGER chimeway_notifications_notify_insert"
                            ).format(notifications)
                        )
                    (event_id,) = conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (notification_key, notification_version, idempotency_key)"
                            " VALUES ('fanout', 1, 'fanout') RETURNING id"
                        ).format(sql.Identifier(FANOUT_SCHEMA, "chimeway_events"))
                    ).fetchone()  # type: ignore[misc]
                    conn.commit()
                    with_category = variant == variants[3]
                    started = time.perf_counter()
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (event_id, recipient_identity, recipient_type, metadata{})"
                            " SELECT %s, identity, 'user', '{{\"subject\": \"Our new feature\"}}'{}"
                            " FROM (SELECT 'user:' || g AS identity FROM generate_series(1, %s) AS g) AS r"
                            " ORDER BY {}"
                        ).format(
                            notifications,
                            sql.SQL(", category" if with_category else ""),
                            sql.SQL(", 'announcements'" if with_category else ""),
                            sql.SQL(key),
                        ),
                        (event_id, FANOUT_ROWS),
                    )
                    conn.commit()
                    results[order][variant].append(time.perf_counter() - started)
    drop(dsn, FANOUT_SCHEMA)
    return results
