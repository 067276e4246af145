"""Wire formats: Open Inference Protocol v2 (JSON and the binary-tensor extension)
and KServe V1, decoded into validated columns and encoded back.

Pure functions over bytes and numpy arrays; every client mistake raises
:class:`~kubeloop.serving.errors.BadRequestError` with a message that names the input
and the problem.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson

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


# ------------------------------------------------------------------------ JSON


def loads(body: bytes) -> Any:
    """Parse JSON; NaN/Infinity literals (Python's json.dumps writes them) are accepted
    so that validation, not the parser, reports them per input."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequestError(f"malformed JSON: {exc}") from None


def _bool_param(params: Any, key: str, where: str) -> bool | None:
    if params is None:
        return None
    if not isinstance(params, dict):
        raise BadRequestError(f"{where}: 'parameters' must be an object")
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise BadRequestError(f"{where}: parameter '{key}' must be true or false")
    return value


# ------------------------------------------------------------------- OIP v2 in


def decode_v2(
    body: bytes,
    specs: Sequence[InputSpec],
    index: Mapping[str, int],
    *,
    header_length: int | None = None,
    max_rows: int,
    output_names: Sequence[str],
) -> Decoded:
    """Decode an OIP v2 infer request (JSON, or JSON header + binary tensors)."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadRequestError(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"({len(body)} bytes)"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    req = loads(header)
    if not isinstance(req, dict):
        raise BadRequestError("the request must be a JSON object with 'inputs'")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError("'inputs' must be a non-empty list of tensors")
    request_id = req.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError("'id' must be a string")
    binary_default = bool(_bool_param(req.get("parameters"), "binary_data_output", "request"))
    requested, flags = _requested_outputs(req.get("outputs"), output_names)

    # one 2-D tensor holding every (numeric) feature, columns in model order
    if len(inputs) == 1 and len(specs) > 1:
        only = inputs[0]
        only_name = only.get("name") if isinstance(only, dict) else None
        if isinstance(only_name, str) and only_name not in index:
            matrix = _decode_matrix(only, specs, binary, max_rows)
            return Decoded(None, len(matrix), request_id, requested, flags, binary_default, matrix)

    columns: list[Column | None] = [None] * len(specs)
    rows: int | None = None
    offset = 0
    for pos, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise BadRequestError(f"inputs[{pos}] must be an object")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise BadRequestError(f"inputs[{pos}] has no 'name'")
        i = index.get(name)
        if i is None:
            raise BadRequestError(
                f"unknown input '{name}'; the model takes: {', '.join(s.name for s in specs)}"
            )
        if columns[i] is not None:
            raise BadRequestError(f"input '{name}' is given more than once")
        spec = specs[i]
        datatype, shape = _header(tensor, name)
        if datatype not in COMPATIBLE[spec.datatype]:
            raise BadRequestError(
                f"input '{name}' has datatype {datatype}; the model takes {spec.datatype}"
            )
        n = _column_rows(shape, name)
        if n > max_rows:
            raise BadRequestError(f"input '{name}' has {n} rows; at most {max_rows} are allowed")
        if rows is None:
            rows = n
        elif n != rows:
            raise BadRequestError(f"input '{name}' has {n} rows but earlier inputs have {rows}")
        size = _bool_param_int(tensor.get("parameters"), name)
        if size is not None:
            raw = binary[offset : offset + size]
            if len(raw) != size:
                raise BadRequestError(
                    f"input '{name}': binary data is shorter than binary_data_size"
                )
            offset += size
            col = _from_binary(raw, datatype, n, name)
        else:
            if "data" not in tensor:
                raise BadRequestError(f"input '{name}' has no 'data'")
            col = _from_json(tensor["data"], datatype, n, name)
        columns[i] = _check_column(col, spec, name)
    if offset != len(binary):
        raise BadRequestError(f"{len(binary) - offset} bytes of binary data belong to no input")
    missing = [s.name for s, c in zip(specs, columns, strict=True) if c is None]
    if missing:
        raise BadRequestError(f"missing input(s): {', '.join(missing)}")
    assert rows is not None
    present = [c for c in columns if c is not None]
    return Decoded(present, rows, request_id, requested, flags, binary_default)


def _requested_outputs(
    outputs: Any, names: Sequence[str]
) -> tuple[list[str] | None, dict[str, bool]]:
    if outputs is None:
        return None, {}
    if not isinstance(outputs, list):
        raise BadRequestError("'outputs' must be a list")
    requested: list[str] = []
    flags: dict[str, bool] = {}
    for pos, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise BadRequestError(f"outputs[{pos}] must be an object with a 'name'")
        name = out["name"]
        if name not in names:
            raise BadRequestError(f"unknown output '{name}'; the model returns: {', '.join(names)}")
        requested.append(name)
        flag = _bool_param(out.get("parameters"), "binary_data", f"output '{name}'")
        if flag is not None:
            flags[name] = flag
    return requested, flags


def _bool_param_int(params: Any, name: str) -> int | None:
    if params is None:
        return None
    if not isinstance(params, dict):
        raise BadRequestError(f"input '{name}': 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequestError(f"input '{name}': binary_data_size must be a non-negative integer")
    return size


def _header(tensor: dict[str, Any], name: str) -> tuple[str, list[int]]:
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise BadRequestError(
            f"input '{name}' has datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise BadRequestError(f"input '{name}' needs a 'shape': a list of non-negative integers")
    return datatype, shape


def _column_rows(shape: list[int], name: str) -> int:
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        if shape[0] == 0:
            raise BadRequestError(f"input '{name}' has no rows")
        return shape[0]
    raise BadRequestError(f"input '{name}' has shape {shape}; a feature column is [n] or [n, 1]")


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise BadRequestError(f"input '{name}': 'data' must be a list")
    if any(isinstance(v, list) for v in data):
        return _iter_flat(data)
    return data


def _iter_flat(data: list[Any]) -> list[Any]:
    """Flatten nested lists without recursion (nesting depth is the client's choice)."""
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _from_json(data: Any, datatype: str, n: int, name: str) -> Column:
    if datatype in NUMERIC and isinstance(data, list):
        # fast path: well-formed numbers (flat or nested) convert in one call
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError, OverflowError):
            arr = None
        allowed = "fiu" if datatype in ("FP32", "FP64") else "iu"
        if arr is not None and arr.size == n and arr.dtype.kind in allowed:
            return arr.reshape(-1)
    flat = _flatten(data, name)
    if len(flat) != n:
        raise BadRequestError(f"input '{name}' has {len(flat)} values; its shape says {n}")
    if datatype == "BYTES":
        for pos, v in enumerate(flat):
            if not isinstance(v, str):
                raise BadRequestError(
                    f"input '{name}' is BYTES but value {pos} is {_show(v)}, not a string"
                )
        arr = np.empty(n, dtype=object)
        arr[:] = flat
        return arr
    arr = np.asarray(flat) if flat else np.empty(0)
    kind = arr.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            bad = next((p for p, v in enumerate(flat) if not isinstance(v, bool)), 0)
            raise BadRequestError(
                f"input '{name}' is BOOL but value {bad} is {_show(flat[bad])}, not true/false"
            )
        return arr
    if kind not in "fiu":
        pos, value = _first_non_number(flat)
        raise BadRequestError(
            f"input '{name}' is {datatype} but value {pos} is {_show(value)}, not a number"
        )
    if datatype in ("INT32", "INT64") and kind == "f":
        pos = int(np.flatnonzero(arr != np.round(arr))[0]) if np.any(arr != np.round(arr)) else 0
        raise BadRequestError(
            f"input '{name}' is {datatype} but value {pos} is {_show(flat[pos])}, not an integer"
        )
    return arr


def _first_non_number(flat: list[Any]) -> tuple[int, Any]:
    for pos, v in enumerate(flat):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return pos, v
    return 0, flat[0] if flat else None


def _show(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _from_binary(raw: memoryview, datatype: str, n: int, name: str) -> Column:
    if datatype == "BYTES":
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
        arr = np.empty(n, dtype=object)
        arr[:] = out
        return arr
    size = _ITEMSIZE[datatype]
    if len(raw) != n * size:
        raise BadRequestError(
            f"input '{name}' has {len(raw)} bytes of {datatype}; its shape needs {n * size}"
        )
    return np.frombuffer(raw, dtype=NUMPY[datatype].newbyteorder("<"))


def _check_column(col: Column, spec: InputSpec, name: str) -> Column:
    if not spec.numeric:
        return col
    if col.dtype.kind == "f":
        finite = np.isfinite(col)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            value = float(col[bad])
            if math.isnan(value):
                if not spec.nullable:
                    raise BadRequestError(
                        f"input '{name}' is NaN at row {bad}; this feature does not allow "
                        "missing values"
                    )
                nan = np.isnan(col)
                if not np.isfinite(col[~nan]).all():
                    bad = int(np.flatnonzero(~np.isfinite(col) & ~nan)[0])
                    raise BadRequestError(f"input '{name}' is infinite at row {bad}")
            else:
                raise BadRequestError(f"input '{name}' is infinite at row {bad}")
    return col


def _decode_matrix(
    tensor: dict[str, Any], specs: Sequence[InputSpec], binary: memoryview, max_rows: int
) -> np.ndarray[Any, Any]:
    name = tensor.get("name")
    if not isinstance(name, str):
        raise BadRequestError("inputs[0] has no 'name'")
    datatype, shape = _header(tensor, name)
    f = len(specs)
    if len(shape) != 2 or shape[1] != f:
        raise BadRequestError(
            f"unknown input '{name}': a single input must be a 2-D [n, {f}] tensor of all "
            f"features (got shape {shape}), or send one input per feature: "
            f"{', '.join(s.name for s in specs)}"
        )
    bad = [s.name for s in specs if s.datatype not in NUMERIC]
    if bad:
        raise BadRequestError(
            f"input '{name}': a 2-D tensor needs all-numeric features; send "
            f"{', '.join(bad)} as separate BYTES inputs"
        )
    if datatype not in NUMERIC:
        raise BadRequestError(
            f"input '{name}' has datatype {datatype}; a 2-D tensor must be numeric"
        )
    n = shape[0]
    if n == 0:
        raise BadRequestError(f"input '{name}' has no rows")
    if n > max_rows:
        raise BadRequestError(f"input '{name}' has {n} rows; at most {max_rows} are allowed")
    size = _bool_param_int(tensor.get("parameters"), name)
    if size is not None:
        if size != len(binary):
            raise BadRequestError(
                f"input '{name}': binary_data_size {size} != {len(binary)} bytes sent"
            )
        flat = _from_binary(binary, datatype, n * f, name)
    else:
        if len(binary):
            raise BadRequestError(f"{len(binary)} bytes of binary data belong to no input")
        if "data" not in tensor:
            raise BadRequestError(f"input '{name}' has no 'data'")
        flat = _from_json(tensor["data"], datatype, n * f, name)
    matrix = flat.reshape(n, f)
    if matrix.dtype.kind == "f" and not np.isfinite(matrix).all():
        # one vectorised check; name the first offending column only on failure
        for j, spec in enumerate(specs):
            _check_column(matrix[:, j], spec, f"{name}[:, {j}] ({spec.name})")
    return matrix


# ---------------------------------------------------------------------- V1 in


def decode_v1(
    body: bytes, specs: Sequence[InputSpec], index: Mapping[str, int], *, max_rows: int
) -> Decoded:
    """Decode a KServe V1 predict request: ``instances`` as rows or as records."""
    req = loads(body)
    if not isinstance(req, dict):
        raise BadRequestError("the request must be a JSON object with 'instances'")
    instances = req.get("instances", req.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise BadRequestError("'instances' must be a non-empty list of rows or records")
    n = len(instances)
    if n > max_rows:
        raise BadRequestError(f"'instances' has {n} rows; at most {max_rows} are allowed")
    f = len(specs)
    first = instances[0]
    cols: list[list[Any]]
    if isinstance(first, dict):
        cols = [[None] * n for _ in range(f)]
        for r, rec in enumerate(instances):
            if not isinstance(rec, dict):
                raise BadRequestError(f"instances[{r}] must be a record like instances[0]")
            if len(rec) != f or any(k not in index for k in rec):
                extra = [k for k in rec if k not in index]
                if extra:
                    raise BadRequestError(
                        f"instances[{r}]: unknown feature(s) {', '.join(map(str, extra))}; "
                        f"the model takes: {', '.join(s.name for s in specs)}"
                    )
                missing = [s.name for s in specs if s.name not in rec]
                raise BadRequestError(f"instances[{r}]: missing feature(s) {', '.join(missing)}")
            for k, v in rec.items():
                cols[index[k]][r] = v
    elif isinstance(first, list):
        for r, row in enumerate(instances):
            if not isinstance(row, list) or len(row) != f:
                got = len(row) if isinstance(row, list) else _show(row)
                raise BadRequestError(
                    f"instances[{r}] has {got} values; the model takes {f} features "
                    f"({', '.join(s.name for s in specs)})"
                )
        cols = [list(c) for c in zip(*instances, strict=True)]
    else:
        raise BadRequestError("'instances' must hold rows (lists) or records (objects)")
    columns: list[Column] = []
    for spec, values in zip(specs, cols, strict=True):
        columns.append(_from_v1(values, spec))
    return Decoded(columns, n, None, None, {}, False)


def _from_v1(values: list[Any], spec: InputSpec) -> Column:
    name = spec.name
    if spec.datatype == "BYTES":
        for r, v in enumerate(values):
            if not isinstance(v, str):
                raise BadRequestError(f"feature '{name}' is a string but row {r} is {_show(v)}")
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr
    if spec.datatype == "BOOL":
        for r, v in enumerate(values):
            if not isinstance(v, bool):
                raise BadRequestError(f"feature '{name}' is true/false but row {r} is {_show(v)}")
        return np.asarray(values, dtype=np.bool_)
    if spec.nullable and any(v is None for v in values):
        values = [math.nan if v is None else v for v in values]
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiu":
        r, v = _first_non_number(values)
        if v is None:
            raise BadRequestError(
                f"feature '{name}' is missing (null) at row {r}; this feature does not allow "
                "missing values"
            )
        raise BadRequestError(f"feature '{name}' is a number but row {r} is {_show(v)}")
    if (
        spec.datatype in ("INT32", "INT64")
        and arr.dtype.kind == "f"
        and np.any(arr != np.round(arr))
    ):
        r = int(np.flatnonzero(arr != np.round(arr))[0])
        raise BadRequestError(f"feature '{name}' is an integer but row {r} is {_show(values[r])}")
    return _check_column(arr, spec, name)


# ----------------------------------------------------------------------- out


def _binary_bytes(arr: np.ndarray[Any, Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in arr.ravel().tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=NUMPY[datatype].newbyteorder("<")).tobytes()


def _json_data(arr: np.ndarray[Any, Any], datatype: str) -> Any:
    if datatype == "BYTES":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]
    return np.ascontiguousarray(arr).ravel()


def encode_v2(
    model: str,
    version: str,
    request_id: str,
    outputs: Sequence[tuple[OutputSpec, np.ndarray[Any, Any]]],
    decoded: Decoded,
) -> tuple[bytes, int | None]:
    """The infer response; with binary outputs, also the JSON header's length."""
    wanted = decoded.outputs
    items: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for spec, arr in outputs:
        if wanted is not None and spec.name not in wanted:
            continue
        item: dict[str, Any] = {
            "name": spec.name,
            "datatype": spec.datatype,
            "shape": list(arr.shape),
        }
        if decoded.binary.get(spec.name, decoded.binary_default):
            blob = _binary_bytes(arr, spec.datatype)
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = _json_data(arr, spec.datatype)
        items.append(item)
    body = orjson.dumps(
        {"model_name": model, "model_version": version, "id": request_id, "outputs": items},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not blobs:
        return body, None
    return body + b"".join(blobs), len(body)


def encode_v1(
    predictions: np.ndarray[Any, Any], probabilities: np.ndarray[Any, Any] | None
) -> bytes:
    """``{"predictions": [...]}`` (plus ``probabilities`` for classifiers)."""
    preds: Any
    if predictions.dtype.kind in "OSU":
        preds = [v.decode() if isinstance(v, bytes) else str(v) for v in predictions.tolist()]
    else:
        preds = np.ascontiguousarray(predictions).reshape(-1)
    doc: dict[str, Any] = {"predictions": preds}
    if probabilities is not None:
        doc["probabilities"] = np.ascontiguousarray(probabilities)
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
