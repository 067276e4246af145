"""The operator's own Prometheus metrics (served on ``KUBELOOP_METRICS_PORT``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILES = Counter(
    "kubeloop_operator_reconciles_total",
    "Reconcile passes by kind and result (ok, retry, invalid, error).",
    ["kind", "result"],
)
RECONCILE_SECONDS = Histogram(
    "kubeloop_operator_reconcile_seconds",
    "Duration of reconcile passes by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CHILDREN_CREATED = Counter(
    "kubeloop_operator_children_created_total",
    "Child objects created (Jobs, ModelVersions, Deployments) by kind.",
    ["kind"],
)
RETRAIN_DECISIONS = Counter(
    "kubeloop_operator_retrain_decisions_total",
    "Retrain policy decisions (created, cooldown, duplicate, max-concurrent, disabled, "
    "unknown-deployment) by trigger (alert, schedule).",
    ["decision", "trigger"],
)
ALERTS_RECEIVED = Counter(
    "kubeloop_operator_alerts_received_total",
    "Alerts received by the webhook receiver, by status (firing, resolved).",
    ["status"],
)
ROLLOUTS = Counter(
    "kubeloop_rollouts_total",
    "Canary rollouts by result (promoted, rolled_back).",
    ["result"],
)
ANALYSIS_CHECKS = Counter(
    "kubeloop_operator_analysis_checks_total",
    "Canary analysis checks by result (Pass, Fail, NoData).",
    ["result"],
)
