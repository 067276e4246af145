"""The alert rules as code: one static group, three output formats."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from kubeloop.operator.alerts import rules
from kubeloop.operator.alerts.cli import rules as rules_command


def by_name(groups: dict) -> dict:
    (group,) = groups["groups"]
    return {r["alert"]: r for r in group["rules"]}


def test_one_group_with_the_drift_and_the_online_alert():
    found = by_name(rules.rule_groups())
    assert set(found) == {rules.DRIFT_ALERT, rules.ONLINE_ALERT}
    for rule in found.values():
        assert rule["labels"][rules.RETRAIN_LABEL] == "true"
        assert rule["annotations"][rules.VALUE_ANNOTATION] == "{{ $value }}"
        # one alert per ModelDeployment: aggregated by the labels the receiver reads
        assert "by (namespace, model_deployment, model)" in rule["expr"]


def test_drift_compares_each_pod_with_its_own_threshold_over_a_minimum_window():
    drift = by_name(rules.rule_groups(rules.RuleOptions(min_window_rows=250, drift_for="2m")))[
        rules.DRIFT_ALERT
    ]
    assert "kubeloop_drift_score > kubeloop_drift_threshold" in drift["expr"]
    assert "kubeloop_drift_window_rows >= 250" in drift["expr"]
    assert drift["for"] == "2m"


def test_online_rule_prefers_the_deployments_floor_and_falls_back_to_the_default():
    online = by_name(rules.rule_groups(rules.RuleOptions(online_floor=0.9, online_min_rows=50)))[
        rules.ONLINE_ALERT
    ]
    expr = online["expr"]
    floor = 'max by (namespace, model_deployment, model) (kubeloop_online_metric_floor{metric="'
    assert f'< {floor}accuracy"}})' in expr
    assert f'< 0.9 unless {floor}accuracy"}})' in expr
    assert f'> {floor}rmse"}})' in expr
    assert '(kubeloop_online_metric_rows{role!="shadow"}) >= 50' in expr


def test_interval_only_when_asked_for():
    assert "interval" not in rules.rule_groups()["groups"][0]
    assert rules.rule_groups(rules.RuleOptions(interval="1s"))["groups"][0]["interval"] == "1s"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"drift_for": "5 minutes"},
        {"online_for": ""},
        {"interval": "1x"},
        {"min_window_rows": -1},
        {"online_floor": 1.5},
    ],
)
def test_bad_options_are_refused(kwargs):
    with pytest.raises(ValueError, match=r"."):
        rules.RuleOptions(**kwargs)


def test_rules_format_is_the_groups_document():
    assert yaml.safe_load(rules.render("rules")) == rules.rule_groups()


def test_prometheusrule_carries_the_groups_as_spec():
    doc = yaml.safe_load(
        rules.render("prometheusrule", namespace="monitoring", labels={"release": "kps"})
    )
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["namespace"] == "monitoring"
    assert doc["metadata"]["labels"]["release"] == "kps"
    assert doc["spec"] == rules.rule_groups()


def test_configmap_carries_the_rules_file():
    doc = yaml.safe_load(rules.render("configmap"))
    assert doc["kind"] == "ConfigMap"
    assert yaml.safe_load(doc["data"][rules.RULES_FILE]) == rules.rule_groups()


def test_multi_line_promql_is_a_block_scalar():
    assert "expr: |" in rules.render("rules")


def test_cli_prints_each_format_and_passes_options():
    runner = CliRunner()
    out = runner.invoke(rules_command, ["--min-window-rows", "7", "--drift-for", "1s"])
    assert out.exit_code == 0, out.output
    drift = by_name(yaml.safe_load(out.output))[rules.DRIFT_ALERT]
    assert drift["for"] == "1s"
    assert ">= 7" in drift["expr"]
    for fmt in rules.FORMATS:
        out = runner.invoke(rules_command, ["--format", fmt, "--label", "a=b"])
        assert out.exit_code == 0, out.output
        assert yaml.safe_load(out.output)


def test_cli_refuses_bad_values():
    runner = CliRunner()
    assert runner.invoke(rules_command, ["--drift-for", "soon"]).exit_code == 2
    assert runner.invoke(rules_command, ["--label", "novalue"]).exit_code == 2
    assert runner.invoke(rules_command, ["--format", "json"]).exit_code == 2


def test_scrape_job_keeps_serving_pods_and_adds_the_labels_the_rules_use():
    job = rules.scrape_job()
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    relabel = job["relabel_configs"]
    keeps = [r["source_labels"][0] for r in relabel if r.get("action") == "keep"]
    assert keeps == [
        "__meta_kubernetes_pod_label_kubeloop_io_model_deployment",
        "__meta_kubernetes_pod_container_port_name",
    ]
    targets = {r["target_label"]: r["source_labels"][0] for r in relabel if "target_label" in r}
    assert targets[rules.DEPLOYMENT_LABEL].endswith("kubeloop_io_model_deployment")
    assert targets[rules.NAMESPACE_LABEL] == "__meta_kubernetes_namespace"
