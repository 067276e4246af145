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

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from kubeloop.contracts.frameworks import Estimator, Task, lightgbm
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


@contextmanager
def native_stderr_discarded() -> Iterator[None]:
    """Discard what native code writes to file descriptor 2 meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@cache
def quiet() -> None:
    """Send LightGBM's native log lines (fatal errors too) to a Python logger instead of
    stdout: a failed check is reported once, as the trainer's one-line error."""
    import lightgbm as lgb

    lgb.register_logger(logging.getLogger(__name__))


class LightGBMAdapter(Adapter):
    libraries: ClassVar[tuple[str, ...]] = ("lightgbm", "onnxmltools")

    def estimator_class(self, estimator: Estimator) -> type[BaseEstimator]:
        quiet()
        return super().estimator_class(estimator)

    def check(self, made: BaseEstimator, task: Task, where: str) -> None:
        # LightGBM also prints a failed check to the process's stderr, past any logger.
        with native_stderr_discarded():
            super().check(made, task, where)

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
