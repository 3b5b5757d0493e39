"""Steady load: a thread that inserts jobs at a fixed rate and remembers exactly what committed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

import pgqueue

from .workers import Busy

__all__ = ["Feeder"]


@dataclass
class Feeder:
    """Inserts ``rate`` jobs a second in a thread, through outages, remembering what committed.

    A batch whose transaction failed may or may not have committed (the connection can die during
    COMMIT); its sequence numbers are kept as uncertain: absent is fine, present must complete.
    """

    dsn: str
    schema: str
    rate: int
    ms: float = 5.0
    #: sequence numbers (``args.seq``) and ids of the jobs whose batch committed
    committed: list[int] = field(default_factory=list)
    committed_ids: list[int] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    failures: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        period = 0.1
        per_batch = max(1, round(self.rate * period))
        conn: psycopg.Connection[Any] | None = None
        seq = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            seqs = list(range(seq, seq + per_batch))
            seq += per_batch
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(self.dsn, connect_timeout=5)
                jobs = [Busy.new({"ms": self.ms, "seq": s}) for s in seqs]
                ids = [job.id for job in pgqueue.insert_all(conn, jobs, schema=self.schema)]
                conn.commit()
                self.committed += seqs
                self.committed_ids += ids
            except psycopg.Error:
                self.uncertain += seqs
                self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()
