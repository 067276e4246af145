"""The Prometheus alert rules that turn the serving pods' gauges into retrain alerts.

One static group serves every ModelDeployment: each serving pod exports its own
drift score *and* its configured threshold (``kubeloop_drift_score``,
``kubeloop_drift_threshold``, same labels), so the rule compares the two series of
one pod with plain one-to-one vector matching, whatever the target labels are.

The ModelDeployment is named by two target labels the scrape config adds
(docs/monitoring.md): ``namespace`` and ``model_deployment`` (the pod label
``kubeloop.io/model-deployment`` relabelled). The alerts are aggregated by them,
so every replica of one deployment yields one alert, and they carry
``kubeloop_retrain="true"`` for Alertmanager routing and the score in the
``value`` annotation (Alertmanager's webhook has no value field of its own).

Pure functions: nothing here talks to Prometheus; promtool tests the output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml

Format = Literal["rules", "prometheusrule", "configmap"]
FORMATS: tuple[Format, ...] = ("rules", "prometheusrule", "configmap")

GROUP_NAME = "kubeloop.retrain"
DRIFT_ALERT = "KubeloopDataDrift"
ONLINE_ALERT = "KubeloopOnlineMetricBelowFloor"
#: Labels every alert carries that name the ModelDeployment (from the scrape config).
NAMESPACE_LABEL = "namespace"
DEPLOYMENT_LABEL = "model_deployment"
#: Label on every Kubeloop retrain alert, for Alertmanager routes.
RETRAIN_LABEL = "kubeloop_retrain"
#: Annotation carrying the alert's value (the score or the metric).
VALUE_ANNOTATION = "value"
BY = f"{NAMESPACE_LABEL}, {DEPLOYMENT_LABEL}, model"
RULES_FILE = "kubeloop-rules.yaml"
#: A Prometheus duration (model.ParseDuration): units largest first, each at most once.
PROM_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")


@dataclass(frozen=True)
class RuleOptions:
    """What a cluster may tune; the defaults suit production scrape intervals."""

    drift_for: str = "5m"
    min_window_rows: int = 100
    online_for: str = "10m"
    online_floor: float = 0.8
    online_min_rows: int = 100
    interval: str | None = None
    severity: str = "warning"

    def __post_init__(self) -> None:
        for name in ("drift_for", "online_for", *(("interval",) if self.interval else ())):
            value = getattr(self, name)
            if not value or not PROM_DURATION.match(value):
                raise ValueError(f"{name}: {value!r} is not a Prometheus duration")
        if self.min_window_rows < 0 or self.online_min_rows < 0:
            raise ValueError("row minimums must not be negative")
        if not 0 <= self.online_floor <= 1:
            raise ValueError("online_floor is an accuracy, between 0 and 1")


def drift_expr(options: RuleOptions) -> str:
    """Largest drift score per deployment, where it exceeds the pod's own threshold."""
    return (
        f"max by ({BY}) (\n"
        "  (kubeloop_drift_score > kubeloop_drift_threshold)\n"
        f"  and (kubeloop_drift_window_rows >= {options.min_window_rows})\n"
        ")"
    )


#: the pods whose feedback is the deployment's: a shadow scores its own version
ROWS = 'kubeloop_online_metric_rows{role!="shadow"}'


def _across_replicas(metric: str) -> str:
    """Per deployment: the window score sums of all its pods over all their rows (the
    mean score over the feedback every replica saw; a pod holds only its own)."""
    score = f'kubeloop_online_metric_score_sum{{metric="{metric}",role!="shadow"}}'
    return f"(sum by ({BY}) ({score}) / sum by ({BY}) ({ROWS}))"


def _floor(metric: str) -> str:
    return f'max by ({BY}) (kubeloop_online_metric_floor{{metric="{metric}"}})'


def online_expr(options: RuleOptions) -> str:
    """The deployment's online metric, across its replicas, where it is past its floor.

    The floor is what the pods export from ``spec.monitoring.feedback``
    (``kubeloop_online_metric_floor``): accuracy below it, or RMSE above it. A
    classifier without one is held to ``options.online_floor``. Summing the pods'
    window sums and rows (rather than taking one pod's metric) counts every label,
    whichever replica it reached, and yields one alert per deployment.
    """
    accuracy, mse = _across_replicas("accuracy"), _across_replicas("rmse")
    return (
        "(\n"
        f"  ({accuracy} < {_floor('accuracy')})\n"
        f"  or ({accuracy} < {options.online_floor} unless {_floor('accuracy')})\n"
        f"  or (sqrt{mse} > {_floor('rmse')})\n"
        ")\n"
        f"and (sum by ({BY}) ({ROWS}) >= {options.online_min_rows})"
    )


def scrape_job(job_name: str = "kubeloop-serving") -> dict[str, Any]:
    """The Prometheus scrape job for serving pods (Kubernetes pod discovery).

    It keeps the pods the operator labelled ``kubeloop.io/model-deployment`` (their
    ``http`` port) and turns that label into ``model_deployment`` and the pod's
    namespace into ``namespace``: the labels the rules aggregate by and the
    receiver reads. docs/monitoring.md shows this job; a test keeps them equal.
    """
    md_label = "__meta_kubernetes_pod_label_kubeloop_io_model_deployment"
    return {
        "job_name": job_name,
        "kubernetes_sd_configs": [{"role": "pod"}],
        "relabel_configs": [
            {"source_labels": [md_label], "regex": ".+", "action": "keep"},
            {
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": "http",
                "action": "keep",
            },
            {"source_labels": [md_label], "target_label": DEPLOYMENT_LABEL},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": NAMESPACE_LABEL},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {
                "source_labels": ["__meta_kubernetes_pod_label_kubeloop_io_role"],
                "target_label": "role",
            },
        ],
    }


def tls_scrape_job(namespace: str, deployment: str, ca_file: str) -> dict[str, Any]:
    """The scrape job for the serving pods of one ModelDeployment with ``spec.tls``.

    Those pods name their port ``https`` (so :func:`scrape_job`, which keeps ``http``
    ports, leaves them alone) and present the deployment's certificate, which names its
    Service, not the pod address Prometheus dials: the job verifies it with ``ca_file``
    (the Secret's ``ca.crt``, mounted into Prometheus) for the Service's name. One job
    per deployment, as each may have its own CA and name. docs/security.md shows it.
    """
    job = scrape_job(f"kubeloop-serving-{namespace}-{deployment}")
    job["kubernetes_sd_configs"] = [{"role": "pod", "namespaces": {"names": [namespace]}}]
    job["scheme"] = "https"
    job["tls_config"] = {"ca_file": ca_file, "server_name": f"{deployment}.{namespace}.svc"}
    keep_deployment, keep_port, *_ = job["relabel_configs"]
    keep_deployment["regex"] = re.escape(deployment)
    keep_port["regex"] = "https"
    return job


def _labels(options: RuleOptions, trigger: str) -> dict[str, str]:
    return {"severity": options.severity, RETRAIN_LABEL: "true", "kubeloop_trigger": trigger}


def rule_groups(options: RuleOptions | None = None) -> dict[str, Any]:
    """The rules file as a dict: ``{"groups": [...]}``."""
    o = options or RuleOptions()
    target = "{{ $labels.namespace }}/{{ $labels.model_deployment }}"
    group: dict[str, Any] = {
        "name": GROUP_NAME,
        "rules": [
            {
                "alert": DRIFT_ALERT,
                "expr": drift_expr(o),
                "for": o.drift_for,
                "labels": _labels(o, "drift"),
                "annotations": {
                    "summary": f"Input data drift on ModelDeployment {target}",
                    "description": (
                        "The largest feature drift (PSI) of model {{ $labels.model }} is "
                        '{{ $value | printf "%.3f" }}, above the configured threshold, over a '
                        f"window of at least {o.min_window_rows} rows for {o.drift_for}."
                    ),
                    VALUE_ANNOTATION: "{{ $value }}",
                },
            },
            {
                "alert": ONLINE_ALERT,
                "expr": online_expr(o),
                "for": o.online_for,
                "labels": _labels(o, "online-metric"),
                "annotations": {
                    "summary": f"Online metric past its floor on ModelDeployment {target}",
                    "description": (
                        "The online metric of model {{ $labels.model }} over the recent "
                        'feedback of all its pods is {{ $value | printf "%.3f" }}: accuracy '
                        "below, or RMSE above, the floor of spec.monitoring.feedback (accuracy "
                        f"without one: below {o.online_floor}), over at least "
                        f"{o.online_min_rows} rows for {o.online_for}."
                    ),
                    VALUE_ANNOTATION: "{{ $value }}",
                },
            },
        ],
    }
    if o.interval:
        group["interval"] = o.interval
    return {"groups": [group]}


class _Literal(str):
    """A string dumped as a YAML block scalar (readable multi-line PromQL)."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)


def _blocks(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _blocks(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_blocks(v) for v in node]
    if isinstance(node, str) and "\n" in node:
        return _Literal(node)
    return node


def dump(obj: Any) -> str:
    """YAML with multi-line strings as block scalars and keys in insertion order."""
    return yaml.dump(_blocks(obj), Dumper=_Dumper, sort_keys=False, width=1000)


def render(
    fmt: Format,
    options: RuleOptions | None = None,
    *,
    name: str = "kubeloop-rules",
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    """The rules as a Prometheus rules file, a PrometheusRule or a ConfigMap (YAML)."""
    groups = rule_groups(options)
    if fmt == "rules":
        return dump(groups)
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {"app.kubernetes.io/name": "kubeloop", **(labels or {})}
    if fmt == "prometheusrule":
        obj: dict[str, Any] = {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": metadata,
            "spec": groups,
        }
    elif fmt == "configmap":
        obj = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": {RULES_FILE: dump(groups)},
        }
    else:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    return dump(obj)
