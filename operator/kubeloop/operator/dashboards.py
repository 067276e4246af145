"""Grafana dashboards as code: typed panels, rendered to the JSON the chart ships.

Two dashboards: one per model deployment (traffic, errors and latency per version, the
canary's weight and forwards, drift per feature against its threshold, the online metric
against its floor, retrains and rollouts as annotations) and one for the operator
(reconciles, their errors and duration, children, rollouts, analysis checks, alerts).
Every query reads series that the serving pods or the operator export, with the labels
the documented scrape job gives them (``namespace``, ``model_deployment``, ``role``).

``python -m kubeloop.operator.dashboards DIR`` writes them; ``--check`` fails when the
files differ (``make dashboards`` / ``make verify-dashboards``).
"""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.contracts.generated import sync
from kubeloop.operator.alerts.rules import DEPLOYMENT_LABEL, NAMESPACE_LABEL

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: The selector of one deployment's serving series (Grafana variables).
MD = f'{NAMESPACE_LABEL}="$namespace", {DEPLOYMENT_LABEL}="$deployment"'
RATE = "$__rate_interval"


class _Json(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True)


class Target(_Json):
    expr: str
    legend_format: str = Field("__auto", alias="legendFormat")
    ref_id: str = Field("A", alias="refId")
    datasource: dict[str, str] = DATASOURCE


class GridPos(_Json):
    h: int
    w: int
    x: int
    y: int


class Panel(_Json):
    id: int
    type: Literal["timeseries", "stat"] = "timeseries"
    title: str
    description: str
    grid_pos: GridPos = Field(alias="gridPos")
    targets: list[Target]
    datasource: dict[str, str] = DATASOURCE
    field_config: dict[str, Any] = Field(alias="fieldConfig")
    options: dict[str, Any] = Field(default_factory=dict)


class Annotation(_Json):
    name: str
    expr: str
    icon_color: str = Field(alias="iconColor")
    title_format: str = Field(alias="titleFormat")
    datasource: dict[str, str] = DATASOURCE
    enable: bool = True
    step: str = "30s"


class Dashboard(_Json):
    uid: str
    title: str
    description: str
    tags: list[str] = ["kubeloop"]
    panels: list[Panel]
    templating: dict[str, list[dict[str, Any]]]
    annotations: dict[str, list[Annotation]]
    time: dict[str, str] = {"from": "now-6h", "to": "now"}
    refresh: str = "30s"
    schema_version: int = Field(39, alias="schemaVersion")
    editable: bool = True


class PanelSpec(NamedTuple):
    """A panel before layout: title, description, queries, field config."""

    title: str
    about: str
    targets: list[Target]
    config: dict[str, Any]


# ------------------------------------------------------------------ building blocks


def q(expr: str, legend: str, ref: str = "A") -> Target:
    """One Prometheus query of a panel, its legend from the series' labels."""
    return Target(expr=expr, legend_format=legend, ref_id=ref)


def unit(name: str, **extra: Any) -> dict[str, Any]:
    return {"defaults": {"unit": name, **extra}, "overrides": []}


def grid(panels: list[PanelSpec]) -> list[Panel]:
    """Panels two to a row, in order: (title, description, targets, field config)."""
    return [
        Panel(
            id=i + 1,
            title=title,
            description=about,
            grid_pos=GridPos(h=8, w=12, x=12 * (i % 2), y=8 * (i // 2)),
            targets=targets,
            field_config=config,
        )
        for i, (title, about, targets, config) in enumerate(panels)
    ]


def datasource_variable() -> dict[str, Any]:
    """The Prometheus to read (Grafana's variable ``label`` is its display name)."""
    return dict(name="datasource", label="Prometheus", type="datasource", query="prometheus")


def label_variable(name: str, label: str, metric: str) -> dict[str, Any]:
    """A variable over the values of ``label`` in ``metric`` (refreshed with the time range)."""
    return {
        "name": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": f"label_values({metric}, {label})", "refId": name},
        "definition": f"label_values({metric}, {label})",
        "refresh": 2,
        "sort": 1,
    }


def zero_filled(share: str, total: str) -> str:
    """``share / total`` that is 0, not absent, while ``share`` has no series yet (a 5xx
    counter appears with the first 5xx)."""
    return f"({share} or ({total}) * 0) / ({total})"


# ---------------------------------------------------------------------- dashboards


REQUESTS = f"kubeloop_requests_total{{{MD}}}"
BY_VERSION = f"sum by (version) (rate({REQUESTS}[{RATE}]))"
ERRORS = f'sum by (version) (rate(kubeloop_requests_total{{{MD}, code=~"5.."}}[{RATE}]))'
LATENCY = f"sum by (le, version) (rate(kubeloop_request_duration_seconds_bucket{{{MD}}}[{RATE}]))"
STABLE = f'{MD}, role="stable"'


def traffic_panels() -> list[PanelSpec]:
    """Requests, errors, latency and the canary split of one deployment."""
    return [
        PanelSpec(
            "Requests by version and role",
            "Inference requests per second, stable and canary pods side by side.",
            [q(f"sum by (version, role) (rate({REQUESTS}[{RATE}]))", "v{{version}} {{role}}")],
            unit("reqps"),
        ),
        PanelSpec(
            "5xx share by version",
            "Share of requests answered 5xx by each version's pods.",
            [q(zero_filled(ERRORS, BY_VERSION), "v{{version}}")],
            unit("percentunit", max=1),
        ),
        PanelSpec(
            "Latency by version",
            "p50 and p99 of request duration per version.",
            [
                q(f"histogram_quantile(0.99, {LATENCY})", "p99 v{{version}}"),
                q(f"histogram_quantile(0.5, {LATENCY})", "p50 v{{version}}", "B"),
            ],
            unit("s"),
        ),
        PanelSpec(
            "Canary weight",
            "Share of requests the stable pods forward to the canary (0 without a canary).",
            [q(f"max by (mode) (kubeloop_canary_weight{{{STABLE}}})", "{{mode}}")],
            unit("percent", max=100),
        ),
        PanelSpec(
            "Canary forwards by outcome",
            "Requests the stable pods forwarded, by canary version and outcome; a failed "
            "forward is answered by stable and counted here.",
            [
                q(
                    f"sum by (version, outcome) (rate(kubeloop_canary_requests_total{{{MD}}}"
                    f"[{RATE}]))",
                    "v{{version}} {{outcome}}",
                )
            ],
            unit("reqps"),
        ),
    ]


def model_panels() -> list[PanelSpec]:
    """What the model answers and how its inputs and accuracy move."""
    return [
        PanelSpec(
            "Predicted classes by version",
            "Predictions per second by class and version.",
            [
                q(
                    f"sum by (version, class) (rate(kubeloop_predictions_total{{{MD}}}[{RATE}]))",
                    "v{{version}} {{class}}",
                )
            ],
            unit("reqps"),
        ),
        PanelSpec(
            "Drift per feature (stable)",
            "PSI of each input feature's sliding window against the training profile, and "
            "the threshold the drift alert fires above.",
            [
                q(f"max by (feature) (kubeloop_feature_drift{{{STABLE}}})", "{{feature}}"),
                q(f"max(kubeloop_drift_threshold{{{STABLE}}})", "threshold", "B"),
            ],
            unit("none"),
        ),
        PanelSpec(
            "Prediction drift by version",
            "PSI of the predictions' distribution against the training profile.",
            [q(f"max by (version) (kubeloop_prediction_drift{{{MD}}})", "v{{version}}")],
            unit("none"),
        ),
        PanelSpec(
            "Online metric vs floor",
            "Accuracy (or error) from feedback labels per version, and the deployment's floor.",
            [
                q(f"min by (version, metric) (kubeloop_online_metric{{{MD}}})", "v{{version}}"),
                q(f"max(kubeloop_online_metric_floor{{{MD}}})", "floor", "B"),
            ],
            unit("none"),
        ),
        PanelSpec(
            "Requests in flight and refused",
            "Requests being served, and those refused over the in-flight limit.",
            [
                q(f"sum by (version) (kubeloop_requests_in_flight{{{MD}}})", "in flight"),
                q(
                    f"sum by (reason) (rate(kubeloop_requests_rejected_total{{{MD}}}[{RATE}]))",
                    "refused {{reason}}",
                    "B",
                ),
            ],
            unit("short"),
        ),
    ]


RECONCILES = "kubeloop_operator_reconciles_total"


def reconcile_panels() -> list[PanelSpec]:
    """The operator's reconcile passes: rate, errors, duration, children."""
    errors = f'sum by (kind) (rate({RECONCILES}{{result=~"error|retry|invalid"}}[{RATE}]))'
    total = f"sum by (kind) (rate({RECONCILES}[{RATE}]))"
    duration = f"sum by (le, kind) (rate(kubeloop_operator_reconcile_seconds_bucket[{RATE}]))"
    children = f"sum by (kind) (increase(kubeloop_operator_children_created_total[{RATE}]))"
    return [
        PanelSpec(
            "Reconciles by kind and result",
            "Reconcile passes per second.",
            [q(f"sum by (kind, result) (rate({RECONCILES}[{RATE}]))", "{{kind}} {{result}}")],
            unit("ops"),
        ),
        PanelSpec(
            "Reconcile error share by kind",
            "Share of passes that ended in error, retry or invalid spec.",
            [q(zero_filled(errors, total), "{{kind}}")],
            unit("percentunit", max=1),
        ),
        PanelSpec(
            "Reconcile duration p99 by kind",
            "How long one reconcile pass takes.",
            [q(f"histogram_quantile(0.99, {duration})", "{{kind}}")],
            unit("s"),
        ),
        PanelSpec(
            "Children created by kind",
            "Jobs, ModelVersions and serving objects the operator created.",
            [q(children, "{{kind}}")],
            unit("short"),
        ),
    ]


def loop_panels() -> list[PanelSpec]:
    """The loop's decisions: rollouts, analysis checks, retrains, alerts."""
    checks = f"sum by (result) (increase(kubeloop_operator_analysis_checks_total[{RATE}]))"
    decisions = (
        f"sum by (decision, trigger) (increase(kubeloop_operator_retrain_decisions_total[{RATE}]))"
    )
    alerts = f"sum by (status) (increase(kubeloop_operator_alerts_received_total[{RATE}]))"
    return [
        PanelSpec(
            "Rollouts by result",
            "Canaries promoted and rolled back (since the operator started).",
            [q("sum by (result) (kubeloop_rollouts_total)", "{{result}}")],
            unit("short"),
        ),
        PanelSpec(
            "Analysis checks by result",
            "Canary analysis checks: Pass, Fail, NoData.",
            [q(checks, "{{result}}")],
            unit("short"),
        ),
        PanelSpec(
            "Retrain decisions",
            "What the retrain policy decided per alert or schedule tick.",
            [q(decisions, "{{trigger}} {{decision}}")],
            unit("short"),
        ),
        PanelSpec(
            "Alerts received",
            "Alertmanager notifications at the operator's receiver, by status.",
            [q(alerts, "{{status}}")],
            unit("short"),
        ),
    ]


def loop_annotations() -> list[Annotation]:
    """Retrains and rollouts as marks on every panel's time axis (operator-wide counters)."""
    return [
        Annotation(
            name="Retrains",
            expr='increase(kubeloop_operator_retrain_decisions_total{decision="created"}[1m]) > 0',
            icon_color="blue",
            title_format="retrain ({{trigger}})",
        ),
        Annotation(
            name="Rollouts",
            expr="increase(kubeloop_rollouts_total[1m]) > 0",
            icon_color="orange",
            title_format="canary {{result}}",
        ),
    ]


def deployment_dashboard() -> Dashboard:
    return Dashboard(
        uid="kubeloop-deployment",
        title="Kubeloop / Model deployment",
        description="One ModelDeployment: traffic, errors and latency per version, the canary, "
        "drift and the online metric; retrains and rollouts as annotations.",
        panels=grid([*traffic_panels(), *model_panels()]),
        templating={
            "list": [
                datasource_variable(),
                label_variable("namespace", NAMESPACE_LABEL, "kubeloop_requests_total"),
                label_variable(
                    "deployment",
                    DEPLOYMENT_LABEL,
                    f'kubeloop_requests_total{{{NAMESPACE_LABEL}="$namespace"}}',
                ),
            ]
        },
        annotations={"list": loop_annotations()},
    )


def operator_dashboard() -> Dashboard:
    return Dashboard(
        uid="kubeloop-operator",
        title="Kubeloop / Operator",
        description="The operator: reconciles, their errors and duration, children, rollouts, "
        "canary analysis, retrain decisions and alerts.",
        panels=grid([*reconcile_panels(), *loop_panels()]),
        templating={"list": [datasource_variable()]},
        annotations={"list": loop_annotations()},
    )


def dashboards() -> dict[str, Dashboard]:
    """File name -> dashboard."""
    return {
        "kubeloop-deployment.json": deployment_dashboard(),
        "kubeloop-operator.json": operator_dashboard(),
    }


def to_json(dashboard: Dashboard) -> str:
    return json.dumps(dashboard.model_dump(by_alias=True), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    return sync(
        "Write (or --check) the Grafana dashboards.",
        "dashboards",
        lambda: {name: to_json(d) for name, d in dashboards().items()},
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
