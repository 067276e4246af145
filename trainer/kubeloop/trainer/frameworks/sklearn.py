"""scikit-learn: skl2onnx converts it natively; trees report impurity importance."""

from __future__ import annotations

from typing import ClassVar

from sklearn.base import BaseEstimator

from kubeloop.contracts.frameworks import sklearn
from kubeloop.trainer.frameworks.base import Adapter


class SklearnAdapter(Adapter):
    libraries: ClassVar[tuple[str, ...]] = ()  # recorded for every run

    def native_importance(self, fitted: BaseEstimator) -> tuple[str, list[float]] | None:
        values = getattr(fitted, "feature_importances_", None)
        if values is None:
            return None
        return "mean decrease in impurity", [float(v) for v in values]


ADAPTER = SklearnAdapter(sklearn.FRAMEWORK)
