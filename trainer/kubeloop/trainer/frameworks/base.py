"""What every framework adapter does: build and check estimators, export, importance.

An :class:`Adapter` holds the library side of one framework the core registry declares
(:mod:`kubeloop.contracts.frameworks`). The defaults here suit any estimator with the
scikit-learn API; a framework overrides what differs. Params are checked with public APIs
only: the names against the constructor's (``get_params`` of a default instance), the
values by fitting on tiny synthetic samples, so a bad value fails in a second with the
library's own words instead of after loading the data.
"""

from __future__ import annotations

import importlib
import re
import warnings
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, clone

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT, VALUE_OUTPUT
from kubeloop.contracts.frameworks import Estimator, Framework, Task

#: Rows of the synthetic sample params are checked on.
TINY_ROWS = 24


class SpecError(Exception):
    """A training request that cannot work; raised before any training."""


#: The time and source location native libraries (XGBoost) put before a message.
NATIVE_PREFIX = re.compile(r"^\[\d{2}:\d{2}:\d{2}\] \S+:\d+: ")
#: The source location native libraries (LightGBM) put after a message.
NATIVE_SUFFIX = re.compile(r" at \S+, line \d+ ?\.?$")


def one_line(exc: BaseException) -> str:
    """An exception as one line (native libraries prefix a source location and append a
    stack trace)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return NATIVE_SUFFIX.sub("", NATIVE_PREFIX.sub("", lines[0])) if lines else type(exc).__name__


def tiny_samples(task: Task) -> list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """Small, well-behaved samples of three features: two and three balanced classes (a
    param may suit only one, e.g. a multiclass objective), or a noisy line."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(TINY_ROWS, 3))
    if task == "classification":
        rows = np.arange(TINY_ROWS)
        return [(x, (rows % 2).astype(np.int64)), (x, (rows % 3).astype(np.int64))]
    return [(x, x @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.1, size=TINY_ROWS))]


class Adapter:
    """One framework's library side; the defaults are scikit-learn's."""

    #: Largest absolute probability difference ONNX Runtime may show (classification).
    proba_tolerance: float = 1e-4
    #: Largest regression difference, relative to max(1, |largest prediction|).
    value_tolerance: float = 1e-4
    #: ONNX output names the converter gives, mapped to the names of the convention.
    outputs: ClassVar[dict[Task, dict[str, str]]] = {
        "classification": {"label": LABEL_OUTPUT, "probabilities": PROBA_OUTPUT},
        "regression": {"variable": VALUE_OUTPUT},
    }
    #: Distributions whose versions the lineage records.
    libraries: ClassVar[tuple[str, ...]] = ()

    def __init__(self, framework: Framework) -> None:
        self.framework = framework

    def estimator_class(self, estimator: Estimator) -> type[BaseEstimator]:
        cls: type[BaseEstimator] = getattr(
            importlib.import_module(estimator.module), estimator.name
        )
        return cls

    def defaults(self, estimator: Estimator) -> dict[str, Any]:
        """Params applied unless the spec gives them (quiet logs, for instance)."""
        return {}

    def make(self, estimator: Estimator, params: dict[str, Any], seed: int) -> BaseEstimator:
        """The estimator with ``params`` (names and values checked), seeded unless told."""
        cls = self.estimator_class(estimator)
        known = cls().get_params()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise SpecError(
                f"estimator {estimator.name}: unexpected keyword argument {unknown[0]!r}"
            )
        given = {**self.defaults(estimator), **params}
        if "random_state" in known and "random_state" not in params:
            given["random_state"] = seed
        try:
            made: BaseEstimator = cls(**given)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"estimator {estimator.name}: {one_line(exc)}") from exc
        self.check(made, estimator.task, f"estimator {estimator.name}")
        return made

    def check(self, made: BaseEstimator, task: Task, where: str) -> None:
        """Fit a copy on the tiny samples: a param value no sample suits fails here, in the
        library's words for the first, named by ``where``."""
        failures: list[Exception] = []
        for x, y in tiny_samples(task):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    clone(made).fit(x, y)
                return
            except Exception as exc:  # whatever the library raises for a bad value
                failures.append(exc)
        raise SpecError(f"{where}: {one_line(failures[0])}") from failures[0]

    def register(self) -> None:
        """Make skl2onnx able to convert this framework's estimators (skl2onnx's own: done)."""

    def align(self, fitted: BaseEstimator) -> None:
        """Make the fitted model compute as its ONNX export will (nothing to do by default)."""

    def native_importance(self, fitted: BaseEstimator) -> tuple[str, list[float]] | None:
        """The library's own importance per encoded column, and what it measures, if any."""
        return None
