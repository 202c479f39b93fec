"""A collector-wide bound on record batches taken in and not yet committed.

Each stream may have ``ACK_WINDOW`` batches decoded ahead of their commit, so without a
bound shared by all streams the collector's memory grows with the number of agents times
their windows: fifty agents draining their spools at once after a collector restart hold
hundreds of batches of decoded rows in front of the single writer, which stores them no
faster for it. With the budget full, a stream simply stops reading; gRPC's flow control
then holds its agent, whose spool keeps everything on disk until the stream moves again.
Nothing is refused and nothing is lost: reading waits.

The unit is the batch's size on the wire (decoded, a batch takes about three times that).
A batch larger than the whole budget is taken alone, when nothing else is in flight, so
no size can wait forever.
"""

from __future__ import annotations

import asyncio
from collections import deque


class InflightBudget:
    """Bytes of batches between their arrival and their commit, shared by every stream (one event loop)."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes <= 0:
            raise ValueError("the in-flight budget must be positive")
        self.limit = limit_bytes
        self.in_use = 0
        self.peak = 0  # the most ever in flight: what the bound held memory to
        self.waits = 0  # how often a stream had to wait for room
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, n: int) -> bool:
        return self.in_use == 0 or self.in_use + n <= self.limit

    async def take(self, n: int) -> None:
        """Wait until ``n`` bytes fit (first come, first served), then hold them."""
        if not self._waiters and self._fits(n):
            self._hold(n)
            return
        self.waits += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.give(n)  # granted while being cancelled: hand it on
            else:
                if entry in self._waiters:  # (a release may have dropped it already)
                    self._waiters.remove(entry)
                self._wake()
            raise

    def give(self, n: int) -> None:
        """Release ``n`` bytes taken before (the batch was committed, refused or failed)."""
        self.in_use -= n
        self._wake()

    def _hold(self, n: int) -> None:
        self.in_use += n
        self.peak = max(self.peak, self.in_use)

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, fut = self._waiters.popleft()
            if fut.done():  # cancelled while queued
                continue
            self._hold(n)
            fut.set_result(None)
