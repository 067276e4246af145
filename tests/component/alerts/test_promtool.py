"""`kubeloop rules` output checked and unit-tested by Prometheus's own promtool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubeloop.operator.alerts import rules
from needs import prometheus_tool

KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
FAST = ["--drift-for", "2m", "--online-for", "2m", "--min-window-rows", "100"]
FAST += ["--online-min-rows", "50", "--online-floor", "0.8"]


def kubeloop_rules(*args: str) -> str:
    result = subprocess.run(
        [KUBELOOP, "rules", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_tool("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("fmt", rules.FORMATS)
def test_promtool_check_rules_accepts_every_format(fmt, tmp_path):
    doc = yaml.safe_load(kubeloop_rules("--format", fmt))
    groups = {
        "rules": lambda d: d,
        "prometheusrule": lambda d: d["spec"],
        "configmap": lambda d: yaml.safe_load(d["data"][rules.RULES_FILE]),
    }[fmt](doc)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(groups))
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rules found" in result.stdout


# ---------------------------------------------------------------- promtool test rules

TARGET = 'job="kubeloop-serving",namespace="{ns}",model_deployment="{md}",pod="{pod}"'


def series(name: str, ns: str, md: str, pod: str, values: str, **extra: str) -> dict:
    labels = TARGET.format(ns=ns, md=md, pod=pod)
    labels += f',model="{md}",version="1"'
    labels += "".join(f',{k}="{v}"' for k, v in extra.items())
    return {"series": f"{name}{{{labels}}}", "values": values}


def pod(ns: str, md: str, name: str, score: str, threshold: str, rows: str) -> list[dict]:
    return [
        series("kubeloop_drift_score", ns, md, name, score),
        series("kubeloop_drift_threshold", ns, md, name, threshold),
        series("kubeloop_drift_window_rows", ns, md, name, rows),
    ]


def expected_alert(ns: str, md: str, trigger: str, value: float, **annotations: str) -> dict:
    """A firing retrain alert of deployment ``ns/md`` as promtool's ``exp_alerts`` lists it."""
    return {
        "exp_labels": {
            "namespace": ns,
            "model_deployment": md,
            "model": md,
            "severity": "warning",
            rules.RETRAIN_LABEL: "true",
            "kubeloop_trigger": trigger,
        },
        "exp_annotations": {**annotations, "value": f"{value:g}"},
    }


def drift_alert(ns: str, md: str, value: float) -> dict:
    return expected_alert(
        ns,
        md,
        "drift",
        value,
        summary=f"Input data drift on ModelDeployment {ns}/{md}",
        description=(
            f"The largest feature drift (PSI) of model {md} is {value:.3f}, above the "
            "configured threshold, over a window of at least 100 rows for 2m."
        ),
    )


def online_alert(ns: str, md: str, value: float, floor: str) -> dict:
    return expected_alert(
        ns,
        md,
        "online-metric",
        value,
        summary=f"Online metric past its floor on ModelDeployment {ns}/{md}",
        description=(
            f"The online metric of model {md} over the recent feedback of all its pods is "
            f"{value:.3f}: accuracy below, or RMSE above, the floor of "
            f"spec.monitoring.feedback (accuracy without one: below {floor}), over at least 50 "
            "rows for 2m."
        ),
    )


def rule_test(alertname: str, input_series: list[dict], firing: dict[str, list[dict]]) -> dict:
    """A promtool test group: one sample a minute, and the alerts firing at each eval time."""
    return {
        "interval": "1m",
        "input_series": input_series,
        "alert_rule_test": [
            {"eval_time": at, "alertname": alertname, "exp_alerts": alerts}
            for at, alerts in firing.items()
        ],
    }


# One sample a minute, 10 samples: '0.5x9' is 0.5 ten times.


def drift_test() -> dict:
    """Six deployments' drift gauges and when the drift alert fires for them."""
    input_series = [
        # a: drifted from the start, window full: fires after `for`
        *pod("ml", "a", "a-0", "0.5x9", "0.2x9", "500x9"),
        # b: two replicas drifted: one alert with the larger score
        *pod("ml", "b", "b-0", "0.3x9", "0.2x9", "500x9"),
        *pod("ml", "b", "b-1", "0.7x9", "0.2x9", "500x9"),
        # c: above the default 0.2 but under its own threshold 0.8: quiet
        *pod("ml", "c", "c-0", "0.5x9", "0.8x9", "500x9"),
        # d: drifted but the window holds too few rows: quiet
        *pod("ml", "d", "d-0", "0.9x9", "0.2x9", "50x9"),
        # e: same name as a, other namespace, drift only from minute 5: fires from minute 7
        *pod("other", "a", "a-0", "0.1x4 0.6x5", "0.2x9", "500x9"),
    ]
    return rule_test(
        rules.DRIFT_ALERT,
        input_series,
        {
            "1m": [],  # before `for:` has passed nothing fires
            "3m": [drift_alert("ml", "a", 0.5), drift_alert("ml", "b", 0.7)],
            "8m": [
                drift_alert("ml", "a", 0.5),
                drift_alert("ml", "b", 0.7),
                drift_alert("other", "a", 0.6),
            ],
        },
    )


def feedback(
    ns: str, md: str, name: str, score_sum: str, rows: str, metric: str = "accuracy"
) -> list[dict]:
    """One pod's online-metric window: its score sum and rows."""
    return [
        series("kubeloop_online_metric_score_sum", ns, md, name, score_sum, metric=metric),
        series("kubeloop_online_metric_rows", ns, md, name, rows),
    ]


def floor(ns: str, md: str, name: str, value: str, metric: str = "accuracy") -> dict:
    return series("kubeloop_online_metric_floor", ns, md, name, value, metric=metric)


def online_test() -> dict:
    """Deployments' feedback windows and when the online-metric alert fires for them."""
    input_series = [
        # f: two replicas, 60 of 100 labels right, no floor: under the default 0.8, fires once
        *feedback("ml", "f", "f-0", "30x9", "50x9"),
        *feedback("ml", "f", "f-1", "30x9", "50x9"),
        # k: each replica alone has too few rows (30 < 50); together 60, accuracy 0.5: fires
        *feedback("ml", "k", "k-0", "20x9", "30x9"),
        *feedback("ml", "k", "k-1", "10x9", "30x9"),
        # g: accuracy 0.6, but the deployment's floor is 0.5: quiet
        *feedback("ml", "g", "g-0", "60x9", "100x9"),
        floor("ml", "g", "g-0", "0.5x9"),
        # h: accuracy 0.85, above the default but under the deployment's floor 0.9: fires
        *feedback("ml", "h", "h-0", "85x9", "100x9"),
        floor("ml", "h", "h-0", "0.9x9"),
        # i: too little feedback: quiet
        *feedback("ml", "i", "i-0", "1x9", "10x9"),
        # j: a regressor (squared errors) without a ceiling never trips the rule
        *feedback("ml", "j", "j-0", "25x9", "100x9", metric="rmse"),
        # s: the stable pod is above the floor; a shadow pod (another version) below it
        # does not count: quiet
        *feedback("ml", "s", "s-0", "95x9", "100x9"),
        series(
            "kubeloop_online_metric_score_sum",
            "ml",
            "s",
            "s-1",
            "10x9",
            metric="accuracy",
            role="shadow",
        ),
        series("kubeloop_online_metric_rows", "ml", "s", "s-1", "100x9", role="shadow"),
        # r: a regressor with RMSE 0.5 above its ceiling 0.3: fires with the RMSE
        *feedback("ml", "r", "r-0", "25x9", "100x9", metric="rmse"),
        floor("ml", "r", "r-0", "0.3x9", metric="rmse"),
    ]
    firing = [
        online_alert("ml", "f", 0.6, "0.8"),
        online_alert("ml", "h", 0.85, "0.8"),
        online_alert("ml", "k", 0.5, "0.8"),
        online_alert("ml", "r", 0.5, "0.8"),
    ]
    return rule_test(rules.ONLINE_ALERT, input_series, {"1m": [], "5m": firing})


def unit_tests() -> dict:
    """promtool's rule unit-test file for rules.yaml."""
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [drift_test(), online_test()],
    }


def test_promtool_test_rules_fire_when_and_only_when_they_should(tmp_path):
    (tmp_path / "rules.yaml").write_text(kubeloop_rules(*FAST))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(unit_tests(), sort_keys=False))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path):
    # the harness itself can fail: expect an alert for the quiet deployment c
    tests = unit_tests()
    tests["tests"][0]["alert_rule_test"][1]["exp_alerts"].append(drift_alert("ml", "c", 0.5))
    (tmp_path / "rules.yaml").write_text(kubeloop_rules(*FAST))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert 'model_deployment="c"' in result.stdout + result.stderr
