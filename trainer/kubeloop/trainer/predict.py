"""Batch prediction: a table in, the same table with the model's predictions appended out.

The model's inputs are built as the server builds them (:mod:`kubeloop.inference`): the
same features, datatypes, value checks and session options, so a row scored here gets
the answer ``kubeloop serve`` gives it. The prediction columns are named after the
model's outputs (:data:`~kubeloop.contracts.artifacts.OUTPUT_NAMES`): the class
(``LABEL_OUTPUT``) and, in Parquet, the probabilities as one fixed-size list column
(``PROBA_OUTPUT``, in ``model.json``'s class order) — in CSV one column per class,
``<PROBA_OUTPUT>.<class>``; a regression's value (``VALUE_OUTPUT``).

Values as the model takes them: a numeric feature's missing value (an empty CSV cell,
a null) is NaN, refused unless the feature was nullable in training; a text feature's
is the string ``MISSING_TEXT``, as in training. Text in a numeric feature, or a
number in a text feature, is refused naming the column and the row.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kubeloop import inference
from kubeloop.contracts.artifacts import MISSING_TEXT, ArtifactLayout, ModelMetadata, join
from kubeloop.inference import InputSpec, RefusedValueError
from kubeloop.progress import Progress
from kubeloop.trainer.batches import (
    BatchFormat,
    first_unconvertible,
    kind_of,
    read_batches,
    write_batches,
)
from kubeloop.trainer.errors import DataError

#: the Arrow type each model datatype is read as (the server reads JSON numbers as float64)
ARROW_INPUT: dict[str, pa.DataType] = {
    "FP32": pa.float64(),
    "FP64": pa.float64(),
    "INT32": pa.int64(),
    "INT64": pa.int64(),
    "BOOL": pa.bool_(),
    "BYTES": pa.string(),
}
#: the Arrow type of each output datatype
ARROW_OUTPUT: dict[str, pa.DataType] = {
    "FP32": pa.float32(),
    "FP64": pa.float64(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "BOOL": pa.bool_(),
    "BYTES": pa.string(),
}
DEFAULT_BATCH_ROWS = 65536


class ModelError(Exception):
    """A model directory that cannot be used: unreadable, or model.onnx not as described."""


@dataclass
class Scored:
    """What a run wrote."""

    rows: int
    sha256: str
    seconds: float


class BatchModel:
    """A verified model with its inputs typed as the server types them."""

    def __init__(self, meta: ModelMetadata, onnx_bytes: bytes, threads: int) -> None:
        self.meta = meta
        self.session = inference.new_session(onnx_bytes, threads)
        self.inputs = inference.input_specs(
            inference.features_of(meta), self.session, meta.packed_input
        )
        self.outputs = {o.name: o for o in inference.output_specs(self.session)}
        self.label, self.proba = inference.outputs_of(meta)
        missing = [n for n in (self.label, self.proba) if n and n not in self.outputs]
        if missing:
            raise ModelError(f"{ArtifactLayout.MODEL} has no output {missing[0]!r}")
        self.output_names = [n for n in (self.label, self.proba) if n]

    @classmethod
    def load(cls, location: str, threads: int = 0, expected: str | None = None) -> BatchModel:
        """The model in the directory (or beside the model.onnx) at ``location``; with
        ``expected``, only if model.onnx has that sha256 (the registered digest)."""
        if location.rstrip("/").endswith(ArtifactLayout.MODEL):
            location = ArtifactLayout.model_dir(location.rstrip("/"))
        try:
            meta = ModelMetadata.model_validate_json(_read(location, ArtifactLayout.METADATA))
            onnx_bytes = _read(location, ArtifactLayout.MODEL)
        except (OSError, ValueError) as exc:
            raise ModelError(f"--model {location}: {exc}") from exc
        actual = hashlib.sha256(onnx_bytes).hexdigest()
        if actual != meta.sha256:
            raise ModelError(
                f"--model {location}: {ArtifactLayout.MODEL} has sha256 {actual}, but "
                f"{ArtifactLayout.METADATA} says {meta.sha256}"
            )
        if expected is not None and actual != expected.lower():
            raise ModelError(
                f"--model {location}: {ArtifactLayout.MODEL} has sha256 {actual}, but the "
                f"model is registered with {expected}"
            )
        try:
            return cls(meta, onnx_bytes, threads)
        except (ValueError, RuntimeError) as exc:  # onnxruntime's load errors among them
            raise ModelError(f"--model {location}: {exc}") from exc

    def read_types(self) -> dict[str, pa.DataType]:
        """How a CSV file's feature columns are read."""
        return {s.name: ARROW_INPUT[s.datatype] for s in self.inputs}

    def output_fields(self, fmt: BatchFormat) -> list[pa.Field]:
        """The prediction columns appended to each row."""
        fields = [pa.field(self.label, ARROW_OUTPUT[self.outputs[self.label].datatype])]
        if self.proba is not None:
            classes = [str(c) for c in self.meta.classes or []]
            if fmt == "csv":
                fields += [pa.field(f"{self.proba}.{c}", pa.float32()) for c in classes]
            else:
                fields.append(pa.field(self.proba, pa.list_(pa.float32(), len(classes))))
        return fields

    def check_columns(self, schema: pa.Schema, fmt: BatchFormat) -> pa.Schema:
        """The output schema; DataError naming a missing feature or a clashing column."""
        names = set(schema.names)
        for spec in self.inputs:
            if spec.name not in names:
                raise DataError(
                    f"column '{spec.name}': missing from the data; the model takes "
                    f"{', '.join(s.name for s in self.inputs)}"
                )
        fields = self.output_fields(fmt)
        for field in fields:
            if field.name in names:
                raise DataError(
                    f"column '{field.name}': the data has it, and the prediction column of "
                    "that name would replace it; rename or drop it first"
                )
        return pa.schema([*schema, *fields])

    def predict(self, batch: pa.RecordBatch, offset: int, fmt: BatchFormat) -> list[pa.Array]:
        """The prediction columns of one batch whose first row is row ``offset``."""
        rows = batch.num_rows
        feed = {
            spec.name: inference.feed_column(
                model_column(batch.column(spec.name), spec, offset), spec, rows
            )
            for spec in self.inputs
        }
        if self.meta.packed_input is not None:
            feed = inference.pack(feed, [s.name for s in self.inputs], self.meta.packed_input)
        values = dict(
            zip(self.output_names, self.session.run(self.output_names, feed), strict=True)
        )
        label = values[self.label].reshape(rows)
        columns = [pa.array(label, type=ARROW_OUTPUT[self.outputs[self.label].datatype])]
        if self.proba is not None:
            proba = np.ascontiguousarray(values[self.proba], dtype=np.float32)
            if fmt == "csv":
                columns += [pa.array(proba[:, i]) for i in range(proba.shape[1])]
            else:
                flat = pa.array(proba.reshape(-1))
                columns.append(pa.FixedSizeListArray.from_arrays(flat, proba.shape[1]))
        return columns


def _read(location: str, name: str) -> bytes:
    with fsspec.open(join(location, name), "rb") as f:
        data: bytes = f.read()
    return data


def model_column(values: pa.Array, spec: InputSpec, offset: int) -> inference.Column:
    """One feature's values as the model takes them; DataError naming the column and the
    first row that cannot be."""
    name = spec.name
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if spec.datatype == "BYTES":
        kind = values.type
        if not (
            pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
        ):
            raise DataError(f"column '{name}' holds {kind} values; the model takes text")
        text: inference.Column = pc.fill_null(values.cast(pa.string()), MISSING_TEXT).to_numpy(
            zero_copy_only=False
        )
        return text
    target = ARROW_INPUT[spec.datatype]
    typed = _cast(values, target, name, offset)
    if typed.null_count:
        if not (spec.nullable and pa.types.is_floating(target)):
            row = offset + int(np.flatnonzero(typed.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"column '{name}' is missing at row {row}; this feature does not allow "
                "missing values"
            )
        typed = pc.fill_null(typed, float("nan"))
    col = typed.to_numpy(zero_copy_only=False)
    try:
        return inference.check_column(col, spec, name)
    except RefusedValueError as exc:
        raise DataError(exc.describe("column", offset)) from None


def _cast(values: pa.Array, target: pa.DataType, name: str, offset: int) -> pa.Array:
    """``values`` as ``target``: numbers and booleans as numbers, text parsed; else the
    first row that is not one names the problem."""
    kind = values.type
    if not (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_null(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
    ):
        raise DataError(f"column '{name}' holds {kind} values; the model takes {kind_of(target)}")
    try:
        cast: pa.Array = pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row = first_unconvertible(values, target)
        if row is None:
            raise
        raise DataError(
            f"column '{name}' takes {kind_of(target)}, but row {offset + row} is "
            f"{values[row].as_py()!r}"
        ) from None
    return cast


def score(
    model: BatchModel,
    data_uri: str,
    data_format: BatchFormat,
    out_uri: str,
    out_format: BatchFormat,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: Progress | None = None,
) -> Scored:
    """Score ``data_uri`` into ``out_uri`` batch by batch; nothing at ``out_uri`` on failure.

    ``progress`` counts the rows written (out of the rows a Parquet file says it holds)."""
    started = time.perf_counter()
    shown = progress or Progress()
    with read_batches(data_uri, data_format, batch_rows, model.read_types()) as reader:
        schema = model.check_columns(reader.schema, out_format)
        shown.stage("scoring", total=reader.rows, unit="rows")
        with write_batches(out_uri, out_format, schema) as (write, written):
            offset = 0
            for batch in reader.batches:
                columns = [*batch.columns, *model.predict(batch, offset, out_format)]
                write(pa.RecordBatch.from_arrays(columns, schema=schema))
                offset += batch.num_rows
                shown.advance(batch.num_rows)
            shown.stage("publishing the output")
        shown.done()
    return Scored(written.rows, written.sha256, time.perf_counter() - started)
