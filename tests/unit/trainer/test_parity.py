"""Every allow-listed estimator exports to ONNX and passes the parity check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from kubeloop.api.v1alpha1 import ESTIMATORS, TrainingJobSpec
from kubeloop.contracts.artifacts import ArtifactLayout, ModelMetadata
from kubeloop.trainer import train

SMALL = {"n_estimators": 10}
PARAMS = {
    "RandomForestClassifier": SMALL,
    "RandomForestRegressor": SMALL,
    "ExtraTreesClassifier": SMALL,
    "ExtraTreesRegressor": SMALL,
    "GradientBoostingClassifier": SMALL,
    "GradientBoostingRegressor": SMALL,
    "MLPClassifier": {"max_iter": 200},
    "MLPRegressor": {"max_iter": 200},
    "XGBClassifier": {"n_estimators": 20},
    "XGBRegressor": {"n_estimators": 20},
    "LGBMClassifier": {"n_estimators": 20},
    "LGBMRegressor": {"n_estimators": 20},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    cancer = load_breast_cancer(as_frame=True).frame.iloc[:300, [0, 1, 2, 3, -1]]
    cancer["grade"] = np.where(cancer["mean radius"] > 14, "high", "low")  # a text column too
    diabetes = load_diabetes(as_frame=True).frame.iloc[:300]
    paths = {"classification": root / "c.csv", "regression": root / "r.csv"}
    cancer.to_csv(paths["classification"], index=False)
    diabetes.to_csv(paths["regression"], index=False)
    return paths


CASES = [(task, name) for task, names in ESTIMATORS.items() for name in names]


@pytest.mark.parametrize(("task", "estimator"), CASES, ids=[c[1] for c in CASES])
def test_parity(files, tmp_path, task, estimator):
    spec = TrainingJobSpec.model_validate(
        {
            "datasetRef": {"name": "d"},
            "modelName": "m",
            "task": task,
            "target": "target",
            "estimator": {"className": estimator, "params": PARAMS.get(estimator, {})},
        }
    )
    summary = train.train(
        train.Run(spec=spec, data_uri=str(files[task]), out=str(tmp_path), name="m")
    )
    meta = ModelMetadata.model_validate_json((tmp_path / ArtifactLayout.METADATA).read_text())
    assert meta.parity is not None
    assert meta.parity.passed
    assert meta.parity.label_mismatches == 0
    assert meta.parity.max_abs_diff <= meta.parity.tolerance
    assert summary.status == "succeeded"


def test_gate_thresholds():
    from kubeloop.api.v1alpha1 import Gate

    result = train.apply_gate(
        Gate(min={"f1": 0.9}, max={"log_loss": 0.2}), {"f1": 0.8, "log_loss": 0.3}
    )
    assert not result.passed
    assert result.failures == ["f1 0.8000 < 0.9", "log_loss 0.3000 > 0.2"]
    assert train.apply_gate(None, {"f1": 0.1}).passed


def test_numeric_profile_bins_and_lookup():
    from kubeloop.trainer.data import profile_series

    profile = profile_series(pd.Series([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, None]), numeric=True)
    assert profile.kind == "numeric"
    assert profile.missing == 1
    assert sum(profile.counts) == 10
    assert profile.bin_index(0.5) == -1
    assert profile.bin_index(11) == len(profile.counts)
    assert profile.bin_index(10) == len(profile.counts) - 1
    assert profile.bin_index(1) == 0
