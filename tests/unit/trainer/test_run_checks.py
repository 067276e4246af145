"""The trainer's checks and formats as functions: what fails before training and why, the
content digest, the summary's size limit, and a parity check that notices a wrong model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from kubeloop.api.v1alpha1 import TrainingJobSpec
from kubeloop.contracts.artifacts import NumericProfile, Parity
from kubeloop.contracts.results import RESULT_LIMIT, JobResult
from kubeloop.trainer import model, train
from kubeloop.trainer.data import DataError, digest, profile_series


def spec(**overrides) -> TrainingJobSpec:
    body = {
        "datasetRef": {"name": "d"},
        "modelName": "m",
        "task": "classification",
        "target": "y",
        "estimator": {"className": "DecisionTreeClassifier", "params": {"max_depth": 3}},
        **overrides,
    }
    return TrainingJobSpec.model_validate(body)


def run(tmp_path: Path, frame: pd.DataFrame, **overrides) -> train.Run:
    data = tmp_path / "input.csv"
    frame.to_csv(data, index=False)
    return train.Run(
        spec=spec(**overrides), data_uri=str(data), out=str(tmp_path / "out"), name="m"
    )


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    x = rng.normal(size=120)
    return pd.DataFrame({"x": x, "colour": rng.choice(["a", "b"], 120), "y": x > 0})


@pytest.mark.parametrize(
    ("change", "overrides", "error", "message"),
    [
        (lambda f: f.assign(y=f["x"] * 0.5), {}, DataError, "labels must be integers or text"),
        (
            lambda f: f.assign(y=np.where(f["x"] > 0, "up", "down")),
            {"task": "regression", "estimator": {"className": "Ridge"}},
            DataError,
            "regression needs a numeric target, found 'up'",
        ),
        (lambda f: f.assign(y=1), {}, DataError, "a single class (1); need two or more"),
        (
            lambda f: f.assign(y=np.arange(len(f)) % 3),
            {"gate": {"min": {"roc_auc": 0.5}}},
            model.SpecError,
            "roc_auc is reported for binary classification only; column 'y' has 3 classes",
        ),
        (lambda f: f.assign(empty=np.nan), {}, DataError, "column 'empty': a feature with no"),
        (
            lambda f: f.assign(x=np.where(f["x"] > 1, np.inf, f["x"])),
            {},
            DataError,
            "column 'x': infinite values",
        ),
        (lambda f: f.assign(label=1.0), {}, DataError, "column 'label': a feature cannot have"),
        (
            lambda f: f.assign(variable=1.0, y=f["x"]),
            {"task": "regression", "estimator": {"className": "Ridge"}},
            DataError,
            "column 'variable': a feature cannot have the name of a model output",
        ),
        (lambda f: f[["y"]], {}, DataError, "no feature columns"),
        (
            lambda f: f,
            {"search": {"space": {"depth": [1, 2]}}},
            model.SpecError,
            "search.space: DecisionTreeClassifier has no parameter 'depth'",
        ),
        (
            lambda f: f,
            {"search": {"space": {"max_depth": [2, -1]}}},
            model.SpecError,
            "search.space.max_depth: The 'max_depth' parameter",
        ),
        (
            lambda f: f,
            {"search": {"space": {"max_depth": []}}},
            model.SpecError,
            "search.space.max_depth: no candidate values",
        ),
        (
            lambda f: f,
            {
                "estimator": {
                    "className": "LogisticRegression",
                    "params": {"solver": "newton-cg", "l1_ratio": 1.0},
                }
            },
            model.SpecError,
            "estimator LogisticRegression: Solver newton-cg supports only",
        ),
    ],
)
def test_runs_that_cannot_work_fail_with_a_clear_message_and_write_nothing(
    tmp_path, frame, change, overrides, error, message
):
    r = run(tmp_path, change(frame), **overrides)
    with pytest.raises(error) as caught:
        train.train(r)
    assert message in str(caught.value)
    assert not Path(r.out).exists()


def test_classification_targets_become_integer_or_text_labels():
    assert train.target_values(pd.Series([True, False]), "y", "classification").tolist() == [1, 0]
    floats = pd.Series([1.0, 0.0, 2.0])
    assert train.target_values(floats, "y", "classification").dtype == np.int64
    words = pd.Series(["a", "b"], dtype="category")
    assert train.target_values(words, "y", "classification").tolist() == ["a", "b"]
    assert train.target_values(pd.Series([1, 2]), "y", "regression").dtype == np.float64
    with pytest.raises(DataError, match=r"found 0\.5"):
        train.target_values(pd.Series([0.5, 1.0]), "y", "classification")


def test_digest_depends_on_content_not_layout():
    frame = pd.DataFrame({"b": [1, 2, None], "a": ["x", None, "z"]})
    reference = digest(frame)
    assert reference.startswith("sha256:")
    assert len(reference) == len("sha256:") + 64
    assert digest(frame[["a", "b"]]) == reference  # column order
    as_float = frame.assign(b=frame["b"].astype("float64"))
    assert digest(as_float) == reference  # integer-valued floats and nullable integers
    assert digest(frame.assign(b=pd.array([1, 2, None], dtype="Int64"))) == reference
    odd_nan = frame["b"].to_numpy(copy=True)
    odd_nan[2] = np.float64(np.frombuffer(b"\x01\x00\x00\x00\x00\x00\xf8\x7f", "<f8")[0])
    assert digest(frame.assign(b=odd_nan)) == reference  # every NaN is one NaN
    assert digest(frame.assign(b=[1, 2, 3])) != reference  # a missing value filled
    assert digest(frame.assign(a=["x", None, "y"])) != reference  # one changed cell
    assert digest(frame.iloc[::-1].reset_index(drop=True)) != reference  # row order counts
    assert digest(frame.rename(columns={"a": "c"})) != reference  # names count


def test_summary_fits_a_termination_message():
    long = JobResult(kind="train", status="failed", reason="x" * 10_000)
    line = long.to_message()
    assert len(line.encode()) <= RESULT_LIMIT
    assert json.loads(line)["reason"].endswith(" ...")
    short = JobResult(kind="train", status="failed", reason="bad")
    assert json.loads(short.to_message()) == {"kind": "train", "status": "failed", "reason": "bad"}


def test_profile_of_a_constant_column_has_one_bin():
    profile = profile_series(pd.Series([3.0, 3.0, 3.0]), numeric=True)
    assert isinstance(profile, NumericProfile)
    assert profile.edges == [3.0, 3.0]
    assert profile.counts == [3]
    assert profile.bin_index(3.0) == 0
    assert profile.bin_index(2.9) == -1
    assert profile.bin_index(3.1) == 1
    empty = profile_series(pd.Series([None, None], dtype="float64"), numeric=True)
    assert empty.missing == 2


class Fitted(NamedTuple):
    """A pipeline fitted on every column of a frame, its inputs and its ONNX graph."""

    pipeline: Pipeline
    features: model.Features
    x: pd.DataFrame
    exported: onnx.ModelProto

    @classmethod
    def on(cls, frame: pd.DataFrame, y: pd.Series, task: str, estimator: str) -> Fitted:
        features = model.Features.of(frame, list(frame.columns))
        x = features.prepare(frame)
        pipeline = model.build_pipeline(features, model.make_estimator(task, estimator, {}, 0))
        pipeline.fit(x, y)
        return cls(pipeline, features, x, model.export(pipeline, features, task))

    def parity(self, task: str, graph: onnx.ModelProto | None = None) -> Parity:
        """The parity check of ``graph`` (default: the export) on the training inputs."""
        sess = model.session((graph or self.exported).SerializeToString())
        return model.check_parity(self.pipeline, sess, self.features, self.x, task)


def test_parity_check_notices_a_model_that_differs():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=200), "z": rng.normal(size=200)})
    y = (frame["x"] + frame["z"] > 0).astype(int)
    fit = Fitted.on(frame, y, "classification", "LogisticRegression")
    good = fit.parity("classification")
    assert good.passed
    assert good.rows == 200
    # Flip the sign of the coefficients in the graph: ONNX now disagrees with scikit-learn.
    tampered = onnx.ModelProto()
    tampered.CopyFrom(fit.exported)
    node = next(n for n in tampered.graph.node if n.op_type == "LinearClassifier")
    for attr in node.attribute:
        if attr.name == "coefficients":
            attr.floats[:] = [-v for v in attr.floats]
    bad = fit.parity("classification", tampered)
    assert not bad.passed
    assert bad.label_mismatches > 0
    assert bad.max_abs_diff > bad.tolerance


def test_regression_parity_tolerance_is_relative_to_the_target_scale():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=100)})
    y = frame["x"] * 1e6 + 5e6
    result = Fitted.on(frame, y, "regression", "LinearRegression").parity("regression")
    assert result.passed, result  # float32 rounding of millions is within 1e-4 of the scale
