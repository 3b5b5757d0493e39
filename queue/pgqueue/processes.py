"""A node's process pool: sync ``perform`` methods run in N worker processes, one job at a time each.

::

    runtime = pgqueue.Runtime(dsn, queues={"cpu": 4}, workers=["myapp.workers"], processes=4)

Threads share one interpreter lock, so CPU-bound sync jobs on threads use one core whatever the
queue's limit. With ``processes=N`` the node starts N processes (:mod:`pgqueue.process_child`)
that load the node's worker modules, and every sync job is performed in one of them; async jobs
stay on the node's event loop. Everything else stays in the node: its producers claim the jobs
under the queues' limits and write the acks, its executor applies timeouts, classifies results
and computes backoffs. Jobs wait in the node for an idle process, so a queue's limit above N only
queues jobs here (their timeouts run while they wait, as they do waiting for a thread).

A process is the unit that can really be stopped: a job that times out, is cancelled, or is
still running when the shutdown's grace period ends has its process killed and replaced, and the
attempt ends as it would on a thread (a timeout is an error under the worker's retry rules; a
cancel is ``cancelled``; a job abandoned at shutdown is left for the lifeline). A process that
dies mid-job (killed by the OOM killer, a segfault in an extension) fails that attempt with an
error naming the signal, and is replaced.

Jobs and results cross the boundary as JSON: a job's fields go over as the row holds them, and a
returned value that is not JSON-compatible comes back as its ``repr``. Each process imports only
the node's configured worker modules; a job row names a worker to look up, never a module. So
a sync worker must be defined in one of those modules to run in a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from .errors import ConfigError, PgQueueError
from .job import Job
from .lifecycle import Backoff
from .process_child import encode_job
from .worker import Cancel, Discard, Error, Snooze

__all__ = ["MAX_PROCESSES", "ProcessPool", "WorkerProcessError", "validate_processes"]

_log = logging.getLogger("pgqueue.processes")
MAX_PROCESSES = 256
#: the longest reply line read from a process (a result of this size is already a problem)
_LINE_LIMIT = 64 * 1024 * 1024


class WorkerProcessError(PgQueueError):
    """A job's attempt failed in a worker process: its perform raised (the message holds the
    process's description and traceback), or the process died while running it."""


def validate_processes(value: Any) -> int:
    """``processes`` is a count of worker processes: 0 (none: sync jobs run in threads) up to 256."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_PROCESSES:
        raise ConfigError(f"processes must be an integer 0..{MAX_PROCESSES}, got {value!r}")
    return value


class _Child:
    __slots__ = ("pid", "process")

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid


class ProcessPool:
    """N worker processes performing sync jobs for one node. See the module docstring.

    ``await start()`` before use and ``await stop()`` after; :meth:`perform` is what the executor
    awaits instead of a thread.
    """

    def __init__(
        self,
        size: int,
        worker_modules: Sequence[str],
        *,
        start_timeout: float = 60.0,
        python: str = sys.executable,
    ) -> None:
        if validate_processes(size) == 0:
            raise ConfigError("processes must be at least 1 for a process pool, got 0")
        self.size = size
        self.worker_modules = tuple(worker_modules)
        self.start_timeout = start_timeout
        self.python = python
        #: how many processes were replaced after a timeout, cancel or death (for operators and tests)
        self.replaced = 0
        self._children: dict[int, _Child] = {}
        self._idle: asyncio.Queue[_Child] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self._replacing = True

    @property
    def pids(self) -> list[int]:
        """The process ids of the live worker processes."""
        return sorted(self._children)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the processes and wait until each has loaded the worker modules.

        Raises :class:`~pgqueue.errors.ConfigError` naming the module when a process can't import
        one; no process is left running then."""
        if self._running:
            raise RuntimeError("this process pool is already started")
        self._idle = asyncio.Queue()
        started = await asyncio.gather(*(self._spawn() for _ in range(self.size)), return_exceptions=True)
        failure = next((item for item in started if isinstance(item, BaseException)), None)
        if failure is not None:
            for item in started:
                if isinstance(item, _Child):
                    self._kill(item)
            await self._reap_all(0.0)
            raise failure
        self._running = True
        self._replacing = True
        for child in started:
            assert isinstance(child, _Child)
            self._idle.put_nowait(child)

    def retire(self) -> None:
        """Stop replacing processes: the node is shutting down, and a process killed now (its job
        abandoned past the grace period) would be replaced only to be stopped at once."""
        self._replacing = False

    async def stop(self, timeout: float = 5.0) -> None:
        """End every process: idle ones exit when told, busy ones get ``timeout`` seconds (the
        runtime has given their jobs the grace period already), then are killed. Every process is
        reaped before this returns. Safe to call twice."""
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for child in self._children.values():
            stdin = child.process.stdin
            if stdin is not None and not stdin.is_closing():
                stdin.close()  # end of input: the process exits after its current job
        await self._reap_all(timeout)

    async def _reap_all(self, timeout: float) -> None:
        children = list(self._children.values())
        if not children:
            return
        waits = [asyncio.ensure_future(child.process.wait()) for child in children]
        _done, pending = await asyncio.wait(waits, timeout=timeout) if timeout > 0 else (set(), set(waits))
        if pending:
            for child in children:
                if child.process.returncode is None:
                    self._kill(child)
            await asyncio.gather(*pending, return_exceptions=True)
        self._children.clear()

    async def _spawn(self) -> _Child:
        process = await asyncio.create_subprocess_exec(
            self.python,
            "-m",
            "pgqueue.process_child",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        child = _Child(process)
        self._children[child.pid] = child
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            hello = {"path": list(sys.path), "modules": list(self.worker_modules)}
            process.stdin.write(orjson.dumps(hello) + b"\n")
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), self.start_timeout)
            reply = orjson.loads(line) if line else {}
            if not isinstance(reply, dict) or "ready" not in reply:
                problem = reply.get("error") if isinstance(reply, dict) else None
                if problem is None:
                    problem = f"it {await _ended(process)} before it was ready"
                raise ConfigError(f"a worker process could not start: {problem}")
        except BaseException:
            self._kill(child)
            self._children.pop(child.pid, None)
            await asyncio.shield(process.wait())
            raise
        return child

    def _kill(self, child: _Child) -> None:
        if child.process.returncode is None:
            with contextlib.suppress(OSError):  # already gone: reaped by whoever waits for it
                child.process.kill()

    def _replace(self, child: _Child, job: Job, why: str) -> None:
        """Kill ``child`` (the only way to stop a sync perform) and start another in its place."""
        self._kill(child)
        if not (self._running and self._replacing):
            # Shutting down: stop() reaps it with the others.
            _log.warning("pgqueue: worker process %d %s job %d", child.pid, why, job.id)
            return
        _log.warning("pgqueue: worker process %d %s job %d; starting another", child.pid, why, job.id)
        self._children.pop(child.pid, None)
        self.replaced += 1
        task = asyncio.get_running_loop().create_task(self._succeed(child), name="pgqueue process restart")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _succeed(self, child: _Child) -> None:
        await child.process.wait()  # reap it: no zombie left behind
        backoff = Backoff(0.1, 5.0)
        failures = 0
        while self._running and self._replacing:
            try:
                replacement = await self._spawn()
            except Exception as exc:
                failures += 1
                delay = backoff.delay(failures, 0.5)
                _log.warning("pgqueue: could not restart a worker process (%s); retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            if not (self._running and self._replacing):  # stopped while it started
                self._kill(replacement)
                await replacement.process.wait()
                self._children.pop(replacement.pid, None)
                return
            assert self._idle is not None
            self._idle.put_nowait(replacement)
            return

    # -- the hot path ------------------------------------------------------------------------------

    async def perform(self, job: Job) -> Any:
        """Perform ``job`` in an idle process and return its result, or raise its outcome or error.

        Cancelling this (the job's timeout, a cancel, the node abandoning it at shutdown) kills
        the process running the job and starts a replacement."""
        if not self._running or self._idle is None:
            raise RuntimeError("the process pool is not running")
        try:
            line = encode_job(job) + b"\n"
        except TypeError as exc:
            raise WorkerProcessError(f"the job can't be sent to a worker process as JSON: {exc}") from None
        child = await self._idle.get()
        process = child.process
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            try:
                process.stdin.write(line)
                await process.stdin.drain()
                reply = await process.stdout.readline()
            except ConnectionError:
                reply = b""
        except BaseException:
            self._replace(child, job, "killed to stop")  # a timeout, a cancel, or the node stopping
            raise
        if not reply.endswith(b"\n"):  # end of file: the process died under the job
            ended = await _ended(process)
            self._replace(child, job, f"{ended} during")
            raise WorkerProcessError(f"the worker process {child.pid} {ended} during the job")
        self._idle.put_nowait(child)
        return _result(orjson.loads(reply))


def _result(reply: dict[str, Any]) -> Any:
    if "ok" in reply:
        return reply["ok"]
    outcome = reply.get("outcome")
    if outcome == "snooze":
        raise Snooze(float(reply["reason"]))
    if outcome == "cancel":
        raise Cancel(reply.get("reason"))
    if outcome == "discard":
        raise Discard(reply.get("reason"))
    if outcome == "error":
        raise Error(reply.get("reason"))
    raise WorkerProcessError(str(reply.get("exception", "the worker process sent an unreadable reply")))


async def _ended(process: asyncio.subprocess.Process) -> str:
    try:
        code = await asyncio.wait_for(process.wait(), 5.0)
    except TimeoutError:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
