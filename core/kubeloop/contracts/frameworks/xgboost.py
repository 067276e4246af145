"""XGBoost (the ``xgboost-cpu`` wheel): gradient-boosted trees, converted by onnxmltools."""

from __future__ import annotations

from kubeloop.contracts.frameworks.base import Estimator, Framework

NAME = "xgboost"

FRAMEWORK = Framework(
    name=NAME,
    title="XGBoost",
    estimators=(
        Estimator("XGBClassifier", "classification", "xgboost", NAME, scaled=False),
        Estimator("XGBRegressor", "regression", "xgboost", NAME, scaled=False),
    ),
)
