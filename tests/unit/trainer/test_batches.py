"""The record-batch reader and the all-or-nothing writer, on real files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubeloop.trainer.batches import (
    CSV_BLOCK,
    OutputDataError,
    batch_format,
    first_unconvertible,
    read_batches,
    rebatch,
    write_batches,
)
from kubeloop.trainer.errors import DataError


def big_csv(path: Path, rows: int, bad_row: int | None = None, id_text_row: int | None = None):
    """A CSV file larger than the reader's block: ``x`` a number (``oops`` at ``bad_row``),
    ``id`` integers (text at ``id_text_row``), ``name`` text."""
    lines = ["id,x,name"]
    for i in range(rows):
        x = "oops" if i == bad_row else f"{i * 0.5}"
        ident = "id-9" if i == id_text_row else str(i)
        lines.append(f"{ident},{x},row number {i} with some padding text")
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 2 * CSV_BLOCK
    return path


def test_rebatch_cuts_exact_batches_across_inputs():
    parts = [pa.record_batch({"a": list(range(n))}) for n in (3, 10, 1, 7)]
    sizes = [b.num_rows for b in rebatch(iter(parts), 4)]
    assert sizes == [4, 4, 4, 4, 4, 1]
    merged = pa.Table.from_batches(list(rebatch(iter(parts), 4))).column("a").to_pylist()
    assert merged == [v for p in parts for v in p.column("a").to_pylist()]


@pytest.mark.parametrize(
    ("uri", "given", "expected"),
    [("s3://b/x.csv", None, "csv"), ("/d/x.PARQUET", None, "parquet"), ("x.out", "csv", "csv")],
)
def test_batch_format(uri, given, expected):
    assert batch_format(uri, given) == expected


def test_batch_format_refuses_an_unknown_suffix():
    with pytest.raises(DataError, match="give --format"):
        batch_format("/d/x.txt")


def test_csv_streams_in_bounded_batches_with_declared_types(tmp_path):
    path = big_csv(tmp_path / "t.csv", 60_000)
    with read_batches(str(path), "csv", 5000, {"x": pa.float32()}) as reader:
        assert reader.schema.field("x").type == pa.float32()
        sizes = [b.num_rows for b in reader.batches]
    assert max(sizes) == 5000
    assert sum(sizes) == 60_000


def test_a_bad_value_in_a_late_csv_block_names_column_and_row(tmp_path):
    path = big_csv(tmp_path / "t.csv", 60_000, bad_row=54_321)
    with (
        pytest.raises(DataError, match=r"column 'x' takes numbers, but row 54321 is 'oops'"),
        read_batches(str(path), "csv", 5000, {"x": pa.float64()}) as reader,
    ):
        for _ in reader.batches:
            pass


def test_a_pass_through_column_changing_type_names_column_and_row(tmp_path):
    path = big_csv(tmp_path / "t.csv", 60_000, id_text_row=50_000)
    with (
        pytest.raises(DataError, match=r"column 'id' was read as int64 .* row 50000 is 'id-9'"),
        read_batches(str(path), "csv", 5000, {"x": pa.float64()}) as reader,
    ):
        for _ in reader.batches:
            pass


def test_parquet_batches_are_bounded(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": list(range(10_000))}), path, row_group_size=3000)
    with read_batches(str(path), "parquet", 1000) as reader:
        sizes = [b.num_rows for b in reader.batches]
    assert max(sizes) <= 1000
    assert sum(sizes) == 10_000


def test_a_missing_file_is_named(tmp_path):
    with (
        pytest.raises(DataError, match="no such file"),
        read_batches(str(tmp_path / "nope.csv"), "csv", 10),
    ):
        pass


def test_first_unconvertible_finds_the_first_bad_value():
    values = pa.array([str(i) for i in range(3000)] + ["x", "y"])
    assert first_unconvertible(values, pa.float64()) == 3000
    assert first_unconvertible(pa.array(["1", "2"]), pa.float64()) is None


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_written_file_appears_whole_with_its_digest(tmp_path, fmt):
    schema = pa.schema([("a", pa.int64())])
    out = tmp_path / "sub" / f"out.{fmt}"
    with write_batches(str(out), fmt, schema) as (write, written):
        for start in range(0, 30, 10):
            write(pa.record_batch({"a": list(range(start, start + 10))}, schema=schema))
            assert not out.exists()
    assert written.rows == 30
    assert written.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_a_failed_write_leaves_nothing(tmp_path):
    schema = pa.schema([("a", pa.int64())])
    out = tmp_path / "out.parquet"

    def write_then_fail() -> None:
        with write_batches(str(out), "parquet", schema) as (write, _):
            write(pa.record_batch({"a": [1, 2]}, schema=schema))
            raise RuntimeError("scoring failed")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_is_refused(tmp_path):
    schema = pa.schema([("a", pa.int64())])
    with (
        pytest.raises(OutputDataError, match="is a folder"),
        write_batches(str(tmp_path), "csv", schema),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_columns_csv_cannot_hold_are_refused_before_any_row(tmp_path):
    schema = pa.schema([("tags", pa.list_(pa.int64()))])
    with (
        pytest.raises(OutputDataError, match="cannot be written as csv"),
        write_batches(str(tmp_path / "out.csv"), "csv", schema),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_an_empty_csv_is_named_and_a_header_alone_has_no_rows(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with (
        pytest.raises(DataError, match=r"empty\.csv: the data set is empty"),
        read_batches(str(tmp_path / "empty.csv"), "csv", 10),
    ):
        pass
    (tmp_path / "header.csv").write_text("a,b\n")
    with read_batches(str(tmp_path / "header.csv"), "csv", 10, {"a": pa.float64()}) as reader:
        assert reader.schema.field("a").type == pa.float64()
        assert list(reader.batches) == []


def test_a_store_without_rename_gets_the_file_at_the_end_or_not_at_all():
    """fsspec's in-memory filesystem stands in for an object store (no os.replace)."""
    fs = fsspec.filesystem("memory")
    schema = pa.schema([("a", pa.int64())])
    with write_batches("memory://bucket/out.parquet", "parquet", schema) as (write, written):
        write(pa.record_batch({"a": [1, 2, 3]}, schema=schema))
        assert not fs.exists("/bucket/out.parquet")
    assert fs.ls("/bucket", detail=False) == ["/bucket/out.parquet"]
    assert written.sha256 == hashlib.sha256(fs.cat("/bucket/out.parquet")).hexdigest()

    def write_then_fail() -> None:
        with write_batches("memory://bucket/failed.csv", "csv", schema) as (write, _):
            write(pa.record_batch({"a": [1]}, schema=schema))
            raise RuntimeError("scoring failed")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert fs.ls("/bucket", detail=False) == ["/bucket/out.parquet"]
