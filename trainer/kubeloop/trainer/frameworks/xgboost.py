"""XGBoost: onnxmltools' converter, any class labels, total-gain importance.

XGBoost's classifier takes class labels 0..n-1 only and predicts their indices;
:class:`XGBClassifier` encodes the labels to fit, decodes them to predict and reports
them as ``classes_``, which onnxmltools writes into the ONNX graph, so the served model
answers with the training data's labels like every other classifier. XGBoost compares
float32 features with float32 split values, as ONNX Runtime does: no threshold fix.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from kubeloop.contracts.frameworks import Estimator, xgboost
from kubeloop.trainer.frameworks.base import Adapter


@cache
def classifier_class() -> type[BaseEstimator]:
    """:class:`XGBClassifier` that keeps the labels it was given (built on first use)."""
    import xgboost as xgb

    class XGBClassifier(xgb.XGBClassifier):
        """XGBoost's classifier with the training data's labels (it takes 0..n-1 only)."""

        def fit(self, x: Any, y: Any, **kwargs: Any) -> XGBClassifier:
            labels, codes = np.unique(np.asarray(y), return_inverse=True)
            self.labels_ = None  # XGBoost checks classes_ against the codes while fitting
            super().fit(x, codes, **kwargs)
            self.labels_ = labels
            return self

        @property
        def classes_(self) -> np.ndarray[Any, Any]:
            labels = getattr(self, "labels_", None)
            return np.arange(self.n_classes_) if labels is None else labels

        def predict(self, x: Any, **kwargs: Any) -> np.ndarray[Any, Any]:
            return np.asarray(self.classes_[np.asarray(super().predict(x, **kwargs))])

    XGBClassifier.__module__ = __name__
    return XGBClassifier


class XGBoostAdapter(Adapter):
    libraries: ClassVar[tuple[str, ...]] = ("xgboost", "onnxmltools")

    def estimator_class(self, estimator: Estimator) -> type[BaseEstimator]:
        if estimator.name == "XGBClassifier":
            return classifier_class()
        return super().estimator_class(estimator)

    def defaults(self, estimator: Estimator) -> dict[str, Any]:
        return {"n_jobs": 1}  # deterministic, and a Job's CPU limit is what it gets

    def register(self) -> None:
        _register()

    def native_importance(self, fitted: BaseEstimator) -> tuple[str, list[float]] | None:
        booster = fitted.get_booster()
        scores = booster.get_score(importance_type="total_gain")
        names = booster.feature_names or [f"f{i}" for i in range(booster.num_features())]
        return "total gain", [float(scores.get(name, 0.0)) for name in names]


@cache
def _register() -> None:
    """skl2onnx converts XGBoost with onnxmltools' converter and its own shape calculators."""
    import xgboost as xgb
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        classifier_class(),
        "KubeloopXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        xgb.XGBRegressor,
        "KubeloopXGBRegressor",
        calculate_linear_regressor_output_shapes,
        convert_xgboost,
    )


ADAPTER = XGBoostAdapter(xgboost.FRAMEWORK)
