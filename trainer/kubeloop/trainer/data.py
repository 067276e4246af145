"""Tabular data: sources through fsspec, the first content digest format, profiles.

Snapshots and training read data in record batches (:mod:`kubeloop.trainer.stream`,
which computes the current digest format, ``sha256-v2:``). The **content digest,
format 1** (``sha256:``), which versions snapshotted by earlier releases carry,
identifies data by what it holds, not how a file lays it out: sha256 over the
columns in name order, each contributing its name, its kind (numeric or text)
and its values in row order — numeric values as
little-endian float64 with every missing value one canonical NaN, text values
as UTF-8 separated by a unit separator with missing values as a NUL byte. The
same table as CSV or Parquet (or with its columns reordered) has the same
digest; one changed cell changes it.

JSON lines are read as the JSON types say (no guessing of dates from column
names, no strings turned into numbers) and written back with every float's
shortest round-trip form, so a stored copy has the digest of its source.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from typing import TYPE_CHECKING, Any, Literal

import fsspec
import numpy as np

from kubeloop.api.v1alpha1 import Column
from kubeloop.contracts.artifacts import CategoricalProfile, NumericProfile
from kubeloop.trainer.errors import DataError as DataError  # raised here, defined apart

if TYPE_CHECKING:  # pandas loads where a frame is used (a snapshot streams Arrow batches)
    import pandas as pd

Format = Literal["csv", "parquet", "jsonl"]
FORMATS: tuple[Format, ...] = ("csv", "parquet", "jsonl")
PROFILE_BINS = 10


def format_of(uri: str, given: str | None = None) -> Format:
    """The format named, or the one the file name says."""
    name = given or posixpath.splitext(uri.split("?")[0])[1].lstrip(".").lower()
    if name == "json":
        name = "jsonl"
    if not name:
        raise DataError(f"{uri}: no format in the name (give --format: csv, parquet or jsonl)")
    if name not in FORMATS:
        raise DataError(f"{uri}: unknown format {name!r} (use csv, parquet or jsonl)")
    return name


#: File name endings read as each format when a source is a prefix (a folder).
SUFFIXES: dict[Format, tuple[str, ...]] = {
    "csv": (".csv",),
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".json"),
}
GLOB_CHARS = "*?["


def source_files(
    uri: str, fmt: Format, options: dict[str, Any] | None = None
) -> tuple[Any, list[str]]:
    """The filesystem and the files of a source, in name order: one file; every match of
    a glob (``s3://bucket/data/part-*.csv``); or every ``fmt`` file under a prefix (a
    folder, or a URI ending in ``/``). Several files are read as one table in that order.
    An http(s) URL is always one file."""
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(options or {}))
    except (ValueError, ImportError) as exc:  # unknown protocol, driver not installed
        raise DataError(f"{uri}: cannot be read: {exc}") from exc
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if {"http", "https"} & set(protocols):
        return fs, [path]  # one resource: "?" starts a query, and a page lists no files
    if any(c in path for c in GLOB_CHARS):
        files = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif uri.endswith("/") or fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.lower().endswith(SUFFIXES[fmt]))
    else:
        return fs, [path]
    if not files:
        raise DataError(f"{uri}: no {fmt} files match")
    return fs, files


def _not_found(exc: OSError) -> str:
    """What a remote store said was missing (the bucket, the key), on one line."""
    detail = _reason(exc)
    return f"not found or unreachable ({detail})" if detail else "not found or unreachable"


def _reason(exc: BaseException) -> str:
    """The error's own message on one line (object stores return several)."""
    text = str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
    return " ".join(text.split())


def write_table(frame: pd.DataFrame, path: str, fmt: Format) -> None:
    """Write a table to a local path in ``fmt``."""
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        _write_jsonl(frame, path)


def _write_jsonl(frame: pd.DataFrame, path: str) -> None:
    """One JSON object per row, floats exact (pandas' writer keeps 15 digits at most)."""
    encoded = [
        [f"{json.dumps(str(name), ensure_ascii=False)}: {v}" for v in _json_column(frame[name])]
        for name in frame.columns
    ]
    with open(path, "w", encoding="utf-8") as handle:
        for row in zip(*encoded, strict=True):
            handle.write("{" + ", ".join(row) + "}\n")


def _json_column(series: pd.Series[Any]) -> list[str]:
    """The JSON text of each value; ``null`` where missing."""
    missing = series.isna().to_numpy()
    if series.dtype.kind == "f":
        texts = [repr(v) if math.isfinite(v) else json.dumps(v) for v in series.tolist()]
    elif series.dtype.kind in "iub":
        texts = [json.dumps(v) for v in series.tolist()]
    else:
        texts = [json.dumps(_json_scalar(v), ensure_ascii=False) for v in series.tolist()]
    for i in np.flatnonzero(missing):
        texts[i] = "null"
    return texts


def _json_scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return None if isinstance(value, float) and math.isnan(value) else value
    return value.item() if hasattr(value, "item") else str(value)


def is_numeric(series: pd.Series[Any]) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series))


def infer_columns(frame: pd.DataFrame) -> list[Column]:
    """The columns as found: type from the dtype, nullable when a value is missing."""
    import pandas as pd

    columns = []
    for name in frame.columns:
        series = frame[name]
        if pd.api.types.is_bool_dtype(series):
            kind = "boolean"
        elif pd.api.types.is_integer_dtype(series):
            kind = "integer"
        elif pd.api.types.is_numeric_dtype(series):
            kind = "number"
        else:
            kind = "string"
        columns.append(Column(name=str(name), type=kind, nullable=bool(series.isna().any())))
    return columns


def digest(frame: pd.DataFrame) -> str:
    """The content digest, format 1 (see the module docstring), ``sha256:<hex>``."""
    import pandas as pd

    hasher = hashlib.sha256()
    for name in sorted(frame.columns, key=str):
        series = frame[name]
        hasher.update(str(name).encode() + b"\x1e")
        if is_numeric(series):
            values = series.astype("float64").to_numpy(copy=True)
            values[np.isnan(values)] = np.nan  # one canonical NaN bit pattern
            hasher.update(b"n" + values.astype("<f8").tobytes())
        else:
            text = "\x1f".join("\x00" if pd.isna(v) else str(v) for v in series)
            hasher.update(b"s" + text.encode())
        hasher.update(b"\x1d")
    return "sha256:" + hasher.hexdigest()


def profile_series(
    series: pd.Series[Any], numeric: bool, bins: int = PROFILE_BINS
) -> NumericProfile | CategoricalProfile:
    """The reference distribution of one column (see :class:`NumericProfile`)."""
    missing = int(series.isna().sum())
    present = series.dropna()
    if not numeric:
        counts = present.astype(str).value_counts()
        return CategoricalProfile(
            frequencies={str(k): int(v) for k, v in counts.items()}, missing=missing
        )
    values = present.astype("float64").to_numpy()
    if values.size == 0:
        return NumericProfile(edges=[0.0, 0.0], counts=[0], missing=missing)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
    if edges.size == 1:
        return NumericProfile(
            edges=[float(edges[0])] * 2, counts=[int(values.size)], missing=missing
        )
    counts, _ = np.histogram(values, bins=edges)
    return NumericProfile(
        edges=[float(e) for e in edges], counts=[int(c) for c in counts], missing=missing
    )
