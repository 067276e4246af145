"""One training run: data → pipeline (+ search) → metrics → ONNX → parity → artifacts → gate.

Metrics are computed from ONNX Runtime's predictions on the held-out split, so
``onnxruntime`` alone reproduces them from ``model.onnx``. Binary
classification reports precision/recall/F1 for the second class in
``classes`` and ROC AUC; multiclass reports macro averages.
"""

from __future__ import annotations

import hashlib
import math
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, train_test_split

from kubeloop.api.v1alpha1 import METRICS, Gate, TensorSpec, TrainingJobSpec
from kubeloop.contracts.artifacts import (
    LABEL_OUTPUT,
    OUTPUT_NAMES,
    PROBA_OUTPUT,
    VALUE_OUTPUT,
    ArtifactLayout,
    GateResult,
    Lineage,
    ModelMetadata,
    Profile,
    join,
)
from kubeloop.contracts.estimators import Task
from kubeloop.contracts.results import JobResult
from kubeloop.trainer import card, model, output
from kubeloop.trainer.data import (
    DataError,
    digest,
    format_of,
    infer_columns,
    profile_series,
    read_table,
)

#: scikit-learn scorer per metric name, for the search.
SCORERS = {
    "accuracy": "accuracy",
    "precision": "precision_macro",
    "recall": "recall_macro",
    "f1": "f1_macro",
    "roc_auc": "roc_auc_ovr",
    "log_loss": "neg_log_loss",
    "rmse": "neg_root_mean_squared_error",
    "mae": "neg_mean_absolute_error",
    "r2": "r2",
}
LOWER_IS_BETTER = {"log_loss", "rmse", "mae"}
IMPORTANCE_ROWS = 2000


class GateRejectedError(Exception):
    """The model is below the gate; artifacts are written, nothing is published."""

    def __init__(self, summary: JobResult) -> None:
        super().__init__(summary.reason)
        self.summary = summary


class ParityError(Exception):
    """ONNX Runtime does not reproduce scikit-learn."""


@dataclass
class Run:
    """What a run needs besides the spec."""

    spec: TrainingJobSpec
    data_uri: str
    out: str
    name: str
    data_format: str | None = None


def check_gate_metrics(spec: TrainingJobSpec) -> None:
    """Fail before training when the gate or the search names an unknown metric."""
    known = METRICS[spec.task]
    gate = spec.gate or Gate()
    for name in [
        *(gate.min or {}),
        *(gate.max or {}),
        *([spec.search.metric] if spec.search and spec.search.metric else []),
    ]:
        if name not in known:
            raise model.SpecError(
                f"metric {name!r} is not reported for {spec.task} (known: {', '.join(known)})"
            )


def evaluate(
    task: str, y_true: Any, outputs: dict[str, Any], classes: list[Any]
) -> tuple[dict[str, float], list[list[int]] | None]:
    """Held-out metrics from the model's outputs."""
    if task == "regression":
        pred = outputs[VALUE_OUTPUT].reshape(-1)
        return {
            "rmse": float(math.sqrt(skm.mean_squared_error(y_true, pred))),
            "mae": float(skm.mean_absolute_error(y_true, pred)),
            "r2": float(skm.r2_score(y_true, pred)),
        }, None
    labels = outputs[LABEL_OUTPUT].reshape(-1)
    proba = outputs[PROBA_OUTPUT]
    y = np.asarray(y_true)
    labels = labels.astype(y.dtype) if y.dtype.kind in "iub" else labels.astype(str)
    y_cmp = y if y.dtype.kind in "iub" else y.astype(str)
    cls = np.asarray(classes) if y.dtype.kind in "iub" else np.asarray(classes).astype(str)
    binary = len(classes) == 2
    average: Any = "binary" if binary else "macro"
    kwargs: dict[str, Any] = {"average": average, "zero_division": 0}
    if binary:
        kwargs["pos_label"] = cls[1]
    result = {
        "accuracy": float(skm.accuracy_score(y_cmp, labels)),
        "precision": float(skm.precision_score(y_cmp, labels, **kwargs)),
        "recall": float(skm.recall_score(y_cmp, labels, **kwargs)),
        "f1": float(skm.f1_score(y_cmp, labels, **kwargs)),
        "log_loss": float(skm.log_loss(y_cmp, np.clip(proba, 1e-15, 1), labels=cls)),
    }
    if binary and len(set(y_cmp.tolist())) == 2:
        result["roc_auc"] = float(skm.roc_auc_score(y_cmp == cls[1], proba[:, 1]))
    matrix = skm.confusion_matrix(y_cmp, labels, labels=cls).tolist()
    return result, matrix


def apply_gate(gate: Gate | None, metrics: dict[str, float]) -> GateResult:
    failures = []
    for name, floor in ((gate.min or {}) if gate else {}).items():
        if metrics.get(name, -math.inf) < floor:
            failures.append(f"{name} {metrics.get(name, float('nan')):.4f} < {floor}")
    for name, ceiling in ((gate.max or {}) if gate else {}).items():
        if metrics.get(name, math.inf) > ceiling:
            failures.append(f"{name} {metrics.get(name, float('nan')):.4f} > {ceiling}")
    return GateResult(passed=not failures, failures=failures)


def check_features(frame: pd.DataFrame, names: list[str], task: Task) -> None:
    """Fail before training on features the data lacks, that hold no value, or whose
    names the model's outputs take."""
    if not names:
        raise DataError("no feature columns: the data holds only the target")
    for name in names:
        if name not in frame.columns:
            raise DataError(f"column {name!r}: a feature is missing from the data")
        if frame[name].isna().all():
            raise DataError(f"column {name!r}: a feature with no values (every row is missing)")
        series = frame[name]
        if pd.api.types.is_float_dtype(series) and np.isinf(series.to_numpy()).any():
            raise DataError(f"column {name!r}: infinite values (use a missing value instead)")
    taken = set(OUTPUT_NAMES[task]) & set(names)
    if taken:
        raise DataError(
            f"column {sorted(taken)[0]!r}: a feature cannot have the name of a model output "
            f"({', '.join(OUTPUT_NAMES[task])}); rename the column"
        )


def target_values(y: pd.Series[Any], name: str, task: str) -> pd.Series[Any]:
    """The target as the estimator and the ONNX graph both see it.

    Regression needs numbers. Classification labels become integers (booleans
    as 0/1, and floats that are whole numbers, as CSV gives a column with gaps)
    or text: skl2onnx emits integer or string labels only.
    """
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
            bad = next((v for v in y if not isinstance(v, int | float)), y.iloc[0])
            raise DataError(f"column {name!r}: regression needs a numeric target, found {bad!r}")
        return y.astype("float64")
    if pd.api.types.is_bool_dtype(y) or pd.api.types.is_integer_dtype(y):
        return y.astype("int64")
    if pd.api.types.is_float_dtype(y):
        whole = np.equal(np.floor(y), y)
        if not whole.all():
            raise DataError(
                f"column {name!r}: classification labels must be integers or text, "
                f"found {_plain(y[~whole].iloc[0])!r} "
                "(use task: regression for a continuous target)"
            )
        return y.astype("int64")
    return y.astype(str)


def check_classes(spec: TrainingJobSpec, y: pd.Series[Any]) -> None:
    """Fail before training on one class, or a binary-only metric for more than two."""
    n = int(y.nunique())
    if n < 2:
        raise DataError(
            f"column {spec.target!r}: a single class ({_plain(y.iloc[0])!r}); need two or more"
        )
    gate = spec.gate or Gate()
    if n > 2 and "roc_auc" in {*(gate.min or {}), *(gate.max or {})}:
        raise model.SpecError(
            f"gate: roc_auc is reported for binary classification only; "
            f"column {spec.target!r} has {n} classes"
        )


def _search(
    run: Run, pipeline: Any, x: pd.DataFrame, y: Any
) -> tuple[Any, list[dict[str, Any]] | None]:
    search = run.spec.search
    if search is None:
        return pipeline.fit(x, y), None
    metric = search.metric or ("accuracy" if run.spec.task == "classification" else "r2")
    space = {f"estimator__{k}": v for k, v in search.space.items()}
    seed = run.spec.split.seed
    if search.strategy == "grid":
        searcher: Any = GridSearchCV(
            pipeline, space, cv=search.cv, scoring=SCORERS[metric], refit=True
        )
    else:
        searcher = RandomizedSearchCV(
            pipeline,
            space,
            n_iter=search.trials,
            cv=search.cv,
            scoring=SCORERS[metric],
            refit=True,
            random_state=seed,
        )
    try:
        searcher.fit(x, y)
    except ValueError as exc:
        raise model.SpecError(f"search: {exc}") from exc
    results = searcher.cv_results_
    trials = [
        {
            "params": {k.removeprefix("estimator__"): _plain(v) for k, v in params.items()},
            "score": float(score) * (-1 if metric in LOWER_IS_BETTER else 1),
            "rank": int(rank),
        }
        for params, score, rank in zip(
            results["params"], results["mean_test_score"], results["rank_test_score"], strict=True
        )
    ]
    return searcher.best_estimator_, trials


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def train(run: Run) -> JobResult:
    """Train, export, check and write the artifacts; raise GateRejectedError below the gate."""
    spec = run.spec
    check_gate_metrics(spec)
    params = dict(spec.estimator.params or {})
    estimator = model.make_estimator(spec.task, spec.estimator.class_name, params, spec.split.seed)
    frame = read_table(run.data_uri, format_of(run.data_uri, run.data_format))
    data_digest = digest(frame)  # of the data as read: the snapshot's version
    if spec.target not in frame.columns:
        raise DataError(f"column {spec.target!r}: the target is missing from the data")
    names = [str(c) for c in spec.features or frame.columns if c != spec.target]
    check_features(frame, names, spec.task)
    frame = frame.dropna(subset=[spec.target])
    if len(frame) < 10:
        raise DataError(
            f"column {spec.target!r}: only {len(frame)} labelled rows, need at least 10"
        )
    features = model.Features.of(frame, names)
    x = features.prepare(frame)
    y = target_values(frame[spec.target], spec.target, spec.task)
    if spec.task == "classification":
        check_classes(spec, y)
    if spec.search is not None:
        model.check_search_space(estimator, spec.search.space)
    stratify = y if spec.task == "classification" and y.value_counts().min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=spec.split.test_fraction, random_state=spec.split.seed, stratify=stratify
    )
    try:
        pipeline, trials = _search(run, model.build_pipeline(features, estimator), x_train, y_train)
    except ValueError as exc:  # constraints scikit-learn only checks when fitting
        raise model.SpecError(f"estimator {spec.estimator.class_name}: {exc}") from exc

    onnx_model = model.export(pipeline, features, spec.task)
    onnx_bytes = onnx_model.SerializeToString()
    sess = model.session(onnx_bytes)
    parity = model.check_parity(pipeline, sess, features, x_test, spec.task)
    if not parity.passed:
        raise ParityError(
            f"ONNX Runtime differs from scikit-learn on the test split: "
            f"{parity.label_mismatches} labels, "
            f"max difference {parity.max_abs_diff:.2e} (tolerance {parity.tolerance:g})"
        )
    outputs = model.onnx_predict(sess, features, x_test)
    classes = model.classes_of(pipeline) if spec.task == "classification" else []
    metrics, matrix = evaluate(spec.task, y_test, outputs, classes)
    gate = apply_gate(spec.gate, metrics)

    from sklearn.inspection import permutation_importance

    sample = x_test.iloc[:IMPORTANCE_ROWS]
    scoring = "accuracy" if spec.task == "classification" else "r2"
    importance = permutation_importance(
        pipeline,
        sample,
        y_test.iloc[:IMPORTANCE_ROWS],
        n_repeats=5,
        random_state=spec.split.seed,
        scoring=scoring,
    )
    ranked = dict(
        sorted(
            zip(features.all, importance.importances_mean.tolist(), strict=True),
            key=lambda kv: -kv[1],
        )
    )

    sha = hashlib.sha256(onnx_bytes).hexdigest()
    fitted = pipeline.named_steps["estimator"].get_params()
    columns = [c for c in infer_columns(frame[features.all])]
    if spec.task == "classification":
        outputs_spec = [
            TensorSpec(
                name=LABEL_OUTPUT,
                datatype="INT64" if all(isinstance(c, int) for c in classes) else "BYTES",
                shape=[-1],
            ),
            TensorSpec(name=PROBA_OUTPUT, datatype="FP32", shape=[-1, len(classes)]),
        ]
        prediction = profile_series(
            pd.Series(outputs[LABEL_OUTPUT].reshape(-1)).astype(str), numeric=False
        )
    else:
        outputs_spec = [TensorSpec(name=VALUE_OUTPUT, datatype="FP32", shape=[-1, 1])]
        prediction = profile_series(pd.Series(outputs[VALUE_OUTPUT].reshape(-1)), numeric=True)
    metadata = ModelMetadata(
        name=run.name,
        task=spec.task,
        sha256=sha,
        inputs=features.tensor_specs(),
        outputs=outputs_spec,
        columns=columns,
        nullable=[c.name for c in columns if c.nullable],
        target=spec.target,
        classes=classes or None,
        metrics=metrics,
        confusion_matrix=matrix,
        parity=parity,
        importance=ranked,
        search=trials,
        gate=gate,
        lineage=Lineage(
            data_uri=run.data_uri,
            data_digest=data_digest,
            estimator=spec.estimator.class_name,
            params={
                k: _plain(v)
                for k, v in fitted.items()
                if isinstance(_plain(v), str | int | float | bool | None)
            },
            seed=spec.split.seed,
            libraries={
                "python": platform.python_version(),
                **{
                    lib: version(lib)
                    for lib in ("scikit-learn", "skl2onnx", "onnxruntime", "numpy", "pandas")
                },
            },
        ),
        created=datetime.now(UTC),
    )
    raw_train = frame.loc[x_train.index]  # the values as the data has them, not float32
    profile = Profile(
        rows=len(x_train),
        features={
            n: profile_series(raw_train[n], numeric=n in features.numeric) for n in features.all
        },
        prediction=prediction,
    )
    with output.staging() as tmp:
        (tmp / ArtifactLayout.MODEL).write_bytes(onnx_bytes)
        (tmp / ArtifactLayout.PROFILE).write_text(profile.model_dump_json(indent=1))
        (tmp / ArtifactLayout.CARD).write_text(card.render(metadata, len(frame), len(x_test)))
        (tmp / ArtifactLayout.METADATA).write_text(metadata.model_dump_json(indent=1))
        output.publish(tmp, run.out, last=ArtifactLayout.METADATA)
    summary = JobResult(
        kind="train",
        status="succeeded" if gate.passed else "rejected",
        reason=None if gate.passed else "quality gate not met: " + "; ".join(gate.failures),
        artifact_uri=join(run.out, ArtifactLayout.MODEL),
        sha256=sha,
        metadata_uri=join(run.out, ArtifactLayout.METADATA),
        profile_uri=join(run.out, ArtifactLayout.PROFILE),
        metrics=metrics,
        gate=gate,
    )
    if not gate.passed:
        raise GateRejectedError(summary)
    return summary
