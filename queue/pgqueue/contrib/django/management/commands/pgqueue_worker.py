"""``manage.py pgqueue_worker``: run the queues of ``PGQUEUE['QUEUES']`` until SIGTERM/SIGINT."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pgqueue.contrib.django.conf import conninfo, get_settings
from pgqueue.runtime import Runtime


class Command(BaseCommand):
    help = "Run pgqueue workers for PGQUEUE['QUEUES'] until SIGTERM or SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues", help="queue:limit pairs, comma separated (default: PGQUEUE['QUEUES'])"
        )
        parser.add_argument("--node", help="this node's name (default: host name and pid)")

    def handle(self, *args: Any, **options: Any) -> None:
        settings = get_settings()
        queues: dict[str, Any] = settings.queues
        if options.get("queues"):
            queues = {}
            for pair in options["queues"].split(","):
                name, _, limit = pair.partition(":")
                queues[name.strip()] = int(limit or 10)
        from pgqueue.contrib.django.tasks_support import task_modules_loaded

        task_modules_loaded(settings.task_modules)
        runtime = Runtime(
            conninfo(settings.database),
            queues=queues,
            workers=list(settings.workers),
            schema=settings.schema,
            node=options.get("node"),
        )
        self.stdout.write(f"pgqueue: running {sorted(queues)} in schema {settings.schema!r}")
        self.stdout.flush()
        runtime.run()
        self.stdout.write("pgqueue: stopped")
