"""Adaptive micro-batching: concurrent requests share one model call.

Requests queue their decoded inputs; one drain loop per model takes everything
queued (up to ``max_batch_size`` rows), concatenates it, runs the model once and
hands each request its slice of the outputs. Should a call of several requests fail,
each is run again alone, so one request can never fail another. While a call runs, new requests
queue up and form the next batch, so the batch size follows the load: one row
when idle (no added latency), larger under concurrency. ``max_wait_s`` optionally
holds a batch open a little longer for more rows to join.

A caller may ask to *linger* (gRPC does: ``grpc.aio`` accepts one RPC per event-loop
turn, so its requests never meet in one turn). Such a request waits up to ``linger_s``
for company, but only while lingering pays: a probe (at most one request per
``LINGER_PROBE_S``) waits, and lingering goes on while each lingering batch holds more
than one request. One request at a time thus waits only on the rare probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import numpy as np


class Feed(dict[str, np.ndarray[Any, Any]]):
    """Model inputs by name; ``matrix`` keeps the request's 2-D float tensor (rows x
    inputs, model order) when it came as one, for cheap observation.

    A feed made from a matrix may hold only the matrix and ``expand_with``, which cuts
    it into the named inputs: the batcher then concatenates one matrix per model call
    and :meth:`expanded` cuts the columns once per call, not once per request (with
    30 inputs, cutting and concatenating them per request cost ~15 % of a request)."""

    matrix: np.ndarray[Any, Any] | None = None
    expand_with: Callable[[np.ndarray[Any, Any]], dict[str, np.ndarray[Any, Any]]] | None = None

    @property
    def lazy(self) -> bool:
        """Only the matrix is held so far."""
        return self.expand_with is not None and self.matrix is not None and not self

    def expanded(self) -> Feed:
        """This feed with its named inputs (cut from the matrix now, when lazy)."""
        expand, matrix = self.expand_with, self.matrix
        if expand is not None and matrix is not None and not self:
            self.update(expand(matrix))
        return self


Outputs = dict[str, np.ndarray[Any, Any]]
RunFn = Callable[[Feed], Outputs]
_Item = tuple[Feed, int, "asyncio.Future[Outputs]"]
#: batches of one request in a row after which requests run without queueing
SOLO_STREAK = 8
#: in that mode, one request in this many still goes through the queue (a probe)
PROBE_EVERY = 8
#: while not lingering, at most one lingering request (a probe) per this many seconds
LINGER_PROBE_S = 0.25


def merge(feeds: list[Feed]) -> Feed:
    """Concatenate feeds row-wise (every feed has the same names)."""
    if len(feeds) == 1:
        return feeds[0]
    lazy = _merge_lazy(feeds)
    if lazy is not None:
        return lazy
    feeds = [f.expanded() if isinstance(f, Feed) else f for f in feeds]
    merged = Feed({name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]})
    matrices = [getattr(f, "matrix", None) for f in feeds]
    if all(m is not None for m in matrices):
        merged.matrix = np.concatenate(matrices)  # type: ignore[arg-type]
    return merged


def _merge_lazy(feeds: list[Feed]) -> Feed | None:
    """Lazy feeds of one model and one matrix type as one lazy feed (None otherwise)."""
    first = feeds[0]
    if not isinstance(first, Feed) or not first.lazy:
        return None
    assert first.matrix is not None
    dtype = first.matrix.dtype
    for f in feeds:
        if not (isinstance(f, Feed) and f.lazy and f.expand_with == first.expand_with):
            return None
        if f.matrix is None or f.matrix.dtype != dtype:
            return None  # each cast alone, as a request of its own would be
    merged = Feed()
    merged.matrix = np.concatenate([f.matrix for f in feeds])
    merged.expand_with = first.expand_with
    return merged


def split(outputs: Mapping[str, np.ndarray[Any, Any]], sizes: list[int]) -> list[Outputs]:
    """Cut batched outputs back into per-request slices (``sizes`` rows each)."""
    if len(sizes) == 1:
        return [dict(outputs)]
    parts: list[Outputs] = [{} for _ in sizes]
    for name, value in outputs.items():
        start = 0
        for part, n in zip(parts, sizes, strict=True):
            part[name] = value[start : start + n]
            start += n
    return parts


class MicroBatcher:
    """Coalesces concurrent calls of ``run``; one instance per loaded model."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_wait_s: float = 0.0,
        executor: Executor | None = None,
        on_batch: Callable[[Feed, Outputs], None] | None = None,
        linger_s: float = 0.0,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._executor = executor
        self._on_batch = on_batch
        self._pending: list[_Item] = []
        self._pending_rows = 0
        self._draining = False
        self._task: asyncio.Task[None] | None = None  # the drain; the loop holds tasks weakly
        self._solo_streak = 0
        self._direct = 0
        self.linger_s = linger_s
        #: the last lingering batch held several requests: keep lingering
        self.lingering = False
        self._linger_next = False  # the batch being gathered waits linger_s
        self._last_probe = -LINGER_PROBE_S

    @property
    def idle(self) -> bool:
        """Nothing queued and no call running."""
        return not self._draining and not self._pending

    async def infer(self, feed: Feed, rows: int, linger: bool = False) -> Outputs:
        """``feed``'s outputs, from a model call it may share with concurrent requests;
        ``linger``: this request may wait up to ``linger_s`` for company (see above)."""
        loop = asyncio.get_running_loop()
        linger = linger and self.linger_s > 0 and self._linger_now(loop)
        if linger:
            self._linger_next = True
        elif self._solo_streak >= SOLO_STREAK and self.idle and self._executor is None:
            # Low load: the last batches all held one request, so waiting a loop turn for
            # company only adds latency. Run now, but send every PROBE_EVERY-th request
            # through the queue to notice when concurrency returns.
            self._direct += 1
            if self._direct % PROBE_EVERY:
                outputs = self._run(feed)
                if self._on_batch is not None:
                    loop.call_soon(self._on_batch, feed, outputs)
                return outputs
        future: asyncio.Future[Outputs] = loop.create_future()
        self._pending.append((feed, rows, future))
        self._pending_rows += rows
        if not self._draining:
            self._draining = True
            if self._executor is None and self.max_wait_s == 0 and not self._linger_next:
                # everything is synchronous: a plain callback is cheaper than a task
                loop.call_soon(self._drain_inline, loop)
            else:
                self._task = loop.create_task(self._drain())
        return await future

    def _linger_now(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a lingering request waits: while lingering pays, or as a probe."""
        if self.lingering:
            return True
        now = loop.time()
        if now - self._last_probe < LINGER_PROBE_S:
            return False
        self._last_probe = now
        return True

    def _drain_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        """One pass over what queued up in this loop iteration, on the loop itself."""
        try:
            while self._pending:
                self._run_batch(self._take(), loop)
        finally:
            self._draining = False
            self._linger_next = False  # a lingering request queued meanwhile was served

    def _take(self) -> list[_Item]:
        taken = 0
        rows = 0
        for _, n, _ in self._pending:
            if taken and rows + n > self.max_batch_size:
                break
            taken += 1
            rows += n
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        self._pending_rows -= rows
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                lingered, self._linger_next = self._linger_next, False
                wait = max(self.max_wait_s, self.linger_s if lingered else 0.0)
                if wait > 0 and self._pending_rows < self.max_batch_size:
                    await asyncio.sleep(wait)
                batch = [b for b in self._take() if not b[2].cancelled()]
                if lingered:
                    self.lingering = len(batch) > 1
                if not self._pending:
                    self._linger_next = False  # those that lingered meanwhile are in ``batch``
                if not batch:
                    continue
                if self._executor is None:
                    self._run_batch(batch, loop)
                    continue
                try:
                    feed = merge([f for f, _, _ in batch])
                    outputs = await loop.run_in_executor(self._executor, self._run, feed)
                except Exception as exc:
                    if len(batch) == 1:
                        _fail(batch, exc)
                    for item in batch if len(batch) > 1 else ():
                        await self._run_alone_in_executor(item, loop)
                    continue
                self._deliver(batch, feed, outputs, loop)
        finally:
            self._draining = False

    def _run_batch(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        batch = [b for b in batch if not b[2].cancelled()]
        if not batch:
            return
        try:
            feed = merge([f for f, _, _ in batch])
            outputs = self._run(feed)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            for item in batch:  # one request must never fail the others: each on its own
                self._run_alone(item, loop)
            return
        self._deliver(batch, feed, outputs, loop)

    def _run_alone(self, item: _Item, loop: asyncio.AbstractEventLoop) -> None:
        try:
            outputs = self._run(item[0])
        except Exception as exc:
            _fail([item], exc)
            return
        self._deliver([item], item[0], outputs, loop)

    async def _run_alone_in_executor(self, item: _Item, loop: asyncio.AbstractEventLoop) -> None:
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, item[0])
        except Exception as exc:
            _fail([item], exc)
            return
        self._deliver([item], item[0], outputs, loop)

    def _deliver(
        self, batch: list[_Item], feed: Feed, outputs: Outputs, loop: asyncio.AbstractEventLoop
    ) -> None:
        try:
            parts = split(outputs, [n for _, n, _ in batch])
        except Exception as exc:
            _fail(batch, exc)
            return
        self._solo_streak = self._solo_streak + 1 if len(batch) == 1 else 0
        for (_, _, fut), part in zip(batch, parts, strict=True):
            if not fut.done():
                fut.set_result(part)
        if self._on_batch is not None:
            # after the callers resume (FIFO), i.e. after their responses go out
            loop.call_soon(self._on_batch, feed, outputs)


def _fail(batch: list[_Item], exc: Exception) -> None:
    """The model failed: every caller in the batch hears it (a failed batch of several
    is rerun one request at a time first, so this is one request's own failure)."""
    for _, _, fut in batch:
        if not fut.done():
            fut.set_exception(exc)
