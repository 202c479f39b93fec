"""The outbox: where produced records wait until the collector acknowledges them.

The contract every outbox keeps (the memory one for tests and ``--no-spool``,
the durable disk spool in ``agent/spool.py`` for production):

* :meth:`Outbox.append` numbers a payload with the next ``seq`` of the
  current ``epoch`` and keeps it. Records become readable once stored.
* :meth:`Outbox.read` returns stored records from a given seq on, in order,
  so the sender can (re)stream from wherever the collector's ack is. A
  record may stand for a span of seqs (a gap record); ``read`` returns the
  record whose span holds ``after_seq + 1`` so a stream never has a hole.
* :meth:`Outbox.ack` forgets records up to a seq: only the collector's
  acknowledgement, which it sends after committing to disk, may do that.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from agent.wire import encode_record
from slaprobe.model import Gap, Measurement, Payload


@dataclass(frozen=True)
class Stored:
    """One record as stored and sent: its seq span and its encoded bytes."""

    seq: int
    through_seq: int
    data: bytes


class Outbox(Protocol):
    @property
    def epoch(self) -> int: ...

    @property
    def acked_seq(self) -> int: ...

    @property
    def last_seq(self) -> int:
        """The highest seq stored (readable)."""
        ...

    @property
    def depth(self) -> int:
        """Sequence numbers stored but not yet acknowledged."""
        ...

    @property
    def oldest_unacked_ns(self) -> int: ...

    @property
    def signing_key(self) -> bytes:
        """The raw Ed25519 public key that seals this outbox's records; empty when unsealed."""
        ...

    def append(self, payload: Payload) -> int: ...

    async def read(self, after_seq: int, limit: int) -> list[Stored]: ...

    def ack(self, seq: int) -> None: ...

    async def wait_beyond(self, seq: int) -> None:
        """Return once a record with a seq above ``seq`` is stored."""
        ...

    async def close(self) -> None: ...


def scheduled_ns_of(payload: Payload) -> int:
    if isinstance(payload, Measurement):
        return payload.scheduled_ns
    if isinstance(payload, Gap):
        return min((c.from_ns for c in payload.checks), default=0)
    return payload.t0_ns


class MemoryOutbox:
    """Everything in memory: a restart loses what was unacknowledged and starts a new epoch."""

    def __init__(self, epoch: int | None = None) -> None:
        self._epoch = epoch if epoch is not None else time.time_ns()
        self._records: deque[tuple[Stored, int]] = deque()
        self._last = 0
        self._acked = 0
        self._grew = asyncio.Event()

    @property
    def signing_key(self) -> bytes:
        return b""  # memory records are not evidence: nothing survives a restart to be checked

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
        return self._last - self._acked

    @property
    def oldest_unacked_ns(self) -> int:
        return self._records[0][1] if self._records else 0

    def append(self, payload: Payload) -> int:
        self._last += 1
        self._records.append(
            (Stored(self._last, self._last, encode_record(self._last, payload)), scheduled_ns_of(payload))
        )
        self._grew.set()
        return self._last

    async def read(self, after_seq: int, limit: int) -> list[Stored]:
        out = []
        for stored, _ in self._records:
            if stored.through_seq > after_seq:
                out.append(stored)
                if len(out) >= limit:
                    break
        return out

    def ack(self, seq: int) -> None:
        if seq <= self._acked:
            return
        self._acked = min(seq, self._last)
        while self._records and self._records[0][0].through_seq <= self._acked:
            self._records.popleft()

    async def wait_beyond(self, seq: int) -> None:
        while self._last <= seq:
            self._grew.clear()
            await self._grew.wait()

    async def close(self) -> None:
        return None
