"""Open Inference Protocol v2 over REST: JSON and the binary-tensor extension.

Pure functions over bytes and numpy arrays: a request body becomes a
:class:`~kubeloop.serving.tensors.Decoded`, model outputs become a response body.
Every client mistake raises :class:`~kubeloop.serving.errors.BadRequestError` with a
message that names the input and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from kubeloop.serving.errors import BadRequestError
from kubeloop.serving.limits import RequestLimits
from kubeloop.serving.rest.parsing import (
    cut,
    first_boolean,
    first_non_number,
    first_out_of_range,
    loads,
    may_hold_booleans,
    show,
)
from kubeloop.serving.tensors import (
    COMPATIBLE,
    DATATYPES,
    NUMERIC,
    Column,
    Decoded,
    InputSpec,
    OutputSpec,
    check_column,
    from_bytes,
    object_column,
    to_bytes,
    within_fp32,
)

#: the limits a caller that passes none gets (the settings' defaults)
DEFAULT_LIMITS = RequestLimits()

# ------------------------------------------------------------------ request


def decode_v2(
    body: bytes,
    specs: Sequence[InputSpec],
    index: Mapping[str, int],
    *,
    header_length: int | None = None,
    max_rows: int,
    output_names: Sequence[str],
    limits: RequestLimits = DEFAULT_LIMITS,
) -> Decoded:
    """Decode an OIP v2 infer request (JSON, or JSON header + binary tensors)."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise BadRequestError(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"({len(body)} bytes)"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    return decode_request(
        loads(header),
        binary,
        specs,
        index,
        max_rows=max_rows,
        output_names=output_names,
        limits=limits,
        booleans=may_hold_booleans(header),
    )


def decode_request(
    req: Any,
    binary: memoryview,
    specs: Sequence[InputSpec],
    index: Mapping[str, int],
    *,
    max_rows: int,
    output_names: Sequence[str],
    limits: RequestLimits = DEFAULT_LIMITS,
    booleans: bool = True,
) -> Decoded:
    """Decode a parsed OIP v2 infer request: the REST JSON document and its binary part,
    or a gRPC request mapped to the same shape (:mod:`kubeloop.serving.grpc_v2.codec`),
    so both protocols follow one set of rules. ``booleans``: the document may hold JSON
    true/false among numbers (then they are looked for and refused)."""
    if not isinstance(req, dict):
        raise BadRequestError("the request must be a JSON object with 'inputs'")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError("'inputs' must be a non-empty list of tensors")
    request_id = _check_metadata(req, inputs, limits)
    if booleans:
        _refuse_booleans(inputs)
    binary_default = bool(_bool_param(req.get("parameters"), "binary_data_output", "request"))
    requested, flags = _requested_outputs(req.get("outputs"), output_names)
    # one tensor, not named after a feature, for a model of several: a 2-D tensor holding
    # every (numeric) feature, columns in model order
    if len(inputs) == 1 and len(specs) > 1:
        only = inputs[0]
        only_name = only.get("name") if isinstance(only, dict) else None
        if isinstance(only_name, str) and only_name not in index:
            matrix = _decode_matrix(only, specs, binary, max_rows)
            return Decoded(None, len(matrix), request_id, requested, flags, binary_default, matrix)
    columns, rows = _decode_columns(inputs, specs, index, binary, max_rows)
    return Decoded(columns, rows, request_id, requested, flags, binary_default)


def _check_metadata(req: dict[str, Any], inputs: list[Any], limits: RequestLimits) -> str | None:
    """The request's id, once it and every ``parameters`` object are within ``limits``."""
    request_id = req.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise BadRequestError("'id' must be a string")
        limits.check_id(request_id, "'id'")
    limits.check_parameters(req.get("parameters"), "the request")
    outputs = req.get("outputs")
    tensors = [*inputs, *(outputs if isinstance(outputs, list) else ())]
    for tensor in tensors:
        if isinstance(tensor, dict) and "parameters" in tensor:
            limits.check_parameters(tensor["parameters"], f"tensor {show(tensor.get('name'))}")
    return request_id


def _refuse_booleans(inputs: list[Any]) -> None:
    """JSON true/false among a numeric tensor's values is a client error: numpy would read
    it as 1 or 0. (BOOL and BYTES tensors check their values as they decode.)"""
    for tensor in inputs:
        if not isinstance(tensor, dict):
            continue
        datatype, data = tensor.get("datatype"), tensor.get("data")
        if not (isinstance(datatype, str) and datatype in NUMERIC and isinstance(data, list)):
            continue
        found = first_boolean(_iter_flat(data))
        if found is not None:
            raise BadRequestError(
                f"input {show(tensor.get('name'))} is {datatype} but value {found[0]} is "
                f"{show(found[1])}, not a number"
            )


def header_length(value: bytes) -> int:
    """The ``Inference-Header-Content-Length`` header's value: where the JSON part of a
    binary request ends."""
    try:
        return int(value)
    except ValueError:
        raise BadRequestError("Inference-Header-Content-Length must be an integer") from None


def _decode_columns(
    inputs: list[Any],
    specs: Sequence[InputSpec],
    index: Mapping[str, int],
    binary: memoryview,
    max_rows: int,
) -> tuple[list[Column], int]:
    """One tensor per feature, in any order: the columns in model order and the rows."""
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
                f"unknown input {show(name)}; the model takes: {', '.join(s.name for s in specs)}"
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
        if n != rows:  # the first input, or a mismatch (equal counts are checked already)
            _check_rows(n, name, max_rows)
            if rows is not None:
                raise BadRequestError(f"input '{name}' has {n} rows but earlier inputs have {rows}")
            rows = n
        size = _binary_size(tensor.get("parameters"), name)
        if size is not None:
            raw = binary[offset : offset + size]
            if len(raw) != size:
                raise BadRequestError(
                    f"input '{name}': binary data is shorter than binary_data_size"
                )
            offset += size
            col = from_bytes(raw, datatype, n, name)
        else:
            if "data" not in tensor:
                raise BadRequestError(f"input '{name}' has no 'data'")
            col = _from_json(tensor["data"], datatype, n, name)
        columns[i] = _check_values(col, datatype, spec, name)
    if offset != len(binary):
        raise BadRequestError(f"{len(binary) - offset} bytes of binary data belong to no input")
    missing = [s.name for s, c in zip(specs, columns, strict=True) if c is None]
    if missing:
        raise BadRequestError(f"missing input(s): {', '.join(missing)}")
    assert rows is not None
    return [c for c in columns if c is not None], rows


def _decode_matrix(
    tensor: dict[str, Any], specs: Sequence[InputSpec], binary: memoryview, max_rows: int
) -> np.ndarray[Any, Any]:
    name = cut(tensor["name"])  # a client's name, not the model's
    datatype, shape = _header(tensor, name)
    f = len(specs)
    if len(shape) != 2 or shape[1] != f:
        raise BadRequestError(
            f"unknown input '{name}': a single input must be a 2-D [n, {f}] tensor of all "
            f"features (got shape {shape}), or send one input per feature: "
            f"{', '.join(s.name for s in specs)}"
        )
    bad, kinds = _spec_kinds(specs)
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
    _check_rows(n, name, max_rows)
    size = _binary_size(tensor.get("parameters"), name)
    if size is not None:
        if size != len(binary):
            raise BadRequestError(
                f"input '{name}': binary_data_size {size} != {len(binary)} bytes sent"
            )
        flat = from_bytes(binary, datatype, n * f, name)
    else:
        if len(binary):
            raise BadRequestError(f"{len(binary)} bytes of binary data belong to no input")
        if "data" not in tensor:
            raise BadRequestError(f"input '{name}' has no 'data'")
        flat = _from_json(tensor["data"], datatype, n * f, name)
    matrix = flat.reshape(n, f)
    narrow = datatype in _NARROW and kinds != {datatype}
    if narrow or not within_fp32(matrix) or not kinds <= _FLOATS:
        # one vectorised check first; each column's own only when that fails
        for j, spec in enumerate(specs):
            _check_values(matrix[:, j], datatype, spec, f"{name}[:, {j}] ({spec.name})")
    return matrix


_FLOATS = frozenset(("FP32", "FP64"))
#: per input list (by identity, the list kept so that its id stays its own): the names of
#: its non-numeric inputs and its datatypes — three passes over every input per request
#: otherwise
_SPEC_KINDS: dict[int, tuple[Sequence[InputSpec], tuple[str, ...], frozenset[str]]] = {}


def _spec_kinds(specs: Sequence[InputSpec]) -> tuple[tuple[str, ...], frozenset[str]]:
    """The non-numeric inputs' names and the datatypes of ``specs`` (cached per list)."""
    cached = _SPEC_KINDS.get(id(specs))
    if cached is not None and cached[0] is specs:
        return cached[1], cached[2]
    bad = tuple(s.name for s in specs if s.datatype not in NUMERIC)
    kinds = frozenset(s.datatype for s in specs)
    if len(_SPEC_KINDS) >= 64:
        _SPEC_KINDS.clear()
    _SPEC_KINDS[id(specs)] = (specs, bad, kinds)
    return bad, kinds


#: request datatypes narrower than inputs they may be sent for, as specs to check against
_NARROW: dict[str, InputSpec] = {
    "INT32": InputSpec("", "INT32", nullable=True),
    "FP32": InputSpec("", "FP32", nullable=True),
}


def _check_values(col: Column, datatype: str, spec: InputSpec, name: str) -> Column:
    """``col`` once its values fit the model input's datatype and the request's own: a
    tensor declared INT32 (or FP32) holding a value that type cannot hold is malformed,
    whatever the model takes (its binary form could not carry the value)."""
    declared = _NARROW.get(datatype)
    if declared is not None and datatype != spec.datatype:
        check_column(col, declared, name)
    return check_column(col, spec, name)


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
            raise BadRequestError(
                f"unknown output {show(name)}; the model returns: {', '.join(names)}"
            )
        requested.append(name)
        flag = _bool_param(out.get("parameters"), "binary_data", f"output '{name}'")
        if flag is not None:
            flags[name] = flag
    return requested, flags


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


def _binary_size(params: Any, name: str) -> int | None:
    """The input's ``binary_data_size``: its bytes in the binary part (None: JSON data)."""
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
        return shape[0]
    raise BadRequestError(f"input '{name}' has shape {shape}; a feature column is [n] or [n, 1]")


def _check_rows(n: int, name: str, max_rows: int) -> None:
    if n == 0:
        raise BadRequestError(f"input '{name}' has no rows")
    if n > max_rows:
        raise BadRequestError(f"input '{name}' has {n} rows; at most {max_rows} are allowed")


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
                    f"input '{name}' is BYTES but value {pos} is {show(v)}, not a string"
                )
        return object_column(flat)
    return _typed_json(flat, datatype, name)


def _typed_json(flat: list[Any], datatype: str, name: str) -> Column:
    """A numeric or BOOL column from flat JSON values, naming the first wrong value."""
    arr = np.asarray(flat) if flat else np.empty(0)
    kind = arr.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            bad = next((p for p, v in enumerate(flat) if not isinstance(v, bool)), 0)
            raise BadRequestError(
                f"input '{name}' is BOOL but value {bad} is {show(flat[bad])}, not true/false"
            )
        return arr
    if kind not in "fiu":
        arr = _numbers(flat, datatype, name)
        kind = arr.dtype.kind
    if datatype in ("INT32", "INT64") and kind == "f":
        # JSON integers beyond 64 bits parse as floats, and so do int64 beside uint64
        pos = first_out_of_range(flat, datatype) if np.abs(arr).max() >= 2.0**63 else None
        if pos is not None:
            raise BadRequestError(
                f"input '{name}' value {pos} is {show(flat[pos])}, outside the range of {datatype}"
            )
        pos = int(np.flatnonzero(arr != np.round(arr))[0]) if np.any(arr != np.round(arr)) else 0
        raise BadRequestError(
            f"input '{name}' is {datatype} but value {pos} is {show(flat[pos])}, not an integer"
        )
    return arr


def _numbers(flat: list[Any], datatype: str, name: str) -> Column:
    """Values numpy could not read as one numeric array: the first that is no number, or
    out of range, is the client's error; else (int64 beside uint64) they are floats."""
    found = first_non_number(flat)
    if found is not None:
        pos, value = found
        raise BadRequestError(
            f"input '{name}' is {datatype} but value {pos} is {show(value)}, not a number"
        )
    huge = first_out_of_range(flat, datatype)
    if huge is not None:
        raise BadRequestError(
            f"input '{name}' value {huge} is {show(flat[huge])}, outside the range of {datatype}"
        )
    return np.asarray(flat, dtype=np.float64)


# ----------------------------------------------------------------- response


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
            blob = to_bytes(arr, spec.datatype)
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


def _json_data(arr: np.ndarray[Any, Any], datatype: str) -> Any:
    if datatype == "BYTES":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]
    return np.ascontiguousarray(arr).ravel()


# ----------------------------------------------------------------- feedback


def decode_feedback(body: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> list[tuple[str, Any]]:
    """``(request id, truth)`` pairs from ``{"id", "truth"}``, a list of those, or
    ``{"feedback": [...]}``."""
    doc = loads(body)
    entries = (
        doc
        if isinstance(doc, list)
        else doc.get("feedback", [doc])
        if isinstance(doc, dict)
        else None
    )
    if not isinstance(entries, list) or not entries:
        raise BadRequestError(
            "feedback must be {'id', 'truth'}, a list of those, or {'feedback': [...]}"
        )
    items: list[tuple[str, Any]] = []
    for pos, item in enumerate(entries):
        if not isinstance(item, dict):
            raise BadRequestError(f"feedback[{pos}] must be an object with 'id' and 'truth'")
        rid = item.get("id")
        if not isinstance(rid, str) or not rid:
            raise BadRequestError(f"feedback[{pos}]: 'id' must be a non-empty string")
        limits.check_id(rid, f"feedback[{pos}]: 'id'")
        if "truth" not in item:
            raise BadRequestError(f"feedback[{pos}] ({rid}): 'truth' is missing")
        items.append((rid, item["truth"]))
    return items
