"""The registry's types: what a framework module declares."""

from __future__ import annotations

from typing import Literal, NamedTuple

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = ("classification", "regression")


class Estimator(NamedTuple):
    """An allow-listed estimator: its class name, task, defining module and framework."""

    name: str
    task: Task
    module: str
    framework: str
    #: Whether numeric inputs are standard-scaled before it. Trees are not: they do not need
    #: it, and a float32 scaler in ONNX against a float64 one in the library would move values
    #: across split thresholds and break parity.
    scaled: bool


class Framework(NamedTuple):
    """A training library: its name (the trainer adapter's module name) and its estimators."""

    name: str
    #: What the library is called in docs, messages and the model card.
    title: str
    estimators: tuple[Estimator, ...]
