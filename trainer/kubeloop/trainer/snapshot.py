"""`kubeloop snapshot` in one pass over the source: validate, digest, copy and profile
batch by batch (see :mod:`kubeloop.trainer.stream`), so memory is bounded by the batch.

The copy goes to a staging folder (its digest, and so its folder, is known only at the
end): a one-file source or a query's result is staged first and read from there, the
files of a glob or prefix are written batch by batch as they are read. Beside it goes a
Parquet file of the numeric columns, from which the profile's numeric bins are found in
a few more reads. The folder is published only if
that version was not stored before.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kubeloop.api.v1alpha1 import DataSchema
from kubeloop.contracts import storage
from kubeloop.contracts.artifacts import ArtifactLayout, Profile, join
from kubeloop.contracts.results import JobResult
from kubeloop.progress import Progress
from kubeloop.trainer import data, feedback, output, stream


class _Copy:
    """Writes batches to a local file in a snapshot format, opened with the first batch."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.writer: Any = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self.fmt == "jsonl":
            self._write_jsonl(batch)
            return
        if self.writer is None:
            cls = pq.ParquetWriter if self.fmt == "parquet" else pacsv.CSVWriter
            self.writer = cls(str(self.path), batch.schema)
        self.writer.write_batch(batch)

    def _write_jsonl(self, batch: pa.RecordBatch) -> None:
        frame = batch.to_pandas()
        encoded = [
            [f"{json.dumps(str(n), ensure_ascii=False)}: {v}" for v in data._json_column(frame[n])]
            for n in frame.columns
        ]
        with open(self.path, "a", encoding="utf-8") as handle:
            for row in zip(*encoded, strict=True):
                handle.write("{" + ", ".join(row) + "}\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Numbers:
    """Each numeric column's present values as float64, an uncompressed Arrow IPC stream
    file per column: what the profile's bins are read from, one column per read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, Any] = {}
        self.writers: dict[str, Any] = {}
        self.paths: dict[str, str] = {}
        self.tops: dict[str, Any] = {}  # stream.top_counts of each column's values so far

    def write(self, batch: pa.RecordBatch) -> None:
        for name, array in zip(batch.schema.names, batch.columns, strict=True):
            if not stream.is_numeric_type(array.type):
                continue
            if name not in self.writers:
                self.paths[name] = str(self.folder / f"{len(self.paths)}.arrow")
                self.files[name] = pa.OSFile(self.paths[name], "wb")
                self.writers[name] = pa.ipc.new_stream(self.files[name], stream.VALUES_SCHEMA)
            present = stream.present_floats(array)
            top = stream.top_counts(present)
            self.tops[name] = top if name not in self.tops else self.tops[name] + top
            values = pa.array(present, type=pa.float64())
            self.writers[name].write_batch(pa.record_batch([values], schema=stream.VALUES_SCHEMA))

    def close(self) -> None:
        for name, writer in self.writers.items():
            writer.close()
            self.files[name].close()


def _batches(
    source: str,
    query: str | None,
    fmt: Any,
    schema: DataSchema | None,
    rows: int,
    copy: Path,
    labelled: feedback.Options | None = None,
) -> tuple[Iterator[pa.RecordBatch], bool]:
    """The source's batches, and whether ``copy`` already holds the source's own bytes.

    One file is first copied whole (one sequential read, then parsed from the copy: the
    stored bytes are the bytes parsed, even if the source changes meanwhile); a glob or
    prefix is read file by file; a query's result is written to the copy as Parquet by
    :func:`kubeloop.trainer.sql.read_query` (block by block) and read back; so is the
    labelled table of a feedback source (:func:`kubeloop.trainer.feedback.write`)."""
    declared = stream.declared_types(schema)
    if labelled is not None:
        counts = feedback.write(feedback.folder_of(source), labelled, time.time(), copy)
        print(f"feedback {source}: {counts.summary()}", file=sys.stderr)
        return stream.read_batches(str(copy), feedback.FORMAT, None, declared, rows), True
    if query is not None:
        from kubeloop.trainer import sql  # its drivers only when a query is read

        sql.read_query(source, query, copy)
        return stream.read_batches(str(copy), sql.FORMAT, None, declared, rows), True
    options = storage.source_options(source)  # the source's own credentials, if it has them
    try:
        fs, files = data.source_files(source, fmt, options)
        if len(files) > 1:
            return stream.read_batches(source, fmt, options, declared, rows), False
        fs.get_file(files[0], str(copy))
    except data.DataError:
        raise
    except Exception as exc:
        raise stream.read_error(source, fmt, exc) from exc
    return stream.read_batches(str(copy), fmt, None, declared, rows, name=source), True


def take(  # ``shown`` reports the stages; ``labelled``: a feedback source's join
    source: str,
    query: str | None,
    fmt: str,
    out: str,
    schema: DataSchema | None,
    batch_rows: int = stream.BATCH_ROWS,
    shown: Progress | None = None,
    labelled: feedback.Options | None = None,
) -> JobResult:
    """Snapshot ``source`` into ``out``; a :class:`DataError` for bad data."""
    shown = shown or Progress()
    data_file = ArtifactLayout.data_file(fmt)
    with ExitStack() as stack:
        scratch, tmp = stack.enter_context(output.staging()), stack.enter_context(output.staging())
        staged = tmp / data_file
        batches, copied = _batches(source, query, fmt, schema, batch_rows, staged, labelled)
        copy, numbers = _Copy(staged, fmt), _Numbers(scratch)
        checker, digest = stream.Checker(schema), stream.Digest()
        profiler = stream.Profiler(bins=data.PROFILE_BINS)
        arrow_schema = None
        shown.stage("reading", unit="rows")
        try:
            for batch in stream.read_ahead(batches):
                missing = checker.check(batch)
                digest.update(batch)
                profiler.update(batch, missing)
                if not copied:
                    copy.write(batch)
                numbers.write(batch)
                arrow_schema = batch.schema
                shown.advance(batch.num_rows)
        finally:
            copy.close()
            numbers.close()
        checker.finish()
        assert arrow_schema is not None  # read_batches fails on an empty source
        version = digest.hexdigest()
        target = ArtifactLayout.snapshot_dir(out, version)
        if not output.exists(join(target, ArtifactLayout.PROFILE)):  # immutable: written once
            shown.stage("profile", total=len(arrow_schema.names), unit="columns")
            names, rows = arrow_schema.names, checker.rows
            features = profiler.finish(names, numbers.paths, rows, numbers.tops)
            profile = Profile(rows=rows, features=features)
            shown.advance(len(arrow_schema.names))
            shown.stage("writing")
            (tmp / ArtifactLayout.PROFILE).write_text(profile.model_dump_json(indent=1))
            output.publish(tmp, target, last=ArtifactLayout.PROFILE, replace=False)
        elif not output.exists(join(target, data_file)):
            # The same content arrived before in another format: add this format's copy.
            output.add(tmp / data_file, join(target, data_file))
    return JobResult(
        kind="snapshot",
        status="succeeded",
        digest=version,
        rows=checker.rows,
        columns=checker.columns(arrow_schema),
        snapshot_uri=join(target, data_file),
        profile_uri=join(target, ArtifactLayout.PROFILE),
    )
