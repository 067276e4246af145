"""The library side of the framework registry: one adapter module per framework.

:mod:`kubeloop.contracts.frameworks` declares the estimators (no ML library imported);
each module here, named like its declaration, says how the trainer builds and checks
them, converts them to ONNX (skl2onnx, with onnxmltools' converters registered for
XGBoost and LightGBM), names their outputs, aligns the fitted model with its export and
reads the library's own feature importance. The libraries themselves are imported on
first use, so a run of one framework never loads another.
"""

from __future__ import annotations

from kubeloop.contracts.frameworks import BY_NAME, ESTIMATORS, FRAMEWORKS, Estimator, Task
from kubeloop.trainer.frameworks import lightgbm, sklearn, xgboost
from kubeloop.trainer.frameworks.base import Adapter, SpecError

#: Each framework's adapter, by the framework's name.
ADAPTERS: dict[str, Adapter] = {
    a.framework.name: a for a in (sklearn.ADAPTER, xgboost.ADAPTER, lightgbm.ADAPTER)
}
missing = sorted({f.name for f in FRAMEWORKS} - set(ADAPTERS))
if missing:  # a declaration without its library side: a bug, caught on import
    raise RuntimeError(f"frameworks declared without a trainer adapter: {missing}")


def estimator_of(task: Task, class_name: str) -> Estimator:
    """The allow-listed estimator named ``class_name`` for ``task``, or a SpecError."""
    if class_name not in ESTIMATORS[task]:
        allowed = ", ".join(ESTIMATORS[task])
        raise SpecError(f"estimator {class_name!r} is not allowed for {task} (allowed: {allowed})")
    return BY_NAME[class_name]


def adapter_of(class_name: str) -> Adapter:
    """The adapter of the framework an allow-listed estimator belongs to."""
    return ADAPTERS[BY_NAME[class_name].framework]


__all__ = ["ADAPTERS", "Adapter", "SpecError", "adapter_of", "estimator_of"]
