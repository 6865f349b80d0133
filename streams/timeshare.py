"""How an in-process trainer shares a worker with ranking: it steps in the rank path's gaps, and
within a budget of the worker's time.
"""
from __future__ import annotations

import threading
import time


class RankActivity:
    """Counts rank batches between being taken and leaving the engine, so that an in-process trainer
    can run its steps in the gaps: ranking first, learning with what is left over.

    >>> activity = RankActivity()
    >>> activity.enter(); activity.wait_idle(0.01)   # busy: gives up after the timeout
    False
    >>> activity.leave(); activity.wait_idle(0.01)
    True
    """

    def __init__(self):
        self._busy = 0
        self._idle = threading.Condition()

    def enter(self) -> None:
        with self._idle:
            self._busy += 1

    def leave(self) -> None:
        with self._idle:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no batch to be in the rank path; True if it went idle."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)


class TimeBudget:
    """Keeps background work to ``share`` of wall time in the long run, as a token bucket of seconds.

    The bucket refills at ``share`` seconds per second, up to ``share * burst_s``. Work is allowed
    while the bucket holds time, and the work's duration is taken out of it afterwards. A single slow
    call (a first-step compile, say) or a trickle of work never trips it; sustained work beyond the
    share is declined, and the caller counts what it declines.

    >>> budget = TimeBudget(0.25, burst_s=4.0)   # up to 1 s of work in hand
    >>> budget.ready(now=0.0)
    True
    >>> budget.spent(3.0, now=3.0)              # 3 s of work: the bucket is 2 s in debt
    >>> budget.ready(now=10.0), budget.ready(now=12.0)
    (False, True)
    """

    def __init__(self, share: float, burst_s: float = 10.0, clock=time.monotonic):
        self.share = share
        self.clock = clock
        self.capacity = share * burst_s
        self._tokens = self.capacity
        self._at: float | None = None

    def _refill(self, now: float | None) -> None:
        now = self.clock() if now is None else now
        if self._at is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.share)
        self._at = now

    def ready(self, now: float | None = None) -> bool:
        if self.share >= 1.0:
            return True
        self._refill(now)
        return self._tokens > 0.0

    def spent(self, seconds: float, now: float | None = None) -> None:
        if self.share < 1.0:
            self._refill(now)
            self._tokens -= seconds
