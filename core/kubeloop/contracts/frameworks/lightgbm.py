"""LightGBM: gradient-boosted trees, converted by onnxmltools."""

from __future__ import annotations

from kubeloop.contracts.frameworks.base import Estimator, Framework

NAME = "lightgbm"

FRAMEWORK = Framework(
    name=NAME,
    title="LightGBM",
    estimators=(
        Estimator("LGBMClassifier", "classification", "lightgbm", NAME, scaled=False),
        Estimator("LGBMRegressor", "regression", "lightgbm", NAME, scaled=False),
    ),
)
