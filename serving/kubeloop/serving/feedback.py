"""Ground truth joined to recent predictions by request id; a rolling online metric."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

Task = Literal["classification", "regression"]


def _same_label(predicted: Any, truth: Any) -> bool:
    if predicted == truth:
        return True
    # labels arrive from JSON as numbers or strings; compare their text forms
    return _label_text(predicted) == _label_text(truth)


def _label_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class FeedbackStore:
    """Remembers the last ``capacity`` requests' predictions and scores feedback.

    Classification: accuracy over the last ``window`` rows with feedback.
    Regression: RMSE over the same window.
    """

    def __init__(self, task: Task, capacity: int, window: int) -> None:
        self.task = task
        self.capacity = capacity
        self._predictions: dict[str, tuple[Any, ...]] = {}
        self._scores: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "rmse"

    def remember(self, request_id: str, predictions: Sequence[Any]) -> None:
        """Keep one request's predictions (one per row); oldest forgotten past capacity."""
        preds = self._predictions
        preds[request_id] = tuple(predictions)
        if len(preds) > self.capacity:
            del preds[next(iter(preds))]

    def record(self, items: Sequence[tuple[str, Any]]) -> tuple[int, list[str]]:
        """Score ``(request_id, truth)`` pairs; truth is one value, or a list with one
        per row of that request. Returns the rows matched and the ids not found."""
        scores: list[float] = []
        unknown: list[str] = []
        with self._lock:
            # score everything first: a bad item rejects the whole call, records nothing
            for request_id, truth in items:
                predicted = self._predictions.get(request_id)
                if predicted is None:
                    unknown.append(request_id)
                    continue
                truths = truth if isinstance(truth, list) else [truth]
                if len(truths) != len(predicted):
                    raise ValueError(
                        f"feedback for {request_id!r} has {len(truths)} value(s); "
                        f"the request had {len(predicted)} row(s)"
                    )
                scores.extend(self._score(p, t) for p, t in zip(predicted, truths, strict=True))
            self._scores.extend(scores)
        return len(scores), unknown

    def _score(self, predicted: Any, truth: Any) -> float:
        if self.task == "classification":
            return 1.0 if _same_label(predicted, truth) else 0.0
        try:
            err = float(predicted) - float(truth)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"regression feedback must be a number, got {truth!r}") from exc
        if not math.isfinite(err):
            raise ValueError(f"regression feedback must be finite, got {truth!r}")
        return err * err

    @property
    def rows(self) -> int:
        return len(self._scores)

    def value(self) -> float | None:
        """Accuracy or RMSE over the window; None before any feedback."""
        with self._lock:
            n = len(self._scores)
            if n == 0:
                return None
            mean = math.fsum(self._scores) / n  # exact; O(window) per scrape, not per request
        return mean if self.task == "classification" else math.sqrt(mean)
