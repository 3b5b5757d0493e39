"""Every SQL statement pgqueue runs, by name.

Each statement is one file in ``queries/`` (``queries/fetch_jobs.sql`` is the fetch). This module
loads them and renders them for one schema: the files refer to pgqueue's objects through
placeholders that become quoted, schema-qualified identifiers via :mod:`psycopg.sql`:

=============== ==============================================
``{jobs}``       the jobs table
``{jobs_name}``  the jobs table's quoted name as a string literal, for functions that take a
                 table by name (``pg_get_serial_sequence``)
``{job_state}``  the job state enum type (for casts)
``{producers}``  the producers (heartbeat) table
``{leaders}``    the leader lease table
``{signals}``    the queue-control table (signals between nodes)
``{queues}``     the queues declared in the database
``{limit_state}`` the per-queue (and per-partition) admission state of limited queues
``{cron}``       the cron entries declared in the database
``{workflow_deps}``    workflow dependency edges (job waits for dep)
``{workflow_waits}``   what each waiting job still waits for
``{workflow_resolved}`` dependencies that finished, counted once
``{workflow_signals}`` signals sent, kept for jobs that wait for them later
``{workflow_release}`` the function that moves waiting jobs on (see sql/pgqueue/0006)
``{signal_function}``  the function that sends a signal
``{executing_count}``  the limited fetch's count of executing jobs (see sql/pgqueue/0009)
=============== ==============================================

A ``*.part.sql`` file is a fragment shared by several statements: ``{acks_part}`` in a statement is
replaced by the text of ``acks.part.sql`` before the placeholders above are filled.

Two kinds of file take one more placeholder, filled per call: ``*.filtered.sql`` a ``{where}``
condition (see :func:`filtered`) and ``*.columns.sql`` a ``{columns}`` list (see
:func:`with_columns`).

Values are always parameters (``%(name)s``). Because the files are ``str.format``-style templates,
a literal brace must be doubled, and a literal ``%`` is written ``%%``; prefer
``jsonb_build_object()`` and ``'[]'::jsonb`` spelled with doubled braces where needed.

Nothing outside this module and ``queries/`` writes SQL for the queue.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from psycopg import sql

from .migrate import validate_schema_name

__all__ = [
    "JobFilter",
    "Queries",
    "channel_name",
    "drop_index",
    "filtered",
    "queries_for",
    "reindex_index",
    "with_columns",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*\.sql$")
_FILTERED_RE = re.compile(r"^[a-z][a-z0-9_]*\.filtered\.sql$")
_COLUMNS_RE = re.compile(r"^[a-z][a-z0-9_]*\.columns\.sql$")
_PART_RE = re.compile(r"^[a-z][a-z0-9_]*\.part\.sql$")
_MAX_CHANNEL_BYTES = 63


def _load_templates(pattern: re.Pattern[str]) -> dict[str, str]:
    templates: dict[str, str] = {}
    for entry in (files("pgqueue") / "queries").iterdir():
        if pattern.match(entry.name):
            templates[entry.name.split(".", 1)[0]] = _without_comment_lines(entry.read_text(encoding="utf-8"))
    return templates


def _with_parts(templates: dict[str, str], parts: dict[str, str]) -> dict[str, str]:
    # A part may include another (acks.part.sql includes batch_acks.part.sql): substitute until
    # nothing changes.
    for name, text in templates.items():
        previous = None
        while previous != text:
            previous = text
            for part, fragment in parts.items():
                text = text.replace("{" + part + "_part}", fragment)
        templates[name] = text
    return templates


def _without_comment_lines(text: str) -> str:
    # The files explain themselves at length; the server needn't read that on every call, and
    # psycopg caches its parse of a query only up to 4 KiB (the fetch is run thousands of times a
    # second). Only whole-line comments go: a trailing `--` could sit inside a string literal.
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


_PARTS = _load_templates(_PART_RE)
#: ``{acks_batches_part}`` (in acks.part.sql): nothing in a fetch as named, the batches' accounting in
#: its ``_batched`` twin, which only acks of batch members need (see batch_acks.part.sql)
_LEAN = {**_PARTS, "acks_batches": ""}
_TEMPLATES = _with_parts(_load_templates(_NAME_RE), _LEAN)
_TEMPLATES.update(
    {
        f"{name}_batched": text
        for name, text in _with_parts(
            _load_templates(_NAME_RE), {**_PARTS, "acks_batches": _PARTS["batch_acks"]}
        ).items()
        if text != _TEMPLATES[name]
    }
)
#: statements with a ``{where}`` placeholder, completed per call from a :class:`JobFilter`
_FILTERED = _with_parts(_load_templates(_FILTERED_RE), _LEAN)
#: statements with a ``{columns}`` placeholder, completed per call with a list of column names
_WITH_COLUMNS = _load_templates(_COLUMNS_RE)


@dataclass(frozen=True, slots=True)
class Queries:
    """The statements of a package's ``queries/`` rendered for one schema; look them up by file name."""

    schema: str
    statements: dict[str, str]
    #: where the statements come from, for the error naming one that does not exist
    source: str = "pgqueue/queries/"

    def __getattr__(self, name: str) -> str:
        try:
            return self.statements[name]
        except KeyError:
            raise AttributeError(f"no statement named {name!r} in {self.source}") from None

    def __getitem__(self, name: str) -> str:
        return self.statements[name]


def _render(template: str, schema: str, **extra: sql.Composable) -> str:
    jobs = sql.Identifier(schema, "jobs")
    composed = sql.SQL(template).format(
        jobs=jobs,
        jobs_name=sql.Literal(jobs.as_string(None)),
        job_state=sql.Identifier(schema, "job_state"),
        producers=sql.Identifier(schema, "pgqueue_producers"),
        leaders=sql.Identifier(schema, "pgqueue_leaders"),
        signals=sql.Identifier(schema, "pgqueue_signals"),
        queues=sql.Identifier(schema, "pgqueue_queues"),
        limit_state=sql.Identifier(schema, "pgqueue_limit_state"),
        cron=sql.Identifier(schema, "pgqueue_cron"),
        batches=sql.Identifier(schema, "pgqueue_batches"),
        results_channel=sql.Literal(channel_name(schema, "result")),
        insert_channel=sql.Literal(channel_name(schema, "insert")),
        workflow_deps=sql.Identifier(schema, "pgqueue_workflow_deps"),
        workflow_waits=sql.Identifier(schema, "pgqueue_workflow_waits"),
        workflow_resolved=sql.Identifier(schema, "pgqueue_workflow_resolved"),
        workflow_signals=sql.Identifier(schema, "pgqueue_workflow_signals"),
        workflow_release=sql.Identifier(schema, "pgqueue_workflow_release"),
        signal_function=sql.Identifier(schema, "pgqueue_signal"),
        claim=sql.Identifier(schema, "pgqueue_claim"),
        prunable=sql.Identifier(schema, "pgqueue_prunable"),
        due=sql.Identifier(schema, "pgqueue_due"),
        orphans=sql.Identifier(schema, "pgqueue_orphans"),
        executing_count=sql.Identifier(schema, "pgqueue_executing_count"),
        **extra,
    )
    return composed.as_string(None)


@functools.lru_cache(maxsize=64)
def queries_for(schema: str = "public") -> Queries:
    """All statements rendered for ``schema`` (cached: rendering happens once per schema)."""
    validate_schema_name(schema)
    return Queries(schema, {name: _render(text, schema) for name, text in _TEMPLATES.items()})


def channel_name(schema: str, topic: str) -> str:
    """The LISTEN/NOTIFY channel for ``topic`` (insert, signal, leader …) in ``schema``.

    Channels are namespaced by schema so two queues in one database never hear each other.
    PostgreSQL caps channel names at 63 bytes; a long schema name is replaced by a digest.
    """
    name = f"pgqueue.{schema}.{topic}"
    if len(name.encode("utf-8")) <= _MAX_CHANNEL_BYTES:
        return name
    import hashlib

    digest = hashlib.blake2b(schema.encode("utf-8"), digest_size=8).hexdigest()
    return f"pgqueue.{digest}.{topic}"


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a bulk operation or query touches. Every given criterion must hold.

    A scalar means equality and a list means "any of"; ``tags`` matches jobs carrying all of the
    given tags; ``args``/``meta`` match jobs whose JSON contains the given object.
    """

    ids: Sequence[int] | None = None
    queue: str | Sequence[str] | None = None
    worker: str | Sequence[str] | None = None
    state: str | Sequence[str] | None = None
    priority: int | Sequence[int] | None = None
    tags: Sequence[str] | None = None
    args: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] | None = None

    def where(self) -> tuple[sql.Composable, dict[str, Any]]:
        """The WHERE condition (without the keyword) and its parameters."""
        clauses: list[sql.Composable] = []
        params: dict[str, Any] = {}

        def any_of(column: str, value: Any, cast_to: str) -> None:
            values = [value] if isinstance(value, str | int) else list(value)
            params[f"f_{column}"] = values
            clauses.append(
                sql.SQL("{} = ANY ({}::" + cast_to + "[])").format(
                    sql.Identifier(column), sql.Placeholder(f"f_{column}")
                )
            )

        if self.ids is not None:
            any_of("id", list(self.ids), "bigint")
        if self.queue is not None:
            any_of("queue", self.queue, "text")
        if self.worker is not None:
            any_of("worker", self.worker, "text")
        if self.state is not None:
            any_of("state", self.state, "text")
            clauses[-1] = sql.SQL("state::text = ANY ({}::text[])").format(sql.Placeholder("f_state"))
        if self.priority is not None:
            any_of("priority", self.priority, "smallint")
        if self.tags is not None:
            params["f_tags"] = list(self.tags)
            clauses.append(sql.SQL("tags @> {}::text[]").format(sql.Placeholder("f_tags")))
        for column, value in (("args", self.args), ("meta", self.meta)):
            if value is not None:
                params[f"f_{column}"] = json.dumps(value)
                clauses.append(
                    sql.SQL("{} @> {}::jsonb").format(sql.Identifier(column), sql.Placeholder(f"f_{column}"))
                )
        if not clauses:
            return sql.SQL("true"), params
        return sql.SQL(" AND ").join(clauses), params


def filtered(name: str, schema: str, job_filter: JobFilter) -> tuple[str, dict[str, Any]]:
    """The statement ``queries/<name>.filtered.sql`` for ``schema``, restricted by ``job_filter``."""
    validate_schema_name(schema)
    where, params = job_filter.where()
    return _render(_FILTERED[name], schema, where=where), params


@functools.lru_cache(maxsize=256)
def with_columns(name: str, schema: str, columns: tuple[str, ...]) -> str:
    """The statement ``queries/<name>.columns.sql`` for ``schema``, listing ``columns`` (quoted)."""
    validate_schema_name(schema)
    return _render(
        _WITH_COLUMNS[name], schema, columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )


def reindex_index(schema: str, index: str) -> str:
    """``REINDEX INDEX CONCURRENTLY`` one of pgqueue's indexes (outside any transaction)."""
    return sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(schema, index)).as_string(None)


def drop_index(schema: str, index: str) -> str:
    """``DROP INDEX CONCURRENTLY`` an index left invalid by an interrupted rebuild."""
    return (
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, index)).as_string(None)
    )
