"""What watches the predictions, off the request's critical path.

Two small interfaces:

* :class:`BatchObserver` — called once per model call (a micro-batch of requests),
  after the responses are sent: the batch-size and prediction histograms
  (:class:`PredictionStats`) and the drift windows (:class:`DriftMonitor`). Both
  belong to one loaded model and are replaced with it.
* :class:`PredictionObserver` — called once per answered request, with its id: the
  prediction log (:class:`PredictionLogger`) and the feedback memory
  (:class:`~kubeloop.serving.feedback.FeedbackRecorder`). They outlive model swaps.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kubeloop.driftreport import DriftReport
from kubeloop.serving.batching import Feed, Outputs
from kubeloop.serving.describe import Description
from kubeloop.serving.drift import DriftWindow, Reference, window_report
from kubeloop.serving.logship import Shipper
from kubeloop.serving.metrics import MAX_CLASSES, DriftSnapshot, Metrics
from kubeloop.serving.predlog import NOT_SHIPPED, Batch, Entry, Labels, PredictionLog
from kubeloop.serving.settings import ServingSettings
from kubeloop.serving.tensors import Decoded

if TYPE_CHECKING:
    from kubeloop.serving.model import LoadedModel

log = logging.getLogger("kubeloop.serving.observers")

#: predictions of one loop turn from which they are queued as one batch: a batch's lines
#: cost a fixed ~5 us more to start (its shared columns and parts) and ~4 us less per line,
#: so one or two requests (one connection, say) are queued and written each on its own
BATCH_MIN = 3


class BatchObserver(Protocol):
    def on_batch(self, feed: Feed, outputs: Outputs) -> None:
        """One model call's inputs and outputs (every row of every request in it)."""


class PredictionObserver(Protocol):
    def on_prediction(
        self,
        model: LoadedModel,
        request: Decoded,
        request_id: str,
        outputs: Outputs,
        started: float,
    ) -> None:
        """One request's prediction; ``started`` is its ``time.perf_counter()`` at arrival."""


class PredictionStats:
    """Rows per model call, and predicted rows per class (classification) or the
    predicted values (regression). Metric children are resolved once per model."""

    def __init__(self, metrics: Metrics, model: str, version: str, desc: Description) -> None:
        self._label_output = desc.label_output
        self._batch_hist = metrics.batch_size.labels(model, version)
        self._predictions = metrics.predictions
        self._model, self._version = model, version
        self._class_counters: dict[Any, Any] = {}
        self._value_hist = None
        if desc.task == "regression":
            self._value_hist = metrics.value_histogram(desc.value_buckets).labels(model, version)
        for value in (desc.classes or [])[:MAX_CLASSES]:
            # each class at 0 from the start: a class one version never predicts is a 0 in
            # the comparison of two versions' class counts, not a missing series
            self._count_class(value, 0)

    def on_batch(self, feed: Feed, outputs: Outputs) -> None:
        labels = outputs[self._label_output]
        n = labels.shape[0]
        self._batch_hist.observe(n)
        flat = labels.reshape(-1)
        if self._value_hist is not None:
            for v in flat.tolist():
                self._value_hist.observe(v)
        elif n == 1:
            self._count_class(flat[0].item() if hasattr(flat[0], "item") else flat[0], 1)
        else:
            values, counts = np.unique(flat, return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                self._count_class(v, c)

    def _count_class(self, value: Any, count: int) -> None:
        counter = self._class_counters.get(value)
        if counter is None:
            key = str(value) if len(self._class_counters) < MAX_CLASSES else "other"
            counter = self._predictions.labels(self._model, self._version, key)
            self._class_counters[value] = counter
        counter.inc(count)


class DriftMonitor:
    """The model's drift windows: the watched input features, and the predictions."""

    def __init__(
        self,
        features: DriftWindow | None,
        columns: list[int],
        prediction: DriftWindow | None,
        feed_names: Sequence[str],
        label_output: str,
    ) -> None:
        self.features = features
        self.prediction = prediction
        self._columns = columns
        self._all = columns == list(range(len(feed_names)))
        self._feed_names = feed_names
        self._label_output = label_output

    @classmethod
    def build(
        cls, desc: Description, settings: ServingSettings, feed_names: Sequence[str]
    ) -> DriftMonitor | None:
        """Windows over the profiled features ``settings`` watches and over the
        predictions; None when drift is off."""
        if not settings.drift:
            return None
        index = {name: i for i, name in enumerate(feed_names)}
        watched = settings.drift_features
        refs: list[Reference] = []
        columns: list[int] = []
        for ref in desc.feature_references:
            if ref.name in index and (watched is None or ref.name in watched):
                refs.append(ref)
                columns.append(index[ref.name])
        features = DriftWindow(refs, settings.drift_window) if refs else None
        prediction = None
        if desc.prediction_reference is not None:
            prediction = DriftWindow([desc.prediction_reference], settings.drift_window)
        return cls(features, columns, prediction, feed_names, desc.label_output)

    def on_batch(self, feed: Feed, outputs: Outputs) -> None:
        window = self.features
        if window is not None:
            matrix = feed.matrix
            if window.numeric_only and matrix is not None:
                window.update_matrix(matrix if self._all else matrix[:, self._columns])
            else:
                names = self._feed_names
                window.update([feed[names[i]] for i in self._columns])
        if self.prediction is not None:
            self.prediction.update_column(outputs[self._label_output].reshape(-1))

    def snapshot(self, model: str, version: str, threshold: float) -> DriftSnapshot | None:
        """The scrape-time drift gauges (None while no feature is watched: the prediction
        window alone is not reported)."""
        features = self.features
        if features is None:
            return None
        pred = self.prediction
        pred_scores = pred.scores() if pred is not None else None
        return DriftSnapshot(
            model=model,
            version=version,
            threshold=threshold,
            features=features.scores(),
            rows=features.rows,
            prediction=next(iter(pred_scores.values()), 0.0) if pred_scores else None,
            prediction_rows=pred.rows if pred is not None else 0,
        )

    def report(self, model: str, version: str, threshold: float) -> DriftReport | None:
        """The drift report of this process's windows (None while no feature is watched,
        as :meth:`snapshot`)."""
        features = self.features
        if features is None:
            return None
        pred = self.prediction
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        return DriftReport(
            model=model,
            version=version,
            threshold=threshold,
            window=features.size,
            rows=features.rows,
            generated=now.replace("+00:00", "Z"),
            features=window_report(features, threshold),
            prediction=window_report(pred, threshold)[0] if pred is not None else None,
        )


class PredictionLogger:
    """Hands each prediction to the prediction log (with the inputs for a sampled share).
    Its line counters are labelled with ``model``, the name served at start.

    On the event loop, the predictions of one loop turn (the requests of a micro-batch
    answer in the same turn) are gathered and queued as one :class:`Batch` at the end of
    the turn: one queue put and one wake-up check per turn instead of one per request."""

    def __init__(self, settings: ServingSettings, metrics: Metrics, model: str) -> None:
        assert settings.prediction_log is not None
        self._share = settings.prediction_log_inputs
        self._rate = settings.prediction_log_sample_rate
        self._rng = random.Random()
        shipper = None
        if settings.prediction_log_upload:
            shipper = Shipper(
                settings.prediction_log,
                settings.prediction_log_upload,
                settings.pod_name,
                settings.prediction_log_keep,
                on_dropped=lambda n: metrics.log_dropped.labels(model, NOT_SHIPPED).inc(n),
            )
        self._log = PredictionLog(
            settings.prediction_log,
            settings.prediction_log_queue,
            on_written=lambda n: metrics.log_lines.labels(model).inc(n),
            on_dropped=lambda n, reason: metrics.log_dropped.labels(model, reason).inc(n),
            max_bytes=settings.prediction_log_queue_bytes,
            rotate_bytes=settings.prediction_log_max_bytes,
            keep=settings.prediction_log_keep,
            shipper=shipper,
        )

        self._pending: list[Entry] = []

    def start(self) -> None:
        self._log.start()

    def flush(self) -> None:
        """Queue the predictions gathered in this loop turn (as one batch)."""
        pending, self._pending = self._pending, []
        if len(pending) >= BATCH_MIN:
            self._log.submit_batch(Batch(tuple(pending), time.time()))
            return
        for entry in pending:
            self._log.submit(entry)

    def close(self, timeout: float) -> None:
        """Write what is queued within ``timeout`` seconds, then stop (blocking)."""
        self.flush()
        self._log.close(timeout)

    def on_prediction(
        self,
        model: LoadedModel,
        request: Decoded,
        request_id: str,
        outputs: Outputs,
        started: float,
    ) -> None:
        rate = self._rate
        if rate < 1 and (rate <= 0 or self._rng.random() >= rate):
            return  # not in the sample
        inputs = None
        share = self._share
        if share > 0 and (share >= 1 or self._rng.random() < share):
            inputs = {s.name: c for s, c in zip(model.inputs, request.columns, strict=True)}
        entry = Entry(
            request_id,
            model.name,
            model.version,
            time.time(),
            time.perf_counter() - started,
            dict(outputs),
            inputs,
            "stable",
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop: nothing to gather with
            loop = None
        if loop is None or inputs is not None or request.rows != 1:
            self.flush()  # the lines stay in answer order
            self._log.submit(entry)
            return
        if not self._pending:
            loop.call_soon(self.flush)
        self._pending.append(entry)

    def on_feedback(self, model: str, items: Sequence[tuple[str, Any]]) -> None:
        """Log accepted feedback items (never sampled: a label is rarer than a prediction,
        and which predictions were logged is not remembered)."""
        if items:
            self._log.submit(Labels(tuple(items), model, time.time()))
