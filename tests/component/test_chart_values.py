"""Every chart value acts: changing it changes what `helm template` renders.

For each leaf of charts/kubeloop/values.yaml the chart is rendered with that value
changed (``--set-json``) and compared with the render without the change. A value that
acts only together with another one is rendered on top of the ci/ scenario that turns the
other one on (``NEEDS``, with the reason). A value the templates never read fails here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
import yaml

from helmchart import CHART, SCENARIOS, render_text

#: Set in every render: the default token is random per render (no cluster to look up).
BASE = {"alertReceiver.token": "a-fixed-token-so-renders-compare"}

#: Changed values of the leaves that are not booleans, integers or empty maps.
CHANGED: dict[str, Any] = {
    "nameOverride": "loop",
    "fullnameOverride": "ml",
    "image.repository": "registry.example/ml/kubeloop-operator",
    "image.tag": "9.9.9",
    "image.digest": "sha256:" + "b" * 64,
    "image.pullPolicy": "Always",
    "imagePullSecrets": [{"name": "regcred"}],
    "watch.namespaces": ["team-x"],
    "serviceAccount.name": "operator-sa",
    "priorityClassName": "high",
    "podSecurityContext.seccompProfile.type": "Localhost",
    "securityContext.capabilities.drop": ["NET_RAW"],
    "securityContext.seccompProfile.type": "Localhost",
    "resources.requests.cpu": "200m",
    "resources.requests.memory": "300Mi",
    "resources.limits.memory": "1Gi",
    "tolerations": [{"operator": "Exists"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    "config.extraEnv": [{"name": "EXTRA", "value": "1"}],
    "trainer.image.repository": "registry.example/ml/kubeloop-trainer",
    "trainer.image.tag": "9.9.9",
    "trainer.image.digest": "sha256:" + "c" * 64,
    "trainer.resources.requests.cpu": "1",
    "trainer.resources.requests.memory": "1Gi",
    "serving.image.repository": "registry.example/ml/kubeloop-serving",
    "serving.image.tag": "9.9.9",
    "serving.image.digest": "sha256:" + "d" * 64,
    "serving.resources.requests.cpu": "1",
    "serving.resources.requests.memory": "1Gi",
    "workloads.imagePullPolicy": "Always",
    "workloads.serviceAccount.name": "workload-sa",
    "artifacts.root": "s3://bucket/kubeloop",
    "artifacts.volumeClaim.name": "shared",
    "artifacts.volumeClaim.mountPath": "/mnt/data",
    "artifacts.volumeClaim.size": "50Gi",
    "artifacts.volumeClaim.storageClassName": "fast",
    "artifacts.volumeClaim.accessModes": ["ReadWriteOnce"],
    "artifacts.secretRef.name": "store-creds",
    "metrics.serviceMonitor.interval": "7s",
    "metrics.podMonitor.interval": "7s",
    "servingPodMonitor.interval": "7s",
    "alertReceiver.token": "another-token",
    "alertReceiver.existingSecret": "my-secret",
    "alertReceiver.existingSecretKey": "key",
    "alertReceiver.service.type": "NodePort",
    "prometheusRule.namespace": "monitoring",
    "rulesConfigMap.namespace": "monitoring",
    "dashboards.namespace": "monitoring",
    "dashboards.labels.grafana_dashboard": "yes",
    "canaryAnalysis.prometheusUrl": "http://prometheus.monitoring:9090",
    "canaryAnalysis.bearerTokenSecret.name": "prometheus-reader",
    "canaryAnalysis.bearerTokenSecret.key": "bearer",
    "canaryAnalysis.caSecret.name": "prometheus-ca",
    "canaryAnalysis.caSecret.key": "root.crt",
}


def needs(scenario: str, reason: str, *paths: str) -> dict[str, tuple[str, str]]:
    return dict.fromkeys(paths, (scenario, reason))


PROMETHEUS = "prometheus-values.yaml"
#: Values that act only together with another: the ci/ scenario that turns it on, and why.
NEEDS: dict[str, tuple[str, str]] = {
    **needs(
        PROMETHEUS,
        "only a created claim (artifacts.volumeClaim.create) has them",
        "artifacts.volumeClaim.size",
        "artifacts.volumeClaim.storageClassName",
        "artifacts.volumeClaim.accessModes",
    ),
    **needs(
        "namespaced-values.yaml",
        "mounted only when there is a claim (artifacts.volumeClaim.name)",
        "artifacts.mountInOperator",
    ),
    **needs(
        PROMETHEUS,
        "they configure monitors and a rule the defaults do not create (metrics.serviceMonitor,"
        " metrics.podMonitor, servingPodMonitor, prometheusRule .enabled)",
        "metrics.serviceMonitor.labels",
        "metrics.serviceMonitor.interval",
        "metrics.podMonitor.labels",
        "metrics.podMonitor.interval",
        "servingPodMonitor.labels",
        "servingPodMonitor.interval",
        "prometheusRule.namespace",
        "prometheusRule.labels",
    ),
    **needs(
        PROMETHEUS,
        "read only when the Secret is named (canaryAnalysis.*Secret.name)",
        "canaryAnalysis.bearerTokenSecret.key",
        "canaryAnalysis.caSecret.key",
    ),
    **needs(
        "existing-secret-values.yaml",
        "read only with alertReceiver.existingSecret",
        "alertReceiver.existingSecretKey",
    ),
}


def leaves(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted path -> default of every leaf: scalars, lists and empty maps."""
    found: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            found.update(leaves(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


LEAVES = leaves(yaml.safe_load((CHART / "values.yaml").read_text()))


def changed(path: str, default: Any) -> Any:
    """A valid value other than ``default``: booleans flip, integers grow, maps gain a key."""
    if path in CHANGED:
        return CHANGED[path]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    assert default == {}, f"{path}: add a changed value to CHANGED"
    return {"kubeloop.io/changed": "yes"}


def render_with(scenario: str | None, sets: dict[str, Any]) -> str:
    """`helm template` over the ci/ ``scenario`` (if any) with BASE and ``sets``."""
    return render_text(*([scenario] if scenario else []), sets={**BASE, **sets})


@cache
def baseline(scenario: str | None) -> str:
    return render_with(scenario, {})


def test_the_table_names_only_leaves_and_scenarios():
    assert set(CHANGED) <= set(LEAVES)
    assert set(NEEDS) <= set(LEAVES)
    assert {scenario for scenario, _ in NEEDS.values()} <= set(SCENARIOS)
    assert all(CHANGED[path] != LEAVES[path] for path in CHANGED)


@pytest.mark.parametrize("path", list(LEAVES))
def test_changing_the_value_changes_the_render(path):
    scenario = NEEDS.get(path, (None, ""))[0]
    value = changed(path, LEAVES[path])
    after = render_with(scenario, {path: value})
    assert after != baseline(scenario), (
        f"{path}={value!r} (over {scenario or 'the defaults'}) changes nothing"
    )
