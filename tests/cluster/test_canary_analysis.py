"""Canary analysis with real parts: the operator against the real API server, two real
``kubeloop serve`` processes playing the stable and the canary pods, and a real
Prometheus scraping them every second through the documented scrape job.

- a good canary (the same model again) holds its weight while Prometheus is down, with a
  condition naming the metric without data, and is promoted once Prometheus is up;
- Prometheus stopped at the second step: the weight holds (no failure counted) until it is
  back, then the canary is promoted;
- a canary whose predictions are flipped (trained on inverted labels) fails its
  ``predictionShift`` check and is rolled back after exactly ``failureLimit`` failed
  checks: all traffic to stable, the canary gone, the version Rejected, the deployment
  Degraded, ``kubeloop_rollouts_total{result="rolled_back"}``;
- a canary that cannot be reached (its process gone) fails ``errorRate`` — the clients get
  the stable model's answers — and is rolled back;
- canary pods no node can hold are rolled back at ``progressDeadline`` (never Progressing
  forever);
- the operator killed after 2 of 3 failures rolls back on the next one (the count lives
  in status: no second ``(1/3)`` failure after the restart).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from canary_lab import (
    FAILURE_LIMIT,
    MD,
    Rollout,
    Traffic,
    canary_of,
    guarded,
    lab,
    train,
)
from kubetest import wait_for
from operator_harness import free_port
from test_drift_loop import FEATURES, MODEL, data_csv, model_dir, publish, run_server

pytestmark = pytest.mark.cluster
__all__ = ["data_csv", "model_dir"]  # module fixtures shared with the drift loop


@pytest.fixture(scope="module")
def flipped_dir(data_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on inverted labels: it predicts the other class for most rows."""
    return train(data_csv, tmp_path_factory.mktemp("flipped") / "model", flip=True)


@pytest.fixture
def rollout(
    kubeconfig: str, api_client: Any, namespace: str, tmp_path: Path, model_dir: Path
) -> Iterator[Rollout]:
    """The operator (told where Prometheus will listen) and version 1 served as stable."""
    with lab(kubeconfig, api_client, namespace, tmp_path, model_dir) as run:
        yield run


def test_a_good_canary_holds_without_prometheus_then_promotes(rollout, model_dir, data_csv):
    run, rows = rollout, pd.read_csv(data_csv)[FEATURES].iloc[:50]
    publish(run.cluster, model_dir, run.workdir / "store", 2)
    wait_for(lambda: run.status().get("canaryVersion") == 2, "the canary", state=run.status)
    # Prometheus is not up yet: every check has no data, and the weight holds
    held = wait_for(
        lambda: run.analysis().get("lastResult") == "NoData" and run.status(),
        "a check without data",
        state=run.status,
    )
    progressing = run.cluster.condition("ModelDeployment", MD, "Progressing")
    assert progressing["reason"] == "AnalysisNoData", progressing
    assert re.search(r"errors: no data \(query \w+ failed: ConnectError", progressing["message"])
    assert (held["canaryVersion"], held["stableVersion"]) == (2, 1)
    assert run.analysis()["failedChecks"] == 0  # onNoData: Pause counts no failure
    targets = [run.serve("stable"), run.serve("canary")]
    with Traffic([t[0] for t in targets], rows) as traffic:
        run.scrape(targets)
        done = wait_for(
            lambda: run.status().get("stableVersion") == 2 and run.status(),
            "the good canary to be promoted",
            timeout=120,
            state=lambda: {"status": run.status(), "operator": run.operator.tail()},
        )
    assert traffic.error is None, traffic.error
    assert done.get("canaryVersion") is None
    assert run.cluster.condition("ModelDeployment", MD, "Degraded")["status"] == "False"
    assert run.rollouts() == {"promoted": 1.0, "rolled_back": 0.0}
    assert run.warnings("AnalysisCheckFailed") == []


def test_prometheus_stopped_mid_canary_holds_the_weight_then_resumes(rollout, model_dir, data_csv):
    run, rows = rollout, pd.read_csv(data_csv)[FEATURES].iloc[:50]
    steps = [{"weight": 10, "pause": "1s"}, {"weight": 50, "pause": "20s"}]
    run.cluster.patch("ModelDeployment", MD, {"spec": guarded(steps=steps)["spec"]})
    publish(run.cluster, model_dir, run.workdir / "store", 2)
    wait_for(lambda: run.status().get("canaryVersion") == 2, "the canary", state=run.status)
    targets = [run.serve("stable"), run.serve("canary")]
    with Traffic([t[0] for t in targets], rows) as traffic:
        prom = run.scrape(targets)
        wait_for(lambda: run.status().get("canaryStep") == 1, "the second step",
                 timeout=120, state=run.status)  # fmt: skip
        prom.stop()
        held = wait_for(
            lambda: (
                run.analysis().get("lastResult") == "NoData"
                and run.analysis().get("lastCheckStep") == 1
                and run.status()
            ),
            "a check of the second step without Prometheus",
            timeout=60,
            state=run.status,
        )
        progressing = run.cluster.condition("ModelDeployment", MD, "Progressing")
        assert progressing["reason"] == "AnalysisNoData", progressing
        assert "no data" in progressing["message"]
        assert (held["canaryVersion"], held["canaryWeight"]) == (2, 50)
        assert run.analysis()["failedChecks"] == 0
        run.scrape(targets)  # back, on the same port
        done = wait_for(
            lambda: run.status().get("stableVersion") == 2 and run.status(),
            "the canary to be promoted once Prometheus is back",
            timeout=120,
            state=run.status,
        )
    assert traffic.error is None, traffic.error
    assert done.get("canaryVersion") is None
    assert run.rollouts() == {"promoted": 1.0, "rolled_back": 0.0}


def rolled_back(run: Rollout) -> dict[str, Any]:
    return wait_for(
        lambda: (run.status().get("rolledBack") or None) and run.status(),
        "the canary to be rolled back",
        timeout=120,
        state=lambda: {"status": run.status(), "operator": run.operator.tail()},
    )


def assert_rolled_back(run: Rollout, status: dict[str, Any]) -> None:
    """Everything a rollback promises, read from the cluster and the operator's metrics."""
    record = status["rolledBack"]
    assert record["failedChecks"] == FAILURE_LIMIT, record
    assert (status["stableVersion"], status.get("canaryVersion"), status["canaryWeight"]) == (
        1,
        None,
        0,
    )
    assert re.search(r"shift \S+ > 0\.1", record["message"]), record
    assert run.cluster.get("Deployment", f"{MD}-canary", "apps/v1") is None
    rejected = run.cluster.condition("ModelVersion", f"{MODEL}-v2", "Rejected")
    assert (rejected["status"], rejected["reason"]) == ("True", "AnalysisFailed")
    assert f"ModelDeployment {run.cluster.namespace}/{MD}" in rejected["message"]
    assert re.search(r"shift \S+ > 0\.1", rejected["message"])
    degraded = run.cluster.condition("ModelDeployment", MD, "Degraded")
    assert degraded["status"] == "True"
    assert "rolled back" in degraded["message"]
    assert run.rollouts() == {"promoted": 0.0, "rolled_back": 1.0}
    assert run.warnings("RolledBack")
    # Latest skips the Rejected version: no second canary of it
    assert run.status().get("canaryVersion") is None


def test_a_flipped_canary_rolls_back_after_failure_limit(rollout, flipped_dir, data_csv):
    run, rows = rollout, pd.read_csv(data_csv)[FEATURES].iloc[:50]
    with canary_of(run, flipped_dir, rows):
        status = rolled_back(run)
    assert_rolled_back(run, status)
    failures = sorted(run.warnings("AnalysisCheckFailed"))
    assert [f"({n}/{FAILURE_LIMIT})" in m for n, m in enumerate(failures, 1)] == [True] * 3
    a_cleared_rejection_is_tried_again(run)


def a_cleared_rejection_is_tried_again(run: Rollout) -> None:
    """The ModelVersion annotation clears Rejected (and goes); Latest chooses it again."""
    name = f"{MODEL}-v2"
    patch = {"metadata": {"annotations": {"kubeloop.io/clear-rejection": "true"}}}
    run.cluster.patch("ModelVersion", name, patch)
    wait_for(
        lambda: run.cluster.condition("ModelVersion", name, "Rejected").get("status") == "False",
        "the rejection to be cleared",
        state=lambda: (run.cluster.get("ModelVersion", name) or {})["metadata"],
    )
    mv = run.cluster.get("ModelVersion", name) or {}
    assert "kubeloop.io/clear-rejection" not in (mv["metadata"].get("annotations") or {})
    assert run.cluster.condition("ModelVersion", name, "Rejected")["reason"] == "Cleared"
    wait_for(lambda: run.status().get("canaryVersion") == 2, "a new canary of version 2",
             state=run.status)  # fmt: skip


def test_an_unreachable_canary_rolls_back_on_its_error_rate(rollout, model_dir, data_csv):
    """The canary's pods are Ready but nothing answers where the stable pods forward (a
    crashed process): every client still gets the stable model's answer (Traffic checks each
    is a 200), the stable pods count the share they could not forward, and ``errorRate``
    fails until the canary is rolled back."""
    run, rows = rollout, pd.read_csv(data_csv)[FEATURES].iloc[:50]
    publish(run.cluster, model_dir, run.workdir / "store", 2)
    wait_for(lambda: run.status().get("canaryVersion") == 2, "the canary", state=run.status)
    pod = run.pod("stable")
    forward = {
        "KUBELOOP_SERVING_CANARY_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens
        "KUBELOOP_SERVING_CANARY_WEIGHT": "50",
        "KUBELOOP_SERVING_CANARY_VERSION": "2",
    }
    stable = run_server(pod, forward)
    run.stack.callback(stable.stop)
    with Traffic([stable], rows) as traffic:
        run.scrape([(stable, pod)])
        status = rolled_back(run)
    assert traffic.error is None, traffic.error
    record = status["rolledBack"]
    assert (record["version"], record["reason"]) == (2, "AnalysisFailed")
    assert record["failedChecks"] == FAILURE_LIMIT
    assert re.search(r"errors 1 > 0\.05", record["message"]), record
    assert (status["stableVersion"], status.get("canaryVersion")) == (1, None)
    assert run.rollouts() == {"promoted": 0.0, "rolled_back": 1.0}


def test_a_restarted_operator_counts_on_from_status(rollout, flipped_dir, data_csv):
    run, rows = rollout, pd.read_csv(data_csv)[FEATURES].iloc[:50]
    run.cluster.patch("ModelDeployment", MD, {"spec": guarded(interval="4s")["spec"]})
    with canary_of(run, flipped_dir, rows):
        wait_for(lambda: run.analysis().get("failedChecks") == 2, "two failed checks",
                 timeout=120, state=run.status)  # fmt: skip
        run.operator.kill()
        assert (run.analysis()["failedChecks"], run.status().get("canaryVersion")) == (2, 2)
        run.operator.start()
        status = rolled_back(run)
    assert status["rolledBack"]["failedChecks"] == FAILURE_LIMIT
    failures = run.warnings("AnalysisCheckFailed")
    # one failure per count: a restart that forgot the count would report (1/3) again
    assert sorted(m[m.index("(") : m.index(")") + 1] for m in failures) == [
        "(1/3)",
        "(2/3)",
        "(3/3)",
    ]


def test_canary_pods_never_ready_roll_back_at_the_progress_deadline(rollout, model_dir):
    """Pods no node can hold (a CPU request beyond every node) never become ready: the canary
    does not stay Progressing, it is rolled back once progressDeadline has passed."""
    run = rollout
    spec = guarded()["spec"]
    spec["canary"]["progressDeadline"] = "3s"
    spec["resources"] = {"requests": {"cpu": "100000"}}
    run.cluster.patch("ModelDeployment", MD, {"spec": spec})
    publish(run.cluster, model_dir, run.workdir / "store", 2)
    status = rolled_back(run)
    record = status["rolledBack"]
    assert (record["version"], record["reason"]) == (2, "ProgressDeadlineExceeded")
    assert "progressDeadline 3s" in record["message"]
    assert (status["stableVersion"], status.get("canaryVersion")) == (1, None)
    assert run.cluster.get("Deployment", f"{MD}-canary", "apps/v1") is None
    rejected = run.cluster.condition("ModelVersion", f"{MODEL}-v2", "Rejected")
    assert (rejected["status"], rejected["reason"]) == ("True", "ProgressDeadlineExceeded")
    progressing = run.cluster.condition("ModelDeployment", MD, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "RolledBack")
    assert run.cluster.condition("ModelDeployment", MD, "Degraded")["status"] == "True"


def test_a_canary_that_loses_its_pods_mid_step_rolls_back_at_the_progress_deadline(
    rollout, model_dir
):
    """A canary that was ready (its step began, it holds without Prometheus) and then gets
    a template no node can hold is not left at its weight forever: it is rolled back once
    its pods have been not ready for progressDeadline."""
    run = rollout
    spec = guarded()["spec"]
    spec["canary"]["progressDeadline"] = "3s"
    run.cluster.patch("ModelDeployment", MD, {"spec": spec})
    publish(run.cluster, model_dir, run.workdir / "store", 2)
    wait_for(
        lambda: run.status().get("canaryVersion") == 2 and run.status().get("stepStartedTime"),
        "the canary's step to begin",
        state=run.status,
    )
    spec["resources"] = {"requests": {"cpu": "100000"}}
    run.cluster.patch("ModelDeployment", MD, {"spec": spec})
    record = rolled_back(run)["rolledBack"]
    assert (record["version"], record["reason"]) == (2, "ProgressDeadlineExceeded")
    assert run.cluster.get("Deployment", f"{MD}-canary", "apps/v1") is None
    assert run.status()["stableVersion"] == 1
