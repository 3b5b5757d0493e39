"""Chimeway's plain-SQL statements: loaded from ``chimeway/queries/``, rendered per schema."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from chimeway.store import TABLES, queries_for


def test_statements_name_the_schema_quoted_and_drop_their_comment_lines() -> None:
    queries = queries_for('odd "name"')
    text = queries.count_open_deliveries
    assert '"odd ""name"""."chimeway_deliveries"' in text
    assert "--" not in text


def test_a_function_is_named_quoted_in_the_schema_like_a_table() -> None:
    text = queries_for('odd "name"').inbox_channel
    assert '"odd ""name"""."chimeway_inbox_channel"(' in text


def test_an_unknown_statement_names_the_folder() -> None:
    with pytest.raises(AttributeError, match=r"no statement named 'nope' in chimeway/queries/"):
        _ = queries_for().nope


def test_a_schema_name_pgqueue_refuses_is_refused_here_too() -> None:
    with pytest.raises(ValueError, match="schema"):
        queries_for("")


def test_every_table_placeholder_is_a_chimeway_table() -> None:
    assert all(name.startswith("chimeway_") for name in TABLES.values())


def test_a_statement_runs_against_the_migrated_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    rows = conn.execute(queries_for(schema).count_open_deliveries).fetchall()
    assert rows == []
