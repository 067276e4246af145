"""scikit-learn: the estimators skl2onnx converts and the trainer's parity check covers.

(HistGradientBoosting* are left out: skl2onnx 1.20 cannot convert them from
scikit-learn 1.9.)
"""

from __future__ import annotations

from kubeloop.contracts.frameworks.base import Estimator, Framework, Task

NAME = "sklearn"


def _e(name: str, task: Task, module: str, *, scaled: bool = True) -> Estimator:
    return Estimator(name, task, module, NAME, scaled)


FRAMEWORK = Framework(
    name=NAME,
    title="scikit-learn",
    estimators=(
        _e("LogisticRegression", "classification", "sklearn.linear_model"),
        _e("RandomForestClassifier", "classification", "sklearn.ensemble", scaled=False),
        _e("ExtraTreesClassifier", "classification", "sklearn.ensemble", scaled=False),
        _e("GradientBoostingClassifier", "classification", "sklearn.ensemble", scaled=False),
        _e("DecisionTreeClassifier", "classification", "sklearn.tree", scaled=False),
        _e("KNeighborsClassifier", "classification", "sklearn.neighbors"),
        _e("GaussianNB", "classification", "sklearn.naive_bayes"),
        _e("MLPClassifier", "classification", "sklearn.neural_network"),
        _e("LinearRegression", "regression", "sklearn.linear_model"),
        _e("Ridge", "regression", "sklearn.linear_model"),
        _e("Lasso", "regression", "sklearn.linear_model"),
        _e("ElasticNet", "regression", "sklearn.linear_model"),
        _e("RandomForestRegressor", "regression", "sklearn.ensemble", scaled=False),
        _e("ExtraTreesRegressor", "regression", "sklearn.ensemble", scaled=False),
        _e("GradientBoostingRegressor", "regression", "sklearn.ensemble", scaled=False),
        _e("DecisionTreeRegressor", "regression", "sklearn.tree", scaled=False),
        _e("KNeighborsRegressor", "regression", "sklearn.neighbors"),
        _e("MLPRegressor", "regression", "sklearn.neural_network"),
    ),
)
