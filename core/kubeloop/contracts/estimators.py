"""The one estimator allow-list: what a TrainingJob may name, for which task, from where.

The API (a CEL rule on ``spec.estimator.className``) and the trainer (which
imports the class) both read this table, so they cannot disagree.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Task = Literal["classification", "regression"]


class Estimator(NamedTuple):
    """An allow-listed estimator: its class name, task and the module that defines it."""

    name: str
    task: Task
    module: str


#: Each converts to ONNX with skl2onnx, and the trainer's parity check covers every one.
#: (HistGradientBoosting* are left out: skl2onnx 1.20 cannot convert them from
#: scikit-learn 1.9.)
ALLOWED: tuple[Estimator, ...] = (
    Estimator("LogisticRegression", "classification", "sklearn.linear_model"),
    Estimator("RandomForestClassifier", "classification", "sklearn.ensemble"),
    Estimator("ExtraTreesClassifier", "classification", "sklearn.ensemble"),
    Estimator("GradientBoostingClassifier", "classification", "sklearn.ensemble"),
    Estimator("DecisionTreeClassifier", "classification", "sklearn.tree"),
    Estimator("KNeighborsClassifier", "classification", "sklearn.neighbors"),
    Estimator("GaussianNB", "classification", "sklearn.naive_bayes"),
    Estimator("MLPClassifier", "classification", "sklearn.neural_network"),
    Estimator("LinearRegression", "regression", "sklearn.linear_model"),
    Estimator("Ridge", "regression", "sklearn.linear_model"),
    Estimator("Lasso", "regression", "sklearn.linear_model"),
    Estimator("ElasticNet", "regression", "sklearn.linear_model"),
    Estimator("RandomForestRegressor", "regression", "sklearn.ensemble"),
    Estimator("ExtraTreesRegressor", "regression", "sklearn.ensemble"),
    Estimator("GradientBoostingRegressor", "regression", "sklearn.ensemble"),
    Estimator("DecisionTreeRegressor", "regression", "sklearn.tree"),
    Estimator("KNeighborsRegressor", "regression", "sklearn.neighbors"),
    Estimator("MLPRegressor", "regression", "sklearn.neural_network"),
)

#: Allow-listed class names by task, in the table's order.
ESTIMATORS: dict[Task, tuple[str, ...]] = {
    task: tuple(e.name for e in ALLOWED if e.task == task)
    for task in ("classification", "regression")
}
#: The module defining each allow-listed class.
MODULES: dict[str, str] = {e.name: e.module for e in ALLOWED}
