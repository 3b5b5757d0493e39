"""Read the job list's filters from a query string, refusing anything odd with a clear message.

Queue, worker and tag filters hold the characters names are made of (letters, digits and
``_ . : - / @``); anything else, SQL metacharacters included, is refused with a 400 that names
the field. The args and meta searches take a JSON object and match jobs whose JSON contains it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.datastructures import QueryParams

from ..job import JobState
from ..store import JobFilter

__all__ = ["MAX_QUERY_BYTES", "BadInput", "JobQuery", "parse_job_id", "parse_job_query"]

#: a query string longer than this is refused outright
MAX_QUERY_BYTES = 8192
_NAME = re.compile(r"^[A-Za-z0-9_.:\-/@]{1,255}$")
_MAX_SEARCH = 2048
_MAX_ID = 2**63 - 1
PAGE_SIZES = (25, 50, 100)


class BadInput(ValueError):
    """A request parameter the dashboard refuses; ``field`` names it (shown on the 400 page)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class JobQuery:
    """The job list's filters and cursor, as given in the query string."""

    state: str | None = None
    queue: str | None = None
    worker: str | None = None
    tags: list[str] = field(default_factory=list)
    args: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    args_text: str = ""
    meta_text: str = ""
    before: int | None = None
    after: int | None = None
    limit: int = 50

    def job_filter(self) -> JobFilter:
        """The filters other than the state (the list's statement takes the state itself)."""
        return JobFilter(
            queue=self.queue,
            worker=self.worker,
            tags=self.tags or None,
            args=self.args,
            meta=self.meta,
        )

    def params(self, **changes: Any) -> str:
        """This query's filters (not its cursor) as a query string, with ``changes`` applied."""
        values: dict[str, Any] = {
            "state": self.state,
            "queue": self.queue,
            "worker": self.worker,
            "tags": ",".join(self.tags) or None,
            "args": self.args_text or None,
            "meta": self.meta_text or None,
            "limit": self.limit if self.limit != 50 else None,
        }
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def _name(params: QueryParams, key: str) -> str | None:
    value = params.get(key, "").strip()
    if not value:
        return None
    if not _NAME.match(value):
        raise BadInput(key, "may hold only letters, digits and _ . : - / @ (at most 255)")
    return value


def _search(params: QueryParams, key: str) -> tuple[dict[str, Any] | None, str]:
    text = params.get(key, "").strip()
    if not text:
        return None, ""
    if len(text) > _MAX_SEARCH:
        raise BadInput(key, f"must be at most {_MAX_SEARCH} characters")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadInput(key, 'must be a JSON object, e.g. {"user_id": 7}') from None
    if not isinstance(value, dict):
        raise BadInput(key, 'must be a JSON object, e.g. {"user_id": 7}')
    return value, text


def _cursor(params: QueryParams, key: str) -> int | None:
    text = params.get(key, "").strip()
    if not text:
        return None
    if not text.isdigit() or len(text) > 19 or int(text) > _MAX_ID:
        raise BadInput(key, "must be a job id")
    return int(text)


def parse_job_query(params: QueryParams) -> JobQuery:
    """The job list's filters; raises :class:`BadInput` naming the first bad field."""
    state = params.get("state", "").strip() or None
    if state is not None and state not in {s.value for s in JobState}:
        raise BadInput("state", f"must be one of {', '.join(s.value for s in JobState)}")
    tags_text = params.get("tags", "").strip()
    tags = [tag.strip() for tag in tags_text.split(",") if tag.strip()] if tags_text else []
    for tag in tags:
        if not _NAME.match(tag):
            raise BadInput("tags", "each tag may hold only letters, digits and _ . : - / @")
    args, args_text = _search(params, "args")
    meta, meta_text = _search(params, "meta")
    limit_text = params.get("limit", "").strip()
    limit = 50
    if limit_text:
        if not limit_text.isdigit() or int(limit_text) not in PAGE_SIZES:
            raise BadInput("limit", f"must be one of {', '.join(map(str, PAGE_SIZES))}")
        limit = int(limit_text)
    before, after = _cursor(params, "before"), _cursor(params, "after")
    if before is not None and after is not None:
        raise BadInput("after", "give before or after, not both")
    return JobQuery(
        state=state,
        queue=_name(params, "queue"),
        worker=_name(params, "worker"),
        tags=tags,
        args=args,
        meta=meta,
        args_text=args_text,
        meta_text=meta_text,
        before=before,
        after=after,
        limit=limit,
    )


def parse_job_id(text: str) -> int | None:
    """A job id from a URL or form, or None when it can't name a job (the caller answers 404)."""
    text = text.strip()
    if not text.isdigit() or len(text) > 19 or int(text) > _MAX_ID:
        return None
    return int(text)
