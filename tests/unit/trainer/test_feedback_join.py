"""The join of prediction logs and feedback labels (files in a temporary folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubeloop.trainer.errors import DataError
from kubeloop.trainer.feedback import Counts, Options, join, row_truth

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def stamp(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


def prediction(rid: str, at: float, inputs: dict[str, Any] | None, rows: int = 1, row: int = 0,
               version: str = "3") -> dict[str, Any]:  # fmt: skip
    line: dict[str, Any] = {
        "id": rid if rows == 1 else f"{rid}/{row}",
        "request_id": rid,
        "row": row,
        "model": "m",
        "version": version,
        "variant": "stable",
        "time": stamp(at),
        "latency_ms": 1.0,
        "outputs": {"label": 0},
    }
    if inputs is not None:
        line["inputs"] = inputs
    return line


def label(rid: str, truth: Any, at: float) -> dict[str, Any]:
    return {"kind": "feedback", "id": rid, "truth": truth, "model": "m", "time": stamp(at)}


def write(path: Path, records: list[Any], extra: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )
    path.write_bytes(text + extra)


def rows_of(folder: Path, **options: Any) -> tuple[list[dict[str, Any]], Counts]:
    counts = Counts()
    opts = Options(target=options.pop("target", "y"), **options)
    return join(str(folder), opts, NOW, counts).to_pylist(), counts


def test_predictions_join_their_labels_by_request_id_across_pods_and_rotated_files(tmp_path):
    # pod a answered r1 (now in its rotated file); pod b answered r2; the labels of both
    # are in pod b's file (the pod the client called logs them)
    write(tmp_path / "a.jsonl.1", [prediction("r1", NOW - 60, {"x": 1.0, "c": "p"})])
    write(tmp_path / "a.jsonl", [prediction("r3", NOW - 30, {"x": 3.0, "c": "q"})])
    write(
        tmp_path / "b.jsonl",
        [prediction("r2", NOW - 50, {"x": 2.0, "c": "q"}), label("r1", 1, NOW - 10),
         label("r2", 0, NOW - 5)],
    )  # fmt: skip
    write(tmp_path / "notes.txt", [b"not a log"])
    rows, counts = rows_of(tmp_path)
    assert rows == [{"x": 1.0, "c": "p", "y": 1}, {"x": 2.0, "c": "q", "y": 0}]
    assert (counts.files, counts.predictions, counts.labels, counts.unlabelled) == (3, 3, 2, 1)


def test_rows_of_a_request_take_their_labels_by_position(tmp_path):
    write(
        tmp_path / "p.jsonl",
        [*(prediction("r", NOW - 9, {"x": float(i)}, rows=3, row=i) for i in range(3)),
         label("r", ["a", "b", "c"], NOW - 1)],
    )  # fmt: skip
    rows, _ = rows_of(tmp_path)
    assert [(r["x"], r["y"]) for r in rows] == [(0.0, "a"), (1.0, "b"), (2.0, "c")]


def test_the_last_label_for_an_id_wins(tmp_path):
    write(tmp_path / "a.jsonl", [prediction("r", NOW - 9, {"x": 1}), label("r", 1, NOW - 2)])
    # read after a.jsonl but older: the newer label in a.jsonl still wins
    write(tmp_path / "b.jsonl", [label("r", 0, NOW - 5), label("r", 2, NOW - 2)])
    rows, counts = rows_of(tmp_path)
    assert rows == [{"x": 1, "y": 2}]  # same time: the one read last
    assert counts.labels == 3


@pytest.mark.parametrize(
    ("truth", "line_id", "row", "expected"),
    [
        (1, "r", 0, 1),
        ([1], "r", 0, 1),
        ([1, 2], "r", 0, None),  # two values for a one-row request
        (1, "r/1", 1, None),  # one value for a row of a multi-row request
        ([1, 2], "r/1", 1, 2),
        ([1, 2], "r/2", 2, None),  # no value for that row
        ({"a": 1}, "r", 0, None),
        (None, "r", 0, None),
    ],
)
def test_row_truth(truth, line_id, row, expected):
    assert row_truth(truth, line_id, "r", row) == expected


def test_old_predictions_are_dropped_and_the_newest_kept_within_the_byte_bound(tmp_path):
    records = []
    for i in range(10):
        records += [prediction(f"r{i}", NOW - 100 * i, {"x": i}), label(f"r{i}", i % 2, NOW)]
    write(tmp_path / "p.jsonl", records)
    rows, counts = rows_of(tmp_path, max_age_s=450)
    assert [r["x"] for r in rows] == [4, 3, 2, 1, 0]  # oldest first
    assert counts.too_old == 5
    size = len(json.dumps(prediction("r0", NOW, {"x": 0})).encode()) + 1
    rows, counts = rows_of(tmp_path, max_bytes=3 * size + 2)
    assert [r["x"] for r in rows] == [2, 1, 0]
    assert counts.over_size == 7


def test_corrupt_and_hostile_lines_are_skipped_and_counted(tmp_path):
    write(
        tmp_path / "p.jsonl",
        [b"{not json", b"[1, 2]", {"id": 5, "request_id": "r", "row": 0, "time": "x"},
         {"kind": "feedback", "id": "r9"},  # no truth
         {"kind": "feedback", "id": "r1", "truth": 1, "time": "yesterday"},
         prediction("r1", NOW - 5, {"x": [1, 2]}),  # a feature that is not a plain value
         prediction("r2", NOW - 5, None),  # logged without its inputs
         prediction("r3", NOW - 5, {"x": 3}),
         label("r1", 1, NOW), label("r2", 1, NOW), label("r3", 0, NOW), label("r4", 1, NOW)],
        extra=b'{"id": "cut short',  # a line the writer had not finished
    )  # fmt: skip
    rows, counts = rows_of(tmp_path)
    assert rows == [{"x": 3, "y": 0}]
    assert counts.corrupt == 7
    assert counts.no_inputs == 1


def test_the_table_is_the_same_whatever_order_the_files_are_read_in(tmp_path):
    a, b = tmp_path / "one", tmp_path / "two"
    first = [prediction("r1", NOW - 5, {"x": 1}), label("r2", 1, NOW)]
    second = [prediction("r2", NOW - 7, {"x": 2}), label("r1", 0, NOW)]
    write(a / "a.jsonl", first)
    write(a / "b.jsonl", second)
    write(b / "a.jsonl", second)
    write(b / "b.jsonl", first)
    assert rows_of(a)[0] == rows_of(b)[0] == [{"x": 2, "y": 1}, {"x": 1, "y": 0}]


def test_mixed_label_kinds_become_text_and_the_version_is_a_column_when_asked(tmp_path):
    write(
        tmp_path / "p.jsonl",
        [prediction("r1", NOW - 9, {"x": 1}, version="3"), label("r1", 1, NOW),
         prediction("r2", NOW - 8, {"x": 2}, version="4"), label("r2", "yes", NOW)],
    )  # fmt: skip
    rows, _ = rows_of(tmp_path, target="outcome", version_column="model_version")
    assert rows == [
        {"x": 1, "outcome": "1", "model_version": "3"},
        {"x": 2, "outcome": "yes", "model_version": "4"},
    ]


def test_no_labelled_row_is_an_error_that_says_what_was_read(tmp_path):
    write(tmp_path / "p.jsonl", [prediction("r1", NOW, {"x": 1})])
    with pytest.raises(DataError, match=r"no labelled prediction.*unlabelled=1"):
        rows_of(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        rows_of(tmp_path / "missing")


def test_a_row_logged_twice_under_one_id_is_kept_once_from_its_earliest_line(tmp_path):
    # a shadow pod answers a mirror of the request under the same id, a little later
    write(tmp_path / "stable.jsonl", [prediction("r", NOW - 9, {"x": 1}, version="3"),
                                      label("r", 1, NOW)])  # fmt: skip
    write(tmp_path / "shadow.jsonl", [prediction("r", NOW - 8, {"x": 1}, version="4")])
    rows, counts = rows_of(tmp_path, version_column="v")
    assert rows == [{"x": 1, "y": 1, "v": "3"}]
    assert counts.duplicates == 1
    # read the other way round: the same row
    write(tmp_path / "a.jsonl", [prediction("r", NOW - 8, {"x": 1}, version="4")])
    rows, counts = rows_of(tmp_path, version_column="v", max_bytes=10_000)
    assert rows == [{"x": 1, "y": 1, "v": "3"}]
    assert counts.duplicates == 2


def test_labels_older_than_the_age_bound_are_not_kept(tmp_path):
    old = [prediction("r", NOW - 900, {"x": 1}), label("r", 1, NOW - 800)]
    write(tmp_path / "p.jsonl", [*old, prediction("s", NOW - 9, {"x": 2}), label("s", 0, NOW)])
    rows, counts = rows_of(tmp_path, max_age_s=600)
    assert rows == [{"x": 2, "y": 0}]
    assert (counts.labels, counts.unlabelled) == (2, 1)
