"""The prediction log: one JSON line per predicted row, written off the request path.

Requests hand a small tuple to a bounded queue with ``put_nowait``; a writer
thread turns tuples into lines and writes them. When the queue is full the line
is dropped and counted — a slow disk never slows a request.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple

import numpy as np
import orjson


class Entry(NamedTuple):
    """What a request leaves for the log (expanded to lines by the writer)."""

    request_id: str
    model: str
    version: str
    time: float  # epoch seconds
    latency_s: float
    outputs: dict[str, Any]  # output name -> array with one item per row
    inputs: dict[str, Any] | None  # input name -> array with one item per row, if sampled
    variant: str


def _item(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and len(value) == 1:
        return _item(value[0])
    return value


def lines(entry: Entry) -> list[bytes]:
    """The log lines of one entry: one per row."""
    outputs = {k: np.asarray(v) for k, v in entry.outputs.items()}
    rows = max((len(v) for v in outputs.values()), default=0)
    stamp = datetime.fromtimestamp(entry.time, tz=UTC).isoformat().replace("+00:00", "Z")
    out: list[bytes] = []
    for i in range(rows):
        record: dict[str, Any] = {
            "id": entry.request_id if rows == 1 else f"{entry.request_id}/{i}",
            "request_id": entry.request_id,
            "row": i,
            "model": entry.model,
            "version": entry.version,
            "variant": entry.variant,
            "time": stamp,
            "latency_ms": round(entry.latency_s * 1000, 3),
            "outputs": {k: _item(v[i]) for k, v in outputs.items()},
        }
        if entry.inputs is not None:
            record["inputs"] = {k: _item(np.asarray(v)[i]) for k, v in entry.inputs.items()}
        out.append(orjson.dumps(record, default=str) + b"\n")
    return out


class PredictionLog:
    """A bounded queue and the thread that drains it into a stream."""

    def __init__(
        self,
        target: str,
        maxsize: int,
        on_written: Callable[[int], None],
        on_dropped: Callable[[int], None],
    ) -> None:
        self.target = target
        self._queue: queue.Queue[Entry | None] = queue.Queue(maxsize=maxsize)
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._stream: IO[bytes] | None = None

    def start(self) -> None:
        if self.target == "-":
            self._stream = sys.stdout.buffer
        else:
            self._stream = open(self.target, "ab")  # noqa: SIM115 - closed in close()
        self._thread.start()

    def submit(self, entry: Entry) -> None:
        """Queue an entry; never blocks (a full queue drops and counts it)."""
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._on_dropped(max(1, _rows(entry.outputs)))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        if self._stream is not None and self.target != "-":
            self._stream.close()

    def _run(self) -> None:
        stream = self._stream
        assert stream is not None
        while True:
            first = self._queue.get()
            batch: list[Entry | None] = [first]
            while len(batch) < 1024:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            chunk: list[bytes] = []
            stop = False
            for entry in batch:
                if entry is None:
                    stop = True
                    continue
                try:
                    chunk.extend(lines(entry))
                except (TypeError, ValueError):  # never let one odd value stop the log
                    self._on_dropped(max(1, _rows(entry.outputs)))
            if chunk:
                try:
                    stream.write(b"".join(chunk))
                    stream.flush()
                    self._on_written(len(chunk))
                except (OSError, ValueError):
                    self._on_dropped(len(chunk))
            if stop:
                return


def _rows(outputs: dict[str, Sequence[Any]]) -> int:
    return max((len(v) for v in outputs.values()), default=0)
