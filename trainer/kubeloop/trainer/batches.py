"""Tables read and written in record batches through fsspec: memory bounded by the batch.

:func:`read_batches` streams a CSV or Parquet file as Arrow record batches of at most
``batch_rows`` rows; :func:`write_batches` writes batches to a temporary name beside the
output and renames it into place only when every batch is written, so a failure leaves
no partial output (on object stores, which have no rename, the upload happens at the
end and a failure removes the temporary object).

CSV types: the columns named in ``types`` are read as those types; the others as
pyarrow infers them from the first block. A value that does not convert fails the read
naming the column and its row (counted from 0, the header not included), found by
reading the file again with that column as text — only on failure.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from kubeloop.trainer.errors import DataError

BatchFormat = Literal["csv", "parquet"]
BATCH_FORMATS: tuple[BatchFormat, ...] = ("csv", "parquet")
#: bytes pyarrow's CSV reader parses at a time (its types are inferred from the first)
CSV_BLOCK = 1 << 20
_CSV_CONVERSION = re.compile(
    r"In CSV column #(\d+): CSV conversion error to ([^:]+): invalid value"
)


class OutputDataError(DataError):
    """An output the data cannot be written to: the message names the output, not the data."""


def batch_format(uri: str, given: str | None = None, flag: str = "--format") -> BatchFormat:
    """The format named, or the one the file name's suffix says (csv or parquet); the
    error tells to give ``flag``."""
    name = given or posixpath.splitext(uri.split("?")[0])[1].lstrip(".").lower()
    if name == "pq":
        name = "parquet"
    if name not in BATCH_FORMATS:
        raise DataError(f"{uri}: cannot tell csv from parquet by its name; give {flag}")
    return name


@dataclass
class BatchReader:
    """A table's schema (known before any row is read) and its record batches."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    #: how many rows, when the file says before they are read (Parquet does)
    rows: int | None = None


@contextlib.contextmanager
def read_batches(
    uri: str, fmt: BatchFormat, batch_rows: int, types: Mapping[str, pa.DataType] | None = None
) -> Iterator[BatchReader]:
    """Stream ``uri`` as record batches of at most ``batch_rows`` rows."""
    try:
        handle = _open(uri)
    except FileNotFoundError as exc:
        raise DataError(f"{uri}: no such file") from exc
    except (OSError, ImportError, ValueError) as exc:
        raise DataError(f"{uri}: cannot be read: {exc}") from exc
    closing: list[Any] = []  # readers with threads of their own: closed before the file
    try:
        if fmt == "parquet":
            try:
                parquet = pq.ParquetFile(handle)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{uri}: cannot be read as parquet: {exc}") from exc
            closing.append(parquet)
            batches = parquet.iter_batches(batch_size=batch_rows)
            rows = parquet.metadata.num_rows
            yield BatchReader(parquet.schema_arrow, _parquet_errors(uri, batches), rows)
        else:
            reader = _open_csv(uri, handle, types or {})
            closing.append(reader)
            csv_batches = _csv_errors(uri, reader, types or {})
            yield BatchReader(reader.schema, rebatch(csv_batches, batch_rows))
    finally:
        for item in closing:
            item.close()
        handle.close()


def _open(uri: str) -> Any:
    """A local file as an Arrow native file (pyarrow's reader threads then never call into
    Python, and never race the interpreter's exit); any other URI through fsspec."""
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        return pa.OSFile(path, "rb")
    return fs.open(path, "rb")


def _csv_options(types: Mapping[str, pa.DataType]) -> dict[str, Any]:
    return {
        "read_options": pacsv.ReadOptions(block_size=CSV_BLOCK),
        "convert_options": pacsv.ConvertOptions(column_types=dict(types), strings_can_be_null=True),
    }


def _open_csv(uri: str, handle: Any, types: Mapping[str, pa.DataType]) -> Any:
    try:
        return pacsv.open_csv(handle, **_csv_options(types))
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise DataError(f"{uri}: the data set is empty") from exc
        raise _csv_error(uri, exc, None, types) from exc


def _parquet_errors(uri: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    try:
        yield from batches
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{uri}: cannot be read as parquet: {exc}") from exc


def _csv_errors(
    uri: str, reader: Any, types: Mapping[str, pa.DataType]
) -> Iterator[pa.RecordBatch]:
    """The reader's batches; a value that does not convert becomes a DataError naming it."""
    try:
        yield from reader
    except pa.ArrowInvalid as exc:
        raise _csv_error(uri, exc, reader.schema, types) from exc


def _csv_error(
    uri: str, exc: pa.ArrowInvalid, schema: pa.Schema | None, types: Mapping[str, pa.DataType]
) -> DataError:
    """Name the column and the first row whose value does not convert, else pyarrow's words."""
    found = _CSV_CONVERSION.search(str(exc))
    if found is None:
        return DataError(f"{uri}: cannot be read as csv: {exc}")
    names = schema.names if schema is not None else _csv_header(uri)
    name = names[int(found.group(1))]
    target = types.get(name) or pa.type_for_alias(found.group(2))
    row, value = first_unconvertible_csv(uri, name, target, types)
    if name in types:
        return DataError(f"column '{name}' takes {kind_of(target)}, but row {row} is {value!r}")
    return DataError(
        f"column '{name}' was read as {target} from the first rows, but row {row} is {value!r}"
    )


def kind_of(arrow_type: pa.DataType) -> str:
    """What values of an Arrow type are, in words."""
    if pa.types.is_floating(arrow_type):
        return "numbers"
    if pa.types.is_integer(arrow_type):
        return "integers"
    if pa.types.is_boolean(arrow_type):
        return "true/false values"
    return f"{arrow_type} values"


def _csv_header(uri: str) -> list[str]:
    """The column names on a CSV file's first line."""
    with fsspec.open(uri, "rt", encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle), [])


def first_unconvertible_csv(
    uri: str, name: str, target: pa.DataType, types: Mapping[str, pa.DataType]
) -> tuple[int, Any]:
    """The first row (from 0) of a CSV file whose ``name`` value is no ``target``, and the
    value: the file read again with that column as text."""
    as_text = {**types, name: pa.string()}
    offset = 0
    with _open(uri) as handle:
        for batch in pacsv.open_csv(handle, **_csv_options(as_text)):
            row = first_unconvertible(batch.column(name), target)
            if row is not None:
                return offset + row, batch.column(name)[row].as_py()
            offset += batch.num_rows
    return offset, None  # every value converted on a second read: report where the file ends


def first_unconvertible(values: pa.Array, target: pa.DataType, chunk: int = 1024) -> int | None:
    """The index of the first value pyarrow cannot cast to ``target`` (None: all can)."""
    for start in range(0, len(values), chunk):
        part = values.slice(start, chunk)
        if casts(part, target):
            continue
        for i in range(len(part)):
            if not casts(part.slice(i, 1), target):
                return start + i
    return None


def casts(values: pa.Array, target: pa.DataType) -> bool:
    """Whether pyarrow casts every one of ``values`` to ``target``."""
    try:
        pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of exactly ``rows`` (the last one fewer)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - held, batch.num_rows)
            pending.append(batch.slice(0, take))
            held += take
            batch = batch.slice(take)
            if held == rows:
                yield _concat(pending)
                pending, held = [], 0
    if held:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    table = pa.Table.from_batches(batches).combine_chunks()
    merged: pa.RecordBatch = table.to_batches()[0]
    return merged


class _Hashing:
    """A writable file that hashes what passes through it (the output's sha256)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        written: int = self.raw.write(view)
        return written

    def tell(self) -> int:
        position: int = self.raw.tell()
        return position

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True  # the raw file is closed by its owner


@dataclass
class Written:
    """What :func:`write_batches` wrote: rows and the file's sha256 (hex)."""

    rows: int = 0
    sha256: str = ""


@contextlib.contextmanager
def write_batches(
    uri: str, fmt: BatchFormat, schema: pa.Schema
) -> Iterator[tuple[Callable[[pa.RecordBatch], None], Written]]:
    """A function writing one batch to ``uri`` and what was written; the file appears at
    ``uri`` only when the block ends without an error."""
    fs, path = fsspec.core.url_to_fs(uri)
    parent, name = posixpath.split(path)
    if not name or fs.isdir(path):
        raise OutputDataError(f"--out {uri}: is a folder; give the output file's name")
    if parent:
        fs.makedirs(parent, exist_ok=True)
    temporary = posixpath.join(parent, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    written = Written()
    try:
        with fs.open(temporary, "wb") as raw:
            sink = _Hashing(raw)
            writer = _writer(uri, sink, fmt, schema)

            def write(batch: pa.RecordBatch) -> None:
                writer.write_batch(batch)
                written.rows += batch.num_rows

            try:
                yield write, written
            finally:
                writer.close()
        written.sha256 = sink.sha256.hexdigest()
        _rename(fs, temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm(temporary)
        raise


def _writer(uri: str, sink: _Hashing, fmt: BatchFormat, schema: pa.Schema) -> Any:
    """A Parquet or CSV writer; DataError for columns the format cannot hold (lists in CSV)."""
    try:
        if fmt == "parquet":
            return pq.ParquetWriter(sink, schema)
        return pacsv.CSVWriter(sink, schema)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise OutputDataError(f"--out {uri}: the data cannot be written as {fmt}: {exc}") from exc


def _rename(fs: Any, source: str, target: str) -> None:
    if isinstance(fs, LocalFileSystem):
        os.replace(source, target)
    else:
        fs.mv(source, target)
