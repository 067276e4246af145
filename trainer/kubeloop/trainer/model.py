"""The scikit-learn pipeline, its ONNX export and the parity check.

Numeric columns are imputed (median) and scaled; text columns are imputed
(as ``"missing"``) and one-hot encoded, unseen categories ignored. The exported
graph takes one input per column (see :mod:`kubeloop.contracts.artifacts`).

**Parity**: ONNX Runtime must reproduce scikit-learn on the test split —
identical labels (except rows where scikit-learn's two top probabilities tie
within the tolerance, where either label is right), probabilities within
``PROBA_TOLERANCE`` (absolute), and regression values within
``VALUE_TOLERANCE`` times max(1, the largest absolute scikit-learn prediction)
(ONNX computes in float32, scikit-learn in float64).
"""

from __future__ import annotations

import importlib
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
    Parity,
)
from kubeloop.contracts.estimators import ESTIMATORS, MODULES, Task

if TYPE_CHECKING:  # imported where used: a run that fails its checks never loads them
    import onnxruntime as ort
    from onnx import ModelProto

PROBA_TOLERANCE = 1e-4
VALUE_TOLERANCE = 1e-4
TREES = {n for n in MODULES if "Forest" in n or "Trees" in n or "Tree" in n or "Boosting" in n}
#: The pipeline step holding the estimator (search spaces and fitted params go through it).
ESTIMATOR_STEP = "estimator"


class SpecError(Exception):
    """A training request that cannot work; raised before any training."""


def make_estimator(task: Task, class_name: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    """An allow-listed estimator with ``params``; bad names or params fail here, clearly."""
    if class_name not in ESTIMATORS[task]:
        allowed = ", ".join(ESTIMATORS[task])
        raise SpecError(f"estimator {class_name!r} is not allowed for {task} (allowed: {allowed})")
    cls = getattr(importlib.import_module(MODULES[class_name]), class_name)
    try:
        estimator: BaseEstimator = cls(**params)
    except TypeError as exc:
        raise SpecError(f"estimator {class_name}: {exc}") from exc
    valid = estimator.get_params()
    if "random_state" in valid and "random_state" not in params:
        estimator.set_params(random_state=seed)
    try:
        estimator._validate_params()  # scikit-learn's own parameter constraints
    except (ValueError, TypeError) as exc:
        raise SpecError(f"estimator {class_name}: {exc}") from exc
    return estimator


def check_search_space(estimator: BaseEstimator, space: dict[str, list[Any]]) -> None:
    """Fail before training on a search space naming unknown parameters or bad values."""
    known = estimator.get_params()
    for param, candidates in space.items():
        if param not in known:
            raise SpecError(f"search.space: {type(estimator).__name__} has no parameter {param!r}")
        if not candidates:
            raise SpecError(f"search.space.{param}: no candidate values")
        for value in candidates:
            trial = clone(estimator).set_params(**{param: value})
            try:
                trial._validate_params()
            except (ValueError, TypeError) as exc:
                raise SpecError(f"search.space.{param}: {exc}") from exc


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

    Tree models get no scaling: they do not need it, and a float32 scaler in
    ONNX against a float64 one in scikit-learn would move values across split
    thresholds and break parity.
    """
    transformers: list[tuple[str, Any, list[str]]] = []
    if features.numeric:
        steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
        if type(estimator).__name__ not in TREES:
            steps.append(("scale", StandardScaler()))
        transformers.append(("numeric", Pipeline(steps), features.numeric))
    if features.text:
        onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        transformers.append(("text", onehot, features.text))
    return Pipeline([("prepare", ColumnTransformer(transformers)), (ESTIMATOR_STEP, estimator)])


def export(pipeline: Pipeline, features: Features, task: Task) -> ModelProto:
    """The fitted pipeline as ONNX: one input per column; label/probabilities or variable."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    initial = [(n, FloatTensorType([None, 1])) for n in features.numeric] + [
        (n, StringTensorType([None, 1])) for n in features.text
    ]
    options: dict[Any, Any] = {}
    if task == "classification":
        options = {id(pipeline): {"zipmap": False}}
    model: ModelProto = to_onnx(
        pipeline, initial_types=initial, options=options, target_opset={"": 17, "ai.onnx.ml": 3}
    )
    _rename(model, model.graph.input, features.all)
    wanted = list(OUTPUT_NAMES[task])
    _rename(model, model.graph.output, wanted)
    return model


def _rename(model: ModelProto, values: Any, wanted: list[str]) -> None:
    """Give graph inputs or outputs the names of the convention (skl2onnx sanitises them)."""
    for value, name in zip(values, wanted, strict=False):
        old = value.name
        if old == name:
            continue
        for node in model.graph.node:
            node.input[:] = [name if i == old else i for i in node.input]
            node.output[:] = [name if o == old else o for o in node.output]
        value.name = name


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
    """Compare ONNX Runtime with scikit-learn on the test split (see the module docstring)."""
    got = onnx_predict(sess, features, x_test)
    if task == "classification":
        expected_labels = np.asarray(pipeline.predict(x_test)).astype(str)
        expected_proba = pipeline.predict_proba(x_test)
        labels = got[LABEL_OUTPUT].reshape(-1).astype(str)
        # Where two classes tie (within tolerance) the arg-max is a coin toss: not a mismatch.
        top2 = np.sort(expected_proba, axis=1)[:, -2:] if expected_proba.shape[1] > 1 else None
        tied = (top2[:, 1] - top2[:, 0] <= PROBA_TOLERANCE) if top2 is not None else False
        mismatches = int(np.sum((labels != expected_labels) & ~tied))
        diff = float(np.max(np.abs(got[PROBA_OUTPUT] - expected_proba))) if len(x_test) else 0.0
        return Parity(
            passed=mismatches == 0 and diff <= PROBA_TOLERANCE,
            rows=len(x_test),
            label_mismatches=mismatches,
            max_abs_diff=diff,
            tolerance=PROBA_TOLERANCE,
        )
    expected = np.asarray(pipeline.predict(x_test), dtype=np.float64).reshape(-1)
    values = got[VALUE_OUTPUT].astype(np.float64).reshape(-1)
    scale = max(
        float(np.std(expected)), float(np.max(np.abs(expected))) if len(expected) else 0.0, 1.0
    )
    diff = float(np.max(np.abs(values - expected))) / scale if len(expected) else 0.0
    return Parity(
        passed=diff <= VALUE_TOLERANCE,
        rows=len(x_test),
        max_abs_diff=diff,
        tolerance=VALUE_TOLERANCE,
    )


def classes_of(pipeline: Pipeline) -> list[Any]:
    """Class labels in the order of the probability columns, as JSON-friendly values."""
    return [json.loads(json.dumps(c, default=lambda v: v.item())) for c in pipeline.classes_]
