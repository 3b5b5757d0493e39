"""A worker killed (SIGKILL) mid-journey: another worker finishes every run, and no step is
emitted twice or lost."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from chimeway.journeys import Journey, Step
from chimeway.testing import ScriptedWebhookServer

from ..helpers import wait_until
from .conftest import SessionFactory
from .journey_fixtures import notifier, sql, trigger

RUNS = 150
JOURNEY = Journey(
    "crash",
    1,
    [Step(1, "in_app"), Step(2, "email"), Step(3, "sms", when=["delivered"])],
)


def _worker(config: Path, dsn: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "chimeway.worker", "--config", str(config)],
        env={**os.environ, "DATABASE_URL": dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _states(new_session: SessionFactory) -> Counter[str]:
    with new_session() as session:
        rows = session.execute(
            sql(session, "SELECT state, current_step FROM {s}.chimeway_journey_runs")
        ).all()
    return Counter(f"{state}:{step}" for state, step in rows)


@pytest.mark.system
@pytest.mark.slow
def test_a_worker_killed_mid_journey_emits_no_step_twice_and_loses_none(
    dsn: str, schema: str, new_session: SessionFactory, tmp_path: Path
) -> None:
    with ScriptedWebhookServer(delay=0.02) as receiver:
        config = tmp_path / "chimeway.toml"
        route = f'adapter = "webhook"\nconfig = {{ url = "{receiver.url}", timeout = 10 }}\n'
        config.write_text(
            f'schema = "{schema}"\nqueue_limit = 10\nrescue_window = 2\nshutdown_grace = 1\n'
            + "".join(f"[channels.{channel}]\n{route}" for channel in ("in_app", "email", "sms"))
        )
        with new_session() as session:
            result = trigger(session, notifier(JOURNEY, "crash"), [f"user:{i}" for i in range(RUNS)])
        first = _worker(config, dsn)
        try:
            # mid-journey: some runs are past their first step, none has finished everything
            wait_until(
                lambda: sum(n for k, n in _states(new_session).items() if not k.endswith(":1")) >= 20,
                timeout=90,
                interval=0.05,
            )
        finally:
            first.kill()  # SIGKILL: jobs left executing, moves and records cut off mid-way
            first.wait(10)
        states = _states(new_session)
        assert states["completed:3"] < RUNS, "the kill came after the journey ended"

        second = _worker(config, dsn)
        try:
            wait_until(
                lambda: _states(new_session) == Counter({"completed:3": RUNS}), timeout=150, interval=0.5
            )
        finally:
            second.terminate()
            second.wait(30)

    with new_session() as session:
        emitted = session.execute(
            sql(
                session,
                "SELECT run_id, step, count(*) FROM {s}.chimeway_journey_transitions "
                "WHERE reason = 'step_emitted' GROUP BY run_id, step",
            )
        ).all()
        deliveries = session.execute(
            sql(session, "SELECT journey_run_id, journey_step, status FROM {s}.chimeway_deliveries")
        ).all()
        settled = session.execute(
            sql(
                session,
                "SELECT count(*) FROM {s}.chimeway_journey_transitions WHERE reason = 'step_settled'",
            )
        ).scalar_one()
    # every step of every run emitted exactly once, each as one delivery that succeeded
    assert len(emitted) == RUNS * 3
    assert {count for _, _, count in emitted} == {1}
    assert len(deliveries) == RUNS * 3
    assert {status for _, _, status in deliveries} == {"succeeded"}
    assert Counter(step for _, step, _ in deliveries) == {1: RUNS, 2: RUNS, 3: RUNS}
    assert set(result.run_ids) == {run for run, _, _ in deliveries}
    assert settled == RUNS * 3
    # a send cut off by the kill may be repeated, under the same idempotency key, never a new one
    keys = Counter(r.idempotency_key for r in receiver.requests)
    assert len(keys) == RUNS * 3
    assert all(key is not None and key.endswith(":1") for key in keys)
