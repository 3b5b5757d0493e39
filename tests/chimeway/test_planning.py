"""The pure parts of set-wise planning: time-ordered ids and the id list a trigger returns."""

from __future__ import annotations

import time
import uuid

import pytest

from chimeway.dispatch import DispatchWorker
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
