"""pgqueue in a Django project: jobs enqueued on Django's own connection, so they join
``transaction.atomic``; the tables installed by ``manage.py migrate``; workers run by
``manage.py pgqueue_worker``; and, on Django 6, a backend for ``django.tasks``.

::

    INSTALLED_APPS = [..., "pgqueue.contrib.django"]
    PGQUEUE = {"QUEUES": {"default": 10}, "WORKERS": ["shop.workers"]}

    from django.db import transaction
    from pgqueue.contrib.django import enqueue

    with transaction.atomic():
        order = Order.objects.create(...)
        enqueue(SendReceipt.new({"order_id": order.pk}))   # rolled back with the order

Settings are described in :mod:`pgqueue.contrib.django.conf`. The database must be PostgreSQL
(checked when Django starts).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...insert import insert_all
from ...job import Job, NewJob

__all__ = ["aenqueue", "aenqueue_all", "enqueue", "enqueue_all"]


def _connection(using: str | None) -> tuple[object, str]:
    from django.db import connections

    from .conf import get_settings

    settings = get_settings()
    wrapper = connections[using or settings.database]
    wrapper.ensure_connection()
    return wrapper.connection, settings.schema


def enqueue_all(jobs: Sequence[NewJob], *, using: str | None = None) -> list[Job]:
    """Insert ``jobs`` on Django's connection ``using`` (default ``PGQUEUE['DATABASE']``), in the
    transaction ``transaction.atomic`` has open; outside one, in a transaction of their own."""
    raw, schema = _connection(using)
    return insert_all(raw, jobs, schema=schema)


def enqueue(job: NewJob, *, using: str | None = None) -> Job:
    """Insert one job; see :func:`enqueue_all`."""
    return enqueue_all([job], using=using)[0]


async def aenqueue_all(jobs: Sequence[NewJob], *, using: str | None = None) -> list[Job]:
    """:func:`enqueue_all` from async code (Django's connections are sync: run in its thread)."""
    from asgiref.sync import sync_to_async

    saved: list[Job] = await sync_to_async(enqueue_all)(jobs, using=using)
    return saved


async def aenqueue(job: NewJob, *, using: str | None = None) -> Job:
    """:func:`enqueue` from async code."""
    return (await aenqueue_all([job], using=using))[0]
