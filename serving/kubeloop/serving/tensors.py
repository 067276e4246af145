"""Typed inference requests, independent of the wire format.

A protocol codec (the REST JSON/binary codecs in :mod:`kubeloop.serving.rest`, a
gRPC one later) turns a request into a :class:`Decoded` — one validated numpy
column per model input — and the data plane works on that alone. The raw tensor
bytes (little-endian, BYTES as length-prefixed UTF-8) are the same in the REST
binary extension and in gRPC's raw contents, so their codec lives here too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kubeloop import inference
from kubeloop.inference import (
    DATATYPES,
    FP32_MAX,
    FP64_MAX,
    INT_RANGE,
    NUMERIC,
    NUMPY,
    Column,
    Datatype,
    InputSpec,
    OutputSpec,
    within_fp32,
)
from kubeloop.serving.errors import BadRequestError

#: the core's model-input types and checks, used by the codecs through this module
__all__ = [
    "COMPATIBLE",
    "DATATYPES",
    "FP32_MAX",
    "FP64_MAX",
    "INT_RANGE",
    "NUMERIC",
    "NUMPY",
    "Column",
    "Datatype",
    "Decoded",
    "InputSpec",
    "OutputSpec",
    "check_column",
    "from_bytes",
    "object_column",
    "to_bytes",
    "within_fp32",
]

#: request datatypes accepted for an input declared with the key's datatype
COMPATIBLE: dict[str, frozenset[str]] = {
    "FP32": NUMERIC,
    "FP64": NUMERIC,
    "INT32": frozenset({"INT32", "INT64"}),
    "INT64": frozenset({"INT32", "INT64"}),
    "BOOL": frozenset({"BOOL"}),
    "BYTES": frozenset({"BYTES"}),
}
_ITEMSIZE = {"FP32": 4, "FP64": 8, "INT32": 4, "INT64": 8, "BOOL": 1}


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


def check_column(col: Column, spec: InputSpec, name: str) -> Column:
    """The core's value check (:func:`kubeloop.inference.check_column`), a refused value
    answered as the client's error."""
    try:
        return inference.check_column(col, spec, name)
    except inference.RefusedValueError as exc:
        raise BadRequestError(str(exc)) from None


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
