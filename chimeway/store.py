"""Every plain-SQL statement Chimeway runs on its hot paths, by name.

The SQLAlchemy models (:mod:`chimeway.models`) serve applications and the slow paths (explain,
preferences, one delivery at a time). Where throughput matters (dispatching a batch of
deliveries, fanning one event out to many recipients) Chimeway runs plain statements instead, one
file each in ``queries/``, loaded and rendered here for one schema. Reading ``queries/`` tells you
everything those paths do to the database.

The files name Chimeway's tables and functions through placeholders that become quoted,
schema-qualified identifiers via :mod:`psycopg.sql`:

============================== ===============================================
``{events}``                   ``chimeway_events``
``{notifications}``            ``chimeway_notifications``
``{deliveries}``               ``chimeway_deliveries``
``{attempts}``                 ``chimeway_delivery_attempts``
``{notification_preferences}`` ``chimeway_notification_preferences``
``{category_preferences}``     ``chimeway_category_preferences``
``{inbox_channel}``            ``chimeway_inbox_channel`` (a function)
``{inbox_horizon}``            ``chimeway_inbox_horizon`` (a function)
``{policy_settings}``          ``chimeway_policy_settings``
``{quiet_until}``              ``chimeway_quiet_until`` (a function)
``{cap_grant}``                ``chimeway_cap_grant`` (a function)
``{cap_record}``               ``chimeway_cap_record`` (a function)
``{journey_definitions}``      ``chimeway_journey_definitions``
``{journey_runs}``             ``chimeway_journey_runs``
``{journey_transitions}``      ``chimeway_journey_transitions``
``{digest_rules}``             ``chimeway_digest_rules``
``{digest_buckets}``           ``chimeway_digest_buckets``
``{digest_memberships}``       ``chimeway_digest_memberships``
``{digest_window_end}``        ``chimeway_digest_window_end`` (a function)
``{digest_window_start}``      ``chimeway_digest_window_start`` (a function)
``{jobs}``                     pgqueue's ``jobs``, in the queue's schema
============================== ===============================================

Values are always parameters (``%(name)s``). The files are ``str.format``-style templates: a
literal brace is doubled, and a literal ``%`` is written ``%%``.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files

from psycopg import sql

from pgqueue.migrate import validate_schema_name
from pgqueue.store import Queries

__all__ = ["FUNCTIONS", "TABLES", "Queries", "queries_for"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*\.sql$")

#: placeholder → table name, for every table a statement may name
TABLES: dict[str, str] = {
    "events": "chimeway_events",
    "notifications": "chimeway_notifications",
    "deliveries": "chimeway_deliveries",
    "attempts": "chimeway_delivery_attempts",
    "notification_preferences": "chimeway_notification_preferences",
    "category_preferences": "chimeway_category_preferences",
    "policy_settings": "chimeway_policy_settings",
    "journey_definitions": "chimeway_journey_definitions",
    "journey_runs": "chimeway_journey_runs",
    "journey_transitions": "chimeway_journey_transitions",
    "digest_rules": "chimeway_digest_rules",
    "digest_buckets": "chimeway_digest_buckets",
    "digest_memberships": "chimeway_digest_memberships",
}

#: placeholder → function name, for every function of Chimeway's a statement may call
FUNCTIONS: dict[str, str] = {
    "inbox_channel": "chimeway_inbox_channel",
    "inbox_horizon": "chimeway_inbox_horizon",
    "quiet_until": "chimeway_quiet_until",
    "cap_grant": "chimeway_cap_grant",
    "cap_record": "chimeway_cap_record",
    "digest_window_end": "chimeway_digest_window_end",
    "digest_window_start": "chimeway_digest_window_start",
}


def _without_comment_lines(text: str) -> str:
    # The files explain themselves; the server needn't parse that on every call, and psycopg
    # caches its parse of a query only up to 4 KiB. Only whole-line comments go: a trailing `--`
    # could sit inside a string literal.
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


def _load_templates() -> dict[str, str]:
    templates: dict[str, str] = {}
    folder = files("chimeway") / "queries"
    if not folder.is_dir():
        return templates
    for entry in folder.iterdir():
        if _NAME_RE.match(entry.name):
            templates[entry.name.removesuffix(".sql")] = _without_comment_lines(
                entry.read_text(encoding="utf-8")
            )
    return templates


_TEMPLATES = _load_templates()


def _render(template: str, schema: str, queue_schema: str) -> str:
    names = {key: sql.Identifier(schema, name) for key, name in (TABLES | FUNCTIONS).items()}
    names["jobs"] = sql.Identifier(queue_schema, "jobs")
    return sql.SQL(template).format(**names).as_string(None)


@functools.lru_cache(maxsize=64)
def queries_for(schema: str = "public", queue_schema: str | None = None) -> Queries:
    """All statements rendered for ``schema`` (cached: rendering happens once per schema).

    ``queue_schema`` is where pgqueue's ``jobs`` table is, for the few statements that read it
    (the same schema when None).
    """
    validate_schema_name(schema)
    jobs_schema = schema if queue_schema is None else queue_schema
    validate_schema_name(jobs_schema)
    return Queries(
        schema,
        {name: _render(text, schema, jobs_schema) for name, text in _TEMPLATES.items()},
        source="chimeway/queries/",
    )
