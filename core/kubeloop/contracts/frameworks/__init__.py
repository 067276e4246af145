"""The framework registry: which estimators a TrainingJob may name, for which task, from where.

One module per framework (:mod:`.sklearn`, :mod:`.xgboost`, :mod:`.lightgbm`) declares its
estimators; this package joins them into the one allow-list that the API (a CEL rule on
``spec.estimator.className``) and the trainer (which imports the class) both read, so they
cannot disagree. The declarations import no ML library: the operator image has none.
How each framework validates params, converts to ONNX, names its outputs and reports
importance lives next to the library, in ``kubeloop.trainer.frameworks``, one module per
framework under the same name. Adding a framework means one module here, one there, and
their tests.
"""

from __future__ import annotations

from kubeloop.contracts.frameworks import lightgbm, sklearn, xgboost
from kubeloop.contracts.frameworks.base import TASKS, Estimator, Framework, Task

__all__ = [
    "ALLOWED",
    "BY_NAME",
    "ESTIMATORS",
    "FRAMEWORKS",
    "TASKS",
    "Estimator",
    "Framework",
    "Task",
]

#: Every framework, in the order the allow-list lists them.
FRAMEWORKS: tuple[Framework, ...] = (sklearn.FRAMEWORK, xgboost.FRAMEWORK, lightgbm.FRAMEWORK)
#: Every allow-listed estimator.
ALLOWED: tuple[Estimator, ...] = tuple(e for f in FRAMEWORKS for e in f.estimators)
#: Allow-listed class names by task, in the table's order.
ESTIMATORS: dict[Task, tuple[str, ...]] = {
    task: tuple(e.name for e in ALLOWED if e.task == task) for task in TASKS
}
#: Each allow-listed estimator by class name.
BY_NAME: dict[str, Estimator] = {e.name: e for e in ALLOWED}


def _unique() -> None:
    names = [e.name for e in ALLOWED]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        raise RuntimeError(f"estimators declared twice in the framework registry: {twins}")
    for framework in FRAMEWORKS:
        strays = [e.name for e in framework.estimators if e.framework != framework.name]
        if strays:
            raise RuntimeError(f"framework {framework.name} declares others' estimators: {strays}")


_unique()
