"""Tables streamed in record batches: memory is bounded by the batch, not the data set.

:func:`read_batches` reads a source (one file, a glob, a prefix; CSV, Parquet or JSON
lines) as Arrow record batches of at most ``batch_rows`` rows, each conformed to one
schema: the declared column types, else the types of the first batch. A later value
that does not fit fails naming its column and row (counted from 0 over the whole
source, the header not included). Column types are kept as read, except that values
which are neither numbers, booleans nor text (dates, timestamps, ...) become text, as
the Dataset schema knows no other kinds.

The **content digest, format 2** (``sha256-v2:<hex>``) is computed batch by batch, so
it cannot depend on where batches split. Every column has hashers of its own: a
numeric column (integers, floats, booleans, and a column with no value at all) hashes
its values as little-endian float64 with every missing value one canonical NaN; a text
column hashes each value's UTF-8 length as little-endian int64 (-1 when missing) into
one hasher and the UTF-8 bytes into another. The digest is sha256 over the columns in
name order, each contributing its name, ``\\x1e``, its kind (``n`` or ``s``), its
hashers' digests and ``\\x1d``. As with format 1 (``sha256:``, see
:mod:`kubeloop.trainer.data`, which earlier versions keep), the same table as CSV,
Parquet or JSON lines, or with its columns reordered, has the same digest. The format
is in the prefix, so a digest never changes meaning.
"""

from __future__ import annotations

import csv
import hashlib
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kubeloop.api.v1alpha1 import Column, DataSchema
from kubeloop.contracts import storage
from kubeloop.trainer import batches as batch_io
from kubeloop.trainer.data import Format, _not_found, _reason, source_files
from kubeloop.trainer.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

DIGEST_PREFIX = "sha256-v2:"
#: Rows per record batch unless a command is told otherwise.
BATCH_ROWS = 65_536
#: Bytes of CSV text parsed at a time.
CSV_BLOCK = 1 << 20

_ARROW_TYPES: dict[str, pa.DataType] = {
    "number": pa.float64(),
    "integer": pa.int64(),
    "boolean": pa.bool_(),
    "string": pa.string(),
}


def declared_types(schema: DataSchema | None) -> dict[str, pa.DataType]:
    """The Arrow type each declared column is read as."""
    return {c.name: _ARROW_TYPES[c.type] for c in schema.columns} if schema else {}


def is_numeric_type(arrow_type: pa.DataType) -> bool:
    """Whether a column of this type hashes and profiles as numbers."""
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_null(arrow_type)
    )


def is_text_type(arrow_type: pa.DataType) -> bool:
    """Whether values of this type are text (of any Arrow width)."""
    return bool(
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_string_view(arrow_type)
    )


def missing(array: pa.Array) -> pa.Array:
    """Which values are missing: nulls, and NaN in a float column (as pandas counts them)."""
    if pa.types.is_floating(array.type):
        return pc.is_null(array, nan_is_null=True)
    return pc.is_null(array)


def missing_count(array: pa.Array) -> int:
    """How many values are missing (see :func:`missing`)."""
    if pa.types.is_floating(array.type):
        return int(pc.sum(missing(array)).as_py() or 0)
    return int(array.null_count)


def _kept_type(arrow_type: pa.DataType) -> pa.DataType:
    """The type a column is kept as: numbers, booleans and text as read, others as text."""
    if is_numeric_type(arrow_type) or pa.types.is_string(arrow_type):
        return arrow_type
    if is_text_type(arrow_type):
        return pa.string()
    if pa.types.is_dictionary(arrow_type):
        return _kept_type(arrow_type.value_type)
    return pa.string()


# ---------------------------------------------------------------- reading


@dataclass
class Conformer:
    """Casts every batch to one schema: the declared types, else the first batch's."""

    declared: Mapping[str, pa.DataType]
    schema: pa.Schema | None = None
    rows: int = 0

    def conform(self, batch: pa.RecordBatch, where: str) -> pa.RecordBatch:
        if self.schema is None:
            self.schema = pa.schema(
                [
                    pa.field(f.name, self.declared.get(f.name) or _kept_type(f.type))
                    for f in batch.schema
                ]
            )
        if batch.schema.names != self.schema.names:
            raise DataError(
                f"{where}: columns {batch.schema.names} differ from the first file's "
                f"{self.schema.names}"
            )
        arrays = [self._cast(f.name, batch.column(i), f.type) for i, f in enumerate(self.schema)]
        self.rows += batch.num_rows
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _cast(self, name: str, values: pa.Array, target: pa.DataType) -> pa.Array:
        if values.type == target:
            return values
        if values.null_count == len(values):
            return pa.nulls(len(values), target)
        if not (is_text_type(target) and is_numeric_type(values.type)):  # numbers are no text
            try:
                return pc.cast(values, target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        row = _first_bad(values, target)
        raise self.contradiction(name, target, self.rows + row, values[row].as_py())

    def contradiction(self, name: str, target: pa.DataType, row: int, value: Any) -> DataError:
        """The error for a value of ``name`` at ``row`` that is no ``target``."""
        if name in self.declared:
            return DataError(
                f"column {name!r}: expected {_column_kind(target)}, found {value!r} at row {row}"
            )
        if pa.types.is_null(target):
            return DataError(
                f"column {name!r} has no value in the first rows, but row {row} is {value!r}: "
                "declare its type in the schema"
            )
        return DataError(
            f"column {name!r} was read as {batch_io.kind_of(target)} from the first rows, "
            f"but row {row} is {value!r}"
        )


def _first_bad(values: pa.Array, target: pa.DataType) -> int:
    """The first non-missing value that is no ``target`` (text is no number and vice versa)."""
    if is_text_type(target) or pa.types.is_null(target):
        return int(pc.index(pc.is_valid(values), True).as_py())
    found = batch_io.first_unconvertible(values, target)
    return 0 if found is None else found


def read_batches(
    uri: str,
    fmt: Format,
    options: dict[str, Any] | None = None,
    declared: Mapping[str, pa.DataType] | None = None,
    batch_rows: int = BATCH_ROWS,
    name: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """The source's rows as conformed batches of at most ``batch_rows`` rows; a
    :class:`DataError` for anything that stops the read, naming the source as ``name``
    (default: ``uri``)."""
    conformer = Conformer(dict(declared or {}))
    shown = name or uri
    try:
        fs, files = source_files(uri, fmt, options)
        for path in files:
            where = shown if len(files) == 1 else f"{shown} ({path})"
            raw = _file_batches(fs, path, fmt, conformer, batch_rows)
            for batch in batch_io.rebatch(raw, batch_rows):
                conformed = conformer.conform(batch, where)
                if conformed.num_rows:
                    yield conformed
    except DataError:
        raise
    except Exception as exc:
        raise read_error(shown, fmt, exc) from exc
    if conformer.rows == 0 or not conformer.schema or not conformer.schema.names:
        raise DataError(f"{shown}: the data set is empty")


@dataclass
class _Failed:
    error: BaseException


_END = object()


def read_ahead(batches: Iterator[pa.RecordBatch], depth: int = 2) -> Iterator[pa.RecordBatch]:
    """``batches``, read by a thread of their own up to ``depth`` batches ahead: the next
    batch is parsed (Arrow's reader releases the GIL) while the caller works on this one,
    so a second core can do either. What the read raises is raised here, in order; when
    the caller stops early, the thread stops after the batch it is reading."""
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                slots.put(batch)
            slots.put(_END)
        except BaseException as exc:  # handed to the reader, which raises it
            slots.put(_Failed(exc))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put, so the thread sees ``stop``
            with suppress(queue.Empty):
                slots.get(timeout=0.05)
        thread.join()


def read_error(uri: str, fmt: str, exc: Exception) -> DataError:
    """The same reasons :func:`kubeloop.trainer.data.read_table` gives."""
    if isinstance(exc, FileNotFoundError):
        local = "://" not in uri or uri.startswith("file://")
        return DataError(f"{uri}: {'no such file' if local else _not_found(exc)}")
    if isinstance(exc, pa.ArrowInvalid) and "Empty CSV file" in str(exc):
        return DataError(f"{uri}: the data set is empty")
    if isinstance(exc, ValueError | UnicodeDecodeError | pa.ArrowException):
        return DataError(f"{uri}: cannot be read as {fmt}: {_reason(exc)}")
    if isinstance(exc, PermissionError):
        return DataError(f"{uri}: access denied: {_reason(exc)}")
    if isinstance(exc, OSError | ImportError):
        return DataError(f"{uri}: cannot be read: {_reason(exc)}")
    if storage.is_store_error(exc):
        denied = getattr(exc, "status_code", None) in (401, 403)
        return DataError(
            f"{uri}: {'access denied' if denied else 'cannot be read'}: {_reason(exc)}"
        )
    raise exc


def _file_batches(
    fs: Any, path: str, fmt: Format, conformer: Conformer, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    with ExitStack() as stack:
        handle = stack.enter_context(fs.open(path, "rb"))
        if fmt == "parquet":
            parquet = stack.enter_context(pq.ParquetFile(handle))
            yield from parquet.iter_batches(batch_size=batch_rows)
        elif fmt == "jsonl":
            import pandas as pd  # only JSON lines are read through pandas

            chunks = pd.read_json(
                handle, lines=True, precise_float=True, dtype=False, chunksize=batch_rows
            )
            offset = conformer.rows  # rows of the files before this one
            for chunk in stack.enter_context(chunks):
                yield _from_pandas(chunk, conformer, offset)
                offset += len(chunk)
        else:
            yield from _csv_batches(fs, path, handle, conformer)


def _from_pandas(chunk: pd.DataFrame, conformer: Conformer, offset: int) -> pa.RecordBatch:
    """A chunk of JSON lines as a batch; a column mixing text and numbers names the first
    value that differs from the column's type (its type so far, else its first value's)."""
    try:
        return pa.RecordBatch.from_pandas(chunk, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    for name in chunk.columns:
        values = chunk[name].tolist()
        try:
            pa.array(values)
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        known = conformer.schema.field(name).type if conformer.schema else None
        first = next(v for v in values if v is not None)
        target = known if known is not None else pa.array([first]).type
        for i, value in enumerate(values):
            if value is not None and not _fits(value, target):
                raise conformer.contradiction(str(name), target, offset + i, value)
    raise DataError(f"the JSON lines from row {offset} cannot be read as a table")


def _fits(value: Any, target: pa.DataType) -> bool:
    try:
        found = pa.array([value])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    if is_text_type(target) != is_text_type(found.type):
        return False
    return batch_io.casts(found, target)


def _csv_options(types: Mapping[str, pa.DataType]) -> dict[str, Any]:
    return {
        "read_options": pacsv.ReadOptions(block_size=CSV_BLOCK),
        "convert_options": pacsv.ConvertOptions(column_types=dict(types), strings_can_be_null=True),
    }


def _csv_batches(fs: Any, path: str, handle: Any, conformer: Conformer) -> Iterator[pa.RecordBatch]:
    """A CSV file's batches, read as the types already fixed (a later file of a source
    is read as the first); a value that does not convert names its row."""
    fixed = dict(conformer.declared)
    if conformer.schema is not None:
        fixed = {f.name: f.type for f in conformer.schema if not pa.types.is_null(f.type)}
    reader = None
    before = conformer.rows  # rows of the files before this one
    try:
        reader = pacsv.open_csv(handle, **_csv_options(fixed))
        yield from reader
    except pa.ArrowInvalid as exc:
        found = batch_io._CSV_CONVERSION.search(str(exc))
        if found is None:
            raise
        names = reader.schema.names if reader else _csv_header(fs, path)
        name = names[int(found.group(1))]
        target = fixed.get(name) or pa.type_for_alias(found.group(2))
        row, value = _unconvertible_row(fs, path, name, target, fixed)
        raise conformer.contradiction(name, target, before + row, value) from None
    finally:
        if reader is not None:
            reader.close()


def _csv_header(fs: Any, path: str) -> list[str]:
    """The column names on the first line of a CSV file."""
    with fs.open(path, "rt", encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle), [])


def _unconvertible_row(
    fs: Any, path: str, name: str, target: pa.DataType, types: Mapping[str, pa.DataType]
) -> tuple[int, Any]:
    """The first row of a CSV file whose ``name`` is no ``target`` (read again as text)."""
    offset = 0
    with fs.open(path, "rb") as handle:
        for batch in pacsv.open_csv(handle, **_csv_options({**types, name: pa.string()})):
            row = batch_io.first_unconvertible(batch.column(name), target)
            if row is not None:
                return offset + row, batch.column(name)[row].as_py()
            offset += batch.num_rows
    return offset, None


# ---------------------------------------------------------------- digest


def as_floats(array: pa.Array) -> pa.Array:
    """A numeric column as float64, the form the digest hashes and the profile bins: an
    integer beyond 2**53 becomes the nearest float64 (a checked cast would refuse it and
    fail the snapshot on a valid 64-bit id)."""
    return pc.cast(array, pa.float64(), safe=False)


@dataclass
class _ColumnHash:
    numeric: bool
    values: hashlib._Hash = field(default_factory=hashlib.sha256)
    lengths: hashlib._Hash = field(default_factory=hashlib.sha256)

    def update(self, array: pa.Array) -> None:
        if self.numeric:
            floats = None if pa.types.is_null(array.type) else as_floats(array)
            values: np.ndarray = (
                np.full(len(array), np.nan)
                if floats is None
                else floats.to_numpy(zero_copy_only=False).astype("<f8", copy=False)
            )
            nan = np.isnan(values)
            if nan.any():  # one canonical NaN bit pattern (on a copy: Arrow's is read-only)
                values = values.copy()
                values[nan] = np.nan
            self.values.update(values.data)
            return
        text = pc.cast(array, pa.large_string())
        lengths = pc.fill_null(pc.binary_length(text), -1).to_numpy().astype("<i8")
        self.lengths.update(lengths.tobytes())
        filled = pc.fill_null(text, "")
        offsets = np.frombuffer(filled.buffers()[1], dtype="<i8")
        start, end = offsets[filled.offset], offsets[filled.offset + len(filled)]
        data = filled.buffers()[2]
        if data is not None and end > start:
            self.values.update(memoryview(data)[start:end])

    def digest(self) -> bytes:
        kind = b"n" if self.numeric else b"s"
        return kind + self.values.digest() + (b"" if self.numeric else self.lengths.digest())


@dataclass
class Digest:
    """The content digest, format 2, fed one batch at a time (see the module docstring)."""

    columns: dict[str, _ColumnHash] = field(default_factory=dict)

    def update(self, batch: pa.RecordBatch) -> None:
        for name, array in zip(batch.schema.names, batch.columns, strict=True):
            if name not in self.columns:
                self.columns[name] = _ColumnHash(is_numeric_type(array.type))
            self.columns[name].update(array)

    def hexdigest(self) -> str:
        hasher = hashlib.sha256()
        for name in sorted(self.columns):
            hasher.update(name.encode() + b"\x1e" + self.columns[name].digest() + b"\x1d")
        return DIGEST_PREFIX + hasher.hexdigest()


def digest_of(batches: Sequence[pa.RecordBatch]) -> str:
    """The digest of a table given as batches."""
    digest = Digest()
    for batch in batches:
        digest.update(batch)
    return digest.hexdigest()


# ---------------------------------------------------------------- schema checks


@dataclass
class Checker:
    """The declared schema's checks, batch by batch: missing columns first; at the end,
    missing values in a column that is not nullable (naming the first row), then the null
    fractions.
    Types are checked by reading the columns as their declared types."""

    schema: DataSchema | None
    nulls: dict[str, int] = field(default_factory=dict)
    first_null: dict[str, int] = field(default_factory=dict)
    rows: int = 0

    def check(self, batch: pa.RecordBatch) -> dict[str, int]:
        """Check one batch; its columns' missing values (see :func:`missing_count`)."""
        if self.rows == 0:
            for column in self.schema.columns if self.schema else []:
                if column.name not in batch.schema.names:
                    raise DataError(f"column {column.name!r}: missing from the data")
        counts = {
            n: missing_count(a) for n, a in zip(batch.schema.names, batch.columns, strict=True)
        }
        for name, count in counts.items():
            self.nulls[name] = self.nulls.get(name, 0) + count
        for column in self.schema.columns if self.schema else []:
            array = batch.column(column.name)
            if counts[column.name] and not column.nullable and column.name not in self.first_null:
                row = self.rows + int(pc.index(missing(array), True).as_py())
                self.first_null[column.name] = row
        self.rows += batch.num_rows
        return counts

    def finish(self) -> None:
        """The checks on whole columns, once every batch has passed."""
        for name, row in self.first_null.items():
            raise DataError(
                f"column {name!r}: {self.nulls[name]} missing values, but it is not nullable "
                f"(the first at row {row})"
            )
        for column in self.schema.columns if self.schema else []:
            fraction = self.nulls[column.name] / self.rows
            if column.nullable and fraction > self.schema.max_null_fraction:  # type: ignore[union-attr]
                raise DataError(
                    f"column {column.name!r}: {fraction:.1%} missing values, more than the "
                    f"allowed {self.schema.max_null_fraction:.1%}"  # type: ignore[union-attr]
                )

    def columns(self, schema: pa.Schema) -> list[Column]:
        """The columns as found: their kinds, nullable when a value was missing."""
        return [
            Column(name=f.name, type=_column_kind(f.type), nullable=self.nulls.get(f.name, 0) > 0)
            for f in schema
        ]


def _column_kind(arrow_type: pa.DataType) -> str:
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type):
        return "integer"
    if is_numeric_type(arrow_type):
        return "number"
    return "string"


# ---------------------------------------------------------------- profile

#: Bits of a sort key settled by each pass of the exact quantile search.
_DIGIT_BITS = 16
_PASSES = 64 // _DIGIT_BITS


def sort_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys that sort as the float64 ``values`` do (-0.0 taken as 0.0)."""
    floats = np.asarray(values, dtype="<f8") + 0.0  # a new array, turned into the keys
    flip = (floats.view("<i8") >> np.int64(63)).view("<u8")  # all ones where negative
    flip |= np.uint64(1 << 63)
    keys: np.ndarray = floats.view("<u8")
    keys ^= flip  # negative: every bit flipped; else the sign bit set
    return keys


def _from_keys(keys: np.ndarray) -> np.ndarray:
    negative = ~((keys >> np.uint64(63)).astype(bool))
    return np.where(negative, ~keys, keys & ~np.uint64(1 << 63)).view("<f8")


#: Candidate values gathered at most (all ranks together) to finish a search by sorting.
COLLECT_LIMIT = 1 << 21
#: Distinct values of a numeric column counted exactly as the data streams; a column with
#: no more is profiled from those counts, with no further read.
DISTINCT_LIMIT = 4096


def _matching(keys: np.ndarray, known: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Which ``keys`` start with one of the sorted ``bits``-bit prefixes ``known``, and
    the index of that prefix for each that does."""
    if bits == 0:
        return np.ones(len(keys), dtype=bool), np.zeros(len(keys), dtype=np.int64)
    high = keys >> np.uint64(64 - bits)
    if bits <= _DIGIT_BITS:  # a lookup table of every prefix: a gather, not a search
        table = np.full(1 << bits, -1, dtype=np.int64)
        table[known.astype(np.int64)] = np.arange(len(known))
        found = table[high.view(np.int64)]
        return found >= 0, found
    slot = np.minimum(np.searchsorted(known, high), len(known) - 1)
    return known[slot] == high, slot


def top_counts(values: np.ndarray) -> np.ndarray:
    """How many ``values`` have each 16-bit prefix of their sort keys: the first read of
    :func:`order_statistics`, which can be counted while the data streams."""
    top = (sort_keys(values) >> np.uint64(64 - _DIGIT_BITS)).view(np.int64)
    counts: np.ndarray = np.bincount(top, minlength=1 << _DIGIT_BITS)
    return counts


@dataclass
class Buckets:
    """What the last read of a search gathered: the sorted sort keys of each prefix of
    ``bits`` bits, and how many keys sort below that prefix."""

    bits: int
    keys: dict[int, np.ndarray]
    below: dict[int, int]

    def histogram(self, edges: np.ndarray) -> np.ndarray | None:
        """``np.histogram(values, bins=edges)[0]``, found in the buckets: None when an
        edge falls in none of them (or is not finite)."""
        if not np.isfinite(edges).all():
            return None
        cumulative = []
        for j, key in enumerate(sort_keys(edges)):
            prefix = int(key >> np.uint64(64 - self.bits))
            if prefix not in self.keys:
                return None
            last = j == edges.size - 1  # the last bin holds its right edge
            found = int(self.keys[prefix].searchsorted(key, side="right" if last else "left"))
            cumulative.append(self.below[prefix] + found)
        counts: np.ndarray = np.diff(np.array(cumulative, dtype=np.int64))
        return counts


def order_statistics(chunks: Any, ranks: np.ndarray) -> np.ndarray:
    """The values of rank ``ranks`` (from 0, in sort order) of the numbers that
    ``chunks()`` yields (called once per read), exactly (see :func:`search`)."""
    return search(chunks, ranks)[0]


def search(
    chunks: Any, ranks: np.ndarray, top: np.ndarray | None = None
) -> tuple[np.ndarray, Buckets | None]:
    """:func:`order_statistics`, and the buckets its last read gathered (None if none):
    a radix search over the sort keys, 16 bits a read, holding a 65,536-bin count per
    distinct prefix (the first read's given as ``top``, see :func:`top_counts`); once the
    values left in the ranks' buckets are few (:data:`COLLECT_LIMIT`), one more read
    gathers and sorts them."""
    prefixes = np.zeros(len(ranks), dtype=np.uint64)
    remaining = np.asarray(ranks, dtype=np.int64).copy()
    for depth in range(_PASSES):
        bits = _DIGIT_BITS * depth
        known = np.unique(prefixes)
        if depth == 0 and top is not None:
            counts = np.asarray(top, dtype=np.int64)
        else:
            counts = _digit_counts(chunks, known, bits)
        left = {}
        for i, prefix in enumerate(prefixes):
            row = int(np.searchsorted(known, prefix)) << _DIGIT_BITS
            cumulative = np.cumsum(counts[row : row + (1 << _DIGIT_BITS)])
            found = int(np.searchsorted(cumulative, remaining[i], side="right"))
            remaining[i] -= int(cumulative[found - 1]) if found else 0
            prefixes[i] = (prefix << np.uint64(_DIGIT_BITS)) | np.uint64(found)
            left[int(prefixes[i])] = int(counts[row + found])
        if depth + 1 < _PASSES and sum(left.values()) <= COLLECT_LIMIT:
            below = np.asarray(ranks, dtype=np.int64) - remaining
            return _collect(chunks, prefixes, remaining, below, bits + _DIGIT_BITS)
    return _from_keys(prefixes), None


def _digit_counts(chunks: Any, known: np.ndarray, bits: int) -> np.ndarray:
    """One read of the search: per known prefix, how many keys have each next digit."""
    counts = np.zeros(len(known) << _DIGIT_BITS, dtype=np.int64)
    shift = np.uint64(64 - bits - _DIGIT_BITS)
    pending: list[np.ndarray] = []
    held = 0
    for chunk in chunks():
        keys = sort_keys(chunk)
        match, slot = _matching(keys, known, bits)
        digit = ((keys[match] >> shift) & np.uint64(0xFFFF)).view(np.int64)
        pending.append((slot[match] << _DIGIT_BITS) + digit)
        held += len(pending[-1])
        if held >= len(counts):  # counted once there are as many as bins, not every chunk
            counts += np.bincount(np.concatenate(pending), minlength=len(counts))
            pending, held = [], 0
    if pending:
        counts += np.bincount(np.concatenate(pending), minlength=len(counts))
    return counts


def _collect(
    chunks: Any, prefixes: np.ndarray, remaining: np.ndarray, below: np.ndarray, bits: int
) -> tuple[np.ndarray, Buckets]:
    """Finish :func:`search`: gather the keys under each prefix, sort, pick."""
    known = np.unique(prefixes)
    parts = []
    for chunk in chunks():
        keys = sort_keys(chunk)
        parts.append(keys[_matching(keys, known, bits)[0]])
    gathered = np.concatenate(parts)
    del parts
    gathered.sort()  # the buckets in prefix order, each one contiguous
    high = gathered >> np.uint64(64 - bits)
    starts, ends = np.searchsorted(high, known, "left"), np.searchsorted(high, known, "right")
    ordered = [gathered[a:b] for a, b in zip(starts, ends, strict=True)]
    found = [
        ordered[int(np.searchsorted(known, p))][r] for p, r in zip(prefixes, remaining, strict=True)
    ]
    buckets = Buckets(
        bits,
        {int(p): ordered[j] for j, p in enumerate(known)},
        {int(p): int(b) for p, b in zip(prefixes, below, strict=True)},
    )
    return _from_keys(np.array(found, dtype=np.uint64)), buckets


def exact_quantiles(select: Any, count: int, quantiles: np.ndarray) -> np.ndarray:
    """``np.quantile(values, quantiles)`` (linear method) of ``count`` values, from
    ``select(ranks)``: the values of those ranks in sort order."""
    virtual = (count - 1) * np.asarray(quantiles, dtype=np.float64)
    below = np.floor(virtual).astype(np.int64)
    above = np.minimum(below + 1, count - 1)
    gamma = virtual - below
    ranks = np.unique(np.concatenate([below, above]))
    found = dict(zip(ranks.tolist(), select(ranks).tolist(), strict=True))
    a = np.array([found[r] for r in below.tolist()])
    b = np.array([found[r] for r in above.tolist()])
    lerp = a + (b - a) * gamma
    result: np.ndarray = np.where(gamma >= 0.5, b - (b - a) * (1 - gamma), lerp)
    return result


@dataclass
class _TextCounts:
    """One text column's value counts: each batch's counted by Arrow, and the counts so far
    merged (grouped and summed by Arrow) once they outgrow the merged ones, so memory
    follows the distinct values and no value passes through Python until the end."""

    merged: pa.Table | None = None
    pending: list[pa.Table] = field(default_factory=list)
    pending_rows: int = 0

    def add(self, array: pa.Array) -> None:
        found = pc.value_counts(array.drop_null())
        self.pending.append(pa.Table.from_struct_array(found))
        self.pending_rows += len(found)
        if self.pending_rows > max(BATCH_ROWS, 0 if self.merged is None else len(self.merged)):
            self._merge()

    def _merge(self) -> None:
        parts = ([] if self.merged is None else [self.merged]) + self.pending
        if parts:
            summed = pa.concat_tables(parts).group_by("values").aggregate([("counts", "sum")])
            self.merged = summed.select(["values", "counts_sum"]).rename_columns(
                ["values", "counts"]
            )
        self.pending, self.pending_rows = [], 0

    def counts(self) -> dict[str, int]:
        self._merge()
        if self.merged is None:
            return {}
        values, times = self.merged.column("values"), self.merged.column("counts")
        return {str(k): int(n) for k, n in zip(values.to_pylist(), times.to_pylist(), strict=True)}


@dataclass
class Profiler:
    """Reference profiles, batch by batch: text columns count their values as they pass,
    and so do numeric ones while they have few distinct values; :meth:`finish` bins the
    other numeric columns from a file of their values in a few more reads (exact quantile
    edges, then the counts)."""

    bins: int
    text: dict[str, _TextCounts] = field(default_factory=dict)
    distinct: dict[str, dict[float, int] | None] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)

    def update(self, batch: pa.RecordBatch, missing: Mapping[str, int] | None = None) -> None:
        """Count one batch; ``missing``: its columns' missing values, if counted already."""
        for name, array in zip(batch.schema.names, batch.columns, strict=True):
            found = missing[name] if missing is not None else missing_count(array)
            self.missing[name] = self.missing.get(name, 0) + found
            if is_numeric_type(array.type):
                self._count_numbers(name, array)
            else:
                self.text.setdefault(name, _TextCounts()).add(array)

    def _count_numbers(self, name: str, array: pa.Array) -> None:
        counts = self.distinct.setdefault(name, {})
        if counts is None or pa.types.is_null(array.type):
            return
        found = pc.value_counts(as_floats(array).drop_null())  # hashed, not sorted
        keys = found.field("values").to_numpy(zero_copy_only=False) + 0.0  # -0.0 is 0.0
        present = ~np.isnan(keys)
        if int(present.sum()) - 1 > DISTINCT_LIMIT:  # -0.0 and 0.0 may be two of them
            self.distinct[name] = None
            return
        times = found.field("counts").to_numpy(zero_copy_only=False)[present]
        for value, count in zip(keys[present].tolist(), times.tolist(), strict=True):
            counts[value] = counts.get(value, 0) + count
        if len(counts) > DISTINCT_LIMIT:
            self.distinct[name] = None

    def finish(
        self,
        names: Sequence[str],
        numbers: Mapping[str, str],
        rows: int,
        tops: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """The profiles of ``names``; a numeric column's read from its file in ``numbers``
        (its present values, see :func:`numeric_profile`, with their :func:`top_counts`
        in ``tops`` if counted) unless its distinct values were counted."""
        from kubeloop.contracts.artifacts import CategoricalProfile

        profiles: dict[str, Any] = {}
        read: dict[str, Future[Any]] = {}
        # A thread per core reads the numbers' files (numpy works without the GIL); each
        # holds at most one column's search.
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            for name in names:
                missing = self.missing[name]
                if name in self.text:
                    counted = self.text[name].counts().items()
                    ordered = sorted(counted, key=lambda kv: (-kv[1], kv[0]))
                    profiles[name] = CategoricalProfile(frequencies=dict(ordered), missing=missing)
                elif self.distinct.get(name) is not None:
                    profiles[name] = counted_profile(self.distinct[name] or {}, missing, self.bins)
                elif name in numbers:
                    top = (tops or {}).get(name)
                    read[name] = pool.submit(
                        numeric_profile, numbers[name], rows - missing, missing, self.bins, top
                    )
        profiles.update((name, future.result()) for name, future in read.items())
        return {name: profiles[name] for name in names if name in profiles}  # in column order


#: The schema of a file of one column's present values (:func:`numeric_profile`).
VALUES_SCHEMA = pa.schema([pa.field("v", pa.float64(), nullable=False)])


def present_floats(array: pa.Array) -> np.ndarray:
    """A numeric column's values as float64, without the missing ones (nulls, NaN)."""
    if pa.types.is_null(array.type):
        return np.zeros(0)
    values: np.ndarray = as_floats(array).drop_null().to_numpy(zero_copy_only=False)
    nan = np.isnan(values)
    return values[~nan] if nan.any() else values


def counted_profile(counts: dict[float, int], missing: int, bins: int) -> Any:
    """The :class:`NumericProfile` of a column given as value counts: the same edges and
    counts as :func:`numeric_profile` of the values themselves."""
    from kubeloop.contracts.artifacts import NumericProfile

    values = np.array(sorted(counts), dtype=np.float64)
    times = np.array([counts[v] for v in values.tolist()], dtype=np.int64)
    total = int(times.sum())
    if total == 0:
        return NumericProfile(edges=[0.0, 0.0], counts=[0], missing=missing)
    cumulative = np.cumsum(times)

    def select(ranks: np.ndarray) -> np.ndarray:
        return values[np.searchsorted(cumulative, ranks, side="right")]

    edges = np.unique(exact_quantiles(select, total, np.linspace(0, 1, bins + 1)))
    if edges.size == 1:
        return NumericProfile(edges=[float(edges[0])] * 2, counts=[total], missing=missing)
    binned = np.histogram(values, bins=edges, weights=times)[0]
    return NumericProfile(
        edges=[float(e) for e in edges], counts=[int(c) for c in binned], missing=missing
    )


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(values, bins=edges)[0]`` for sorted ``edges`` and no NaN, by one
    search per value in the edges (numpy sorts the values first)."""
    if not np.isfinite(edges).all():
        return np.histogram(values, bins=edges)[0]  # as numpy treats infinities and NaN
    bins = edges.size - 1
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = bins - 1  # the last bin holds its right edge
    inside = (index >= 0) & (index < bins)
    counts: np.ndarray = np.bincount(index[inside], minlength=bins)
    return counts


def numeric_profile(
    path: str, count: int, missing: int, bins: int, top: np.ndarray | None = None
) -> Any:
    """The :class:`NumericProfile` of a column whose ``count`` present values are in the
    Arrow IPC stream file ``path`` (:data:`VALUES_SCHEMA`): edges at exact quantiles (as
    :func:`kubeloop.trainer.data.profile_series` puts them), read a batch at a time. With
    ``top`` (:func:`top_counts` of the values), the search's first read is skipped, and
    the bins are counted in the keys its last read gathered when the edges lie there: then
    the file is read once."""
    from kubeloop.contracts.artifacts import NumericProfile

    def chunks() -> Iterator[np.ndarray]:
        with pa.OSFile(path, "rb") as handle, pa.ipc.open_stream(handle) as reader:
            for batch in reader:
                yield batch.column(0).to_numpy()

    if count == 0:
        return NumericProfile(edges=[0.0, 0.0], counts=[0], missing=missing)
    gathered: list[Buckets | None] = [None]

    def select(ranks: np.ndarray) -> np.ndarray:
        found, gathered[0] = search(chunks, ranks, top)
        return found

    edges = np.unique(exact_quantiles(select, count, np.linspace(0, 1, bins + 1)))
    if edges.size == 1:
        return NumericProfile(edges=[float(edges[0])] * 2, counts=[count], missing=missing)
    counts = gathered[0].histogram(edges) if gathered[0] is not None else None
    if counts is None:
        counts = np.zeros(edges.size - 1, dtype=np.int64)
        for chunk in chunks():
            counts += histogram(chunk, edges)
    return NumericProfile(
        edges=[float(e) for e in edges], counts=[int(c) for c in counts], missing=missing
    )
