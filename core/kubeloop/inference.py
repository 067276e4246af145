"""Model inputs and outputs for onnxruntime, shared by the server and batch prediction.

Online serving (``kubeloop serve``) and batch scoring (``kubeloop predict``) must give
the same answer for the same row, so they build a model's inputs the same way: from
the features ``model.json`` describes, typed as the ONNX graph declares them
(:func:`input_specs`), refused when a value does not fit the input's datatype
(:func:`check_column`), cast and shaped ``[rows, 1]`` (:func:`feed_column`), run in a
session built by :func:`new_session`.

Imported by the serving and trainer components, which both carry numpy and
onnxruntime; the operator never imports it (its image has neither).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kubeloop.contracts.artifacts import (
    LABEL_OUTPUT,
    PROBA_OUTPUT,
    VALUE_OUTPUT,
    ArtifactLayout,
    ModelMetadata,
)
from kubeloop.contracts.frameworks import Task

if TYPE_CHECKING:
    import onnxruntime as ort

Datatype = Literal["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES"]
DATATYPES: tuple[str, ...] = ("FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES")
NUMERIC = frozenset({"FP32", "FP64", "INT32", "INT64"})
NUMPY: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "BYTES": np.dtype(object),
}
ONNX_TO_OIP: dict[str, str] = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}

Column = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Feature:
    """One feature a model takes, as ``model.json`` describes it."""

    name: str
    nullable: bool


@dataclass(frozen=True)
class InputSpec:
    """One model input (one feature column)."""

    name: str
    datatype: Datatype
    nullable: bool = False

    @property
    def numeric(self) -> bool:
        return self.datatype in NUMERIC


@dataclass(frozen=True)
class OutputSpec:
    """One model output as the model metadata declares it (-1 for a free dimension)."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]


class RefusedValueError(ValueError):
    """A value the input's datatype cannot hold, at ``row`` of the column checked."""

    def __init__(self, name: str, row: int, what: str, tail: str = "") -> None:
        self.name, self.row, self.what, self.tail = name, row, what, tail
        super().__init__(self.describe())

    def describe(self, noun: str = "input", offset: int = 0) -> str:
        """The message, calling the column a ``noun`` and counting rows from ``offset``."""
        return f"{noun} '{self.name}' is {self.what} at row {self.row + offset}{self.tail}"


def features_of(meta: ModelMetadata) -> list[Feature]:
    """The model's features in input order, nullable as the training data was."""
    nullable = set(meta.nullable)
    return [Feature(t.name, t.name in nullable) for t in meta.inputs]


def task_outputs(task: Task) -> tuple[str, str | None]:
    """The outputs holding a task's prediction and (classification) its probabilities."""
    if task == "classification":
        return LABEL_OUTPUT, PROBA_OUTPUT
    return VALUE_OUTPUT, None


def outputs_of(meta: ModelMetadata) -> tuple[str, str | None]:
    """The outputs holding the prediction and the probabilities: the ones a registered
    model names in ``model.json``, else the task's convention."""
    label, proba = task_outputs(meta.task)
    if meta.label_output is not None:
        label, proba = meta.label_output, meta.proba_output
    return label, proba


def new_session(onnx_bytes: bytes, threads: int) -> ort.InferenceSession:
    """A CPU session running one call at a time on ``threads`` threads (0: onnxruntime's
    default, one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def input_specs(
    feats: Sequence[Feature], session: ort.InferenceSession, packed: str | None = None
) -> list[InputSpec]:
    """The model's inputs, one per feature in model.json's order, typed as the ONNX
    graph declares them; the two files must describe the same inputs. With ``packed``
    (one 2-D input holding every feature), each feature takes that input's type."""
    if packed is not None:
        return _packed_specs(feats, session, packed)
    onnx_inputs = {i.name: i for i in session.get_inputs()}
    specs: list[InputSpec] = []
    for feature in feats:
        onnx_input = onnx_inputs.get(feature.name)
        if onnx_input is None:
            raise ValueError(f"{ArtifactLayout.MODEL} has no input for feature '{feature.name}'")
        datatype = ONNX_TO_OIP.get(onnx_input.type)
        if datatype is None:
            raise ValueError(f"input '{feature.name}' has unsupported type {onnx_input.type}")
        specs.append(InputSpec(feature.name, datatype, feature.nullable))  # type: ignore[arg-type]
    if len(onnx_inputs) != len(specs):
        extra = set(onnx_inputs) - {s.name for s in specs}
        raise ValueError(
            f"{ArtifactLayout.MODEL} has inputs {ArtifactLayout.METADATA} does not describe: "
            f"{sorted(extra)}"
        )
    return specs


def _packed_specs(
    feats: Sequence[Feature], session: ort.InferenceSession, packed: str
) -> list[InputSpec]:
    """Per-feature specs of a model whose one ``[N, F]`` float input holds every feature."""
    onnx_inputs = session.get_inputs()
    if [i.name for i in onnx_inputs] != [packed]:
        names = [i.name for i in onnx_inputs]
        raise ValueError(f"{ArtifactLayout.MODEL} has inputs {names}, not the one '{packed}'")
    shape = onnx_inputs[0].shape or []
    width = shape[1] if len(shape) == 2 else None
    datatype = ONNX_TO_OIP.get(onnx_inputs[0].type)
    if len(shape) != 2 or datatype not in ("FP32", "FP64"):
        raise ValueError(f"input '{packed}' is not a 2-D float tensor")
    if isinstance(width, int) and width != len(feats):
        raise ValueError(f"input '{packed}' takes {width} features, not {len(feats)}")
    return [InputSpec(f.name, datatype, f.nullable) for f in feats]  # type: ignore[arg-type]


def pack(feed: Mapping[str, Column], names: Sequence[str], packed: str) -> dict[str, Column]:
    """A per-feature feed (``[rows, 1]`` columns) as the one ``[rows, F]`` tensor a packed
    model takes."""
    return {packed: np.concatenate([feed[n] for n in names], axis=1)}


def output_specs(session: ort.InferenceSession) -> list[OutputSpec]:
    """The ONNX graph's outputs (free dimensions as -1)."""
    specs: list[OutputSpec] = []
    for o in session.get_outputs():
        datatype = ONNX_TO_OIP.get(o.type)
        if datatype is None:
            raise ValueError(f"output '{o.name}' has unsupported type {o.type}")
        shape = tuple(d if isinstance(d, int) else -1 for d in (o.shape or []))
        specs.append(OutputSpec(o.name, datatype, shape))  # type: ignore[arg-type]
    return specs


def feed_column(col: Column, spec: InputSpec, rows: int) -> Column:
    """One checked column as the model's input: its ONNX dtype, shape ``[rows, 1]``."""
    dtype = NUMPY[spec.datatype]
    if col.dtype != dtype:
        col = col.astype(dtype)
    return col.reshape(rows, 1)


#: the largest magnitude each numeric datatype holds (a float beyond FP32's is cast to inf)
FP32_MAX = float(np.finfo(np.float32).max)
FP64_MAX = float(np.finfo(np.float64).max)
_MAGNITUDE: dict[str, float] = {"FP32": FP32_MAX, "FP64": FP64_MAX}
#: the integer range of each integer datatype, inclusive
INT_RANGE: dict[str, tuple[int, int]] = {
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}


def within_fp32(matrix: np.ndarray[Any, Any]) -> bool:
    """Every value finite and within FP32's range (NaN fails: it propagates through min and
    max); integers always are. One vectorised pass over a whole 2-D request."""
    if matrix.dtype.kind != "f" or not matrix.size:
        return True
    return bool(matrix.min() >= -FP32_MAX and matrix.max() <= FP32_MAX)


def check_column(col: Column, spec: InputSpec, name: str) -> Column:
    """Refuse values the model's datatype cannot hold: NaN (unless the feature is
    nullable), infinity, and numbers outside the datatype's range, raising
    :class:`RefusedValueError` for the first. A good column costs one min and one max (NaN
    propagates through both, so it takes the slow path)."""
    if not spec.numeric or col.dtype.kind not in "fiu" or not len(col):
        return col
    if col.dtype.kind in "iu" and (
        spec.datatype not in INT_RANGE or np.can_cast(col.dtype, NUMPY[spec.datatype])
    ):
        return col  # every value fits: integers into floats, or a narrower integer type
    lo, hi = col.min(), col.max()
    if spec.datatype in INT_RANGE:
        low, high = INT_RANGE[spec.datatype]
        # float(2**63) rounds to 2**63, which int64 cannot hold: compare below it
        if lo >= low and (hi <= high if col.dtype.kind in "iu" else hi < float(high) + 1):
            return col
        ok = (col >= low) & (col <= high) if col.dtype.kind in "iu" else _in_float(col, high)
    else:
        limit = _MAGNITUDE[spec.datatype]
        if lo >= -limit and hi <= limit:
            return col
        ok = np.abs(col) <= limit
    if spec.nullable and col.dtype.kind == "f" and spec.datatype in _MAGNITUDE:
        ok |= np.isnan(col)  # NaN is a nullable feature's missing value
    if ok.all():
        return col
    raise _refusal(col, int(np.flatnonzero(~ok)[0]), spec, name)


def _in_float(col: Column, high: int) -> np.ndarray[Any, Any]:
    result: np.ndarray[Any, Any] = (col >= -float(high) - 1) & (col < float(high) + 1)
    return result


def _refusal(col: Column, row: int, spec: InputSpec, name: str) -> RefusedValueError:
    """The error for the value at ``row``."""
    value = col[row].item()
    if col.dtype.kind == "f" and math.isnan(value):
        return RefusedValueError(name, row, "NaN", "; this feature does not allow missing values")
    if col.dtype.kind == "f" and math.isinf(value):
        return RefusedValueError(name, row, "infinite")
    return RefusedValueError(name, row, repr(value), f", outside the range of {spec.datatype}")
