"""Keep one job's bad data that job's problem: text PostgreSQL can store, and errors a row caused.

Whatever a worker produces (an exception's message, an outcome's reason) ends up in a statement
that writes many jobs' acks at once, next to a producer's claim. One value PostgreSQL refuses would
fail them all, so every text passes :func:`storable_text` before it leaves the executor, and a
statement that fails anyway is told apart by :func:`is_row_error`: a row's data (split the batch
and set the bad row aside) or anything else (an outage: retry the batch whole).
"""

from __future__ import annotations

import orjson
import psycopg

__all__ = ["MAX_ERROR_CHARS", "is_row_error", "storable_text"]

#: The longest error text recorded for one attempt; longer ones are cut, saying so.
MAX_ERROR_CHARS = 16_000
_TRUNCATED = "\n… (truncated)"
#: SQLSTATE classes that blame the data of the statement: 22 data exception (a NUL in text, a
#: timestamp out of range, an encoding the server can't represent), 23 integrity constraint
#: violation, 54 program limit exceeded (a jsonb value or an index row too large).
_ROW_ERROR_CLASSES = frozenset({"22", "23", "54"})


def storable_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` as PostgreSQL can store it: NUL written as ``\\x00``, lone surrogates as
    ``\\udcff`` escapes, and at most ``limit`` characters (cut ones end with a note saying so).

    Text that needs none of this comes back unchanged."""
    cut = len(text) > limit
    if cut:
        text = text[:limit]  # first, so a megabyte of text is never scanned
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: what surrogateescape makes of undecodable bytes (file names, subprocess
        # output). No UTF-8 encoder accepts them; their escapes read like the bytes they stand for.
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if cut or len(text) > limit:
        text = text[: limit - len(_TRUNCATED)] + _TRUNCATED
    return text


def is_row_error(exc: BaseException) -> bool:
    """True when ``exc`` says a statement's data was refused, so repeating it can only fail again.

    Connection failures, timeouts, cancellations and server shutdowns are not row errors: those
    statements may succeed when repeated."""
    if isinstance(exc, psycopg.Error):
        if isinstance(exc, psycopg.DataError):
            return True  # including psycopg's own refusals, which carry no SQLSTATE
        state = exc.sqlstate
        return state is not None and state[:2] in _ROW_ERROR_CLASSES
    # Parameters that could not even be encoded (a lone surrogate in a str).
    return isinstance(exc, orjson.JSONEncodeError | UnicodeError)
