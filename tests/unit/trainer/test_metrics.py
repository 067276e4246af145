"""Held-out metrics: multiclass averages are macro, binary ones score the second class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT, VALUE_OUTPUT
from kubeloop.trainer import train


def test_multiclass_metrics_are_macro_averages_without_roc_auc():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 1])
    label = np.array([0, 1, 1, 1, 2, 0, 2, 1])
    proba = np.eye(3, dtype=np.float32)[label] * 0.8 + 0.2 / 3
    metrics, matrix = train.evaluate(
        "classification", pd.Series(y), {LABEL_OUTPUT: label, PROBA_OUTPUT: proba}, [0, 1, 2]
    )
    assert set(metrics) == {"accuracy", "precision", "recall", "f1", "log_loss"}
    assert metrics["precision"] == pytest.approx(skm.precision_score(y, label, average="macro"))
    assert metrics["recall"] == pytest.approx(skm.recall_score(y, label, average="macro"))
    assert metrics["f1"] == pytest.approx(skm.f1_score(y, label, average="macro"))
    assert metrics["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert matrix == skm.confusion_matrix(y, label).tolist()


def test_binary_metrics_score_the_second_class():
    y = np.array(["no", "yes", "yes", "no", "yes"])
    label = np.array(["no", "yes", "no", "no", "yes"])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]], np.float32)
    metrics, _ = train.evaluate(
        "classification", pd.Series(y), {LABEL_OUTPUT: label, PROBA_OUTPUT: proba}, ["no", "yes"]
    )
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["precision"] == pytest.approx(1.0)
    assert metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y == "yes", proba[:, 1]))


def test_regression_metrics():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([[1.5], [2.0], [2.5], [4.0]], np.float32)
    metrics, matrix = train.evaluate("regression", pd.Series(y), {VALUE_OUTPUT: pred}, [])
    assert matrix is None
    assert metrics["rmse"] == pytest.approx(np.sqrt(0.5 / 4))
    assert metrics["mae"] == pytest.approx(0.25)
    assert metrics["r2"] == pytest.approx(skm.r2_score(y, pred.reshape(-1)))
