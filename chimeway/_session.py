"""How chimeway's writes share a caller's SQLAlchemy session without taking over its transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session


@contextmanager
def atomic(session: Session) -> Iterator[None]:
    """Run the block all-or-nothing: as a savepoint inside the caller's open transaction (the
    caller commits), else in a transaction of its own that commits when the block ends."""
    if session.in_transaction():
        with session.begin_nested():
            yield
    else:
        with session.begin():
            yield


def mapped_schema(connection: Connection) -> str:
    """The schema chimeway's tables are in for ``connection``: where its ``schema_translate_map``
    maps them (the key None, as :mod:`chimeway.models` says), else ``public``."""
    mapping = connection.get_execution_options().get("schema_translate_map") or {}
    return str(mapping.get(None) or "public")
