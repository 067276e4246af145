"""`kubeloop train` as a real process: artifacts, metrics, gate, bad input, reproducibility."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from train_helpers import flags, metadata_of, predict, profile_of

from kubeloop.contracts.artifacts import (
    LABEL_OUTPUT,
    PROBA_OUTPUT,
    VALUE_OUTPUT,
    ArtifactLayout,
)

ARTIFACTS = sorted(
    [ArtifactLayout.CARD, ArtifactLayout.METADATA, ArtifactLayout.MODEL, ArtifactLayout.PROFILE]
)


def test_classification_artifacts_and_metrics_reproduce_with_onnxruntime(kubeloop, data, tmp_path):
    out = tmp_path / "model"
    result = kubeloop(*flags(data, out, "--name", "cancer", "--gate", "accuracy>=0.8"))
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ARTIFACTS
    summary = result.summary
    assert summary["status"] == "succeeded"
    assert (
        summary["sha256"] == hashlib.sha256((out / ArtifactLayout.MODEL).read_bytes()).hexdigest()
    )
    assert json.loads(result.termination) == summary
    assert len(result.termination.encode()) <= 4096
    meta = metadata_of(out)
    assert meta.sha256 == summary["sha256"]
    assert [o.name for o in meta.outputs] == [LABEL_OUTPUT, PROBA_OUTPUT]
    assert meta.classes == [0, 1]
    assert meta.parity is not None
    assert meta.parity.passed
    assert set(meta.metrics) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}
    assert meta.confusion_matrix is not None
    assert set(meta.importance) == {t.name for t in meta.inputs}
    assert meta.lineage.libraries["scikit-learn"]
    # The held-out split is reproducible from the seed: recompute accuracy with onnxruntime only.
    from sklearn.model_selection import train_test_split

    frame = pd.read_csv(data / "cancer.csv")
    x = frame.drop(columns="target")
    _, x_test, _, y_test = train_test_split(
        x, frame["target"], test_size=0.2, random_state=42, stratify=frame["target"]
    )
    got = predict(out, x_test)
    assert skm.accuracy_score(y_test, got[LABEL_OUTPUT]) == pytest.approx(meta.metrics["accuracy"])
    assert skm.roc_auc_score(y_test, got[PROBA_OUTPUT][:, 1]) == pytest.approx(
        meta.metrics["roc_auc"]
    )
    assert skm.precision_score(y_test, got[LABEL_OUTPUT]) == pytest.approx(
        meta.metrics["precision"]
    )
    assert skm.recall_score(y_test, got[LABEL_OUTPUT]) == pytest.approx(meta.metrics["recall"])
    assert skm.f1_score(y_test, got[LABEL_OUTPUT]) == pytest.approx(meta.metrics["f1"])
    assert skm.log_loss(y_test, got[PROBA_OUTPUT]) == pytest.approx(meta.metrics["log_loss"])
    assert skm.confusion_matrix(y_test, got[LABEL_OUTPUT]).tolist() == meta.confusion_matrix
    profile = profile_of(out)
    assert set(profile.features) == {t.name for t in meta.inputs}
    assert profile.prediction is not None
    assert profile.prediction.kind == "categorical"
    card = (out / ArtifactLayout.CARD).read_text()
    assert "## Intended use" in card
    assert "## Limitations" in card
    assert f"{meta.metrics['accuracy']:.4f}" in card


def test_regression(kubeloop, data, tmp_path):
    out = tmp_path / "reg"
    result = kubeloop(
        *flags(
            data,
            out,
            "--gate",
            "rmse<=80",
            file="diabetes.csv",
            task="regression",
            estimator="Ridge",
            params="{}",
        )
    )
    assert result.code == 0, result.stderr
    meta = metadata_of(out)
    assert set(meta.metrics) == {"rmse", "mae", "r2"}
    assert [o.name for o in meta.outputs] == [VALUE_OUTPUT]
    # onnxruntime alone, on the split the seed draws, reproduces the reported metrics.
    from sklearn.model_selection import train_test_split

    frame = pd.read_csv(data / "diabetes.csv")
    _, x_test, _, y_test = train_test_split(
        frame.drop(columns="target"), frame["target"], test_size=0.2, random_state=42
    )
    got = predict(out, x_test)[VALUE_OUTPUT].reshape(-1)
    assert skm.root_mean_squared_error(y_test, got) == pytest.approx(meta.metrics["rmse"])
    assert skm.mean_absolute_error(y_test, got) == pytest.approx(meta.metrics["mae"])
    assert skm.r2_score(y_test, got) == pytest.approx(meta.metrics["r2"])
    profile = profile_of(out)
    assert profile.prediction is not None
    assert profile.prediction.kind == "numeric"


def test_categorical_features_are_string_inputs(kubeloop, data, tmp_path):
    out = tmp_path / "mixed"
    result = kubeloop(
        *flags(
            data,
            out,
            file="mixed.csv",
            target="label",
            estimator="RandomForestClassifier",
            params='{"n_estimators": 30}',
        )
    )
    assert result.code == 0, result.stderr
    meta = metadata_of(out)
    assert {t.name: t.datatype for t in meta.inputs} == {"colour": "BYTES", "size": "FP32"}
    assert meta.classes == ["no", "yes"]
    assert meta.nullable == ["size"]
    got = predict(out, pd.DataFrame({"colour": ["red", "purple"], "size": [5.0, np.nan]}))
    assert got[PROBA_OUTPUT].shape == (
        2,
        2,
    )  # an unseen category and a missing number still predict
    assert meta.metrics["accuracy"] > 0.8


def test_search_records_every_trial(kubeloop, data, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "datasetRef: {name: cancer}\nmodelName: cancer\ntask: classification\ntarget: target\n"
        "estimator: {className: DecisionTreeClassifier}\n"
        "search: {strategy: grid, space: {max_depth: [2, 4, 6]}, cv: 3, metric: f1}\n"
    )
    out = tmp_path / "search"
    result = kubeloop(
        "train", "--spec", str(spec), "--data", str(data / "cancer.csv"), "--out", str(out)
    )
    assert result.code == 0, result.stderr
    meta = metadata_of(out)
    assert meta.search is not None
    assert sorted(t["params"]["max_depth"] for t in meta.search) == [2, 4, 6]
    best = min(meta.search, key=lambda t: t["rank"])
    assert meta.lineage.params["max_depth"] == best["params"]["max_depth"]


def test_gate_rejection_exits_3_and_keeps_the_evidence(kubeloop, data, tmp_path):
    out = tmp_path / "rejected"
    result = kubeloop(*flags(data, out, "--gate", "accuracy>=0.999"))
    assert result.code == 3, result.stderr
    assert result.summary["status"] == "rejected"
    assert "accuracy" in result.summary["reason"]
    meta = metadata_of(out)
    assert meta.gate is not None
    assert not meta.gate.passed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--estimator", "os.system"], "must name an allow-listed estimator"),
        (["--estimator", "Ridge"], "classification: LogisticRegression, RandomForestClassifier"),
        (["--params", '{"max_iter": -3}'], "estimator LogisticRegression"),
        (["--params", '{"no_such": 1}'], "unexpected keyword argument 'no_such'"),
        (["--params", "{not json"], "--params"),
        (["--target", "nope"], "column 'nope': the target is missing"),
        (["--features", "mean radius,nope"], "column 'nope': a feature is missing"),
        (["--gate", "speed>=1"], "metric 'speed' is not reported for classification"),
        (["--gate", "f1=0.9"], "use METRIC>=VALUE"),
        (["--test-fraction", "1.5"], "testFraction must be greater than 0 and less than 1"),
    ],
)
def test_bad_input_fails_before_any_work(kubeloop, data, tmp_path, args, message):
    out = tmp_path / "never"
    base = flags(data, out)
    for i in range(0, len(args), 2):
        if args[i] in base:
            base[base.index(args[i]) + 1] = args[i + 1]
        else:
            base += args[i : i + 2]
    result = kubeloop(*base)
    assert result.code == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.summary["status"] == "failed"
    assert message in json.loads(result.termination)["reason"]
    assert not out.exists()


def test_same_data_spec_and_seed_reproduce(kubeloop, data, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert (
            kubeloop(
                *flags(data, out, estimator="RandomForestClassifier", params='{"n_estimators": 20}')
            ).code
            == 0
        )
        runs.append(out)
    metas = [metadata_of(o) for o in runs]
    assert metas[0].metrics == metas[1].metrics
    frame = pd.read_csv(data / "cancer.csv").drop(columns="target")
    a, b = (predict(o, frame) for o in runs)
    np.testing.assert_array_equal(a[PROBA_OUTPUT], b[PROBA_OUTPUT])
