"""Provider limits per channel, from ``chimeway.toml``, enforced by pgqueue across worker processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import pgqueue
from chimeway import deliveries
from chimeway.channel_limits import ChannelLimits
from chimeway.config import ConfigError, parse_settings
from chimeway.dispatch import dispatch_job
from chimeway.models import Delivery, DeliveryAttempt
from chimeway.testing import ScriptedWebhookServer
from chimeway.worker import queues_for

from ..helpers import ConditionTimeout, wait_until
from .conftest import MakeNotification

ENV = {"DATABASE_URL": "postgresql://localhost/x"}


def test_channel_limits_become_paced_queues_shared_by_account() -> None:
    settings = parse_settings(
        {
            "queue_limit": 50,
            "channels": {
                "sms": {"rate_limit": 10, "rate_period": 2, "concurrency": 3, "account": "twilio"},
                "voice": {"rate_limit": 10, "rate_period": 2, "concurrency": 3, "account": "twilio"},
                "email": {"concurrency": 20},
                "push": {},
            },
        },
        ENV,
    )
    assert settings.channels["sms"].limits == ChannelLimits("twilio", 10, 2.0, 3)
    assert settings.channels["push"].limits is None
    assert queues_for(settings) == {
        "chimeway_delivery": 50,
        "chimeway_digest": 2,
        "chimeway_delivery.twilio": {"limit": 3, "global_limit": 3, "rate_limit": 10, "rate_period": 2.0},
        "chimeway_delivery.email": {"limit": 20, "global_limit": 20},
    }


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        ({"rate_limit": 0}, "rate_limit must be an integer >= 1, got 0"),
        ({"rate_limit": 5, "rate_period": 0}, "rate_period must be a number >= 0.001, got 0"),
        ({"concurrency": -2}, "concurrency must be an integer >= 1, got -2"),
        ({"rate_period": 1}, "channels.sms.rate_period needs a rate_limit"),
        ({"account": "main"}, "channels.sms: account needs a rate_limit or a concurrency"),
        ({"concurrency": 2, "account": "a b"}, "channels.sms.account must be 1..64 letters"),
        ({"burst": 2}, "channels.sms: unknown key 'burst'"),
    ],
)
def test_bad_channel_limits_name_the_key(channel: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_settings({"channels": {"sms": channel}}, ENV)


def test_channels_sharing_an_account_must_agree() -> None:
    with pytest.raises(ConfigError, match="share the account 'twilio' but declare different limits"):
        parse_settings(
            {
                "channels": {
                    "sms": {"concurrency": 2, "account": "twilio"},
                    "voice": {"concurrency": 3, "account": "twilio"},
                }
            },
            ENV,
        )


@pytest.mark.system
@pytest.mark.slow
def test_two_workers_keep_a_channel_within_its_provider_limits(
    sa_engine: Engine, dsn: str, schema: str, make_notification: MakeNotification, tmp_path: Path
) -> None:
    # Given 24 deliveries on a channel limited to 8 sends per second and 2 in flight, and 6 on an
    # unlimited one, all enqueued as usual
    engine = sa_engine.execution_options(schema_translate_map={None: schema})
    with ScriptedWebhookServer(delay=0.05) as limited, ScriptedWebhookServer() as free:
        with Session(engine, expire_on_commit=False) as session:
            notifications = [make_notification(recipient=f"user:{n}") for n in range(24)]
            paced = [deliveries.plan_delivery(session, n, "sms").id for n in notifications]
            others = [deliveries.plan_delivery(session, n, "email").id for n in notifications[:6]]
            pgqueue.insert_all(session, [dispatch_job(i) for i in paced + others], schema=schema)
            session.commit()
        config = tmp_path / "chimeway.toml"
        config.write_text(
            f'schema = "{schema}"\nshutdown_grace = 2\n'
            f'[channels.sms]\nadapter = "webhook"\nconfig = {{ url = "{limited.url}", timeout = 5 }}\n'
            'rate_limit = 8\nrate_period = 1\nconcurrency = 2\naccount = "sms-provider"\n'
            f'[channels.email]\nadapter = "webhook"\nconfig = {{ url = "{free.url}", timeout = 5 }}\n'
        )
        env = {**os.environ, "DATABASE_URL": dsn}
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "chimeway.worker", "--config", str(config), "--log-level", "warning"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        try:
            # When two workers deliver them
            def succeeded() -> int:
                with Session(engine) as session:
                    ids = paced + others
                    query = select(Delivery.id).where(Delivery.id.in_(ids), Delivery.status == "succeeded")
                    return len(session.scalars(query).all())

            finished = True
            try:
                wait_until(lambda: succeeded() == 30, timeout=60, interval=0.1)
            except ConditionTimeout:
                finished = False
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            errors = [
                worker.communicate(timeout=30)[1].decode(errors="replace")[-3000:] for worker in workers
            ]
        assert finished, (succeeded(), errors)
        assert all(worker.returncode == 0 for worker in workers), errors

        # Then the provider never saw more than 2 requests at once nor more than 8 in a second,
        # every delivery was sent once, and the unlimited channel was not paced
        assert limited.peak_in_flight <= 2
        arrivals = sorted(limited.arrivals)
        assert len(arrivals) == 24
        # (sends leave a little after their admission, which is what the limit paces exactly: below)
        assert all(arrivals[i + 8] - arrivals[i] >= 0.5 for i in range(len(arrivals) - 8))
        assert arrivals[-1] - arrivals[0] >= 1.5  # 24 sends at 8/s span at least two windows
        assert len(free.arrivals) == 6
    with Session(engine) as session:
        numbers = session.scalars(
            select(DeliveryAttempt.attempt_number).where(DeliveryAttempt.delivery_id.in_(paced + others))
        ).all()
        paced_jobs = pgqueue.all_jobs(
            session, pgqueue.JobFilter(queue="chimeway_delivery.sms-provider"), schema=schema
        )
    assert sorted(numbers) == [1] * 30
    assert len(paced_jobs) == 24
    admitted = sorted(job.attempted_at for job in paced_jobs if job.attempted_at is not None)
    assert all((admitted[i + 8] - admitted[i]).total_seconds() >= 1.0 for i in range(len(admitted) - 8))
    assert {job.state for job in paced_jobs} == {"completed"}
