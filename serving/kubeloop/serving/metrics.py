"""Prometheus metrics of one serving process.

Label values are bounded: ``model`` is the served name (or ``unknown``),
``version`` the loaded versions, ``protocol`` v1/v2, ``code`` the HTTP statuses
the server answers, ``variant`` stable/canary, ``feature`` the model's features and
``class`` its classes (capped). Drift and online-metric gauges are computed at
scrape time from the sliding windows, so requests only update counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
            mv = [d.model, d.version]
            feature = GaugeMetricFamily(
                "kubeloop_feature_drift",
                "Drift of one input feature: PSI of the sliding window against the reference.",
                labels=["model", "version", "feature", "method"],
            )
            for name, value in d.features.items():
                feature.add_metric([*mv, name, "psi"], value)
            yield feature
            score = GaugeMetricFamily(
                "kubeloop_drift_score",
                "Largest feature drift (PSI) of the model.",
                labels=["model", "version"],
            )
            score.add_metric(mv, max(d.features.values(), default=0.0))
            yield score
            threshold = GaugeMetricFamily(
                "kubeloop_drift_threshold",
                "Configured drift threshold (alert when kubeloop_drift_score exceeds it).",
                labels=["model", "version"],
            )
            threshold.add_metric(mv, d.threshold)
            yield threshold
            rows = GaugeMetricFamily(
                "kubeloop_drift_window_rows",
                "Rows currently in the drift sliding window.",
                labels=["model", "version"],
            )
            rows.add_metric(mv, d.rows)
            yield rows
            if d.prediction is not None:
                pred = GaugeMetricFamily(
                    "kubeloop_prediction_drift",
                    "Drift of the prediction distribution: PSI against the training reference.",
                    labels=["model", "version", "method"],
                )
                pred.add_metric([*mv, "psi"], d.prediction)
                yield pred
                prows = GaugeMetricFamily(
                    "kubeloop_prediction_drift_window_rows",
                    "Predictions currently in the prediction-drift sliding window.",
                    labels=["model", "version"],
                )
                prows.add_metric(mv, d.prediction_rows)
                yield prows
        o = self._online()
        if o is not None:
            if o.value is not None:
                online = GaugeMetricFamily(
                    "kubeloop_online_metric",
                    "Rolling online accuracy (classification) or RMSE (regression) from feedback.",
                    labels=["model", "version", "metric"],
                )
                online.add_metric([o.model, o.version, o.metric], o.value)
                yield online
            orows = GaugeMetricFamily(
                "kubeloop_online_metric_rows",
                "Rows with feedback in the online-metric window.",
                labels=["model", "version"],
            )
            orows.add_metric([o.model, o.version], o.rows)
            yield orows


class Metrics:
    """Every metric the server exports, on its own registry."""

    def __init__(
        self,
        drift: Callable[[], DriftSnapshot | None] = lambda: None,
        online: Callable[[], OnlineSnapshot | None] = lambda: None,
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kubeloop_requests",
            "Inference requests by model, version, protocol, status code and variant.",
            ["model", "version", "protocol", "code", "variant"],
            registry=r,
        )
        self.latency = Histogram(
            "kubeloop_request_duration_seconds",
            "Inference request latency inside the server.",
            ["model", "version", "protocol", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "kubeloop_batch_size",
            "Rows per model call (after micro-batching).",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "kubeloop_predictions",
            "Predicted rows by class (classification).",
            ["model", "version", "class"],
            registry=r,
        )
        self.prediction_values: dict[tuple[float, ...], Histogram] = {}
        self.log_lines = Counter(
            "kubeloop_prediction_log_lines",
            "Prediction log lines written.",
            ["model"],
            registry=r,
        )
        self.log_dropped = Counter(
            "kubeloop_prediction_log_dropped",
            "Prediction log lines dropped because the queue was full or the write failed.",
            ["model"],
            registry=r,
        )
        self.feedback = Counter(
            "kubeloop_feedback",
            "Feedback rows by result: matched a recent prediction, or unknown request id.",
            ["model", "version", "result"],
            registry=r,
        )
        self.model_loads = Counter(
            "kubeloop_model_loads",
            "Model loads by result (success, failure).",
            ["model", "result"],
            registry=r,
        )
        self.model_info = Gauge(
            "kubeloop_model_info",
            "The model version being served (1) with its artifact digest.",
            ["model", "version", "sha256"],
            registry=r,
        )
        self.ready = Gauge(
            "kubeloop_model_ready", "1 when the server is ready to serve.", ["model"], registry=r
        )
        self.canary = Counter(
            "kubeloop_canary_requests",
            "Requests sent to the canary by mode (forward, shadow) and outcome "
            "(ok, error, unreachable, skipped).",
            ["model", "mode", "outcome"],
            registry=r,
        )
        self.canary_weight = Gauge(
            "kubeloop_canary_weight",
            "Configured canary traffic share in percent (0 when off).",
            ["model", "mode"],
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "kubeloop_shadow_agreement",
            "Share of mirrored requests where the canary's prediction equals the stable one.",
            ["model"],
            registry=r,
        )
        self.shadow_compared = Counter(
            "kubeloop_shadow_compared",
            "Mirrored requests whose predictions were compared.",
            ["model", "result"],
            registry=r,
        )
        r.register(_ScrapeCollector(drift, online))

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
                ["model", "version"],
                buckets=edges,
                registry=self.registry,
            )
            self.prediction_values[edges] = hist
        return hist
