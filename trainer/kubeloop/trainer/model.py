"""The training pipeline, its ONNX export and the parity check, for every framework.

Numeric columns are imputed (median) and scaled; text columns are imputed
(as ``"missing"``) and one-hot encoded, unseen categories ignored. The exported
graph takes one input per column (see :mod:`kubeloop.contracts.artifacts`).

Numeric columns are scaled only where the estimator wants it (the registry says
which), and text columns are one-hot encoded for XGBoost and LightGBM too: their
native categorical splits do not convert to ONNX.

**Parity**: ONNX Runtime must reproduce the fitted pipeline on the test split —
identical labels (except rows where the pipeline's two top probabilities tie
within the tolerance, where either label is right), probabilities within the
framework's ``proba_tolerance`` (absolute), and regression values within its
``value_tolerance`` times max(1, the largest absolute prediction) (ONNX computes
in float32, the libraries mostly in float64). The tolerances are each adapter's
(:mod:`kubeloop.trainer.frameworks`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from kubeloop.api.v1alpha1 import TensorSpec
from kubeloop.contracts.artifacts import (
    LABEL_OUTPUT,
    MISSING_TEXT,
    OUTPUT_NAMES,
    PROBA_OUTPUT,
    VALUE_OUTPUT,
    NativeImportance,
    Parity,
)
from kubeloop.contracts.frameworks import BY_NAME, Estimator, Task
from kubeloop.trainer import frameworks
from kubeloop.trainer.frameworks import ADAPTERS, Adapter
from kubeloop.trainer.frameworks.base import SpecError as SpecError
from kubeloop.trainer.frameworks.base import one_line

if TYPE_CHECKING:  # imported where used: a run that fails its checks never loads them
    import onnxruntime as ort
    from onnx import ModelProto

#: The pipeline step holding the estimator (search spaces and fitted params go through it).
ESTIMATOR_STEP = "estimator"
#: The pipeline step encoding the columns.
PREPARE_STEP = "prepare"


def declaration_of(estimator: BaseEstimator) -> Estimator:
    """The registry's entry for an estimator made by :func:`make_estimator`."""
    return BY_NAME[type(estimator).__name__]


def adapter_for(estimator: BaseEstimator) -> Adapter:
    return ADAPTERS[declaration_of(estimator).framework]


def make_estimator(task: Task, class_name: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    """An allow-listed estimator with ``params``; bad names or params fail here, clearly."""
    declared = frameworks.estimator_of(task, class_name)
    return ADAPTERS[declared.framework].make(declared, params, seed)


def check_search_space(estimator: BaseEstimator, space: dict[str, list[Any]]) -> None:
    """Fail before training on a search space naming unknown parameters or bad values."""
    declared = declaration_of(estimator)
    adapter = ADAPTERS[declared.framework]
    known = estimator.get_params()
    for param, candidates in space.items():
        if param not in known:
            raise SpecError(f"search.space: {declared.name} has no parameter {param!r}")
        if not candidates:
            raise SpecError(f"search.space.{param}: no candidate values")
        for value in candidates:
            try:
                trial = clone(estimator).set_params(**{param: value})
            except (TypeError, ValueError) as exc:
                raise SpecError(f"search.space.{param}: {one_line(exc)}") from exc
            adapter.check(trial, declared.task, f"search.space.{param}")


@dataclass(frozen=True)
class Features:
    """Feature columns split by how they are encoded."""

    numeric: list[str]
    text: list[str]

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.text]

    @classmethod
    def of(cls, frame: pd.DataFrame, names: list[str]) -> Features:
        numeric = [
            n
            for n in names
            if pd.api.types.is_numeric_dtype(frame[n]) or pd.api.types.is_bool_dtype(frame[n])
        ]
        return cls(numeric=numeric, text=[n for n in names if n not in numeric])

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Columns in input order with the dtypes the ONNX graph takes (float32, str)."""
        out = pd.DataFrame(index=frame.index)
        for name in self.numeric:
            out[name] = frame[name].astype("float32")
        for name in self.text:
            out[name] = frame[name].astype(str).where(frame[name].notna(), MISSING_TEXT)
        return out

    def feeds(self, frame: pd.DataFrame) -> dict[str, np.ndarray[Any, Any]]:
        """ONNX Runtime inputs: one [n, 1] tensor per column."""
        feeds: dict[str, np.ndarray[Any, Any]] = {}
        for name in self.numeric:
            feeds[name] = frame[name].to_numpy(dtype=np.float32).reshape(-1, 1)
        for name in self.text:
            feeds[name] = frame[name].to_numpy(dtype=object).reshape(-1, 1)
        return feeds

    def tensor_specs(self) -> list[TensorSpec]:
        return [TensorSpec(name=n, datatype="FP32", shape=[-1, 1]) for n in self.numeric] + [
            TensorSpec(name=n, datatype="BYTES", shape=[-1, 1]) for n in self.text
        ]


def build_pipeline(features: Features, estimator: BaseEstimator) -> Pipeline:
    """Preprocessing plus the estimator, as one pipeline.

    Numeric columns are scaled only for estimators the registry says want it
    (trees do not: see :class:`kubeloop.contracts.frameworks.Estimator`).
    """
    transformers: list[tuple[str, Any, list[str]]] = []
    if features.numeric:
        steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
        if declaration_of(estimator).scaled:
            steps.append(("scale", StandardScaler()))
        transformers.append(("numeric", Pipeline(steps), features.numeric))
    if features.text:
        onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        transformers.append(("text", onehot, features.text))
    return Pipeline([(PREPARE_STEP, ColumnTransformer(transformers)), (ESTIMATOR_STEP, estimator)])


def export(pipeline: Pipeline, features: Features, task: Task) -> ModelProto:
    """The fitted pipeline as ONNX: one input per column; label/probabilities or variable."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    adapter = adapter_for(pipeline.named_steps[ESTIMATOR_STEP])
    adapter.register()
    initial = [(n, FloatTensorType([None, 1])) for n in features.numeric] + [
        (n, StringTensorType([None, 1])) for n in features.text
    ]
    options: dict[Any, Any] = {}
    if task == "classification":
        options = {id(pipeline): {"zipmap": False}}
    model: ModelProto = to_onnx(
        pipeline, initial_types=initial, options=options, target_opset={"": 17, "ai.onnx.ml": 3}
    )
    # skl2onnx sanitises input names; the inputs come in the order they were given.
    for value, name in zip(model.graph.input, features.all, strict=True):
        _rename(model, value, name)
    name_outputs(model, adapter.outputs[task], task)
    _sort_opsets(model)
    return model


def _sort_opsets(model: ModelProto) -> None:
    """The converter lists its opsets in an order that varies between processes (it goes
    through a set); sorted by domain, the same fit always gives the same bytes (and sha256)."""
    from onnx.helper import make_opsetid

    ordered = [make_opsetid(o.domain, o.version) for o in model.opset_import]
    ordered.sort(key=lambda o: o.domain)
    del model.opset_import[:]
    model.opset_import.extend(ordered)


def name_outputs(model: ModelProto, names: dict[str, str], task: Task) -> None:
    """Give the converter's outputs, by name, the names and order of the convention."""
    emitted = [o.name for o in model.graph.output]
    unknown = [n for n in emitted if n not in names]
    if unknown:
        raise RuntimeError(f"the ONNX converter emitted unexpected outputs {unknown}")
    for value in model.graph.output:
        _rename(model, value, names[value.name])
    by_name = {o.name: o for o in model.graph.output}
    wanted = OUTPUT_NAMES[task]
    if sorted(by_name) != sorted(wanted):
        raise RuntimeError(f"the ONNX converter emitted {emitted}, not {list(wanted)}")
    ordered = [type(by_name[n])() for n in wanted]
    for copy, name in zip(ordered, wanted, strict=True):
        copy.CopyFrom(by_name[name])
    del model.graph.output[:]
    model.graph.output.extend(ordered)


def _rename(model: ModelProto, value: Any, name: str) -> None:
    """Rename a graph input or output, and every node's use of it."""
    old = value.name
    if old == name:
        return
    for node in model.graph.node:
        node.input[:] = [name if i == old else i for i in node.input]
        node.output[:] = [name if o == old else o for o in node.output]
    value.name = name


def align(pipeline: Pipeline) -> None:
    """Make the fitted estimator compute as its ONNX export will (see the adapters)."""
    fitted = pipeline.named_steps[ESTIMATOR_STEP]
    adapter_for(fitted).align(fitted)


def native_importance(pipeline: Pipeline, features: Features) -> NativeImportance | None:
    """The library's own importance per input column (a text column's one-hot columns
    summed), as shares of the total, most important first; None where it has none."""
    fitted = pipeline.named_steps[ESTIMATOR_STEP]
    found = adapter_for(fitted).native_importance(fitted)
    if found is None:
        return None
    kind, values = found
    encoded = [str(n) for n in pipeline.named_steps[PREPARE_STEP].get_feature_names_out()]
    totals = dict.fromkeys(features.all, 0.0)
    for name, value in zip(encoded, values, strict=True):
        totals[source_column(name, features)] += max(value, 0.0)
    whole = sum(totals.values()) or 1.0
    ranked = sorted(((k, v / whole) for k, v in totals.items()), key=lambda kv: -kv[1])
    return NativeImportance(kind=kind, values=dict(ranked))


def source_column(encoded: str, features: Features) -> str:
    """The input column an encoded column (``numeric__x``, ``text__colour_red``) came from."""
    kind, _, rest = encoded.partition("__")
    if kind == "numeric":
        return rest
    # The longest text column that prefixes it: "a_b" wins over "a" for "a_b_red".
    return max((t for t in features.text if rest.startswith(f"{t}_")), key=len)


def session(model: bytes) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_predict(
    sess: ort.InferenceSession, features: Features, frame: pd.DataFrame
) -> dict[str, np.ndarray[Any, Any]]:
    outputs = sess.run(None, features.feeds(frame))
    return {o.name: v for o, v in zip(sess.get_outputs(), outputs, strict=True)}


def check_parity(
    pipeline: Pipeline,
    sess: ort.InferenceSession,
    features: Features,
    x_test: pd.DataFrame,
    task: Task,
) -> Parity:
    """Compare ONNX Runtime with the library on the test split (see the module docstring);
    tolerances are the framework's."""
    adapter = adapter_for(pipeline.named_steps[ESTIMATOR_STEP])
    proba_tolerance, value_tolerance = adapter.proba_tolerance, adapter.value_tolerance
    got = onnx_predict(sess, features, x_test)
    if task == "classification":
        expected_labels = np.asarray(pipeline.predict(x_test)).astype(str)
        expected_proba = pipeline.predict_proba(x_test)
        labels = got[LABEL_OUTPUT].reshape(-1).astype(str)
        # Where two classes tie (within tolerance) the arg-max is a coin toss: not a mismatch.
        top2 = np.sort(expected_proba, axis=1)[:, -2:] if expected_proba.shape[1] > 1 else None
        tied = (top2[:, 1] - top2[:, 0] <= proba_tolerance) if top2 is not None else False
        mismatches = int(np.sum((labels != expected_labels) & ~tied))
        diff = float(np.max(np.abs(got[PROBA_OUTPUT] - expected_proba))) if len(x_test) else 0.0
        return Parity(
            passed=mismatches == 0 and diff <= proba_tolerance,
            rows=len(x_test),
            label_mismatches=mismatches,
            max_abs_diff=diff,
            tolerance=proba_tolerance,
        )
    expected = np.asarray(pipeline.predict(x_test), dtype=np.float64).reshape(-1)
    values = got[VALUE_OUTPUT].astype(np.float64).reshape(-1)
    scale = max(
        float(np.std(expected)), float(np.max(np.abs(expected))) if len(expected) else 0.0, 1.0
    )
    diff = float(np.max(np.abs(values - expected))) / scale if len(expected) else 0.0
    return Parity(
        passed=diff <= value_tolerance,
        rows=len(x_test),
        max_abs_diff=diff,
        tolerance=value_tolerance,
    )


def classes_of(pipeline: Pipeline) -> list[Any]:
    """Class labels in the order of the probability columns, as JSON-friendly values."""
    return [json.loads(json.dumps(c, default=lambda v: v.item())) for c in pipeline.classes_]
