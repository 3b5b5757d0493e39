"""``python -m chimeway.worker`` as a real process, against the webhook adapter and a scripted receiver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import pgqueue
from chimeway import deliveries
from chimeway.dispatch import dispatch_job
from chimeway.models import Delivery, DeliveryAttempt
from chimeway.testing import ScriptedWebhookServer

from ..helpers import free_port, parse_metrics, wait_until
from .conftest import MakeNotification

SCRIPTS: dict[str, Sequence[int]] = {
    "user:ok": [200],
    "user:flaky": [500, 200],
    "user:down": [500],
    "user:gone": [410],
    "user:bad": [400],
}
EXPECTED = {
    "user:ok": ("succeeded", None, 1),
    "user:flaky": ("succeeded", None, 2),
    "user:down": ("cancelled", "retries_exhausted", 5),
    "user:gone": ("cancelled", "bounced", 1),
    "user:bad": ("cancelled", "permanent_failure", 1),
}


@pytest.mark.system
@pytest.mark.slow
def test_the_worker_process_drives_every_delivery_to_its_end(
    sa_engine: Engine, dsn: str, schema: str, make_notification: MakeNotification, tmp_path: Path
) -> None:
    engine = sa_engine.execution_options(schema_translate_map={None: schema})
    ids: dict[str, Any] = {}
    with ScriptedWebhookServer(lambda r: SCRIPTS[r]) as receiver:
        with Session(engine, expire_on_commit=False) as session:
            for recipient in SCRIPTS:
                delivery = deliveries.plan_delivery(
                    session, make_notification(recipient=recipient), "webhook"
                )
                ids[recipient] = delivery.id
                pgqueue.insert(session, _dispatch_job(delivery.id), schema=schema)
            session.commit()
        config = tmp_path / "chimeway.toml"
        config.write_text(
            f'schema = "{schema}"\nqueue_limit = 5\nretry_backoff = 0.05\nshutdown_grace = 2\n'
            f'[channels.webhook]\nadapter = "webhook"\nconfig = {{ url = "{receiver.url}", timeout = 2 }}\n'
        )
        env = {**os.environ, "DATABASE_URL": dsn}
        port = free_port()
        worker = subprocess.Popen(
            [sys.executable, "-m", "chimeway.worker", "--config", str(config), "--metrics-port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:

            def all_ended() -> bool:
                with Session(engine) as session:
                    statuses = session.scalars(
                        select(Delivery.status).where(Delivery.id.in_(ids.values()))
                    ).all()
                return all(s in deliveries.terminal_states() for s in statuses)

            wait_until(all_ended, timeout=60)
            scrape = parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        finally:
            worker.send_signal(signal.SIGTERM)
            output, _ = worker.communicate(timeout=30)
        assert worker.returncode == 0, output
        # the worker's --metrics-port: Chimeway's attempts by channel and outcome, the queue's jobs
        attempts = {
            labels: value
            for (name, labels), value in scrape.items()
            if name == "chimeway_delivery_attempts_total"
        }
        assert attempts == {
            (("channel", "webhook"), ("outcome", "succeeded")): 2,
            (("channel", "webhook"), ("outcome", "failed")): 6,
            (("channel", "webhook"), ("outcome", "bounced")): 1,
            (("channel", "webhook"), ("outcome", "rejected")): 1,
        }
        assert scrape[("chimeway_attempt_record_seconds_count", (("channel", "webhook"),))] == 10
        finished = sum(v for (name, _), v in scrape.items() if name == "pgqueue_jobs_total")
        assert finished == 10  # one job attempt per adapter call
        assert scrape[("pgqueue_database_up", ())] == 1

        with Session(engine) as session:
            for recipient, (status, reason, attempts) in EXPECTED.items():
                delivery = session.get(Delivery, ids[recipient])
                assert delivery is not None
                numbers = session.scalars(
                    select(DeliveryAttempt.attempt_number)
                    .where(DeliveryAttempt.delivery_id == delivery.id)
                    .order_by(DeliveryAttempt.attempt_number)
                ).all()
                assert (delivery.status, delivery.suppression_reason) == (status, reason), recipient
                assert list(numbers) == list(range(1, attempts + 1)), recipient
                sent = receiver.for_recipient(recipient)
                assert [r.idempotency_key for r in sent] == [f"{delivery.id}:{n}" for n in numbers]
            jobs = pgqueue.all_jobs(session, schema=schema)
        assert {j.state for j in jobs} == {"completed"}, (
            "exhaustion completes the job rather than discarding it"
        )
        assert '"status": "succeeded"' in output or "succeeded" in output
        assert "s3cret" not in output


def _dispatch_job(delivery_id: Any) -> pgqueue.NewJob:
    return dispatch_job(delivery_id)


@pytest.mark.system
@pytest.mark.slow
def test_the_worker_at_its_defaults_delivers_a_backlog_and_exits_cleanly(
    sa_engine: Engine, dsn: str, schema: str, make_notification: MakeNotification, tmp_path: Path
) -> None:
    engine = sa_engine.execution_options(schema_translate_map={None: schema})
    ids = []
    with Session(engine, expire_on_commit=False) as session:
        notification = make_notification()
        for n in range(300):
            delivery = deliveries.plan_delivery(session, notification, f"channel-{n}")
            ids.append(delivery.id)
        pgqueue.insert_all(session, [dispatch_job(i) for i in ids], schema=schema)
        session.commit()
    config = tmp_path / "chimeway.toml"
    config.write_text(f'schema = "{schema}"\n')  # everything else at its default
    env = {**os.environ, "DATABASE_URL": dsn}
    log = tmp_path / "worker.log"  # a file, not a pipe: two INFO lines per delivery would fill one
    with log.open("w") as sink:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-W",
                "always::ResourceWarning",
                "-m",
                "chimeway.worker",
                "--config",
                str(config),
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        def succeeded() -> int:
            with Session(engine) as session:
                return len(
                    session.scalars(
                        select(Delivery.id).where(Delivery.id.in_(ids), Delivery.status == "succeeded")
                    ).all()
                )

        wait_until(lambda: succeeded() == len(ids), timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    output = log.read_text()
    assert worker.returncode == 0, output[-2000:]
    with Session(engine) as session:
        numbers = session.scalars(
            select(DeliveryAttempt.attempt_number).where(DeliveryAttempt.delivery_id.in_(ids))
        ).all()
        jobs = pgqueue.all_jobs(session, schema=schema)
    assert sorted(numbers) == [1] * len(ids), "one attempt each"
    assert {j.state for j in jobs} == {"completed"}
    assert output.count('"status": "succeeded"') == len(ids), "one outcome line per delivery"
    for problem in ("Traceback", "ResourceWarning", "Task was destroyed", "never awaited"):
        assert problem not in output
