"""The provider feedback endpoint as ``uvicorn --factory tests.chimeway.feedback_app:create`` serves it
in the tests: configured from FEEDBACK_DSN, FEEDBACK_SCHEMA and FEEDBACK_SECRET."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from chimeway.feedback.asgi import feedback_app


def create() -> Starlette:
    return feedback_app(
        os.environ["FEEDBACK_DSN"],
        adapter="email",
        secret=os.environ["FEEDBACK_SECRET"],
        schema=os.environ["FEEDBACK_SCHEMA"],
    )
