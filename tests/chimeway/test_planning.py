"""The pure parts of set-wise planning: time-ordered ids and the id list a trigger returns."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import pytest

import pgqueue.options
from chimeway.dispatch import QUEUE, DispatchWorker, dispatch_job
from chimeway.notifier import Recipient
from chimeway.planning import FanOut, UuidList, time_ordered_ids


def test_ids_of_one_fan_out_ascend_and_are_version_7_uuids_stamped_now() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid.UUID(int=i) for i in time_ordered_ids(10_000)]
    after = time.time_ns() // 1_000_000

    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {(i.version, i.variant) for i in ids} == {(7, uuid.RFC_4122)}
    assert before <= ids[0].int >> 80 <= after


def test_two_fan_outs_in_the_same_millisecond_get_distinct_ids() -> None:
    first, second = time_ordered_ids(5000), time_ordered_ids(5000)
    assert not set(first) & set(second)


def test_consecutive_ids_differ_in_their_random_low_bits() -> None:
    ids = time_ordered_ids(1000)
    assert len({i & 0xFFFFFFFF for i in ids}) > 990  # 32 random bits each, not a counter


def test_a_uuid_list_reads_like_a_list_of_uuids() -> None:
    ints = time_ordered_ids(3)
    ids = UuidList(ints)

    assert len(ids) == 3
    assert ids[0] == uuid.UUID(int=ints[0])
    assert ids[-1] == uuid.UUID(int=ints[-1])
    assert ids[1:] == [uuid.UUID(int=i) for i in ints[1:]]
    assert ids == [uuid.UUID(int=i) for i in ints]
    assert ids == UuidList(list(ints))
    assert ids != UuidList(ints[:2])
    assert ids != "not a list"
    assert next(reversed(ids)) == ids[2]
    assert uuid.UUID(int=ints[1]) in ids
    assert repr(ids) == "UuidList(3 ids)"


def test_a_fan_out_refuses_a_job_template_it_could_not_copy() -> None:
    options = {
        "event_id": uuid.uuid4(),
        "notification_key": "k",
        "category": None,
        "correlation_id": None,
        "recipients": [],
        "content_of": str,
        "channels_of": list,
    }
    for template in (
        DispatchWorker.new({"delivery_id": "x"}, unique=False),
        DispatchWorker.new({"delivery_id": "x"}, schedule_in=5),
        DispatchWorker.new({"delivery_id": "x"}, tags=["a"]),
        DispatchWorker.new({"delivery_id": "x"}, meta={"m": 1}),
    ):
        with pytest.raises(ValueError, match="dispatch job must be unique"):
            FanOut(**options, job_template=template)  # type: ignore[arg-type]


def job_keys(fan_out: FanOut) -> dict[str, bytes]:
    """Delivery id → unique key, as the fan-out's COPY rows of jobs carry them."""
    for _ in fan_out.notification_rows():
        pass
    fan_out.take_suppressions([])
    fan_out.job_ids = range(1, fan_out.job_count + 1)
    keys = {}
    for block in fan_out.job_rows():
        for line in block.splitlines():
            _, args, *_, key, _ = line.split("\t")
            keys[json.loads(args)["delivery_id"]] = bytes.fromhex(key.removeprefix("\\\\x"))
    return keys


def small_fan_out() -> FanOut:
    return FanOut(
        event_id=uuid.uuid4(),
        notification_key="k",
        category=None,
        correlation_id=None,
        recipients=[Recipient("user:1"), Recipient("user:2")],
        content_of=lambda r: "{}",
        channels_of=lambda r: ["email", "sms"],
        job_template=dispatch_job(uuid.uuid4()),
    )


def test_copied_jobs_carry_pgqueues_unique_key() -> None:
    keys = job_keys(small_fan_out())
    assert len(keys) == 4
    assert all(key == dispatch_job(delivery).unique_key for delivery, key in keys.items())


def test_unique_keys_come_from_pgqueue_itself_if_its_digest_ever_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def other_digest(
        spec: Any, *, worker: str, queue: str, args: dict[str, Any], meta: dict[str, Any]
    ) -> bytes:
        return hashlib.sha256(json.dumps([worker, queue, args]).encode()).digest()[:16]

    monkeypatch.setattr(pgqueue.options, "unique_key", other_digest)

    keys = job_keys(small_fan_out())
    assert len(keys) == 4
    for delivery, key in keys.items():
        assert key == other_digest(
            None, worker=DispatchWorker.name, queue=QUEUE, args={"delivery_id": delivery}, meta={}
        )
