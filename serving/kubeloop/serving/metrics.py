"""Prometheus metrics of one serving process.

Label values are bounded: ``model`` is the served name (or ``unknown``),
``version`` the loaded versions, ``protocol`` v1/v2, ``code`` the HTTP statuses
the server answers, ``variant`` stable/canary, ``feature`` the model's features and
``class`` its classes (capped). Drift and online-metric gauges are computed at
scrape time from the sliding windows, so requests only update counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kubeloop.serving.drift import max_score

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)

#: most distinct class labels tracked per model; the rest count as "other"
MAX_CLASSES = 100


@dataclass(frozen=True)
class DriftSnapshot:
    """What the drift collector reports for the current model."""

    model: str
    version: str
    threshold: float
    features: dict[str, float]
    rows: int
    prediction: float | None
    prediction_rows: int


@dataclass(frozen=True)
class OnlineSnapshot:
    model: str
    version: str
    metric: str
    value: float | None
    rows: int
    score_sum: float = 0.0
    floor: float | None = None


MODEL_VERSION = ("model", "version")


class _ScrapeCollector(Collector):
    """Gauges computed from the data plane when Prometheus scrapes."""

    def __init__(
        self,
        drift: Callable[[], DriftSnapshot | None],
        online: Callable[[], OnlineSnapshot | None],
    ) -> None:
        self._drift = drift
        self._online = online

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        d = self._drift()
        if d is not None:
            yield from _drift_families(d)
        o = self._online()
        if o is not None:
            yield from _online_families(o)


def _gauge(
    name: str, doc: str, labels: Sequence[str], values: Sequence[str], value: float
) -> GaugeMetricFamily:
    """A gauge family with one sample."""
    family = GaugeMetricFamily(name, doc, labels=labels)
    family.add_metric(values, value)
    return family


def _drift_families(d: DriftSnapshot) -> Iterator[Metric]:
    mv = [d.model, d.version]
    feature = GaugeMetricFamily(
        "kubeloop_feature_drift",
        "Drift of one input feature: PSI of the sliding window against the reference.",
        labels=[*MODEL_VERSION, "feature", "method"],
    )
    for name, value in d.features.items():
        feature.add_metric([*mv, name, "psi"], value)
    yield feature
    yield _gauge(
        "kubeloop_drift_score",
        "Largest feature drift (PSI) of the model.",
        MODEL_VERSION,
        mv,
        max_score(d.features),
    )
    yield _gauge(
        "kubeloop_drift_threshold",
        "Configured drift threshold (alert when kubeloop_drift_score exceeds it).",
        MODEL_VERSION,
        mv,
        d.threshold,
    )
    yield _gauge(
        "kubeloop_drift_window_rows",
        "Rows currently in the drift sliding window.",
        MODEL_VERSION,
        mv,
        d.rows,
    )
    if d.prediction is not None:
        yield _gauge(
            "kubeloop_prediction_drift",
            "Drift of the prediction distribution: PSI against the training reference.",
            [*MODEL_VERSION, "method"],
            [*mv, "psi"],
            d.prediction,
        )
        yield _gauge(
            "kubeloop_prediction_drift_window_rows",
            "Predictions currently in the prediction-drift sliding window.",
            MODEL_VERSION,
            mv,
            d.prediction_rows,
        )


def _online_families(o: OnlineSnapshot) -> Iterator[Metric]:
    mv = [o.model, o.version]
    if o.value is not None:
        yield _gauge(
            "kubeloop_online_metric",
            "Rolling online accuracy (classification) or RMSE (regression) from feedback.",
            [*MODEL_VERSION, "metric"],
            [*mv, o.metric],
            o.value,
        )
    yield _gauge(
        "kubeloop_online_metric_rows",
        "Rows with feedback in the online-metric window.",
        MODEL_VERSION,
        mv,
        o.rows,
    )
    yield _gauge(
        "kubeloop_online_metric_score_sum",
        "Sum over the online-metric window of each row's score: 1 per correct label "
        "(accuracy) or the squared error (rmse). Summed with the rows across replicas, it "
        "gives the deployment's metric.",
        [*MODEL_VERSION, "metric"],
        [*mv, o.metric],
        o.score_sum,
    )
    if o.floor is not None:
        yield _gauge(
            "kubeloop_online_metric_floor",
            "The deployment's floor for the online metric (for rmse, its ceiling).",
            [*MODEL_VERSION, "metric"],
            [*mv, o.metric],
            o.floor,
        )


class Metrics:
    """Every metric the server exports, on its own registry, by the part that counts it."""

    def __init__(
        self,
        drift: Callable[[], DriftSnapshot | None] = lambda: None,
        online: Callable[[], OnlineSnapshot | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._inference_metrics()
        self._model_metrics()
        self._record_metrics()
        self._limit_metrics()
        self._canary_metrics()
        self.registry.register(_ScrapeCollector(drift, online))

    def _counter(self, name: str, doc: str, labels: Sequence[str]) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: Sequence[str]) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def _inference_metrics(self) -> None:
        self.requests = self._counter(
            "kubeloop_requests",
            "Inference requests by model, version, protocol, status code and variant.",
            [*MODEL_VERSION, "protocol", "code", "variant"],
        )
        self.latency = Histogram(
            "kubeloop_request_duration_seconds",
            "Inference request latency inside the server.",
            [*MODEL_VERSION, "protocol", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kubeloop_batch_size",
            "Rows per model call (after micro-batching).",
            MODEL_VERSION,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.predictions = self._counter(
            "kubeloop_predictions",
            "Predicted rows by class (classification).",
            [*MODEL_VERSION, "class"],
        )
        self.prediction_values: dict[tuple[float, ...], Histogram] = {}

    def _model_metrics(self) -> None:
        self.model_loads = self._counter(
            "kubeloop_model_loads", "Model loads by result (success, failure).", ["model", "result"]
        )
        self.digest_mismatches = self._counter(
            "kubeloop_model_digest_mismatches",
            "Loads refused because model.onnx did not hash to its registered (or described) "
            "sha256; the previous model, if any, keeps serving.",
            ["model"],
        )
        self.model_info = self._gauge(
            "kubeloop_model_info",
            "The model version being served (1) with its artifact digest.",
            [*MODEL_VERSION, "sha256"],
        )
        self.ready = self._gauge(
            "kubeloop_model_ready", "1 when the server is ready to serve.", ["model"]
        )

    def _record_metrics(self) -> None:
        self.log_lines = self._counter(
            "kubeloop_prediction_log_lines", "Prediction log lines written.", ["model"]
        )
        self.log_dropped = self._counter(
            "kubeloop_prediction_log_dropped",
            "Prediction log lines dropped, by reason: overflow (the queue was past its count "
            "or byte bound: the oldest went), unwritten (the sink failed, had no reader, or "
            "shutdown came first), bad_value (a value with no JSON form), not_shipped (a "
            "rotated file dropped while the object store was behind).",
            ["model", "reason"],
        )
        self.feedback = self._counter(
            "kubeloop_feedback",
            "Feedback by result: rows matched to a recent prediction, unknown request ids, "
            "duplicate ids (feedback for that request was already counted).",
            [*MODEL_VERSION, "result"],
        )
        self.feedback_evicted = self._counter(
            "kubeloop_feedback_evicted",
            "Remembered predictions forgotten, oldest first, by the bound that was reached "
            "(count: feedback_capacity, bytes: feedback_capacity_bytes).",
            ["model", "limit"],
        )
        self.feedback_refused = self._counter(
            "kubeloop_feedback_refused",
            "Feedback bodies refused with 429: over feedback_bytes_per_second.",
            [],
        )
        self.feedback_pending = self._gauge(
            "kubeloop_feedback_pending",
            "Feedback bodies waiting for or being parsed and scored off the event loop.",
            [],
        )

    def _limit_metrics(self) -> None:
        self.in_flight = self._gauge(
            "kubeloop_requests_in_flight",
            "Requests being served (health and metrics endpoints not counted).",
            [],
        )
        self.rejected = self._counter(
            "kubeloop_requests_rejected",
            "Requests answered 503 at once because max_in_flight were being served.",
            [],
        )

    def _canary_metrics(self) -> None:
        self.canary = self._counter(
            "kubeloop_canary_requests",
            "Requests sent to the canary, by the canary's version, mode (forward, shadow) and "
            "outcome: ok, client_error (4xx, relayed), server_error (5xx: the stable model "
            "answered), unreachable (connection error or timeout: the stable model answered), "
            "skipped (shadow only: too many mirrored at once).",
            ["model", "version", "mode", "outcome"],
        )
        self.canary_weight = self._gauge(
            "kubeloop_canary_weight",
            "Configured canary traffic share in percent (0 when off).",
            ["model", "mode"],
        )
        self.shadow_agreement = self._gauge(
            "kubeloop_shadow_agreement",
            "Share of mirrored requests where the mirrored version's prediction equals the "
            "stable one, since this process started (per process: aggregate the counter "
            "kubeloop_shadow_compared_total across pods instead).",
            ["model", "version"],
        )
        self.shadow_compared = self._counter(
            "kubeloop_shadow_compared",
            "Mirrored requests whose predictions were compared, by the mirrored version and "
            "result (agree, disagree, unreadable).",
            ["model", "version", "result"],
        )

    def zero_requests(self, model: str, version: str) -> None:
        """Export the answered-request series of a newly loaded version at 0: ``rate()``
        skips a series' first sample, so a version's first requests (a canary's, in the
        analysis window) would be lost if they created it."""
        for protocol in ("v1", "v2"):
            self.requests.labels(model, version, protocol, "200", "stable")
            self.latency.labels(model, version, protocol, "stable")

    def value_histogram(self, edges: tuple[float, ...]) -> Histogram:
        """The regression prediction-value histogram (buckets from the reference)."""
        hist = self.prediction_values.get(edges)
        if hist is None:
            if self.prediction_values:
                # one histogram family per process; a reload keeps the first buckets
                return next(iter(self.prediction_values.values()))
            hist = Histogram(
                "kubeloop_prediction_value",
                "Predicted values (regression).",
                MODEL_VERSION,
                buckets=edges,
                registry=self.registry,
            )
            self.prediction_values[edges] = hist
        return hist


class RequestCounter:
    """Counts inference requests and their latency by model, version, protocol, code and
    variant. The labelled children are cached: resolving them costs more than counting."""

    #: most cached label combinations (the labels are bounded; this bounds the cache too)
    MAX_CACHED = 10_000

    def __init__(self, metrics: Metrics, served: Callable[[], str | None]) -> None:
        self._metrics = metrics
        self._served = served
        self._children: dict[tuple[str, str, str, int, str], tuple[Any, Any]] = {}

    def count(
        self, name: str, version: str, protocol: str, code: int, variant: str, started: float
    ) -> None:
        """One request to model ``name`` that started at ``started`` (perf_counter)."""
        elapsed = time.perf_counter() - started
        key = (name, version, protocol, code, variant)
        children = self._children.get(key)
        if children is None:
            label = name if name == self._served() else "unknown"
            m = self._metrics
            children = (
                m.requests.labels(label, version, protocol, str(code), variant),
                m.latency.labels(label, version, protocol, variant),
            )
            if len(self._children) < self.MAX_CACHED and label != "unknown":
                self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)
