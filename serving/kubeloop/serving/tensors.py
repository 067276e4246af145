"""Typed inference requests, independent of the wire format.

A protocol codec (the REST JSON/binary codecs in :mod:`kubeloop.serving.rest`, a
gRPC one later) turns a request into a :class:`Decoded` — one validated numpy
column per model input — and the data plane works on that alone. The raw tensor
bytes (little-endian, BYTES as length-prefixed UTF-8) are the same in the REST
binary extension and in gRPC's raw contents, so their codec lives here too.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kubeloop.serving.errors import BadRequestError

Datatype = Literal["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES"]
DATATYPES: tuple[str, ...] = ("FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES")
NUMERIC = frozenset({"FP32", "FP64", "INT32", "INT64"})
#: request datatypes accepted for an input declared with the key's datatype
COMPATIBLE: dict[str, frozenset[str]] = {
    "FP32": NUMERIC,
    "FP64": NUMERIC,
    "INT32": frozenset({"INT32", "INT64"}),
    "INT64": frozenset({"INT32", "INT64"}),
    "BOOL": frozenset({"BOOL"}),
    "BYTES": frozenset({"BYTES"}),
}
NUMPY: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "BYTES": np.dtype(object),
}
_ITEMSIZE = {"FP32": 4, "FP64": 8, "INT32": 4, "INT64": 8, "BOOL": 1}

Column = np.ndarray[Any, Any]


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


@dataclass
class Decoded:
    """A validated inference request: one 1-D column per model input, in model order.

    A request sent as one 2-D tensor keeps it as ``matrix`` (``rows x inputs``);
    its columns are views cut on first use.
    """

    _columns: list[Column] | None
    rows: int
    request_id: str | None = None
    outputs: list[str] | None = None  # requested output names (None: all)
    binary: dict[str, bool] = field(default_factory=dict)  # output name -> binary?
    binary_default: bool = False
    matrix: np.ndarray[Any, Any] | None = None

    @property
    def columns(self) -> list[Column]:
        if self._columns is None:
            assert self.matrix is not None
            self._columns = list(self.matrix.T)
        return self._columns


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
    nullable), infinity, and numbers outside the datatype's range. A good column costs
    one min and one max (NaN propagates through both, so it takes the slow path)."""
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
    _refuse(col, int(np.flatnonzero(~ok)[0]), spec, name)
    return col


def _in_float(col: Column, high: int) -> np.ndarray[Any, Any]:
    result: np.ndarray[Any, Any] = (col >= -float(high) - 1) & (col < float(high) + 1)
    return result


def _refuse(col: Column, row: int, spec: InputSpec, name: str) -> None:
    """Raise the client error for the value at ``row``."""
    value = col[row].item()
    if col.dtype.kind == "f" and math.isnan(value):
        raise BadRequestError(
            f"input '{name}' is NaN at row {row}; this feature does not allow missing values"
        )
    if col.dtype.kind == "f" and math.isinf(value):
        raise BadRequestError(f"input '{name}' is infinite at row {row}")
    raise BadRequestError(
        f"input '{name}' is {value!r} at row {row}, outside the range of {spec.datatype}"
    )


def from_bytes(raw: memoryview, datatype: str, n: int, name: str) -> Column:
    """``n`` values of ``datatype`` from raw little-endian tensor bytes."""
    if datatype == "BYTES":
        return _strings_from_bytes(raw, n, name)
    size = _ITEMSIZE[datatype]
    if len(raw) != n * size:
        raise BadRequestError(
            f"input '{name}' has {len(raw)} bytes of {datatype}; its shape needs {n * size}"
        )
    return np.frombuffer(raw, dtype=NUMPY[datatype].newbyteorder("<"))


def _strings_from_bytes(raw: memoryview, n: int, name: str) -> Column:
    out: list[str] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadRequestError(f"input '{name}': truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise BadRequestError(f"input '{name}': truncated BYTES element")
        try:
            out.append(bytes(raw[pos : pos + length]).decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequestError(f"input '{name}': element {len(out)} is not UTF-8") from None
        pos += length
    if len(out) != n:
        raise BadRequestError(f"input '{name}' has {len(out)} values; its shape says {n}")
    return object_column(out)


def to_bytes(arr: np.ndarray[Any, Any], datatype: str) -> bytes:
    """Raw little-endian tensor bytes of an output (BYTES: length-prefixed UTF-8)."""
    if datatype == "BYTES":
        parts = []
        for v in arr.ravel().tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=NUMPY[datatype].newbyteorder("<")).tobytes()


def object_column(values: list[Any]) -> Column:
    """A 1-D object array holding ``values`` as they are (numpy would unpack sequences)."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr
