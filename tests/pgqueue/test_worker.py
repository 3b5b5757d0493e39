"""Worker options, checked when the class is defined, and ``Worker.new``."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import pgqueue
from pgqueue.job import JobState
from pgqueue.options import UNIQUE_GROUPS
from pgqueue.worker import registry

from .workers import Ok


def define(**options: Any) -> type[pgqueue.Worker]:
    class W(pgqueue.Worker, **options):
        def perform(self, job: pgqueue.Job) -> None:
            pass

    return W


def test_defaults_of_a_new_job() -> None:
    job = Ok.new({})
    assert (job.queue, job.priority, job.max_attempts, job.tags, job.meta) == ("alpha", 0, 20, (), {})
    assert job.state is JobState.AVAILABLE
    assert job.worker == "tests.pgqueue.workers.Ok"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"queue": 1234}, "queue must be"),
        ({"queue": ""}, "queue must be"),
        ({"max_attempts": 0}, "max_attempts must be an integer 1.."),
        ({"max_attempts": True}, "max_attempts must be"),
        ({"priority": -1}, "priority must be an integer 0..9, got -1"),
        ({"priority": 10}, "priority must be an integer 0..9, got 10"),
        ({"tags": None}, "tags must be"),
        ({"tags": ["a", 123]}, "tags must be"),
        ({"unique": {}}, "non-empty dict"),
        ({"unique": {"bogus": 1}}, "unknown unique option 'bogus'"),
        ({"unique": {"fields": ["unknown"]}}, "unknown unique field 'unknown'"),
        ({"unique": {"period": 0}}, "period must be positive"),
        ({"unique": {"states": ["unknown"]}}, "unknown state 'unknown'"),
        ({"unique": {"states": ["available", "completed"]}}, "must include available, scheduled"),
        ({"unique": {"states": "scheduled"}}, "unique states must be one of"),
        ({"unique": {"keys": ["id"], "fields": ["worker"]}}, "keys only apply"),
        ({"replace": ["attempt"]}, "can't be replaced"),
        ({"colour": "red"}, "unknown option 'colour'"),
    ],
)
def test_invalid_class_options_fail_at_definition_naming_the_option(
    options: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(pgqueue.ConfigError, match=fragment) as info:
        define(**options)
    assert "worker tests.pgqueue.test_worker" in str(info.value)


def test_a_worker_must_define_perform() -> None:
    with pytest.raises(pgqueue.ConfigError, match="define perform"):

        class NoPerform(pgqueue.Worker):
            pass


def test_abstract_base_classes_are_not_registered() -> None:
    class Base(pgqueue.Worker, queue="base", abstract=True):
        pass

    class Concrete(Base):
        def perform(self, job: pgqueue.Job) -> None:
            pass

    assert Concrete.queue == "base"
    assert Concrete.name in registry
    assert Base.name not in registry


def test_class_body_attributes_work_like_keywords() -> None:
    class Body(pgqueue.Worker):
        queue = "media"
        priority = 3

        def perform(self, job: pgqueue.Job) -> None:
            pass

    assert (Body.queue, Body.priority) == ("media", 3)
    with pytest.raises(pgqueue.ConfigError, match="priority"):

        class BadBody(pgqueue.Worker):
            priority = 12

            def perform(self, job: pgqueue.Job) -> None:
                pass


def test_sync_and_async_perform_are_detected() -> None:
    from .workers import AsyncOk

    assert Ok.is_async is False
    assert AsyncOk.is_async is True


@pytest.mark.parametrize("value", [10, 10.5, timedelta(seconds=10), -2])
def test_schedule_in_makes_the_job_scheduled(value: Any) -> None:
    job = Ok.new({}, schedule_in=value)
    assert job.state is JobState.SCHEDULED


@pytest.mark.parametrize("value", [True, "10", math.nan, math.inf, [1]])
def test_invalid_schedule_in_is_an_error_naming_it(value: Any) -> None:
    with pytest.raises(pgqueue.ConfigError, match="schedule_in"):
        Ok.new({}, schedule_in=value)


def test_scheduled_at_must_be_timezone_aware() -> None:
    assert Ok.new({}, scheduled_at=datetime.now(UTC)).state is JobState.SCHEDULED
    with pytest.raises(pgqueue.ConfigError, match="timezone-aware"):
        Ok.new({}, scheduled_at=datetime.now())


def test_priority_and_max_attempts_bounds_at_new() -> None:
    assert Ok.new({}, priority=0).priority == 0
    assert Ok.new({}, priority=9).priority == 9
    assert Ok.new({}, max_attempts=1).max_attempts == 1
    for bad in ({"priority": -1}, {"priority": 10}, {"max_attempts": 0}):
        with pytest.raises(pgqueue.ConfigError):
            Ok.new({}, **bad)


def test_unknown_option_at_new_names_it() -> None:
    with pytest.raises(pgqueue.ConfigError, match="unknown option 'workr'"):
        Ok.new({}, workr="x")


def test_tags_are_trimmed_lowercased_and_deduplicated() -> None:
    assert Ok.new({}, tags=["ALPHA", " alpha "]).tags == ("alpha",)
    assert Ok.new({}, tags=["", " ", "\n"]).tags == ()
    assert Ok.new({}, tags=[None, 1, 2]).tags == ("1", "2")


@pytest.mark.parametrize(
    "args",
    [
        [1, 2],
        {1: "int key"},
        {"t": (1, 2)},
        {"s": {1, 2}},
        {"f": math.nan},
        {"d": datetime.now(UTC)},
        {"nul": "a\x00b"},
        {"surrogate": "\ud800"},
    ],
)
def test_args_that_would_not_round_trip_through_json_are_a_type_error(args: Any) -> None:
    with pytest.raises(TypeError, match="args"):
        Ok.new(args)


def test_meta_is_checked_like_args() -> None:
    with pytest.raises(TypeError, match="meta"):
        Ok.new({}, meta={"when": datetime.now(UTC)})


def test_unique_true_means_forever_with_default_fields() -> None:
    job = define(unique=True).new({"id": 1})
    assert job.unique is not None
    assert job.unique.period is None
    assert job.unique.fields == ("args", "queue", "worker")
    assert job.unique.states == UNIQUE_GROUPS["successful"]


def test_unique_period_expands_to_the_defaults() -> None:
    spec = define(unique={"period": 60}).unique
    assert spec is not None
    assert (spec.fields, spec.keys, spec.period, spec.timestamp) == (
        ("args", "queue", "worker"),
        (),
        60,
        "inserted_at",
    )
    assert define(unique={"period": timedelta(hours=1)}).unique.period == 3600  # type: ignore[union-attr]
    assert len(define(unique={"states": "incomplete"}).unique.states) == 4  # type: ignore[union-attr]


def test_unique_options_given_to_new_merge_with_the_workers() -> None:
    worker = define(unique={"fields": ["queue", "worker"], "period": 60, "states": "all"})
    spec = worker.new({}, unique={"period": 90}).unique
    assert spec is not None
    assert (spec.fields, spec.period, spec.states) == (("queue", "worker"), 90, tuple(JobState))


def test_replace_list_applies_to_every_state() -> None:
    replace = define(replace=["priority"]).replace
    assert set(replace) == {s.value for s in JobState}
    assert define(replace={"scheduled": ["priority"]}).replace == {"scheduled": ("priority",)}
