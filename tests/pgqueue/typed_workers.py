"""Typed workers for the typed-args tests (module level, so their annotations resolve)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

import pgqueue

SEEN: list[Any] = []


@dataclass
class Address:
    city: str
    zip: str


@dataclass
class Welcome:
    user_id: int
    locale: Literal["en", "fr"] = "en"
    address: Address | None = None
    tags: list[str] = field(default_factory=list)
    score: float = 0.0


class SendWelcome(pgqueue.TypedWorker[Welcome], queue="typed"):
    def handle(self, args: Welcome, job: pgqueue.Job) -> None:
        SEEN.append(args)


class Invoice(BaseModel):
    invoice_id: int = Field(gt=0)
    due: dt.date
    lines: list[str] = []


class SendInvoice(pgqueue.TypedWorker[Invoice], queue="typed"):
    async def handle(self, args: Invoice, job: pgqueue.Job) -> str:
        SEEN.append(args)
        return "sent"
