"""Bounds that never block a request: a queue bounded by count and by bytes, and a byte
budget per second.

Producers are requests on the event loop: :meth:`BoundedQueue.put` takes a short lock,
never waits for room, and makes room by dropping the OLDEST items (the newest say most
about the service now). The consumer is one thread that takes batches bounded by count
and by bytes, so what it holds while it writes is bounded too. A put wakes the consumer
only once ``wake_at`` items (or half the byte bound) wait: waking it for every item would
hand the interpreter to the consumer thread once per request (on a prediction log that
cost a third of the throughput); below that the consumer takes what is there when its
wait times out.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BoundedQueue(Generic[T]):
    """At most ``max_items`` items and ``max_bytes`` bytes (each item's size is the
    producer's estimate); a put past either bound drops the oldest items. An item may
    stand for several (``count``: a group of entries queued at once), and counts as
    that many."""

    def __init__(self, max_items: int, max_bytes: int, wake_at: int = 1) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.wake_at = wake_at
        self._items: deque[tuple[T, int, int]] = deque()
        self._bytes = 0
        self._count = 0
        self._cond = threading.Condition(threading.Lock())

    def __len__(self) -> int:
        return self._count

    @property
    def bytes(self) -> int:
        """The queued items' estimated size."""
        return self._bytes

    def put(self, item: T, size: int, count: int = 1) -> list[T]:
        """Queue ``item`` of ``size`` bytes, standing for ``count`` items; returns the
        items dropped to make room, oldest first (``item`` itself when it alone is over
        a bound)."""
        dropped: list[T] = []
        with self._cond:
            items = self._items
            items.append((item, size, count))
            self._bytes += size
            self._count += count
            while items and (self._count > self.max_items or self._bytes > self.max_bytes):
                old, old_size, old_count = items.popleft()
                self._bytes -= old_size
                self._count -= old_count
                dropped.append(old)
            if self._batch_ready():
                self._cond.notify()
        return dropped

    def _batch_ready(self) -> bool:
        """Enough waits to wake the consumer: ``wake_at`` items, or half the byte bound
        (so that large items are written before the bound drops them)."""
        return self._count >= self.wake_at or 2 * self._bytes >= self.max_bytes

    def take(self, max_items: int, max_bytes: int, timeout: float) -> list[T]:
        """Up to ``max_items`` items, oldest first, and no more than ``max_bytes`` bytes
        (but always at least one); waits at most ``timeout`` seconds for ``wake_at`` of
        them, then takes what there is."""
        deadline = time.monotonic() + timeout
        out: list[T] = []
        with self._cond:
            items = self._items
            while not self._batch_ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken = counted = 0
            while items and counted < max_items:
                item, size, count = items[0]
                if out and (taken + size > max_bytes or counted + count > max_items):
                    break
                items.popleft()
                self._bytes -= size
                self._count -= count
                taken += size
                counted += count
                out.append(item)
        return out

    def clear(self) -> list[T]:
        """Remove and return everything queued."""
        with self._cond:
            out = [item for item, _, _ in self._items]
            self._items.clear()
            self._bytes = 0
            self._count = 0
        return out


class ByteBudget:
    """A token bucket of bytes per second: :meth:`take` spends ``size`` bytes when the
    bucket holds them, else says how many seconds until it would. It never waits, so a
    request over budget is refused at once (429 with Retry-After) instead of queueing
    work the process cannot afford. ``burst`` (at least one largest body) is what an idle
    bucket holds; a full one takes any size, a larger one leaving a debt. ``rate`` 0 means
    no budget."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self._clock = rate, max(burst, rate), clock
        self._tokens, self._at = self.burst, clock()
        self._lock = threading.Lock()

    def take(self, size: int) -> float:
        """Spend ``size`` bytes: 0.0 when taken, else the seconds to wait before asking again."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            self._refill()
            if size <= self._tokens or self._tokens >= self.burst:  # a full bucket takes any
                self._tokens -= size  # (one over the burst leaves a debt to refill first)
                return 0.0
            return (min(size, self.burst) - self._tokens) / self.rate

    def spend(self, size: int) -> None:
        """Spend ``size`` bytes already taken in (a body whose length was not declared,
        admitted with ``take(0)``): the bucket may go into debt."""
        with self._lock:
            self._refill()
            self._tokens -= size

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
