"""An ASGI endpoint for provider feedback (Starlette: ``pip install chimeway[feedback]``).

::

    from chimeway.feedback.asgi import feedback_app

    app = feedback_app(os.environ["DATABASE_URL"], adapter="email", secret=os.environ["FEEDBACK_SECRET"])
    # uvicorn module:app, or mount it: Starlette(routes=[Mount("/feedback/email", app)])

Each ``POST /`` is one provider webhook, handled by :func:`chimeway.feedback.areceive`:

========================================  =====================================================
200 ``{"result": "applied", …}``          recorded (``changed``: whether the status moved)
200 ``{"result": "duplicate", …}``        seen before: nothing written
400 ``{"error": "…"}``                    unsigned, badly signed, outside the replay window,
                                          malformed: nothing written
404 ``{"result": "unknown_message"}``     no attempt recorded that message id (yet): the
                                          provider's retry may find it
413                                       a body over 64 KiB (not read past that)
503                                       the database is unreachable: the provider retries
========================================  =====================================================

The app owns a small connection pool (or uses the ``pool`` you pass, opened, in autocommit),
opened by the ASGI lifespan. Neither the body nor the secret is ever logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..webhooks import DEFAULT_TOLERANCE, parse_secrets
from . import MAX_BODY_BYTES, InvalidFeedback, Parser, areceive, parse_feedback

__all__ = ["feedback_app"]

_log = logging.getLogger("chimeway.feedback")


class _TooLarge(Exception):
    pass


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def feedback_app(
    conninfo: str | None = None,
    *,
    adapter: str,
    secret: str | Sequence[str],
    pool: AsyncConnectionPool[Any] | None = None,
    schema: str = "public",
    parser: Parser = parse_feedback,
    tolerance: float = DEFAULT_TOLERANCE,
    pool_size: int = 4,
) -> Starlette:
    """The endpoint for ``adapter``'s provider webhooks, verified with ``secret`` (one or several)."""
    parse_secrets(secret)  # a bad secret fails here, at start, not on every request
    if pool is None and not conninfo:
        raise ValueError("feedback_app needs a conninfo (DSN) or an opened AsyncConnectionPool")
    dsn = conninfo or ""
    owned: AsyncConnectionPool[Any] | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal owned
        if pool is None:
            owned = AsyncConnectionPool(
                dsn, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=False
            )
            await owned.open()
        try:
            yield
        finally:
            if owned is not None:
                await owned.close()
                owned = None

    async def post(request: Request) -> JSONResponse:
        active = pool or owned
        if active is None:
            return JSONResponse({"error": "the endpoint is not started"}, status_code=503)
        try:
            body = await _body(request)
        except _TooLarge:
            return JSONResponse(
                {"error": f"the body must be at most {MAX_BODY_BYTES} bytes"}, status_code=413
            )
        try:
            async with active.connection() as conn:
                outcome = await areceive(
                    conn,
                    adapter=adapter,
                    body=body,
                    headers=dict(request.headers.items()),
                    secret=secret,
                    schema=schema,
                    parser=parser,
                    tolerance=tolerance,
                )
        except InvalidFeedback as exc:
            _log.info("provider feedback for %s refused: %s", adapter, exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        except (psycopg.OperationalError, TimeoutError):
            _log.warning("provider feedback for %s: the database is unreachable", adapter)
            return JSONResponse({"error": "the database is unreachable, retry later"}, status_code=503)
        answer: dict[str, Any] = {"result": outcome.result}
        if outcome.delivery_id is not None:
            answer |= {"delivery_id": str(outcome.delivery_id), "status": outcome.status}
            answer |= {"suppression_reason": outcome.suppression_reason, "changed": outcome.changed}
        _log.info("provider feedback for %s: %s %s", adapter, outcome.result, outcome.delivery_id or "")
        return JSONResponse(answer, status_code=404 if outcome.result == "unknown_message" else 200)

    return Starlette(routes=[Route("/", post, methods=["POST"])], lifespan=lifespan)
