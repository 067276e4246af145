"""Adaptive micro-batching: concurrent requests share one model call.

Requests queue their decoded inputs; one drain loop per model takes everything
queued (up to ``max_batch_size`` rows), concatenates it, runs the model once and
hands each request its slice of the outputs. While a call runs, new requests
queue up and form the next batch, so the batch size follows the load: one row
when idle (no added latency), larger under concurrency. ``max_wait_s`` optionally
holds a batch open a little longer for more rows to join.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import numpy as np

Feed = dict[str, np.ndarray[Any, Any]]
Outputs = dict[str, np.ndarray[Any, Any]]
RunFn = Callable[[Feed], Outputs]


def merge(feeds: list[Feed]) -> Feed:
    """Concatenate feeds row-wise (every feed has the same names)."""
    if len(feeds) == 1:
        return feeds[0]
    return {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}


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
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._executor = executor
        self._on_batch = on_batch
        self._pending: list[tuple[Feed, int, asyncio.Future[Outputs]]] = []
        self._pending_rows = 0
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    async def infer(self, feed: Feed, rows: int) -> Outputs:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self._pending.append((feed, rows, future))
        self._pending_rows += rows
        if not self._draining:
            self._draining = True
            self._task = loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Feed, int, asyncio.Future[Outputs]]]:
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
                if self.max_wait_s > 0 and self._pending_rows < self.max_batch_size:
                    await asyncio.sleep(self.max_wait_s)
                batch = self._take()
                batch = [b for b in batch if not b[2].cancelled()]
                if not batch:
                    continue
                sizes = [n for _, n, _ in batch]
                try:
                    feed = merge([f for f, _, _ in batch])
                    if self._executor is None:
                        outputs = self._run(feed)
                    else:
                        outputs = await loop.run_in_executor(self._executor, self._run, feed)
                    parts = split(outputs, sizes)
                except Exception as exc:  # the model failed: every caller in the batch hears it
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                if self._on_batch is not None:
                    self._on_batch(sum(sizes))
                for (_, _, fut), part in zip(batch, parts, strict=True):
                    if not fut.done():
                        fut.set_result(part)
        finally:
            self._draining = False
