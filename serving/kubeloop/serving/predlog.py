"""The prediction log: one JSON line per predicted row, written off the request path.

Accepted feedback goes into the same log, one line per item (``"kind": "feedback"``), so
the log and its labels can be joined by request id into a training table
(:mod:`kubeloop.trainer.feedback`).

Requests hand a small tuple to a :class:`~kubeloop.serving.bounded.BoundedQueue`
(bounded by count and by bytes; past either bound the oldest entries are dropped and
counted) — a slow disk or a stalled reader never slows a request. A writer thread turns
tuples into lines and writes them. The sink never blocks the server either: a path is
opened without blocking (a FIFO with no reader yet is retried while the queue keeps the
newest entries), a full pipe is waited on in short steps, and closing gives the writer a
deadline after which what is left is dropped and counted.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson

from kubeloop.serving.bounded import BoundedQueue

if TYPE_CHECKING:
    from kubeloop.serving.logship import Shipper

log = logging.getLogger("kubeloop.serving.predlog")

#: why lines were dropped (the ``reason`` label of ``kubeloop_prediction_log_dropped``)
OVERFLOW = "overflow"  # the queue was over its count or byte bound: the oldest went
UNWRITTEN = "unwritten"  # the sink failed, could not be opened, or shutdown came first
BAD_VALUE = "bad_value"  # a value that has no JSON form
NOT_SHIPPED = "not_shipped"  # a rotated file the object store was too far behind to take

#: estimated bytes of one queued entry besides its arrays and id
ENTRY_OVERHEAD = 512
#: most entries, and bytes, the writer takes from the queue at once
TAKE_ITEMS = 1024
TAKE_BYTES = 4 * 1024 * 1024
#: entries that wake the writer: per entry costs a thread switch per request (a third of
#: the throughput); a large batch makes the writer hold the interpreter long enough to show
#: in p99 (1024: p99 at 32 connections ~16 ms against ~9 ms with 64)
WAKE_ITEMS = 64
#: the writer's step while it waits (for entries, a reader, room in a pipe, the deadline)
STEP_S = 0.1


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


class Labels(NamedTuple):
    """Feedback a pod accepted, for the log: one line per ``(request id, truth)`` item."""

    items: tuple[tuple[str, Any], ...]
    model: str
    time: float  # epoch seconds


class Batch(NamedTuple):
    """The one-row predictions (without inputs) answered in one event-loop turn (a
    micro-batch's requests), queued as one item: one queue put and one size estimate for
    them all, and their lines built from one array conversion per output instead of one
    per request."""

    entries: tuple[Entry, ...]
    time: float  # epoch seconds, when the turn's answers were written


Queued = Entry | Labels | Batch

#: the ``kind`` of a feedback line (prediction lines have no ``kind``)
FEEDBACK_KIND = "feedback"

#: orjson ends each line itself
DUMP_OPTIONS = orjson.OPT_APPEND_NEWLINE


def _item(value: Any) -> Any:
    """One row's value as JSON wants it: a one-item list is its item, bytes are text."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _column(value: Any) -> list[Any]:
    """An array as a list of rows, converted in one call (not one per row)."""
    rows: list[Any] = (value if isinstance(value, np.ndarray) else np.asarray(value)).tolist()
    return rows


@functools.lru_cache(maxsize=4)
def _second(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def stamp(epoch: float) -> str:
    """ISO 8601 UTC as ``datetime.isoformat`` writes it (``2026-12-03T10:22:20.758455Z``,
    no fraction on a whole second); the date and time of day are formatted once per
    second, which was the writer's costliest step."""
    seconds, fraction = divmod(round(epoch * 1_000_000), 1_000_000)
    return f"{_second(seconds)}.{fraction:06d}Z" if fraction else f"{_second(seconds)}Z"


def lines(entry: Entry) -> list[bytes]:
    """The log lines of one entry: one per row. Each array is turned into Python values
    once per entry (not once per row and output)."""
    outputs = {k: _column(v) for k, v in entry.outputs.items()}
    inputs = None if entry.inputs is None else {k: _column(v) for k, v in entry.inputs.items()}
    rows = max((len(v) for v in outputs.values()), default=0)
    time_text = stamp(entry.time)
    latency_ms = round(entry.latency_s * 1000, 3)
    out: list[bytes] = []
    for i in range(rows):
        record: dict[str, Any] = {
            "id": entry.request_id if rows == 1 else f"{entry.request_id}/{i}",
            "request_id": entry.request_id,
            "row": i,
            "model": entry.model,
            "version": entry.version,
            "variant": entry.variant,
            "time": time_text,
            "latency_ms": latency_ms,
            "outputs": {k: _item(v[i]) for k, v in outputs.items()},
        }
        if inputs is not None:
            record["inputs"] = {k: _item(v[i]) for k, v in inputs.items()}
        out.append(orjson.dumps(record, default=str, option=DUMP_OPTIONS))
    return out


def _rows_of(value: Any) -> list[Any]:
    """An output as one JSON-ready value per row, converted in one call: what
    :func:`_item` makes of each row (leading one-item dimensions unwrapped, bytes as
    text)."""
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    shape = arr.shape[1:]
    while shape and shape[0] == 1:
        shape = shape[1:]
    values: list[Any] = arr.reshape((arr.shape[0], *shape)).tolist()
    return [_item(v) for v in values] if arr.dtype == object else values


def _shared_columns(entries: tuple[Entry, ...], names: list[str]) -> list[list[Any]] | None:
    """Each output of one-row entries of one model, version and variant without inputs,
    as one JSON-ready value per entry; None for entries of another shape."""
    first = entries[0]
    if (
        any(e.inputs is not None for e in entries)
        or len({(e.model, e.version, e.variant, len(e.outputs)) for e in entries}) != 1
    ):
        return None
    try:
        columns = [_rows_of(np.concatenate([e.outputs[k] for e in entries])) for k in names]
    except (KeyError, ValueError):
        return None
    if any(len(c) != len(entries) for c in columns) or len(names) != len(first.outputs):
        return None  # an entry of several rows (or none)
    return columns


def batch_lines(batch: Batch) -> list[bytes]:
    """The log lines of a batch: as :func:`lines` makes them for each entry (stamped
    with the batch's time). Entries of one row each (the common case) are written from
    one conversion per output for the whole batch, and each line is put together from
    its JSON parts (the parts every line shares serialised once)."""
    entries = batch.entries
    first = entries[0]
    names = list(first.outputs)
    columns = _shared_columns(entries, names)
    if columns is None:
        return [line for e in entries for line in lines(e._replace(time=batch.time))]
    shared = (
        b',"row":0,"model":' + orjson.dumps(first.model)
        + b',"version":' + orjson.dumps(first.version)
        + b',"variant":' + orjson.dumps(first.variant)
        + b',"time":' + orjson.dumps(stamp(batch.time)) + b',"latency_ms":'
    )  # fmt: skip
    dumps = orjson.dumps
    out: list[bytes] = []
    for e, values in zip(entries, zip(*columns, strict=True), strict=True):
        rid = dumps(e.request_id, default=str)
        latency = dumps(round(e.latency_s * 1000, 3))
        outputs = dumps(dict(zip(names, values, strict=True)), default=str)
        out.append(b"".join((b'{"id":', rid, b',"request_id":', rid, shared, latency,
                             b',"outputs":', outputs, b"}\n")))  # fmt: skip
    return out


def feedback_lines(labels: Labels) -> list[bytes]:
    """The log lines of accepted feedback: ``{"kind": "feedback", "id", "truth", "model",
    "time"}`` per item; ``truth`` as the client sent it (one value, or one per row)."""
    time_text = stamp(labels.time)
    return [
        orjson.dumps(
            {"kind": FEEDBACK_KIND, "id": rid, "truth": truth, "model": labels.model,
             "time": time_text},
            default=str,
            option=DUMP_OPTIONS,
        )
        for rid, truth in labels.items
    ]  # fmt: skip


def lines_of(item: Queued) -> list[bytes]:
    """The log lines of a queued prediction, batch of predictions, or feedback."""
    if isinstance(item, Entry):
        return lines(item)
    if isinstance(item, Batch):
        return batch_lines(item)
    return feedback_lines(item)


def _array_size(value: Any) -> int:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype != object:
        return int(arr.nbytes)
    try:  # strings and bytes (BYTES tensors, string labels): their lengths count too
        return int(arr.nbytes) + sum(map(len, arr.flat))
    except TypeError:
        return int(arr.nbytes) + 64 * int(arr.size)


def entry_size(entry: Queued) -> int:
    """An estimate of the memory one queued entry holds: its arrays (the strings in
    object arrays included), its id and a fixed overhead; feedback: its ids and truths'
    text (roughly) and the overhead per item; a batch: its entries'."""
    if isinstance(entry, Batch):
        return _batch_size(entry.entries)
    if isinstance(entry, Labels):
        return sum(ENTRY_OVERHEAD + len(rid) + len(str(t)) for rid, t in entry.items)
    size = ENTRY_OVERHEAD + len(entry.request_id)
    size += sum(_array_size(v) for v in entry.outputs.values())
    if entry.inputs is not None:
        size += sum(_array_size(v) for v in entry.inputs.values())
    return size


def _batch_size(entries: tuple[Entry, ...]) -> int:
    """:func:`entry_size` summed over a batch's entries; arrays of fixed-size values
    are estimated from the first entry's (the entries are one row each, of one model)."""
    first = entries[0]
    if any(getattr(v, "dtype", None) in (None, object) for v in first.outputs.values()):
        return sum(map(entry_size, entries))
    per_entry = ENTRY_OVERHEAD + sum(int(v.nbytes) for v in first.outputs.values())
    return per_entry * len(entries) + sum(len(e.request_id) for e in entries)


def rows(entry: Queued) -> int:
    """The lines one entry makes (at least one, for counting)."""
    if isinstance(entry, Batch):
        return sum(map(rows, entry.entries))
    if isinstance(entry, Labels):
        return max(1, len(entry.items))
    return max(1, max((len(v) for v in entry.outputs.values()), default=0))


class _Sink:
    """Where the lines go: standard output (fd 1, as it is), or a path opened with
    ``O_NONBLOCK`` — opening a FIFO nobody reads then fails at once (the writer retries)
    instead of blocking, and a full pipe is waited on in steps the writer can give up."""

    FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC

    def __init__(
        self,
        target: str,
        rotate_bytes: int = 0,
        keep: int = 3,
        on_rotated: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        #: instead of the numbered shift: hand the full file on (to be shipped)
        self.on_rotated = on_rotated
        self.stdout = target == "-"
        self.fd: int | None = 1 if self.stdout else None
        self.problem: str | None = None  # the last error, logged once
        self.rotate_bytes = rotate_bytes  # 0: never rotate
        self.keep = keep
        self.size: int | None = None  # bytes in a regular file; None: not rotated

    def open(self) -> bool:
        """Open the path unless it is open; False while it is a FIFO with no reader.
        Other errors (no such directory, permission) raise."""
        if self.fd is not None:
            return True
        try:
            self.fd = os.open(self.target, self.FLAGS, 0o666)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return False
            raise
        info = os.fstat(self.fd)
        regular = stat.S_ISREG(info.st_mode) and self.rotate_bytes > 0
        self.size = info.st_size if regular else None
        self._fine()
        return True

    def rotate_if_full(self, incoming: int) -> None:
        """Before a write of ``incoming`` bytes: when the file would pass its size, close
        it and shift ``<file>`` → ``<file>.1`` → … → ``<file>.<keep>`` (the oldest goes),
        so a pod's log on a volume stays within about ``(keep + 1) * rotate_bytes``."""
        if self.size is None or self.size == 0 or self.size + incoming <= self.rotate_bytes:
            return
        self.close()
        try:
            if self.on_rotated is not None:
                self.on_rotated(self.target)
            else:
                for n in range(self.keep - 1, 0, -1):
                    older = f"{self.target}.{n}"
                    if os.path.exists(older):
                        os.replace(older, f"{self.target}.{n + 1}")
                os.replace(self.target, f"{self.target}.1")
            self.open()
        except OSError as exc:  # the writer reopens on its next round
            self.failed(exc)

    def write(self, data: bytes, give_up: Callable[[], bool]) -> int:
        """Write ``data``; the bytes written — fewer when the sink failed or ``give_up``
        turned true while a pipe was full. A rotated file takes whole lines up to its
        size, then the next file the rest: no line is split across files."""
        if self.size is None:
            return self._write_all(data, give_up)
        view = memoryview(data)
        done = 0
        while done < len(data):
            end = self._piece_end(data, done)
            self.rotate_if_full(end - done)
            wrote = self._write_all(view[done:end], give_up)
            short = wrote < end - done
            done += wrote
            if short or self.size is None:
                break
        return done

    def _piece_end(self, data: bytes, start: int) -> int:
        """Where the next piece to write ends: the most whole lines from ``start`` that fit
        the room left in the file, else those that fit a fresh file (after a rotation),
        else one line (a line larger than a whole file goes alone)."""
        for room in (self.rotate_bytes - (self.size or 0), self.rotate_bytes):
            if room > 0:
                newline = data.rfind(b"\n", start, start + room)
                if newline >= 0:
                    return newline + 1
        newline = data.find(b"\n", start)
        return len(data) if newline < 0 else newline + 1

    def _write_all(self, data: bytes | memoryview, give_up: Callable[[], bool]) -> int:
        fd = self.fd
        if fd is None:
            return 0
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += os.write(fd, view[done:])
            except BlockingIOError:  # a full pipe: wait for room in steps
                if give_up():
                    break
                _wait_writable(fd)
            except OSError as exc:  # a broken pipe is reopened for the next reader
                self.failed(exc)
                if exc.errno == errno.EPIPE:
                    self.close()
                break
        else:
            self._fine()
        if self.size is not None:
            self.size += done
        return done

    def close(self) -> None:
        if self.fd is not None and not self.stdout:
            os.close(self.fd)
            self.fd = None
            self.size = None

    def failed(self, exc: OSError) -> None:
        """Note a failure (logged once, until the sink works again)."""
        if self.problem is None:
            log.warning("prediction log %s: %s; lines are dropped and counted", self.target, exc)
        self.problem = str(exc)

    def _fine(self) -> None:
        if self.problem is not None:
            log.info("prediction log %s is written again", self.target)
        self.problem = None


def _wait_writable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll(STEP_S * 1000)


class PredictionLog:
    """A bounded queue and the thread that drains it into a sink."""

    def __init__(
        self,
        target: str,
        maxsize: int,
        on_written: Callable[[int], None],
        on_dropped: Callable[[int, str], None],
        max_bytes: int = 64 * 1024 * 1024,
        rotate_bytes: int = 0,
        keep: int = 3,
        shipper: Shipper | None = None,
    ) -> None:
        self.target = target
        self._shipper = shipper
        # the writer wakes for WAKE_ITEMS entries or every STEP_S: lines lag at most a step
        self._queue: BoundedQueue[Queued] = BoundedQueue(
            maxsize, max_bytes, wake_at=min(WAKE_ITEMS, maxsize)
        )
        self._sink = _Sink(target, rotate_bytes, keep, shipper.rotated if shipper else None)
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._stop = threading.Event()
        self._deadline = float("inf")  # monotonic time the writer gives up at (close sets it)
        self._cut_short = 0  # lines the writer gave up on once closing

    def start(self) -> None:
        """Open the sink when that needs no waiting, and start the writer. A FIFO with no
        reader yet is retried by the writer (entries are kept, bounded, meanwhile); a path
        that cannot be opened for another reason fails the start."""
        if not self._sink.open():
            log.warning(
                "prediction log %s has no reader yet; entries are kept (bounded) until one "
                "opens it",
                self.target,
            )
        self._thread.start()
        if self._shipper is not None:
            self._shipper.start()

    def submit(self, entry: Entry | Labels) -> None:
        """Queue an entry (a prediction, or accepted feedback); never blocks (past the
        queue's bounds the oldest are dropped and counted)."""
        dropped = self._queue.put(entry, entry_size(entry))
        if dropped:
            self._on_dropped(sum(rows(e) for e in dropped), OVERFLOW)

    def submit_batch(self, batch: Batch) -> None:
        """Queue a batch of predictions as one item that counts as its entries (past the
        queue's bounds the oldest items, whole batches, are dropped and counted)."""
        dropped = self._queue.put(batch, entry_size(batch), len(batch.entries))
        if dropped:
            self._on_dropped(sum(rows(e) for e in dropped), OVERFLOW)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued within ``timeout`` seconds, then stop: returns within
        about that whatever the sink does; lines not written by then are counted."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout + 2 * STEP_S)
        if self._thread.is_alive():  # blocked in a write (standard output, a stalled disk)
            log.warning("prediction log %s: the writer is stuck; leaving it", self.target)
        else:
            self._sink.close()
            if self._shipper is not None:  # the last file, within what is left of the time
                self._shipper.close(max(0.0, self._deadline - time.monotonic()))
        left = sum(rows(e) for e in self._queue.clear())
        if left:
            self._on_dropped(left, UNWRITTEN)
        if left + self._cut_short:
            log.warning(
                "prediction log %s: %d line(s) not written by shutdown",
                self.target,
                left + self._cut_short,
            )

    def _giving_up(self) -> bool:
        return time.monotonic() >= self._deadline

    def _run(self) -> None:
        while not self._giving_up():
            if not self._sink_open():
                if self._stop.is_set():
                    return
                continue
            batch = self._queue.take(TAKE_ITEMS, TAKE_BYTES, STEP_S)
            if batch:
                self._write(batch)
            elif self._stop.is_set():
                return

    def _sink_open(self) -> bool:
        """Whether the sink is open (opening it if it can be); waits a step when not."""
        try:
            if self._sink.open():
                return True
        except OSError as exc:
            self._sink.failed(exc)
        self._stop.wait(STEP_S)
        return False

    def _write(self, batch: list[Queued]) -> None:
        chunk: list[bytes] = []
        for entry in batch:
            try:
                chunk.extend(lines_of(entry))
            except (TypeError, ValueError):  # never let one odd value stop the log
                self._on_dropped(rows(entry), BAD_VALUE)
        if not chunk:
            return
        data = b"".join(chunk)
        done = self._sink.write(data, self._giving_up)
        unwritten = data.count(b"\n", done)  # a line cut short counts as unwritten
        if len(chunk) > unwritten:
            self._on_written(len(chunk) - unwritten)
        if unwritten:
            self._on_dropped(unwritten, UNWRITTEN)
            if self._stop.is_set():
                self._cut_short += unwritten
