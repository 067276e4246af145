"""KServe V1 over REST: ``instances`` as rows or records in, ``predictions`` out.

Pure functions over bytes and numpy arrays, like the V2 codec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from kubeloop.serving.errors import BadRequestError
from kubeloop.serving.rest.parsing import (
    first_boolean,
    first_non_number,
    first_out_of_range,
    loads,
    may_hold_booleans,
    show,
)
from kubeloop.serving.tensors import (
    Column,
    Decoded,
    InputSpec,
    check_column,
    object_column,
    within_fp32,
)

#: input datatypes a row of plain JSON numbers can be taken for as it is
_FLOATS = frozenset({"FP32", "FP64"})

#: the V1 response field with one prediction per row (KServe V1 defines this one)
PREDICTIONS_FIELD = "predictions"
#: the V1 response field with classifiers' class probabilities: Kubeloop's addition to the
#: V1 answer, a public API name. It is spelled like the model output the values come from
#: (:data:`kubeloop.contracts.artifacts.PROBA_OUTPUT`) but is not that name: renaming the
#: output must not change what V1 clients read.
PROBABILITIES_FIELD = "probabilities"


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
    first = instances[0]
    booleans = may_hold_booleans(body)
    if isinstance(first, dict):
        cols = _record_columns(instances, specs, index)
    elif isinstance(first, list):
        matrix = None if booleans else _number_rows(instances, specs)
        if matrix is not None:
            return Decoded(None, n, None, None, {}, False, matrix)
        cols = _row_columns(instances, specs)
    else:
        raise BadRequestError("'instances' must hold rows (lists) or records (objects)")
    columns = [_from_v1(values, spec, booleans) for spec, values in zip(specs, cols, strict=True)]
    return Decoded(columns, n, None, None, {}, False)


def _record_columns(
    instances: list[Any], specs: Sequence[InputSpec], index: Mapping[str, int]
) -> list[list[Any]]:
    """Records (``{"feature": value}``) as one list of values per feature, model order."""
    n, f = len(instances), len(specs)
    cols: list[list[Any]] = [[None] * n for _ in range(f)]
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
    return cols


def _number_rows(instances: list[Any], specs: Sequence[InputSpec]) -> Column | None:
    """Rows of plain numbers for a model of float inputs only, as one ``rows x inputs``
    array checked in one vectorised pass (like a V2 2-D tensor). None: anything else,
    which the per-column path decodes and, when wrong, names."""
    if any(s.datatype not in _FLOATS for s in specs):
        return None
    try:
        matrix = np.asarray(instances)
    except (ValueError, TypeError, OverflowError):  # ragged rows, huge integers
        return None
    if matrix.dtype.kind not in "fiu" or matrix.shape != (len(instances), len(specs)):
        return None
    return matrix if within_fp32(matrix) else None


def _row_columns(instances: list[Any], specs: Sequence[InputSpec]) -> list[list[Any]]:
    """Rows (lists in feature order) as one list of values per feature."""
    f = len(specs)
    for r, row in enumerate(instances):
        if not isinstance(row, list) or len(row) != f:
            got = len(row) if isinstance(row, list) else show(row)
            raise BadRequestError(
                f"instances[{r}] has {got} values; the model takes {f} features "
                f"({', '.join(s.name for s in specs)})"
            )
    return [list(c) for c in zip(*instances, strict=True)]


def _from_v1(values: list[Any], spec: InputSpec, booleans: bool = True) -> Column:
    """One feature's column; ``booleans``: the body may hold true/false, which a numeric
    feature refuses (numpy would read them as 1 and 0)."""
    name = spec.name
    if spec.datatype == "BYTES":
        for r, v in enumerate(values):
            if not isinstance(v, str):
                raise BadRequestError(f"feature '{name}' is a string but row {r} is {show(v)}")
        return object_column(values)
    if spec.datatype == "BOOL":
        for r, v in enumerate(values):
            if not isinstance(v, bool):
                raise BadRequestError(f"feature '{name}' is true/false but row {r} is {show(v)}")
        return np.asarray(values, dtype=np.bool_)
    found = first_boolean(values) if booleans else None
    if found is not None:
        raise BadRequestError(
            f"feature '{name}' is a number but row {found[0]} is {show(found[1])}"
        )
    if spec.nullable and any(v is None for v in values):
        values = [np.nan if v is None else v for v in values]
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):  # ragged nested lists
        arr = np.empty(0, dtype=object)
    if arr.dtype.kind not in "fiu" or arr.ndim != 1:
        arr = _numbers(values, spec)
    if (
        spec.datatype in ("INT32", "INT64")
        and arr.dtype.kind == "f"
        and np.any(arr != np.round(arr))
    ):
        r = int(np.flatnonzero(arr != np.round(arr))[0])
        raise BadRequestError(f"feature '{name}' is an integer but row {r} is {show(values[r])}")
    return check_column(arr, spec, name)


def _numbers(values: list[Any], spec: InputSpec) -> Column:
    """Values numpy could not read as one numeric column: the first that is no number, or
    out of range, is the client's error; else (int64 beside uint64) they are floats."""
    name = spec.name
    found = first_non_number(values)
    if found is not None:
        r, v = found
        if v is None:
            raise BadRequestError(
                f"feature '{name}' is missing (null) at row {r}; this feature does not allow "
                "missing values"
            )
        raise BadRequestError(f"feature '{name}' is a number but row {r} is {show(v)}")
    huge = first_out_of_range(values, spec.datatype)
    if huge is not None:
        raise BadRequestError(
            f"feature '{name}' is {show(values[huge])} at row {huge}, outside the range of "
            f"{spec.datatype}"
        )
    return np.asarray(values, dtype=np.float64)


def encode_v1(
    predictions: np.ndarray[Any, Any], probabilities: np.ndarray[Any, Any] | None
) -> bytes:
    """``{"predictions": [...]}`` (plus ``probabilities`` for classifiers)."""
    preds: Any
    if predictions.dtype.kind in "OSU":
        preds = [v.decode() if isinstance(v, bytes) else str(v) for v in predictions.tolist()]
    else:
        preds = np.ascontiguousarray(predictions).reshape(-1)
    doc: dict[str, Any] = {PREDICTIONS_FIELD: preds}
    if probabilities is not None:
        doc[PROBABILITIES_FIELD] = np.ascontiguousarray(probabilities)
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
