"""The outbox: where produced records wait until the collector acknowledges them.

This is the seam the durable disk spool slots into. The contract:

* :meth:`Outbox.append` numbers a measurement with the next ``seq`` of the
  current ``epoch`` and keeps it; from then on it counts as produced.
* :meth:`Outbox.read` returns records after a given seq, in order, so the
  sender can (re)stream from wherever the collector's acknowledgement is.
* :meth:`Outbox.ack` forgets records up to a seq: only the collector's
  acknowledgement, which it sends after committing to disk, may do that.

:class:`MemoryOutbox` keeps everything in memory: an agent restart loses
what was unacknowledged and starts a new epoch (so sequence numbers of the
old and new process never collide).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol

from slaprobe.model import Measurement, Record


class Outbox(Protocol):
    @property
    def epoch(self) -> int: ...

    @property
    def acked_seq(self) -> int: ...

    @property
    def last_seq(self) -> int: ...

    @property
    def depth(self) -> int: ...

    @property
    def oldest_unacked_ns(self) -> int: ...

    def append(self, measurement: Measurement) -> int: ...

    def read(self, after_seq: int, limit: int) -> list[Record]: ...

    def ack(self, seq: int) -> None: ...

    async def wait_beyond(self, seq: int) -> None:
        """Return once a record with a seq above ``seq`` exists."""
        ...


class MemoryOutbox:
    def __init__(self, epoch: int | None = None) -> None:
        self._epoch = epoch if epoch is not None else time.time_ns()
        self._records: deque[Record] = deque()
        self._last = 0
        self._acked = 0
        self._grew = asyncio.Event()

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def last_seq(self) -> int:
        return self._last

    @property
    def depth(self) -> int:
        return len(self._records)

    @property
    def oldest_unacked_ns(self) -> int:
        return self._records[0].measurement.scheduled_ns if self._records else 0

    def append(self, measurement: Measurement) -> int:
        self._last += 1
        self._records.append(Record(self._last, measurement))
        self._grew.set()
        return self._last

    def read(self, after_seq: int, limit: int) -> list[Record]:
        if not self._records or after_seq >= self._last:
            return []
        start = max(0, after_seq + 1 - self._records[0].seq)
        end = min(len(self._records), start + limit)
        return [self._records[i] for i in range(start, end)]

    def ack(self, seq: int) -> None:
        if seq <= self._acked:
            return
        self._acked = min(seq, self._last)
        while self._records and self._records[0].seq <= self._acked:
            self._records.popleft()

    async def wait_beyond(self, seq: int) -> None:
        while self._last <= seq:
            self._grew.clear()
            await self._grew.wait()
