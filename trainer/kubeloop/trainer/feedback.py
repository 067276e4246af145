"""Feedback as data: the serving pods' prediction logs joined to their feedback labels.

A ModelDeployment's pods write one JSON line per predicted row to their prediction log
(``id``, ``request_id``, ``row``, ``version``, ``time``, ``inputs`` when logged) and one
line per accepted feedback item (``{"kind": "feedback", "id", "truth", "time"}``, see
:mod:`kubeloop.serving.predlog`). :func:`join` reads every log file under a folder —
each pod's ``<pod>.jsonl`` and its rotated ``.jsonl.<n>`` — in two passes, so memory is
bounded by the labels and the rows kept, not by the logs:

1. the labels: the last one for a request id (by time, then by read order) wins;
2. the predictions with a label: a request's label is one value, or a list with one
   value per row (matched by position). Rows older than ``max_age_s`` are dropped; of the
   rest the newest are kept while their log lines add up to at most ``max_bytes``. A row
   logged twice under one id (a shadow pod's answer to a mirrored request) counts once.

The table is the input features (one column each), the target and, when asked for, the
model version; its rows are ordered by time and id, so the same logs always make the same
table (and the same data version) whatever order the files are read in. A line that is
not JSON, or not a prediction or a label of the expected shape, is skipped and counted;
it never fails the join.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from kubeloop.trainer.errors import DataError

#: A source ``feedback:<folder>`` is a folder of prediction logs.
SCHEME = "feedback:"
#: Log files: a pod's current file and its rotated ones.
LOG_NAME = re.compile(r"\.jsonl(\.[0-9]+)?$")
#: The ``kind`` of a label line (serving's ``predlog.FEEDBACK_KIND``).
FEEDBACK_KIND = "feedback"
#: The snapshot of a feedback source is stored as Parquet.
FORMAT: Literal["parquet"] = "parquet"

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Options:
    """What the table holds and how much of the log it reads."""

    target: str
    max_age_s: float | None = None
    max_bytes: int | None = None
    version_column: str | None = None


@dataclass
class Counts:
    """What the join read, kept and skipped (and why)."""

    files: int = 0
    predictions: int = 0
    labels: int = 0
    rows: int = 0
    corrupt: int = 0  # not JSON, or not a prediction or label of the expected shape
    no_inputs: int = 0  # a labelled prediction logged without its inputs
    unlabelled: int = 0  # a prediction no label names
    mismatched: int = 0  # a label without a value for that row
    too_old: int = 0
    over_size: int = 0
    duplicates: int = 0  # a line id logged again (its earliest line is kept)

    def summary(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


@dataclass(order=True)
class _Row:
    """One labelled row: ordered by time, then id, then read order."""

    time: float
    id: str
    seq: int
    size: int = field(compare=False)
    values: dict[str, Any] = field(compare=False)
    dead: bool = field(default=False, compare=False)  # replaced by an earlier line


def is_feedback_source(source: str) -> bool:
    return source.startswith(SCHEME)


def folder_of(source: str) -> str:
    folder = source.removeprefix(SCHEME).removeprefix("file://")
    if not folder:
        raise DataError(f"{source}: a feedback source names a folder (feedback:<folder>)")
    return folder


def log_files(folder: str) -> list[Path]:
    """Every prediction log file under ``folder``, in name order."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{folder}: no such folder (the prediction log's claim)")
    return sorted(p for p in root.rglob("*") if LOG_NAME.search(p.name) and p.is_file())


def _records(paths: list[Path], counts: Counts | None) -> Iterator[tuple[dict[str, Any], int]]:
    """Each line's JSON object and its size; a line that is not one is counted (in
    ``counts``, when given: one of the two passes counts them)."""
    for path in paths:
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    record = None
                if isinstance(record, dict):
                    yield record, len(raw)
                elif counts is not None and raw.strip():
                    counts.corrupt += 1


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def read_labels(paths: list[Path], counts: Counts, oldest: float | None = None) -> dict[str, Any]:
    """Request id -> truth: the last label for each id (by time, then read order). Labels
    before ``oldest`` are left out: they can only name predictions older still."""
    latest: dict[str, tuple[float, Any]] = {}
    for record, _ in _records(paths, None):
        if record.get("kind") != FEEDBACK_KIND:
            continue
        rid, when = record.get("id"), _epoch(record.get("time"))
        if not isinstance(rid, str) or when is None or "truth" not in record:
            counts.corrupt += 1
            continue
        counts.labels += 1
        if oldest is not None and when < oldest:
            continue
        known = latest.get(rid)
        if known is None or when >= known[0]:
            latest[rid] = (when, record["truth"])
    return {rid: truth for rid, (_, truth) in latest.items()}


def row_truth(truth: Any, line_id: str, request_id: str, row: int) -> Scalar | None:
    """The label of one row: a list gives each row its value by position; one value
    labels a one-row request. None when the label has no value for that row."""
    if isinstance(truth, list):
        single = line_id == request_id
        if (single and len(truth) != 1) or not 0 <= row < len(truth):
            return None
        truth = truth[row]
    elif line_id != request_id:
        return None
    return truth if _is_scalar(truth) else None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _prediction(record: dict[str, Any]) -> tuple[str, str, int, float, Any] | None:
    """(id, request id, row, time, inputs) of a prediction line; None when malformed."""
    line_id, rid, row = record.get("id"), record.get("request_id"), record.get("row")
    when = _epoch(record.get("time"))
    if not (isinstance(line_id, str) and isinstance(rid, str) and isinstance(row, int)):
        return None
    if when is None or isinstance(row, bool):
        return None
    return line_id, rid, row, when, record.get("inputs")


def _row_values(
    inputs: dict[str, Any], truth: Scalar, record: dict[str, Any], options: Options
) -> dict[str, Any] | None:
    """The row's features, its label (and version); None when a feature is not a plain
    value."""
    values = {str(k): v for k, v in inputs.items() if v is None or _is_scalar(v)}
    if len(values) != len(inputs):
        return None
    values[options.target] = truth
    if options.version_column:
        values[options.version_column] = str(record.get("version", ""))
    return values


class _Kept:
    """The newest rows whose log lines add up to at most ``max_bytes`` (a heap of the
    kept rows, oldest on top), one per line id: an id logged twice (a shadow pod answers
    a mirror of the request under its id; a client reuses an id) keeps its earliest line,
    the answer the client got first."""

    def __init__(self, max_bytes: int | None, counts: Counts) -> None:
        self.max_bytes = max_bytes
        self.counts = counts
        self.heap: list[_Row] = []
        self.by_id: dict[str, _Row] = {}
        self.bytes = 0

    def add(self, row: _Row) -> None:
        known = self.by_id.get(row.id)
        if known is not None:
            self.counts.duplicates += 1
            if known <= row:
                return
            known.dead = True  # left in the heap, skipped when popped and at the end
            self.bytes -= known.size
        self.by_id[row.id] = row
        heapq.heappush(self.heap, row)
        self.bytes += row.size
        while self.max_bytes is not None and self.heap and self.bytes > self.max_bytes:
            oldest = heapq.heappop(self.heap)
            if oldest.dead:
                continue
            if self.by_id.get(oldest.id) is oldest:
                del self.by_id[oldest.id]
            self.bytes -= oldest.size
            self.counts.over_size += 1

    def rows(self) -> list[_Row]:
        """The kept rows, oldest first."""
        return sorted(row for row in self.heap if not row.dead)


def labelled_rows(
    paths: list[Path], labels: dict[str, Any], options: Options, now: float, counts: Counts
) -> list[_Row]:
    """The predictions with a label, newest kept within the bounds, in time order."""
    oldest = None if options.max_age_s is None else now - options.max_age_s
    kept = _Kept(options.max_bytes, counts)
    seq = 0
    for record, size in _records(paths, counts):
        if record.get("kind") == FEEDBACK_KIND:
            continue
        found = _prediction(record)
        if found is None:
            counts.corrupt += 1
            continue
        counts.predictions += 1
        line_id, rid, row, when, inputs = found
        if rid not in labels:
            counts.unlabelled += 1
            continue
        if oldest is not None and when < oldest:
            counts.too_old += 1
            continue
        truth = row_truth(labels[rid], line_id, rid, row)
        if truth is None:
            counts.mismatched += 1
            continue
        if not isinstance(inputs, dict):
            counts.no_inputs += 1
            continue
        values = _row_values(inputs, truth, record, options)
        if values is None:
            counts.corrupt += 1
            continue
        seq += 1
        kept.add(_Row(when, line_id, seq, size, values))
    return kept.rows()


def _column(values: list[Any]) -> pa.Array:
    """Values as one Arrow column: their own type, or text when they mix kinds."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def table(rows: list[_Row], options: Options) -> pa.Table:
    """The rows as a table: the features in order of first appearance, then the target
    (and the version column)."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.values))
    last = [options.target, *([options.version_column] if options.version_column else [])]
    order = [n for n in names if n not in last] + last
    return pa.table({n: _column([row.values.get(n) for row in rows]) for n in order})


def join(folder: str, options: Options, now: float, counts: Counts | None = None) -> pa.Table:
    """The labelled table of the prediction logs under ``folder``; a :class:`DataError`
    when it has no row."""
    counts = counts if counts is not None else Counts()
    paths = log_files(folder)
    counts.files = len(paths)
    oldest = None if options.max_age_s is None else now - options.max_age_s
    labels = read_labels(paths, counts, oldest)
    rows = labelled_rows(paths, labels, options, now, counts)
    counts.rows = len(rows)
    if not rows:
        raise DataError(
            f"{folder}: no labelled prediction with its inputs in the prediction log "
            f"({counts.summary()})"
        )
    return table(rows, options)


def write(folder: str, options: Options, now: float, out: Path) -> Counts:
    """Join the logs under ``folder`` and write the table to ``out`` as Parquet."""
    counts = Counts()
    pq.write_table(join(folder, options, now, counts), str(out))
    return counts
