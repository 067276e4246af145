"""Ground truth joined to recent predictions by request id; a rolling online metric."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from kubeloop.serving.bounded import ByteBudget
from kubeloop.serving.errors import BadRequestError, TooManyRequestsError
from kubeloop.serving.limits import ENV_PREFIX
from kubeloop.serving.metrics import Metrics, OnlineSnapshot
from kubeloop.serving.settings import ServingSettings
from kubeloop.serving.tensors import Decoded

if TYPE_CHECKING:
    from kubeloop.serving.batching import Outputs
    from kubeloop.serving.model import LoadedModel

LOG = logging.getLogger(__name__)

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


#: estimated bytes of one remembered request besides its id and rows
REMEMBERED_OVERHEAD = 176
#: estimated bytes of one remembered row (a reference and a small number)
ROW_BYTES = 32
#: feedback items looked up or counted per hold of the store's lock (the event loop
#: takes the same lock to remember each answered request)
CHUNK = 256


def remembered_size(request_id: str, predictions: Sequence[Any]) -> int:
    """An estimate of the memory one remembered request holds: a fixed overhead, its
    id, a reference and a number per row, and string labels' text."""
    size = REMEMBERED_OVERHEAD + len(request_id) + ROW_BYTES * len(predictions)
    if predictions and isinstance(predictions[0], str | bytes):
        size += sum(len(p) for p in predictions if isinstance(p, str | bytes))
    return size


class _Remembered:
    """One request's predictions, their estimated size, and whether feedback for the
    request was counted (it counts once)."""

    __slots__ = ("counted", "predictions", "size")

    def __init__(self, predictions: tuple[Any, ...], size: int) -> None:
        self.predictions = predictions
        self.size = size
        self.counted = False


class Recorded(NamedTuple):
    """What one feedback call did to the store."""

    matched: int  # rows counted
    unknown: list[str]  # ids not (or no longer) remembered
    duplicates: int  # items whose request's feedback was already counted


class FeedbackStore:
    """Remembers the most recent requests' predictions — at most ``capacity`` requests
    and ``max_bytes`` estimated bytes; past either the oldest are forgotten and reported
    to ``on_evicted(limit, count)`` — and scores feedback, once per request.

    Classification: accuracy over the last ``window`` rows with feedback.
    Regression: RMSE over the same window.
    """

    def __init__(
        self,
        task: Task,
        capacity: int,
        window: int,
        max_bytes: int = 32 * 1024 * 1024,
        on_evicted: Callable[[str, int], None] | None = None,
    ) -> None:
        self.task = task
        self.capacity = capacity
        self.max_bytes = max_bytes
        # OrderedDict: dropping the oldest is O(1) (a dict's first key is found by a scan
        # past the deleted slots, which grows with the capacity)
        self._predictions: OrderedDict[str, _Remembered] = OrderedDict()
        self._bytes = 0
        self._scores: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._on_evicted = on_evicted

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "rmse"

    @property
    def bytes(self) -> int:
        """The remembered requests' estimated size."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._predictions)

    def remember(self, request_id: str, predictions: Sequence[Any]) -> None:
        """Keep one request's predictions (one per row), replacing any under the same id;
        the oldest are forgotten past ``capacity`` or ``max_bytes``."""
        entry = _Remembered(tuple(predictions), remembered_size(request_id, predictions))
        by_count = by_bytes = 0
        with self._lock:
            preds = self._predictions
            old = preds.pop(request_id, None)
            if old is not None:
                self._bytes -= old.size
            preds[request_id] = entry
            self._bytes += entry.size
            while len(preds) > self.capacity:
                self._bytes -= preds.popitem(last=False)[1].size
                by_count += 1
            while preds and self._bytes > self.max_bytes:
                self._bytes -= preds.popitem(last=False)[1].size
                by_bytes += 1
        if self._on_evicted is not None:
            if by_count:
                self._on_evicted("count", by_count)
            if by_bytes:
                self._on_evicted("bytes", by_bytes)

    def record(self, items: Sequence[tuple[str, Any]]) -> Recorded:
        """Score ``(request_id, truth)`` pairs; truth is one value, or a list with one
        per row of that request. A request's feedback counts once: later items for it
        (in this call or another) are duplicates. A bad item raises ValueError and
        records nothing."""
        found = self._look_up(items)
        scored: list[tuple[_Remembered, list[float]]] = []
        unknown: list[str] = []
        for (request_id, truth), entry in zip(items, found, strict=True):
            if entry is None:
                unknown.append(request_id)
                continue
            predicted = entry.predictions
            truths = truth if isinstance(truth, list) else [truth]
            if len(truths) != len(predicted):
                raise ValueError(
                    f"feedback for {request_id!r} has {len(truths)} value(s); "
                    f"the request had {len(predicted)} row(s)"
                )
            scored.append(
                (entry, [self._score(p, t) for p, t in zip(predicted, truths, strict=True)])
            )
        matched, duplicates = self._count(scored)
        return Recorded(matched, unknown, duplicates)

    def _look_up(self, items: Sequence[tuple[str, Any]]) -> list[_Remembered | None]:
        preds = self._predictions
        found: list[_Remembered | None] = []
        for start in range(0, len(items), CHUNK):
            with self._lock:
                found.extend(preds.get(rid) for rid, _ in items[start : start + CHUNK])
        return found

    def _count(self, scored: list[tuple[_Remembered, list[float]]]) -> tuple[int, int]:
        """Add the scores of requests not counted before; (rows added, duplicates)."""
        matched = duplicates = 0
        for start in range(0, len(scored), CHUNK):
            with self._lock:
                for entry, scores in scored[start : start + CHUNK]:
                    if entry.counted:
                        duplicates += 1
                        continue
                    entry.counted = True
                    self._scores.extend(scores)
                    matched += len(scores)
        return matched, duplicates

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

    def totals(self) -> tuple[float, int]:
        """The window's score sum (hits, or squared errors) and its rows: what adds up
        across replicas, where the metrics themselves do not."""
        with self._lock:  # fsum: exact; O(window) per scrape, not per request
            return math.fsum(self._scores), len(self._scores)

    def value(self) -> float | None:
        """Accuracy or RMSE over the window; None before any feedback."""
        total, n = self.totals()
        if n == 0:
            return None
        mean = total / n
        return mean if self.task == "classification" else math.sqrt(mean)


@dataclass(frozen=True)
class FeedbackResult:
    """What one feedback call did, and the online metric after it."""

    matched: int
    unknown: list[str]
    metric: str
    value: float | None
    rows: int
    duplicates: int = 0
    #: the ids this pod knows (matched now or counted before)
    known: tuple[str, ...] = ()
    #: the (id, truth) pairs it does not: for the deployment's other pods
    unknown_items: tuple[tuple[str, Any], ...] = ()
    #: the (id, truth) pairs it knows: what its prediction log records as labels
    known_items: tuple[tuple[str, Any], ...] = ()


class FeedbackRecorder:
    """The server's feedback: remembers every answered request (a prediction observer),
    scores ground truth sent later, and counts it. The store lives across reloads and
    starts afresh only when a new model has another task. Feedback bodies are decoded
    and scored on one worker thread, one at a time, so a large body never stalls the
    event loop."""

    def __init__(self, settings: ServingSettings, metrics: Metrics) -> None:
        self._capacity = settings.feedback_capacity
        self._max_bytes = settings.feedback_capacity_bytes
        self._window = settings.feedback_window
        self._floor_metric, self._floor = settings.feedback_metric, settings.feedback_floor
        self._metrics = metrics
        self._name = "unknown"
        self.store: FeedbackStore | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback")
        self._budget = ByteBudget(settings.feedback_bytes_per_second, settings.max_feedback_bytes)
        self._pending = 0
        metrics.feedback_pending.set_function(lambda: self._pending)

    def on_model(self, model: LoadedModel) -> None:
        """A model was swapped in."""
        self._name = model.name
        if self.store is None or self.store.task != model.task:
            self.store = FeedbackStore(
                model.task, self._capacity, self._window, self._max_bytes, self._evicted
            )
        if self._floor is not None and self.store.metric != self._floor_metric:
            LOG.warning(
                "the feedback floor is for %s, but model %s (%s) is scored by %s: "
                "no floor is exported",
                self._floor_metric,
                model.name,
                model.task,
                self.store.metric,
            )

    def _evicted(self, limit: str, count: int) -> None:
        self._metrics.feedback_evicted.labels(self._name, limit).inc(count)

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

    def admit(self, size: int) -> None:
        """Spend ``size`` bytes of the feedback budget, or refuse the body (429): decoding
        and scoring a large body holds the interpreter for tens of milliseconds, so an
        unbounded stream of them would take it from inference."""
        wait = self._budget.take(size)
        if wait:
            self._metrics.feedback_refused.inc()
            raise TooManyRequestsError(
                f"feedback is over {self._budget.rate} bytes per second "
                f"({ENV_PREFIX}FEEDBACK_BYTES_PER_SECOND); retry in {wait:.1f} s",
                wait,
            )

    def spend(self, size: int) -> None:
        """Charge a body admitted before its length was known (no Content-Length)."""
        self._budget.spend(size)

    async def record_off_loop(
        self, model: LoadedModel, decode: Callable[[], Sequence[tuple[str, Any]]]
    ) -> FeedbackResult:
        """``decode()`` a body into ``(request_id, truth)`` pairs and :meth:`record` them,
        on the feedback thread (bodies wait their turn there, counted as pending)."""
        loop = asyncio.get_running_loop()
        self._pending += 1
        try:
            return await loop.run_in_executor(self._worker, lambda: self.record(model, decode()))
        finally:
            self._pending -= 1

    def record(self, model: LoadedModel, items: Sequence[tuple[str, Any]]) -> FeedbackResult:
        """Score ``(request_id, truth)`` pairs against what ``model`` answered."""
        store = self.store
        assert store is not None  # set with the first model
        try:
            done = store.record(items)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        counter = self._metrics.feedback
        for result, count in (
            ("matched", done.matched),
            ("unknown", len(done.unknown)),
            ("duplicate", done.duplicates),
        ):
            if count:
                counter.labels(model.name, model.version, result).inc(count)
        missing = set(done.unknown)
        return FeedbackResult(
            done.matched,
            done.unknown,
            store.metric,
            store.value(),
            store.rows,
            done.duplicates,
            known=tuple(dict.fromkeys(rid for rid, _ in items if rid not in missing)),
            unknown_items=tuple(item for item in items if item[0] in missing),
            known_items=tuple(item for item in items if item[0] not in missing),
        )

    def close(self) -> None:
        """Stop the feedback thread (bodies still waiting are dropped)."""
        self._worker.shutdown(wait=False, cancel_futures=True)

    def snapshot(self, model: LoadedModel | None) -> OnlineSnapshot | None:
        """The scrape-time online-metric gauges."""
        store = self.store
        if model is None or store is None:
            return None
        total, rows = store.totals()
        value = None if rows == 0 else store.value()
        floor = self._floor if store.metric == self._floor_metric else None
        return OnlineSnapshot(model.name, model.version, store.metric, value, rows, total, floor)
