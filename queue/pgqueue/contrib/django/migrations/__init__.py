"""Django migrations of the pgqueue app: each applies pgqueue's own versioned SQL."""

from __future__ import annotations

from typing import Any

import psycopg


def raw_connection(schema_editor: Any) -> psycopg.Connection[Any]:
    """The psycopg 3 connection under the migration's (Django picks psycopg 3 when installed,
    and pgqueue depends on it)."""
    schema_editor.connection.ensure_connection()
    raw = schema_editor.connection.connection
    if not isinstance(raw, psycopg.Connection):
        raise TypeError(
            f"pgqueue migrates through psycopg 3; this Django connection is a {type(raw).__module__} one"
        )
    return raw
