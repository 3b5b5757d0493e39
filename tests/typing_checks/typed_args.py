"""Checked by mypy in tests/pgqueue/test_typed_args.py: what a type checker sees of typed args.

Lines marked ``expect-error`` must be reported; no other line may be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_type

import pgqueue


@dataclass
class Welcome:
    user_id: int


@dataclass
class Other:
    name: str


class SendWelcome(pgqueue.TypedWorker[Welcome], queue="emails"):
    def handle(self, args: Welcome, job: pgqueue.Job) -> None:
        assert_type(args, Welcome)
        assert_type(args.user_id, int)
        reveal_type(args)  # noqa: F821 - mypy's own


class Wrong(pgqueue.TypedWorker[Welcome]):
    def handle(self, args: Other, job: pgqueue.Job) -> None:  # expect-error
        pass


job: pgqueue.NewJob = SendWelcome.new(Welcome(user_id=1))
job = SendWelcome.new({"user_id": 1})
job = SendWelcome.new(Other(name="x"))  # expect-error


def decoded(saved: pgqueue.Job) -> None:
    assert_type(SendWelcome.decode_args(saved), Welcome)
