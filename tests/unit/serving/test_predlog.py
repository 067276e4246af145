"""Prediction log lines and the never-blocking queue."""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT
from kubeloop.serving.predlog import (
    OVERFLOW,
    UNWRITTEN,
    Batch,
    Entry,
    Labels,
    PredictionLog,
    _Sink,
    batch_lines,
    entry_size,
    lines,
    lines_of,
    rows,
)


def entry(rows: int = 2, inputs: bool = True) -> Entry:
    return Entry(
        request_id="r",
        model="m",
        version="3",
        time=0.0,
        latency_s=0.0015,
        outputs={
            LABEL_OUTPUT: np.arange(rows, dtype=np.int64),
            PROBA_OUTPUT: np.full((rows, 2), 0.5, dtype=np.float32),
        },
        inputs={"city": np.array(["a"] * rows, dtype=object)} if inputs else None,
        variant="stable",
    )


def test_one_line_per_row_with_plain_json_values():
    out = [json.loads(line) for line in lines(entry())]
    assert [o["id"] for o in out] == ["r/0", "r/1"]
    assert out[1]["outputs"] == {LABEL_OUTPUT: 1, PROBA_OUTPUT: [0.5, 0.5]}
    assert out[0]["inputs"] == {"city": "a"}
    assert out[0]["time"] == "1970-01-01T00:00:00Z"
    assert out[0]["latency_ms"] == 1.5
    single = json.loads(lines(entry(1, inputs=False))[0])
    assert single["id"] == "r"
    assert "inputs" not in single


def test_feedback_is_one_line_per_item_with_the_truth_as_sent():
    labels = Labels((("r", 1), ("s", ["a", "b"])), "m", 1.5)
    out = [json.loads(line) for line in lines_of(labels)]
    assert out == [
        {"kind": "feedback", "id": "r", "truth": 1, "model": "m",
         "time": "1970-01-01T00:00:01.500000Z"},
        {"kind": "feedback", "id": "s", "truth": ["a", "b"], "model": "m",
         "time": "1970-01-01T00:00:01.500000Z"},
    ]  # fmt: skip
    assert rows(labels) == 2
    assert entry_size(labels) > entry_size(Labels((("r", 1),), "m", 1.5))


def one_row_entries(n: int, **outputs: np.ndarray) -> tuple[Entry, ...]:
    outs = outputs or {LABEL_OUTPUT: np.array([1]), PROBA_OUTPUT: np.array([[0.25, 0.75]])}
    return tuple(
        entry(1, inputs=False)._replace(request_id=f'r"{i}é', latency_s=0.001 * i, outputs=outs)
        for i in range(n)
    )


@pytest.mark.parametrize(
    "outputs",
    [
        {},
        {LABEL_OUTPUT: np.array([["a"]], dtype=object), "raw": np.array([b"x\xff"], dtype=object),
         "deep": np.array([[[1.5, 2.5]]], dtype=np.float32), "pair": np.array([[1, 2]])},
    ],
)  # fmt: skip
def test_a_batch_writes_the_lines_its_entries_write_at_its_time(outputs):
    entries = one_row_entries(5, **outputs)
    expected = [line for e in entries for line in lines(e._replace(time=2.5))]
    assert batch_lines(Batch(entries, 2.5)) == expected
    mixed = (*entries[:2], entry(rows=2))  # one of several rows: each entry on its own
    assert batch_lines(Batch(mixed, 2.5)) == [
        line for e in mixed for line in lines(e._replace(time=2.5))
    ]
    assert rows(Batch(mixed, 2.5)) == 4


class Counts:
    """What the log reports: lines written, and lines dropped by reason."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.dropped: list[tuple[int, str]] = []

    def log(self, target: str, maxsize: int = 1000, max_bytes: int = 64 * 1024**2) -> PredictionLog:
        return PredictionLog(target, maxsize, self.written.append, self.on_dropped, max_bytes)

    def on_dropped(self, n: int, reason: str) -> None:
        self.dropped.append((n, reason))

    def lost(self, reason: str) -> int:
        return sum(n for n, r in self.dropped if r == reason)


def test_a_full_queue_drops_the_oldest_and_counts_without_blocking(tmp_path):
    counts = Counts()
    log = counts.log(str(tmp_path / "p.jsonl"), maxsize=1)
    # not started: nothing drains, so each entry pushes out the one before
    for i in range(3):
        log.submit(entry()._replace(request_id=f"r{i}"))
    assert counts.dropped == [(2, OVERFLOW), (2, OVERFLOW)]
    log.start()
    log.close()
    assert sum(counts.written) == 2
    kept = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert {line["request_id"] for line in kept} == {"r2"}  # the newest


def test_the_queue_is_bounded_in_bytes(tmp_path):
    counts = Counts()
    size = entry_size(entry()._replace(request_id="r0"))
    log = counts.log(str(tmp_path / "p.jsonl"), maxsize=1000, max_bytes=3 * size)
    for i in range(10):
        log.submit(entry()._replace(request_id=f"r{i}"))
    assert counts.lost(OVERFLOW) == 2 * 7
    log.start()
    log.close()
    kept = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line["request_id"] for line in kept] == ["r7", "r7", "r8", "r8", "r9", "r9"]


def test_a_batch_counts_as_its_entries_in_the_queue_bound(tmp_path):
    counts = Counts()
    log = counts.log(str(tmp_path / "p.jsonl"), maxsize=4)
    log.submit_batch(Batch(one_row_entries(3), 1.0))
    log.submit_batch(Batch(one_row_entries(2), 2.0))  # 5 entries: the first batch goes
    assert counts.dropped == [(3, OVERFLOW)]
    log.start()
    log.close()
    assert sum(counts.written) == 2
    kept = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [k["time"] for k in kept] == ["1970-01-01T00:00:02Z"] * 2


def test_entry_size_counts_arrays_and_text():
    small = entry_size(entry(rows=1, inputs=False))
    assert entry_size(entry(rows=100, inputs=False)) >= small + 99 * (8 + 8)
    texts = entry(rows=1)._replace(inputs={"city": np.array(["x" * 5000], dtype=object)})
    assert entry_size(texts) >= small + 5000
    assert entry_size(entry(rows=1, inputs=False)._replace(request_id="i" * 300)) == small + 299
    batch = one_row_entries(4)
    assert entry_size(Batch(batch, 0.0)) == sum(entry_size(e) for e in batch)


def run_bounded(what: str, call: Callable[[], object], seconds: float = 30) -> None:
    """Run ``call`` on a thread; fail if it has not returned within ``seconds`` (a bound
    on a call that must not block, not a measure of speed)."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (call(), done.set()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert done.is_set(), f"{what} blocked"


def test_a_fifo_nobody_reads_neither_blocks_start_nor_close(tmp_path):
    fifo = tmp_path / "p.fifo"
    os.mkfifo(fifo)
    counts = Counts()
    log = counts.log(str(fifo))
    run_bounded("start with a FIFO nobody reads", log.start)
    for _ in range(3):
        log.submit(entry())
    run_bounded("close with a FIFO nobody reads", lambda: log.close(timeout=0.5))
    assert counts.written == []
    assert counts.lost(UNWRITTEN) == 6


def test_a_reader_that_comes_later_gets_the_kept_lines(tmp_path):
    fifo = tmp_path / "p.fifo"
    os.mkfifo(fifo)
    counts = Counts()
    log = counts.log(str(fifo))
    log.start()
    log.submit(entry()._replace(request_id="early"))
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        text = read_until(reader, b"early", lines=2)
    finally:
        log.close(timeout=5)
        os.close(reader)
    assert [json.loads(line)["request_id"] for line in text.splitlines()] == ["early", "early"]
    assert sum(counts.written) == 2


def read_until(fd: int, needle: bytes, lines: int, seconds: float = 30) -> bytes:
    """What a non-blocking reader gets until ``lines`` lines with ``needle`` arrived."""
    got = b""
    deadline = time.monotonic() + seconds
    while got.count(needle) < lines:
        assert time.monotonic() < deadline, f"timed out; read {got[:200]!r}"
        select.select([fd], [], [], 0.1)
        with contextlib.suppress(BlockingIOError):
            got += os.read(fd, 65536)
    return got


def test_a_stalled_pipe_never_blocks_close_and_the_rest_is_counted(tmp_path):
    fifo = tmp_path / "p.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read: the pipe fills
    try:
        counts = Counts()
        log = counts.log(str(fifo), maxsize=100_000)
        log.start()
        total = 0
        for _ in range(400):
            big = entry(rows=50)
            log.submit(big)
            total += 50
        run_bounded("close with a stalled pipe", lambda: log.close(timeout=0.5))
    finally:
        os.close(reader)
    assert counts.lost(UNWRITTEN) > 0
    assert sum(counts.written) + counts.lost(UNWRITTEN) == total


def test_a_reader_that_leaves_costs_its_lines_and_the_next_reader_is_served(tmp_path):
    fifo = tmp_path / "p.fifo"
    os.mkfifo(fifo)
    counts = Counts()
    log = counts.log(str(fifo))
    first = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    log.start()
    log.submit(entry()._replace(request_id="one"))
    read_until(first, b"one", lines=2)
    os.close(first)  # the reader goes away: the next write breaks the pipe
    wait_until(lambda: submit_then_any_unwritten(counts, log, "two"), "a broken pipe counted")
    second = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        log.submit(entry()._replace(request_id="three"))
        read_until(second, b"three", lines=2)
    finally:
        log.close(timeout=5)
        os.close(second)
    assert counts.lost(UNWRITTEN) >= 2


def submit_then_any_unwritten(counts: Counts, log: PredictionLog, rid: str) -> bool:
    """Submit one more entry; true once some line was counted as unwritten."""
    log.submit(entry()._replace(request_id=rid))
    return counts.lost(UNWRITTEN) > 0


def wait_until(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_path_that_cannot_be_opened_fails_the_start(tmp_path):
    log = Counts().log(str(tmp_path / "no-such-dir" / "p.jsonl"))
    with pytest.raises(FileNotFoundError):
        log.start()


def test_a_file_is_rotated_by_size_and_only_keep_old_files_stay(tmp_path):
    target = tmp_path / "pod-a.jsonl"
    sink = _Sink(str(target), rotate_bytes=100, keep=2)
    assert sink.open()
    line = b"x" * 39 + b"\n"  # 40 bytes: two lines fit in 100, a third rotates
    for i in range(7):
        assert sink.write(line.replace(b"x", str(i).encode(), 1), lambda: False) == len(line)
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["pod-a.jsonl", "pod-a.jsonl.1", "pod-a.jsonl.2"]  # the oldest went
    assert target.read_bytes()[:1] == b"6"
    assert [line[:1] for line in (tmp_path / "pod-a.jsonl.1").read_bytes().splitlines()] == [
        b"4",
        b"5",
    ]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())


def test_a_file_that_already_has_lines_counts_them_towards_rotation(tmp_path):
    target = tmp_path / "p.jsonl"
    target.write_bytes(b"old\n" * 20)  # 80 bytes from an earlier run of the pod
    sink = _Sink(str(target), rotate_bytes=100, keep=3)
    assert sink.open()
    sink.write(b"y" * 30 + b"\n", lambda: False)
    sink.close()
    assert (tmp_path / "p.jsonl.1").read_bytes() == b"old\n" * 20
    assert target.read_bytes() == b"y" * 30 + b"\n"


def test_rotation_off_and_fifos_never_rotate(tmp_path):
    target = tmp_path / "p.jsonl"
    sink = _Sink(str(target), rotate_bytes=0)
    assert sink.open()
    for _ in range(5):
        sink.write(b"z" * 99 + b"\n", lambda: False)
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        piped = _Sink(str(fifo), rotate_bytes=10)
        assert piped.open()
        assert piped.size is None  # not a regular file: never renamed
        assert piped.write(b"a" * 20 + b"\n", lambda: False) == 21
        piped.close()
    finally:
        os.close(reader)


def test_one_large_write_is_split_at_lines_across_rotated_files(tmp_path):
    target = tmp_path / "p.jsonl"
    sink = _Sink(str(target), rotate_bytes=100, keep=5)
    assert sink.open()
    data = b"".join(bytes([65 + i]) * 29 + b"\n" for i in range(10))  # ten 30-byte lines
    assert sink.write(data, lambda: False) == len(data)
    big = b"z" * 250 + b"\n"  # larger than a whole file: it goes alone
    assert sink.write(big, lambda: False) == len(big)
    sink.close()
    files = [target, *(tmp_path / f"p.jsonl.{n}" for n in range(1, 6))]
    contents = [f.read_bytes() for f in reversed(files) if f.exists()]
    assert b"".join(contents) == data + big  # oldest first: every line once, in order
    assert [len(c) for c in contents] == [90, 90, 90, 30, 251]
