"""A FastAPI application that runs pgqueue inside its lifespan, for the uvicorn test.

It is the README's recipe: the runtime starts and stops with the application, on uvicorn's event
loop; a request enqueues a job through the application's own asyncpg pool, in its transaction.
The database and schema come from the environment (``PGQUEUE_TEST_DSN``, ``PGQUEUE_TEST_SCHEMA``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import psycopg
from fastapi import FastAPI, HTTPException

import pgqueue
from pgqueue.runtime import Runtime

DSN = os.environ["PGQUEUE_TEST_DSN"]
SCHEMA = os.environ["PGQUEUE_TEST_SCHEMA"]


class SendWelcome(pgqueue.Worker, queue="emails", name="tests.system.asgi_app.SendWelcome"):
    async def perform(self, job: pgqueue.Job) -> None:
        pass


runtime = Runtime(DSN, queues={"emails": 5}, schema=SCHEMA, shutdown_grace_period=2)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    info = psycopg.conninfo.conninfo_to_dict(DSN)
    async with (
        asyncpg.create_pool(
            host=info.get("host"),
            port=int(info.get("port") or 5432),
            user=info.get("user"),
            password=info.get("password"),
            database=info.get("dbname"),
            min_size=1,
            max_size=4,
        ) as pool,
        runtime,
    ):
        app.state.db = pool
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/signups/{user_id}")
async def sign_up(user_id: int, fail: bool = False) -> dict[str, Any]:
    async with app.state.db.acquire() as conn, conn.transaction():
        job = await pgqueue.ainsert(conn, SendWelcome.new({"user_id": user_id}), schema=SCHEMA)
        if fail:  # the transaction rolls back, and the job with it
            raise HTTPException(status_code=409, detail="sign-up refused")
    return {"job_id": job.id, "runtime_started": runtime.started}
