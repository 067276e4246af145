"""Ground truth joined to recent predictions by request id; a rolling online metric."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kubeloop.serving.errors import BadRequestError
from kubeloop.serving.metrics import Metrics, OnlineSnapshot
from kubeloop.serving.settings import ServingSettings
from kubeloop.serving.tensors import Decoded

if TYPE_CHECKING:
    from kubeloop.serving.batching import Outputs
    from kubeloop.serving.model import LoadedModel

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


@dataclass(frozen=True)
class FeedbackResult:
    """What one feedback call did, and the online metric after it."""

    matched: int
    unknown: list[str]
    metric: str
    value: float | None
    rows: int


class FeedbackRecorder:
    """The server's feedback: remembers every answered request (a prediction observer),
    scores ground truth sent later, and counts it. The store lives across reloads and
    starts afresh only when a new model has another task."""

    def __init__(self, settings: ServingSettings, metrics: Metrics) -> None:
        self._capacity = settings.feedback_capacity
        self._window = settings.feedback_window
        self._metrics = metrics
        self.store: FeedbackStore | None = None

    def on_model(self, model: LoadedModel) -> None:
        """A model was swapped in."""
        if self.store is None or self.store.task != model.task:
            self.store = FeedbackStore(model.task, self._capacity, self._window)

    def on_prediction(
        self,
        model: LoadedModel,
        request: Decoded,
        request_id: str,
        outputs: Outputs,
        started: float,
    ) -> None:
        store = self.store
        if store is not None:
            store.remember(request_id, outputs[model.label_output].reshape(-1).tolist())

    def record(self, model: LoadedModel, items: Sequence[tuple[str, Any]]) -> FeedbackResult:
        """Score ``(request_id, truth)`` pairs against what ``model`` answered."""
        store = self.store
        assert store is not None  # set with the first model
        try:
            matched, unknown = store.record(items)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        counter = self._metrics.feedback
        if matched:
            counter.labels(model.name, model.version, "matched").inc(matched)
        if unknown:
            counter.labels(model.name, model.version, "unknown").inc(len(unknown))
        return FeedbackResult(matched, unknown, store.metric, store.value(), store.rows)

    def snapshot(self, model: LoadedModel | None) -> OnlineSnapshot | None:
        """The scrape-time online-metric gauges."""
        store = self.store
        if model is None or store is None:
            return None
        return OnlineSnapshot(model.name, model.version, store.metric, store.value(), store.rows)
