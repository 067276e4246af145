"""One training run: data (+ champion) → pipeline (+ search) → ONNX → parity → metrics →
champion/challenger → artifacts → gate.

:func:`train` composes one function per stage, each given what the stages before it
made. Every check that needs no fitting runs first (the spec, then the data), so a run
that cannot work fails in seconds and writes nothing. Metrics are computed from ONNX
Runtime's predictions on the held-out split, so ``onnxruntime`` alone reproduces them
from ``model.onnx``. Binary classification reports precision/recall/F1 for the second
class in ``classes`` and ROC AUC; multiclass reports macro averages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.base import BaseEstimator
from sklearn.inspection import permutation_importance
from sklearn.metrics import get_scorer
from sklearn.model_selection import (
    GridSearchCV,
    RandomizedSearchCV,
    train_test_split,
)
from sklearn.pipeline import Pipeline

from kubeloop.api.v1alpha1 import (
    LOWER_IS_BETTER,
    METRICS,
    CompareTo,
    Comparison,
    Gate,
    Search,
    TensorSpec,
    TrainingJobSpec,
    compare_metric,
)
from kubeloop.contracts.artifacts import (
    LABEL_OUTPUT,
    OUTPUT_NAMES,
    PROBA_OUTPUT,
    VALUE_OUTPUT,
    ArtifactLayout,
    CategoricalProfile,
    GateResult,
    Lineage,
    ModelMetadata,
    NativeImportance,
    NumericProfile,
    Parity,
    Profile,
    join,
)
from kubeloop.contracts.frameworks import Task
from kubeloop.contracts.results import JobResult
from kubeloop.contracts.search import Trial, candidate_count, ranks, winner
from kubeloop.progress import Progress
from kubeloop.trainer import card, champion, model, output, sampling
from kubeloop.trainer.data import (
    DataError,
    format_of,
    infer_columns,
    profile_series,
)

if TYPE_CHECKING:
    import onnxruntime as ort

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
#: Held-out rows permutation importance uses, at most.
IMPORTANCE_ROWS = 2000
#: Fewest labelled rows a run trains on.
MIN_ROWS = 10
#: The libraries whose versions the lineage records (besides Python's).
LIBRARIES = ("scikit-learn", "skl2onnx", "onnxruntime", "numpy", "pandas")


class GateRejectedError(Exception):
    """Below the gate: the artifacts are written (to show why), no ModelVersion comes of them."""

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
    champion: champion.ChampionRef | None = None
    #: The trials of a search run across pods (:mod:`kubeloop.trainer.shards`): the winner
    #: is refitted here, no search runs.
    trials: list[Trial] | None = None


@dataclass(frozen=True)
class Data:
    """The labelled rows, and the same rows as the estimator and the ONNX graph see them."""

    frame: pd.DataFrame  # the labelled rows with their values as read
    digest: str  # of the data as read, unlabelled rows too: the snapshot's version
    features: model.Features
    x: pd.DataFrame
    y: pd.Series[Any]


@dataclass(frozen=True)
class TrainTest:
    """The training rows and the held-out rows."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series[Any]
    y_test: pd.Series[Any]


@dataclass(frozen=True)
class Fitted:
    """The fitted pipeline and, after a search, every trial."""

    pipeline: Pipeline
    trials: list[dict[str, Any]] | None


@dataclass(frozen=True)
class Exported:
    """The ONNX model that reproduced the pipeline, and the session that ran it."""

    onnx: bytes
    session: ort.InferenceSession
    parity: Parity

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx).hexdigest()


@dataclass(frozen=True)
class Evaluation:
    """What the held-out split says about the model."""

    outputs: dict[str, np.ndarray[Any, Any]]
    classes: list[Any]
    metrics: dict[str, float]
    matrix: list[list[int]] | None
    gate: GateResult
    importance: dict[str, float]
    native_importance: NativeImportance | None = None
    comparison: Comparison | None = None


@dataclass(frozen=True)
class Artifacts:
    """A model directory's files, made and not yet written."""

    onnx: bytes
    metadata: ModelMetadata
    profile: Profile
    card: str


def train(run: Run, progress: Progress | None = None) -> JobResult:
    """Train, export, check and write the artifacts; raise GateRejectedError below the gate.

    ``progress`` hears of each stage, the rows read and the search's trials."""
    spec, shown = run.spec, progress or Progress()
    check_gate_metrics(spec)
    estimator = model.make_estimator(
        spec.task, spec.estimator.class_name, dict(spec.estimator.params or {}), spec.split.seed
    )
    shown.stage("reading data", unit="rows")
    data = load_data(run)
    shown.advance(len(data.frame))
    check_before_fit(spec, estimator, data.y)
    if run.champion is not None:
        shown.stage("reading the champion")
    rival = load_champion(run, data)
    split = split_rows(spec, data)
    if spec.search is None or run.trials is not None:
        shown.stage(f"fitting {spec.estimator.class_name}")
    else:
        shown.stage("search", total=candidates(spec.search), unit="trials")
    pipeline = model.build_pipeline(data.features, estimator)
    fitted = fit(spec, pipeline, split, shown.advance, run.trials)
    shown.stage("ONNX export and parity check")
    exported = to_onnx(fitted.pipeline, data.features, split.x_test, spec.task)
    shown.stage("evaluating on the held-out rows", total=len(split.x_test), unit="rows")
    evaluation = assess(spec, fitted.pipeline, exported.session, data.features, split)
    shown.advance(len(split.x_test))
    if rival is not None:
        shown.stage("scoring the champion on the same rows")
    evaluation = compare(run, data, split, rival, evaluation)
    shown.stage("writing artifacts")
    artifacts = make_artifacts(run, data, split, fitted, exported, evaluation)
    write_artifacts(artifacts, run.out)
    shown.done()
    summary = result_of(run.out, exported.sha256, evaluation)
    if not evaluation.gate.passed:
        raise GateRejectedError(summary)
    return summary


# ---------------------------------------------------------------- spec


def check_gate_metrics(spec: TrainingJobSpec) -> None:
    """Fail before training when the gate or the search names an unknown metric."""
    known = METRICS[spec.task]
    gate = spec.gate or Gate()
    for name in [
        *(gate.min or {}),
        *(gate.max or {}),
        *([spec.search.metric] if spec.search and spec.search.metric else []),
        *([compare_metric(spec)] if gate.compare_to else []),
    ]:
        if name not in known:
            raise model.SpecError(
                f"metric {name!r} is not reported for {spec.task} (known: {', '.join(known)})"
            )


# ---------------------------------------------------------------- data


def load_data(run: Run) -> Data:
    """Read the data, check the target and the features, keep the labelled rows."""
    spec = run.spec
    frame, data_digest = read_data(run)
    names = [str(c) for c in spec.features or frame.columns if c != spec.target]
    check_features(frame, names, spec.task)
    frame = frame.dropna(subset=[spec.target])
    if len(frame) < MIN_ROWS:
        raise DataError(
            f"column {spec.target!r}: only {len(frame)} labelled rows, need at least {MIN_ROWS}"
        )
    features = model.Features.of(frame, names)
    x = features.prepare(frame)
    y = target_values(frame[spec.target], spec.target, spec.task)
    return Data(frame=frame, digest=data_digest, features=features, x=x, y=y)


def read_data(run: Run) -> tuple[pd.DataFrame, str]:
    """The columns the run needs (every column when the features are not named or a
    champion may take others), sampled as ``spec.sampling`` says, and the content digest
    of the whole data, read in batches (:mod:`kubeloop.trainer.sampling`)."""
    spec = run.spec
    columns = None if spec.features is None or run.champion else [*spec.features, spec.target]
    sample = spec.sampling
    return sampling.read_training(
        run.data_uri,
        format_of(run.data_uri, run.data_format),
        columns,
        spec.target,
        (sample.max_rows, sample.seed, spec.task == "classification") if sample else None,
    )


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
    compared = {compare_metric(spec)} if gate.compare_to else set()
    if n > 2 and "roc_auc" in {*(gate.min or {}), *(gate.max or {}), *compared}:
        raise model.SpecError(
            f"gate: roc_auc is reported for binary classification only; "
            f"column {spec.target!r} has {n} classes"
        )


def check_before_fit(spec: TrainingJobSpec, estimator: BaseEstimator, y: pd.Series[Any]) -> None:
    """The checks that need the labels or the estimator: the classes, the search space."""
    if spec.task == "classification":
        check_classes(spec, y)
    if spec.search is not None:
        model.check_search_space(estimator, spec.search.space)


def split_rows(spec: TrainingJobSpec, data: Data) -> TrainTest:
    """Hold out the spec's share of rows, stratified when every class has two or more."""
    y = data.y
    stratify = y if spec.task == "classification" and y.value_counts().min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        data.x,
        y,
        test_size=spec.split.test_fraction,
        random_state=spec.split.seed,
        stratify=stratify,
    )
    return TrainTest(x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test)


# ---------------------------------------------------------------- pipeline (+ search)


def fit(
    spec: TrainingJobSpec,
    pipeline: Pipeline,
    split: TrainTest,
    on_trial: Callable[[int], None] | None = None,
    trials: list[Trial] | None = None,
) -> Fitted:
    """Fit the pipeline on the training rows, or search for the best one when asked to
    (``on_trial(1)`` after each candidate's cross-validation), or refit the winner of
    ``trials`` when the search ran across pods."""
    try:
        if spec.search is None:
            fitted = Fitted(pipeline=pipeline.fit(split.x_train, split.y_train), trials=None)
        elif trials is not None:
            fitted = fit_winner(pipeline, split, trials)
        else:
            fitted = fit_search(spec, spec.search, pipeline, split, on_trial)
    except ValueError as exc:  # constraints the library only checks on the real data
        raise model.SpecError(f"estimator {spec.estimator.class_name}: {exc}") from exc
    model.align(fitted.pipeline)
    return fitted


def fit_search(
    spec: TrainingJobSpec,
    search: Search,
    pipeline: Pipeline,
    split: TrainTest,
    on_trial: Callable[[int], None] | None = None,
) -> Fitted:
    """Cross-validated search on the training rows: the best candidate refitted, every trial."""
    metric = search.metric or ("accuracy" if spec.task == "classification" else "r2")
    searcher = make_searcher(search, pipeline, metric, spec.split.seed, on_trial)
    try:
        searcher.fit(split.x_train, split.y_train)
    except ValueError as exc:
        raise model.SpecError(f"search: {exc}") from exc
    return Fitted(pipeline=searcher.best_estimator_, trials=trials_of(searcher.cv_results_, metric))


def fit_winner(pipeline: Pipeline, split: TrainTest, trials: list[Trial]) -> Fitted:
    """The best of a search run across pods, refitted on the training rows as the
    in-process search refits its best candidate; every trial, ranked as it ranks them."""
    best = winner(trials)
    if best is None:
        raise model.SpecError(f"search: every one of the {len(trials)} candidates failed to fit")
    pipeline.set_params(**{f"{model.ESTIMATOR_STEP}__{k}": v for k, v in best.params.items()})
    ranked = zip(trials, ranks(trials), strict=True)
    return Fitted(
        pipeline=pipeline.fit(split.x_train, split.y_train),
        trials=[
            {"params": t.params, "score": math.nan if t.value is None else t.value, "rank": r}
            for t, r in ranked
        ],
    )


def candidates(search: Search) -> int:
    """How many parameter sets the search tries (:func:`candidate_count`)."""
    return candidate_count(search)


class TrialCounter:
    """The search's scorer, telling ``on_trial(1)`` when a candidate's last fold is scored
    (the search scores candidate after candidate, fold after fold, in this process)."""

    def __init__(self, scoring: str, folds: int, on_trial: Callable[[int], None]) -> None:
        self.scorer = get_scorer(scoring)
        self.folds, self.on_trial, self.scored = folds, on_trial, 0

    def __call__(self, estimator: Any, x: Any, y: Any, **params: Any) -> float:
        score = float(self.scorer(estimator, x, y, **params))
        self.scored += 1
        if self.scored % self.folds == 0:
            self.on_trial(1)
        return score


def make_searcher(
    search: Search,
    pipeline: Pipeline,
    metric: str,
    seed: int,
    on_trial: Callable[[int], None] | None = None,
) -> GridSearchCV | RandomizedSearchCV:
    """A grid or random search over the estimator's parameters, scored by ``metric``."""
    grid = {f"{model.ESTIMATOR_STEP}__{k}": v for k, v in search.space.items()}
    scoring: Any = SCORERS[metric]
    if on_trial is not None:
        scoring = TrialCounter(scoring, search.cv, on_trial)
    if search.strategy == "grid":
        return GridSearchCV(pipeline, grid, cv=search.cv, scoring=scoring, refit=True)
    return RandomizedSearchCV(
        pipeline,
        grid,
        n_iter=search.trials,
        cv=search.cv,
        scoring=scoring,
        refit=True,
        random_state=seed,
    )


def trials_of(results: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """Each trial's parameters, rank and score, as the metric itself (never negated)."""
    sign = -1 if metric in LOWER_IS_BETTER else 1
    prefix = f"{model.ESTIMATOR_STEP}__"
    return [
        {
            "params": {k.removeprefix(prefix): _plain(v) for k, v in params.items()},
            "score": float(score) * sign,
            "rank": int(rank),
        }
        for params, score, rank in zip(
            results["params"], results["mean_test_score"], results["rank_test_score"], strict=True
        )
    ]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------- ONNX, parity


def to_onnx(
    pipeline: Pipeline, features: model.Features, x_test: pd.DataFrame, task: Task
) -> Exported:
    """The pipeline as ONNX; raise ParityError unless ONNX Runtime reproduces it on ``x_test``."""
    onnx_bytes = model.export(pipeline, features, task).SerializeToString()
    sess = model.session(onnx_bytes)
    parity = model.check_parity(pipeline, sess, features, x_test, task)
    if not parity.passed:
        raise ParityError(
            f"ONNX Runtime differs from the fitted pipeline on the test split: "
            f"{parity.label_mismatches} labels, "
            f"max difference {parity.max_abs_diff:.2e} (tolerance {parity.tolerance:g})"
        )
    return Exported(onnx=onnx_bytes, session=sess, parity=parity)


# ---------------------------------------------------------------- metrics


def assess(
    spec: TrainingJobSpec,
    pipeline: Pipeline,
    sess: ort.InferenceSession,
    features: model.Features,
    split: TrainTest,
) -> Evaluation:
    """Held-out metrics from ONNX Runtime's predictions, the gate's verdict, importance."""
    outputs = model.onnx_predict(sess, features, split.x_test)
    classes = model.classes_of(pipeline) if spec.task == "classification" else []
    metrics, matrix = evaluate(spec.task, split.y_test, outputs, classes)
    return Evaluation(
        outputs=outputs,
        classes=classes,
        metrics=metrics,
        matrix=matrix,
        gate=apply_gate(spec.gate, metrics),
        importance=importance(pipeline, features, split, spec.task, spec.split.seed),
        native_importance=model.native_importance(pipeline, features),
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
    """The gate's verdict: every threshold the metrics miss, as one line each."""
    failures = []
    for name, floor in ((gate.min or {}) if gate else {}).items():
        if metrics.get(name, -math.inf) < floor:
            failures.append(f"{name} {metrics.get(name, float('nan')):.4f} < {floor}")
    for name, ceiling in ((gate.max or {}) if gate else {}).items():
        if metrics.get(name, math.inf) > ceiling:
            failures.append(f"{name} {metrics.get(name, float('nan')):.4f} > {ceiling}")
    return GateResult(passed=not failures, failures=failures)


def importance(
    pipeline: Pipeline, features: model.Features, split: TrainTest, task: Task, seed: int
) -> dict[str, float]:
    """Permutation importance on the first held-out rows, most important first."""
    result = permutation_importance(
        pipeline,
        split.x_test.iloc[:IMPORTANCE_ROWS],
        split.y_test.iloc[:IMPORTANCE_ROWS],
        n_repeats=5,
        random_state=seed,
        scoring="accuracy" if task == "classification" else "r2",
    )
    ranked = zip(features.all, result.importances_mean.tolist(), strict=True)
    return dict(sorted(ranked, key=lambda kv: -kv[1]))


# ---------------------------------------------------------------- artifacts


def make_artifacts(
    run: Run,
    data: Data,
    split: TrainTest,
    fitted: Fitted,
    exported: Exported,
    evaluation: Evaluation,
) -> Artifacts:
    """The model directory's files: the ONNX model, ``model.json``, the profile, the card."""
    metadata = model_metadata(run, data, fitted, exported, evaluation)
    return Artifacts(
        onnx=exported.onnx,
        metadata=metadata,
        profile=training_profile(data, split, evaluation.outputs, run.spec.task),
        card=card.render(metadata, len(data.frame), len(split.x_test)),
    )


def model_metadata(
    run: Run, data: Data, fitted: Fitted, exported: Exported, evaluation: Evaluation
) -> ModelMetadata:
    """What the model takes and gives, how good it is and where it came from."""
    spec = run.spec
    columns = infer_columns(data.frame[data.features.all])
    return ModelMetadata(
        name=run.name,
        task=spec.task,
        sha256=exported.sha256,
        inputs=data.features.tensor_specs(),
        outputs=output_specs(spec.task, evaluation.classes),
        columns=columns,
        nullable=[c.name for c in columns if c.nullable],
        target=spec.target,
        classes=evaluation.classes or None,
        metrics=evaluation.metrics,
        confusion_matrix=evaluation.matrix,
        parity=exported.parity,
        importance=evaluation.importance,
        native_importance=evaluation.native_importance,
        search=fitted.trials,
        gate=evaluation.gate,
        comparison=evaluation.comparison,
        lineage=lineage(run, data.digest, fitted.pipeline),
        created=datetime.now(UTC),
    )


def output_specs(task: Task, classes: list[Any]) -> list[TensorSpec]:
    """The ONNX outputs: integer or text labels and probabilities, or the predicted value."""
    if task == "regression":
        return [TensorSpec(name=VALUE_OUTPUT, datatype="FP32", shape=[-1, 1])]
    label = "INT64" if all(isinstance(c, int) for c in classes) else "BYTES"
    return [
        TensorSpec(name=LABEL_OUTPUT, datatype=label, shape=[-1]),
        TensorSpec(name=PROBA_OUTPUT, datatype="FP32", shape=[-1, len(classes)]),
    ]


def lineage(run: Run, data_digest: str, pipeline: Pipeline) -> Lineage:
    """The data, the estimator with its fitted (JSON-plain) parameters, seed and libraries."""
    estimator = pipeline.named_steps[model.ESTIMATOR_STEP]
    fitted = estimator.get_params()
    libraries = (*LIBRARIES, *model.adapter_for(estimator).libraries)
    return Lineage(
        data_uri=run.data_uri,
        data_digest=data_digest,
        estimator=run.spec.estimator.class_name,
        params={
            k: _plain(v)
            for k, v in fitted.items()
            if isinstance(_plain(v), str | int | float | bool | None)
        },
        seed=run.spec.split.seed,
        libraries={
            "python": platform.python_version(),
            **{lib: library_version(lib) for lib in libraries},
        },
    )


def library_version(name: str) -> str:
    """A library's version: its distribution's, or its module's (``xgboost`` comes as
    the ``xgboost-cpu`` distribution)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return str(getattr(importlib.import_module(name), "__version__", "unknown"))


def training_profile(
    data: Data, split: TrainTest, outputs: dict[str, np.ndarray[Any, Any]], task: Task
) -> Profile:
    """The training rows' distributions (values as the data has them, not float32) and the
    held-out predictions' distribution."""
    raw = data.frame.loc[split.x_train.index]
    numeric = data.features.numeric
    return Profile(
        rows=len(split.x_train),
        features={n: profile_series(raw[n], numeric=n in numeric) for n in data.features.all},
        prediction=prediction_profile(task, outputs),
    )


def prediction_profile(
    task: Task, outputs: dict[str, np.ndarray[Any, Any]]
) -> NumericProfile | CategoricalProfile:
    """The predicted values' distribution: labels as text, or regression values."""
    if task == "regression":
        return profile_series(pd.Series(outputs[VALUE_OUTPUT].reshape(-1)), numeric=True)
    labels = pd.Series(outputs[LABEL_OUTPUT].reshape(-1)).astype(str)
    return profile_series(labels, numeric=False)


def write_artifacts(artifacts: Artifacts, out: str) -> None:
    """Publish the model directory whole, ``model.json`` last: it marks the folder complete."""
    with output.staging() as tmp:
        (tmp / ArtifactLayout.MODEL).write_bytes(artifacts.onnx)
        (tmp / ArtifactLayout.PROFILE).write_text(artifacts.profile.model_dump_json(indent=1))
        (tmp / ArtifactLayout.CARD).write_text(artifacts.card)
        (tmp / ArtifactLayout.METADATA).write_text(artifacts.metadata.model_dump_json(indent=1))
        output.publish(tmp, out, last=ArtifactLayout.METADATA)


# ---------------------------------------------------------------- gate


def result_of(out: str, sha256: str, evaluation: Evaluation) -> JobResult:
    """The Job result: the artifacts' URIs, the metrics and the gate's verdict."""
    gate = evaluation.gate
    return JobResult(
        kind="train",
        status="succeeded" if gate.passed else "rejected",
        reason=None if gate.passed else "quality gate not met: " + "; ".join(gate.failures),
        comparison=evaluation.comparison,
        artifact_uri=join(out, ArtifactLayout.MODEL),
        sha256=sha256,
        metadata_uri=join(out, ArtifactLayout.METADATA),
        profile_uri=join(out, ArtifactLayout.PROFILE),
        metrics=evaluation.metrics,
        gate=gate,
    )


# ---------------------------------------------------------------- champion/challenger


def comparison_of(spec: TrainingJobSpec, ref: champion.ChampionRef | None) -> CompareTo | None:
    """The comparison this run makes: the spec's, or the defaults when only a champion is
    given (a local ``--champion``); none with ``policy: None``."""
    compare = spec.gate.compare_to if spec.gate else None
    if compare is None and ref is not None:
        compare = CompareTo(policy="Serving")
    return None if compare is None or compare.policy == "None" else compare


def load_champion(run: Run, data: Data) -> champion.Champion | None:
    """The champion, read and checked against the new data before any fitting.

    A champion whose columns the data lacks (or no longer holds as numbers) rejects
    the run at once with ``SchemaChanged``: nothing is trained, nothing written.
    """
    compare = comparison_of(run.spec, run.champion)
    if compare is None or run.champion is None:
        return None
    rival = champion.load(run.champion, run.spec.task)
    why = champion.schema_change(rival, data.frame)
    if why is None:
        return rival
    metric = compare_metric(run.spec)
    verdict = champion.schema_changed(run.champion, metric, compare.tolerance, why)
    raise GateRejectedError(
        JobResult(
            kind="train",
            status="rejected",
            reason=f"SchemaChanged: {why}",
            comparison=verdict,
            gate=GateResult(passed=False, failures=[why]),
        )
    )


def champion_value(
    rival: champion.Champion,
    data: Data,
    split: TrainTest,
    spec: TrainingJobSpec,
    compare: CompareTo,
) -> float | None:
    """The champion's ``metric`` on the challenger's held-out rows."""
    metric = compare_metric(spec)
    rows = data.frame.loc[split.x_test.index]
    outputs, classes = champion.predict(rival, rows, split.y_test)
    try:
        metrics, _ = evaluate(spec.task, split.y_test, outputs, classes)
    except (ValueError, TypeError) as exc:  # labels of another type than the new target's
        raise GateRejectedError(
            JobResult(
                kind="train",
                status="rejected",
                reason=f"SchemaChanged: {rival.ref.describe()}'s labels do not fit the target "
                f"({exc})",
                comparison=champion.schema_changed(
                    rival.ref,
                    metric,
                    compare.tolerance,
                    f"the champion's labels do not fit the target: {exc}",
                ),
            )
        ) from exc
    return metrics.get(metric)


def compare(
    run: Run,
    data: Data,
    split: TrainTest,
    rival: champion.Champion | None,
    evaluation: Evaluation,
) -> Evaluation:
    """Score the champion on the same held-out rows; a worse challenger fails the gate."""
    compare_to = comparison_of(run.spec, run.champion)
    if compare_to is None:
        return evaluation
    metric = compare_metric(run.spec)
    theirs = champion_value(rival, data, split, run.spec, compare_to) if rival is not None else None
    verdict = champion.verdict(
        rival.ref if rival else None,
        metric,
        compare_to.tolerance,
        theirs,
        evaluation.metrics.get(metric),
    )
    gate = evaluation.gate
    if not verdict.passed:
        gate = GateResult(passed=False, failures=[*gate.failures, verdict.message])
    return dataclasses.replace(evaluation, gate=gate, comparison=verdict)
