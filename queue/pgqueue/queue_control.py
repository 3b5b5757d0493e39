"""Queue control as a node offers it: pause, resume, scale, start and stop queues on every node,
one node, or only this one (:class:`pgqueue.Runtime` has these methods).

Each is a request written through :mod:`pgqueue.control` (a signals row that every node reads);
this module only checks the arguments and words the request.
"""

from __future__ import annotations

from typing import Any

from .control import Control
from .queue_config import QueueConfig

__all__ = ["QueueControl"]


class QueueControl:
    """The queue-control requests of a runtime whose :class:`~pgqueue.control.Control` is ``control``."""

    control: Control

    async def pause_queue(self, queue: str, *, node: str | None = None, local_only: bool = False) -> None:
        """Stop fetching new jobs of ``queue`` (running ones finish); ``"*"`` pauses every queue."""
        await self.control.request("pause", queue, {}, node=node, local_only=local_only)

    async def resume_queue(self, queue: str, *, node: str | None = None, local_only: bool = False) -> None:
        """Resume a paused queue; ``"*"`` resumes every queue."""
        await self.control.request("resume", queue, {}, node=node, local_only=local_only)

    async def scale_queue(
        self,
        queue: str,
        limit: int,
        *,
        paused: bool | None = None,
        node: str | None = None,
        local_only: bool = False,
    ) -> None:
        """Change ``queue``'s concurrency limit (and optionally pause or resume it)."""
        QueueConfig.parse(queue, limit)
        params: dict[str, Any] = {"limit": limit}
        if paused is not None:
            params["paused"] = paused
        await self.control.request("scale", queue, params, node=node, local_only=local_only)

    async def start_queue(
        self,
        queue: str,
        limit: int,
        *,
        paused: bool = False,
        node: str | None = None,
        local_only: bool = False,
    ) -> None:
        """Start running ``queue`` (on every node, one node, or only here)."""
        QueueConfig.parse(queue, {"limit": limit, "paused": paused})
        params = {"limit": limit, "paused": paused}
        await self.control.request("start", queue, params, node=node, local_only=local_only)

    async def stop_queue(self, queue: str, *, node: str | None = None, local_only: bool = False) -> None:
        """Stop running ``queue`` gracefully (running jobs get the grace period)."""
        await self.control.request("stop", queue, {}, node=node, local_only=local_only)
