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

API_REQUESTS = Counter(
    "kubeloop_operator_api_requests_total",
    "Requests the operator's API client sent (get, list, create, apply, delete, patch); "
    "kopf's watches and its own bookkeeping are not counted.",
    ["verb", "kind"],
)


def zero_series() -> None:
    """Create every known label set at 0 when the operator starts.

    A counter series that first appears at 1 has no earlier sample, so ``increase()`` and
    ``rate()`` miss its first event (a dashboard's rollout annotation would miss the first
    rollback); created at 0, every event shows.
    """
    from typing import get_args

    from kubeloop.api.v1alpha1 import CheckOutcome
    from kubeloop.operator.retrain import Decision, TriggerKind

    kinds = ("Dataset", "TrainingJob", "ModelVersion", "ModelDeployment", "BatchPrediction")
    for kind in kinds:
        RECONCILE_SECONDS.labels(kind=kind)
        for result in ("ok", "retry", "invalid", "error"):
            RECONCILES.labels(kind=kind, result=result)
    for child in ("Job", "ModelVersion", "TrainingJob"):
        CHILDREN_CREATED.labels(kind=child)
    for decision in get_args(Decision):
        for trigger in get_args(TriggerKind):
            RETRAIN_DECISIONS.labels(decision=decision, trigger=trigger)
    for status in ("firing", "resolved"):
        ALERTS_RECEIVED.labels(status=status)
    for outcome in ("promoted", "rolled_back"):
        ROLLOUTS.labels(result=outcome)
    for check in get_args(CheckOutcome):
        ANALYSIS_CHECKS.labels(result=check)
