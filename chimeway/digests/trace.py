"""What a delivery's rows say about digests, for :mod:`chimeway.explain`: the bucket a member was
held in and the digest that carried it, or the bucket and members of a digest delivery."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from pgqueue.targets import sync_writer

from .._session import mapped_schema
from ..store import queries_for

__all__ = ["DigestEmission", "DigestMembership", "digest_facts"]


@dataclass(frozen=True, slots=True)
class DigestMembership:
    """The bucket a delivery was held in (``held_at``) and, once flushed, the digest delivery that
    carried it (``digest_delivery_id``, ``resolved_at``)."""

    bucket_id: uuid.UUID
    rule_key: str
    grouping_value: str
    window_starts_at: datetime
    window_ends_at: datetime
    flush_state: str
    held_at: datetime
    resolved_at: datetime | None
    digest_delivery_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class DigestEmission:
    """The bucket a digest delivery was emitted for, and the member deliveries it carries."""

    bucket_id: uuid.UUID
    rule_key: str
    grouping_value: str
    window_starts_at: datetime
    window_ends_at: datetime
    emitted_at: datetime
    member_ids: tuple[uuid.UUID, ...]


def digest_facts(
    session: Session, delivery_id: uuid.UUID
) -> tuple[DigestMembership | None, DigestEmission | None]:
    """The membership and the emission recorded for ``delivery_id`` (either may be None)."""
    queries = queries_for(mapped_schema(session.connection()))
    params = {"delivery_id": delivery_id}
    with sync_writer(session) as writer:
        held = writer.execute(queries.digest_membership, params)
        emitted = writer.execute(queries.digest_emission, params)
    membership = DigestMembership(*held[0]) if held else None
    emission = None
    if emitted:
        bucket_id, rule_key, grouping_value, starts, ends, emitted_at, members = emitted[0]
        emission = DigestEmission(
            bucket_id, rule_key, grouping_value, starts, ends, emitted_at, member_ids=tuple(members)
        )
    return membership, emission
