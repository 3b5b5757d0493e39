"""``python -m chimeway migrate | explain | trace`` as real processes, and the package-root names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg import sql

from chimeway import deliveries
from chimeway.event_trace import load_event_trace

from .conftest import PERMANENT, TEMPORARY, MakeNotification, SessionFactory


def _run(*args: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CHIMEWAY_CONFIG")}
    if dsn is not None:
        env["DATABASE_URL"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "chimeway", *args], env=env, capture_output=True, text=True, timeout=180
    )


def _tables(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    return {row[0] for row in rows}


def test_the_documented_names_import_from_the_package_root() -> None:
    from chimeway import Notifier, Recipient, enqueue_in, explain_delivery, trigger
    from chimeway.dispatch import enqueue_in as dispatch_enqueue_in
    from chimeway.explain import explain_delivery as explain
    from chimeway.trigger import trigger as trigger_function

    assert (trigger, enqueue_in, explain_delivery) == (trigger_function, dispatch_enqueue_in, explain)
    assert Recipient("user:1").identity == "user:1"
    assert issubclass(Notifier, object)
    assert Notifier.notification_key == ""
    import chimeway

    assert all(hasattr(chimeway, name) for name in chimeway.__all__)


def test_migrate_creates_the_tables_without_starting_a_worker_and_is_idempotent(
    dsn: str, empty_schema: str
) -> None:
    first = _run("migrate", "--schema", empty_schema, dsn=dsn)
    assert first.returncode == 0, first.stderr
    assert f"chimeway: schema '{empty_schema}' at version" in first.stdout
    assert {"jobs", "chimeway_events", "chimeway_deliveries", "chimeway_delivery_attempts"} <= _tables(
        dsn, empty_schema
    )
    again = _run("migrate", "--schema", empty_schema, "--dsn", dsn)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("nothing to do") == 2


def test_explain_prints_a_delivery_story_as_text_and_json(
    dsn: str, schema: str, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    # Given a delivery that failed once, then was refused for good
    session = new_session(expire_on_commit=False)
    delivery = deliveries.plan_delivery(session, make_notification(recipient="user:7"), "email")
    for outcome in (TEMPORARY, PERMANENT):
        deliveries.transition_status(session, delivery, "dispatched")
        deliveries.record_attempt(session, delivery.id, outcome)
    session.close()

    text = _run("explain", str(delivery.id), "--schema", schema, dsn=dsn)
    assert text.returncode == 0, text.stderr
    assert f"delivery {delivery.id}: cancelled / permanent_failure" in text.stdout
    assert "attempt_failed" in text.stdout
    assert "attempt_rejected" in text.stdout

    as_json = _run("explain", str(delivery.id), "--schema", schema, "--json", dsn=dsn)
    story = json.loads(as_json.stdout)
    assert (story["status"], story["suppression_reason"], story["recipient"]) == (
        "cancelled",
        "permanent_failure",
        "user:7",
    )
    assert [a["number"] for a in story["attempts"]] == [1, 2]


def test_trace_prints_an_events_notifications_deliveries_and_attempts(
    dsn: str, schema: str, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    session = new_session(expire_on_commit=False)
    notification_id = make_notification(recipient="user:8", correlation_id="req-trace")
    email = deliveries.plan_delivery(session, notification_id, "email")
    deliveries.plan_delivery(session, notification_id, "in_app")
    deliveries.transition_status(session, email, "dispatched")
    deliveries.record_attempt(session, email.id, TEMPORARY)
    event_id = deliveries.explain_delivery(session, email.id).event_id
    session.close()

    result = _run("trace", str(event_id), "--schema", schema, dsn=dsn)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"event {event_id} (comment_posted)")
    assert "req-trace" in lines[0]
    assert any(f"notification {notification_id} for user:8" in line for line in lines)
    assert any(line.strip().startswith("email: failed") for line in lines)
    assert any(line.strip().startswith("in_app: pending") for line in lines)
    assert any("attempt 1: failed temporary via test" in line for line in lines)

    trace = json.loads(_run("trace", str(event_id), "--schema", schema, "--json", dsn=dsn).stdout)
    channels = {d["channel"]: d for d in trace["notifications"][0]["deliveries"]}
    assert channels["email"]["attempts"][0]["outcome"] == "failed"
    assert channels["in_app"]["attempts"] == []


def test_trace_stops_at_its_limit_and_says_so(
    dsn: str, schema: str, new_session: SessionFactory, make_notification: MakeNotification
) -> None:
    first = make_notification(recipient="user:1")
    with psycopg.connect(dsn) as conn:
        notifications = sql.Identifier(schema, "chimeway_notifications")
        row = conn.execute(sql.SQL("SELECT event_id FROM {} WHERE id = %s").format(notifications), (first,))
        event_id = row.fetchone()[0]  # type: ignore[index]
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (event_id, recipient_identity, recipient_type) "
                "SELECT %s, 'user:' || g, 'user' FROM generate_series(2, 5) g"
            ).format(notifications),
            (event_id,),
        )
        conn.commit()
        trace = load_event_trace(conn, event_id, schema=schema, limit=3)
    # oldest first (user:1); the four inserted together share a timestamp and come in id order
    assert len(trace.notifications) == 3
    assert trace.notifications[0].recipient == "user:1"
    assert trace.truncated
    result = _run("trace", str(event_id), "--schema", schema, "--limit", "2", dsn=dsn)
    assert "more notifications than the 2 shown" in result.stdout


def test_unknown_and_malformed_ids_and_bad_usage_are_one_line_and_an_exit_code(dsn: str, schema: str) -> None:
    # Six independent processes, started together (each spends most of its time importing).
    calls = {
        "missing": (("explain", str(uuid.uuid4()), "--schema", schema), dsn),
        "no_event": (("trace", str(uuid.uuid4()), "--schema", schema), dsn),
        "malformed": (("explain", "not-a-uuid", "--schema", schema), dsn),
        "unknown": (("frobnicate",), dsn),
        "no_db": (("migrate",), None),
        "bad_schema": (("migrate", "--schema", "bad%schema"), dsn),
    }
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(_run, *args, dsn=given) for name, (args, given) in calls.items()}
        done = {name: future.result() for name, future in futures.items()}
    missing = done["missing"]
    assert (missing.returncode, missing.stderr.count("\n")) == (1, 1)
    assert "no delivery with id" in missing.stderr
    assert done["no_event"].returncode == 1
    assert "no event with id" in done["no_event"].stderr
    assert done["malformed"].returncode == 2
    assert "delivery_id must be a UUID, got 'not-a-uuid'" in done["malformed"].stderr
    unknown = done["unknown"]
    assert unknown.returncode == 2
    assert "invalid choice" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert done["no_db"].returncode == 2
    assert "DATABASE_URL" in done["no_db"].stderr
    assert done["bad_schema"].returncode == 2
    assert done["bad_schema"].stderr.count("\n") == 1


def test_an_unmigrated_schema_and_an_unreachable_database_say_what_to_do(dsn: str, empty_schema: str) -> None:
    unmigrated = _run("explain", str(uuid.uuid4()), "--schema", empty_schema, dsn=dsn)
    assert unmigrated.returncode == 1
    assert "has no chimeway tables; run: python -m chimeway migrate" in unmigrated.stderr
    unreachable = _run("migrate", dsn="postgresql://app:hunter2secret@127.0.0.1:1/nowhere")
    assert unreachable.returncode == 1
    assert "cannot reach the database" in unreachable.stderr
    assert "hunter2secret" not in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
