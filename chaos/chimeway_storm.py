"""Crash storm for Chimeway: three ``python -m chimeway.worker`` processes perform webhook
deliveries to a scripted receiver while one is ``kill -9``-ed every few seconds and replaced.

Recipients are scripted by kind: most answer 200, some 503 then 200, some always 503 (the delivery
must end ``cancelled``/``retries_exhausted``), some 410 (``cancelled``/``bounced``). The receiver
records every request with its ``Idempotency-Key``. Afterwards: no delivery is left in a
non-terminal status, each delivery's attempt numbers are 1..n without gaps, every key the receiver
saw belongs to a recorded attempt, and a delivery was sent twice only with the same key and only if
its job was running in a killed worker.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from chimeway import deliveries
from chimeway.dispatch import DELIVERY_ATTEMPTS
from chimeway.models import Delivery, DeliveryAttempt, Notification
from chimeway.notifier import Notifier, Recipient
from chimeway.testing import ScriptedWebhookServer
from chimeway.trigger import trigger

from .context import Context
from .database import Probe
from .processes import ConditionTimeout, Fleet, Process, clean_exits, fleet, wait_until
from .report import ScenarioResult
from .storm import KILL_RECOVERY, KillController

__all__ = ["chimeway_storm", "deliver_a_few"]

#: recipient kind → the receiver's answers, one per request (the last repeats), and the end state
KINDS: dict[str, tuple[Sequence[int], str, str | None]] = {
    "ok": ([200], "succeeded", None),
    "flaky": ([503, 200], "succeeded", None),
    "down": ([503], "cancelled", "retries_exhausted"),
    "gone": ([410], "cancelled", "bounced"),
}
#: out of every 20 recipients
MIX = {"ok": 15, "flaky": 3, "down": 1, "gone": 1}
TRIGGER_BATCH = 250
#: Seconds the receiver takes per answer, as a real one does. Without it the batched workers send
#: the short storm's thousand deliveries in about a second, and the kills, every few seconds, find
#: only retries waiting: none would land on a worker holding deliveries.
RECEIVER_DELAY = 0.05


class _Broadcast(Notifier):
    notification_key = "chaos_broadcast"

    def recipients(self, params: Mapping[str, Any]) -> Sequence[str]:
        return list(params["recipients"])

    def channels(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return ["webhook"]

    def build(self, params: Mapping[str, Any], recipient: Recipient) -> Mapping[str, Any]:
        return {"subject": "chaos", "batch": params["batch"]}


def _kind(recipient: str) -> str:
    return recipient.rsplit(":", 1)[-1]


def _script(recipient: str) -> Sequence[int]:
    return KINDS.get(_kind(recipient), ([500], "", None))[0]


def _recipients(total: int) -> list[str]:
    pattern = [kind for kind, count in MIX.items() for _ in range(count)]
    return [f"user:{i}:{pattern[i % len(pattern)]}" for i in range(total)]


def _engine(dsn: str) -> Engine:
    return create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))


def _write_config(path: Path, schema: str, node: str, url: str) -> Path:
    # json.dumps gives a valid TOML basic string for any schema or node name.
    path.write_text(
        f"schema = {json.dumps(schema)}\nnode = {json.dumps(node)}\nqueue_limit = 5\n"
        "retry_backoff = 0.2\nshutdown_grace = 5\nrescue_window = 5\n"
        f'[channels.webhook]\nadapter = "webhook"\nconfig = {{ url = {json.dumps(url)}, timeout = 10 }}\n',
        encoding="utf-8",
    )
    return path


def chimeway_storm(ctx: Context) -> ScenarioResult:
    name = "chimeway-storm"
    total = 1_000 if ctx.short else 20_000
    result = ScenarioResult(
        name,
        f"3 `python -m chimeway.worker` processes perform {total:,} webhook deliveries "
        f"(mix per 20 recipients: {MIX}) while every few seconds one is killed with SIGKILL and "
        "replaced; plus one delivery planted as a kill during its final attempt would leave it.",
        jobs=total + 1,
        recovery_meaning=KILL_RECOVERY,
    )
    schema = ctx.server.new_schema("cw", chimeway=True)
    engine = _engine(ctx.server.dsn).execution_options(schema_translate_map={None: schema})
    recipients = _recipients(total)
    try:
        with Session(engine) as session:
            for batch, start in enumerate(range(0, total, TRIGGER_BATCH)):
                trigger(
                    session,
                    _Broadcast(),
                    {"recipients": recipients[start : start + TRIGGER_BATCH], "batch": batch},
                    idempotency_key=f"chaos-{uuid.uuid4()}",
                    queue_schema=schema,
                )
                session.commit()
        planted = _plant_killed_final_attempt(engine, ctx.server.dsn, schema)
        ctx.say(name, f"{total + 1:,} deliveries planned in schema {schema}")
        logs = ctx.logs_for(name)
        with (
            ScriptedWebhookServer(_script, delay=RECEIVER_DELAY) as receiver,
            Probe(ctx.server.dsn, schema) as probe,
            fleet(logs) as processes,
        ):

            def start_node(node: str) -> Process:
                config = _write_config(logs / f"{node}.toml", schema, node, receiver.url)
                return processes.chimeway(node, ctx.server.dsn, config)

            controller = KillController(
                ctx, name, probe, start_node, every=ctx.pick(3.0, 3.0), max_kills=4 if ctx.short else None
            )
            controller.start()
            wait = time.monotonic() + 60
            while len(receiver.requests) < 20 and time.monotonic() < wait:
                time.sleep(0.1)

            def finished() -> int:
                return int(
                    probe.value(
                        "SELECT count(*) FROM {s}.jobs WHERE state IN ('completed', 'discarded', 'cancelled')"
                    )
                )

            drained = controller.run(
                lambda: finished() >= result.jobs,
                timeout=ctx.pick(300, 1800),
                progress=lambda: f"{finished():,}/{result.jobs:,} jobs finished",
            )
            controller.wait_rescues(30)
            job_states = probe.states()
            jobs_of = {
                str(args.get("delivery_id")): (state, attempt, (meta or {}).get("rescued"))
                for args, state, attempt, meta in probe.rows(
                    "SELECT args, state::text, attempt, meta FROM {s}.jobs"
                )
            }
            exits = clean_exits(controller.nodes, ready=controller.ready)
            requests = list(receiver.requests)
        _judge(result, engine, requests, controller, job_states, jobs_of, drained)
        _judge_planted(result, engine, planted)
        result.checks += exits
    finally:
        engine.dispose()
    return result


def _judge(
    result: ScenarioResult,
    engine: Engine,
    requests: list[Any],
    controller: KillController,
    job_states: dict[str, int],
    jobs_of: dict[str, tuple[str, int, Any]],
    drained: bool,
) -> None:
    with Session(engine) as session:
        rows = session.execute(
            select(
                Delivery.id, Delivery.status, Delivery.suppression_reason, Notification.recipient_identity
            ).join(Notification, Notification.id == Delivery.notification_id)
        ).all()
        attempts: dict[str, list[int]] = defaultdict(list)
        for delivery_id, number in session.execute(
            select(DeliveryAttempt.delivery_id, DeliveryAttempt.attempt_number).order_by(
                DeliveryAttempt.delivery_id, DeliveryAttempt.attempt_number
            )
        ):
            attempts[str(delivery_id)].append(int(number))
        attempt_rows = session.scalar(select(func.count()).select_from(DeliveryAttempt)) or 0

    sent: dict[str, list[str | None]] = defaultdict(list)
    for request in requests:
        sent[request.delivery_id].append(request.idempotency_key)
    killed_deliveries = {
        str(args.get("delivery_id")) for kill in controller.kills for args in kill.in_flight.values()
    }

    statuses: Counter[str] = Counter()
    wrong_end: list[str] = []
    gaps: list[str] = []
    stray_keys: list[str] = []
    stuck: list[str] = []
    duplicates = unjustified = never_sent = 0
    for delivery_id, status, reason, recipient in rows:
        key = str(delivery_id)
        statuses[status] += 1
        if status not in ("succeeded", "suppressed", "cancelled") and len(stuck) < 5:
            job_state, job_attempt, rescued = jobs_of.get(key, ("missing", 0, None))
            stuck.append(f"{key} {status}: job {job_state} at attempt {job_attempt}, rescued {rescued}")
        _script, want_status, want_reason = KINDS[_kind(recipient)]
        if (status, reason) != (want_status, want_reason) and len(wrong_end) < 5:
            wrong_end.append(f"{key} ({_kind(recipient)}): {status}/{reason}")
        numbers = attempts.get(key, [])
        if numbers != list(range(1, len(numbers) + 1)) and len(gaps) < 5:
            gaps.append(f"{key}: {numbers}")
        keys = sent.get(key, [])
        if not keys:
            never_sent += 1
        recorded = {f"{key}:{n}" for n in numbers}
        stray = [k for k in keys if k not in recorded]
        if stray and len(stray_keys) < 5:
            stray_keys.append(f"{key}: sent {stray}, recorded {sorted(recorded)}")
        repeats = len(keys) - len(set(keys))
        duplicates += repeats
        if repeats and key not in killed_deliveries:
            unjustified += repeats

    non_terminal = sum(n for s, n in statuses.items() if s not in ("succeeded", "suppressed", "cancelled"))
    result.non_terminal = non_terminal
    result.lost = never_sent
    result.duplicates = duplicates
    result.unjustified = unjustified
    result.recovery = controller.recovery
    total = result.jobs
    result.check("every dispatch job finished within the deadline", drained, str(job_states))
    result.check(
        "every delivery ended in a terminal status",
        non_terminal == 0 and len(rows) == total,
        f"{dict(statuses)}{'; ' if stuck else ''}{'; '.join(stuck)}",
    )
    result.check(
        "every delivery ended as its recipient's script says",
        not wrong_end,
        "; ".join(wrong_end) or "ok → succeeded, flaky → succeeded, down → retries_exhausted, gone → bounced",
    )
    result.check(
        "every delivery's attempt numbers are 1..n without gaps",
        not gaps,
        "; ".join(gaps) or f"{attempt_rows:,} attempts",
    )
    result.check(
        "every request the receiver saw carries the key of a recorded attempt",
        not stray_keys,
        "; ".join(stray_keys) or f"{len(requests):,} requests",
    )
    result.check(
        "a delivery sent twice was sent with the same key, by a worker killed while running it",
        unjustified == 0 and not stray_keys,
        f"{duplicates} repeated sends, {unjustified} without a kill",
    )
    result.check(
        "every dispatch job ended completed (exhaustion completes the job)",
        job_states == {"completed": total},
        str(job_states),
    )
    result.check(
        "the storm killed at least one worker while it held deliveries",
        bool(killed_deliveries),
        f"{len(controller.kills)} kills",
    )
    result.figures.update(controller.figures())
    result.figures["requests received"] = len(requests)
    result.figures["attempts recorded"] = int(attempt_rows)


def deliver_a_few(
    ctx: Context, schema: str, processes: Fleet, logs: Path, *, node: str, count: int = 10
) -> tuple[int, int]:
    """Trigger ``count`` webhook deliveries in ``schema`` and run one worker on them: (succeeded, count)."""
    engine = _engine(ctx.server.dsn).execution_options(schema_translate_map={None: schema})
    try:
        with Session(engine) as session:
            trigger(
                session,
                _Broadcast(),
                {"recipients": [f"user:{i}:ok" for i in range(count)], "batch": 0},
                idempotency_key=f"chaos-{uuid.uuid4()}",
                queue_schema=schema,
            )
            session.commit()

        def succeeded() -> int:
            with Session(engine) as session:
                return int(
                    session.scalar(
                        select(func.count()).select_from(Delivery).where(Delivery.status == "succeeded")
                    )
                    or 0
                )

        with ScriptedWebhookServer(_script) as receiver:
            config = _write_config(logs / "chimeway.toml", schema, node, receiver.url)
            worker = processes.chimeway("chimeway", ctx.server.dsn, config)
            with contextlib.suppress(ConditionTimeout):
                wait_until(lambda: succeeded() >= count, timeout=60, interval=0.2)
            worker.stop(30)
        return succeeded(), count
    finally:
        engine.dispose()


PLANTED = "user:planted:down"


def _plant_killed_final_attempt(engine: Engine, dsn: str, schema: str) -> uuid.UUID:
    """A delivery as a ``kill -9`` during its final attempt leaves it, after the send, before the record.

    Four temporary failures are on record, the fifth run has marked it dispatched, and its job is
    executing attempt 5 for a producer that no longer exists. The lifeline must hand the job back
    (not discard it), and the rerun must end the delivery: ``cancelled``/``retries_exhausted``.
    """
    with Session(engine) as session:
        planned = trigger(
            session,
            _Broadcast(),
            {"recipients": [PLANTED], "batch": -1},
            idempotency_key=f"chaos-{uuid.uuid4()}",
            queue_schema=schema,
        )
        session.commit()
        (delivery_id,) = planned.delivery_ids
        failure = deliveries.AttemptOutcome("failed", "temporary", {"status_code": 503}, adapter="webhook")
        for _ in range(DELIVERY_ATTEMPTS - 1):
            deliveries.transition_status(session, deliveries.get_delivery(session, delivery_id), "dispatched")
            deliveries.record_attempt(session, delivery_id, failure)
            session.commit()
        deliveries.transition_status(session, deliveries.get_delivery(session, delivery_id), "dispatched")
        session.commit()
    with psycopg.connect(dsn) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET state = 'executing', attempt = %s, attempted_at = now(),"
                " attempted_by = ARRAY['a-killed-worker', gen_random_uuid()::text]"
                " WHERE args ->> 'delivery_id' = %s"
            ).format(sql.Identifier(schema, "jobs")),
            (DELIVERY_ATTEMPTS, str(delivery_id)),
        )
    return delivery_id


def _judge_planted(result: ScenarioResult, engine: Engine, delivery_id: uuid.UUID) -> None:
    with Session(engine) as session:
        delivery = deliveries.get_delivery(session, delivery_id)
        numbers = session.scalars(
            select(DeliveryAttempt.attempt_number)
            .where(DeliveryAttempt.delivery_id == delivery_id)
            .order_by(DeliveryAttempt.attempt_number)
        ).all()
        ended = (delivery.status, delivery.suppression_reason)
    result.check(
        "a delivery whose worker died during its final attempt still ends, exhausted",
        ended == ("cancelled", "retries_exhausted")
        and list(numbers) == list(range(1, DELIVERY_ATTEMPTS + 1)),
        f"{ended[0]}/{ended[1]}, attempts {list(numbers)}",
    )
