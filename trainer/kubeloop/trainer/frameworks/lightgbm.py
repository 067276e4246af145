"""LightGBM: onnxmltools' converter, split thresholds made float32, total-gain importance.

ONNX Runtime compares float32 features with float32 split values; LightGBM keeps its
thresholds in float64. A threshold that rounds *up* to a float32 value sends a row holding
exactly that value left in ONNX and right in LightGBM. :meth:`LightGBMAdapter.align` rounds
every threshold *down* to float32 in the fitted booster (through its public model-string
round trip): for float32 inputs ``x <= t`` and ``x <= float32_down(t)`` agree, so the
fitted model predicts exactly as before on what the served model sees, and the export
carries the same thresholds.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from kubeloop.contracts.frameworks import Estimator, lightgbm
from kubeloop.trainer.frameworks.base import Adapter


def float32_down(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The largest float32 not above each value (as float64, exactly)."""
    rounded = values.astype(np.float32)
    up = rounded.astype(np.float64) > values
    rounded[up] = np.nextafter(rounded[up], np.float32(-np.inf))
    return rounded.astype(np.float64)


def float32_thresholds(model: str) -> str:
    """A LightGBM model string with every split threshold rounded down to float32.

    ``tree_sizes`` (byte offsets of the trees) is dropped, as the text changes length;
    LightGBM then reads the trees in order.
    """
    lines = []
    for line in model.split("\n"):
        if line.startswith("tree_sizes="):
            continue
        if line.startswith("threshold="):
            values = np.array(line.removeprefix("threshold=").split(), dtype=np.float64)
            line = "threshold=" + " ".join(repr(float(v)) for v in float32_down(values))
        lines.append(line)
    return "\n".join(lines)


class LightGBMAdapter(Adapter):
    libraries: ClassVar[tuple[str, ...]] = ("lightgbm", "onnxmltools")

    def defaults(self, estimator: Estimator) -> dict[str, Any]:
        # No C++ log lines on stdout; one thread: deterministic, and a Job's CPU limit.
        return {"verbose": -1, "n_jobs": 1}

    def register(self) -> None:
        _register()

    def align(self, fitted: BaseEstimator) -> None:
        booster = fitted.booster_
        booster.model_from_string(float32_thresholds(booster.model_to_string()))

    def native_importance(self, fitted: BaseEstimator) -> tuple[str, list[float]] | None:
        gains = fitted.booster_.feature_importance(importance_type="gain")
        return "total gain", [float(v) for v in gains]


@cache
def _register() -> None:
    """skl2onnx converts LightGBM with onnxmltools' converter and its own shape calculators."""
    import lightgbm as lgb
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        lgb.LGBMClassifier,
        "KubeloopLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        lgb.LGBMRegressor,
        "KubeloopLGBMRegressor",
        calculate_linear_regressor_output_shapes,
        convert_lightgbm,
        options={"split": None},
    )


ADAPTER = LightGBMAdapter(lightgbm.FRAMEWORK)
