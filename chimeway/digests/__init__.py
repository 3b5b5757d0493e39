"""Digests: hold the deliveries a rule matches and send each recipient one message per window.

Define a :class:`DigestRule` with :func:`define_rule`; from then on, :func:`chimeway.trigger`
holds matching deliveries (``orchestration_state`` ``digest_held``, no dispatch job) in a bucket
per recipient, group and window. At the window's end a pgqueue job scheduled for it
(:class:`DigestFlushWorker`, queue :data:`FLUSH_QUEUE`) emits one digest delivery per bucket,
carrying its members as one message, and marks each member ``digested`` with the digest
delivery's id. :func:`chimeway.explain.explain_delivery` shows a member's bucket and digest, and
a digest's members.
"""

from __future__ import annotations

from .flush import (
    CHUNK,
    DIGEST_KEY,
    FLUSH_QUEUE,
    DigestFlushWorker,
    FlushResult,
    aclose_windows,
    aflush_window,
    close_windows,
    flush_job,
    flush_window,
)
from .rules import DigestRule, DigestRuleError, WindowKind, adefine_rule, define_rule, list_rules

__all__ = [
    "CHUNK",
    "DIGEST_KEY",
    "FLUSH_QUEUE",
    "DigestFlushWorker",
    "DigestRule",
    "DigestRuleError",
    "FlushResult",
    "WindowKind",
    "aclose_windows",
    "adefine_rule",
    "aflush_window",
    "close_windows",
    "define_rule",
    "flush_job",
    "flush_window",
    "list_rules",
]
