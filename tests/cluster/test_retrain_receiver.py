"""The alert receiver and retrain policy in the operator process, against the real API server.

Alertmanager's notifications are posted here by the test itself (the loop
test, test_drift_loop.py, has Alertmanager send them), so each guard rail can
be driven on purpose: duplicates (also across a SIGKILL restart), max
concurrent, cooldown, unknown deployments, resolved alerts, bad tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubelet import finish_pod
from kubernetes import client
from kubetest import wait_for
from operator_harness import Cluster, pod_of
from retrain_helpers import (
    DIGEST,
    RetrainOperator,
    alert,
    dataset_ready,
    model_deployment,
    notification,
    running_operator,
)

pytestmark = pytest.mark.cluster

FEATURES = ["f1", "f2"]


@pytest.fixture
def data_csv(tmp_path: Path) -> Path:
    path = tmp_path / "iris.csv"
    path.write_text("f1,f2,target\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(100)))
    return path


@pytest.fixture
def operator(kubeconfig: str, api_client: Any, namespace: str, tmp_path: Path):
    with running_operator(kubeconfig, api_client, namespace, tmp_path) as proc:
        yield proc


def retrained(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.list("TrainingJob", selector="kubeloop.io/model-deployment=iris")


def results(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["result"] for r in response.json()["results"]]


def first_alert_creates_one_trainingjob(
    cluster: Cluster, operator: RetrainOperator, first: dict[str, Any]
) -> dict[str, Any]:
    """A firing alert creates one TrainingJob linked to the alert; its template asks for the
    Dataset's newest version (``fresh: false``), so the run starts without a snapshot."""
    assert results(operator.post(first)) == ["created"]
    (tj,) = retrained(cluster)
    meta = tj["metadata"]
    assert meta["labels"]["kubeloop.io/alert-fingerprint"] == "5a1e5c0ffee0ba11"
    assert meta["labels"]["kubeloop.io/retrain-trigger"] == "alert"
    assert meta["annotations"]["kubeloop.io/alert-name"] == "KubeloopDataDrift"
    assert meta["annotations"]["kubeloop.io/alert-starts-at"] == "2024-05-01T10:00:00.500000+00:00"
    assert meta["annotations"]["kubeloop.io/alert-value"] == "0.87"
    assert tj["spec"]["datasetRef"] == {"name": "iris-data", "fresh": False, "version": DIGEST}
    status = cluster.status("ModelDeployment", "iris")
    assert status["lastRetrain"]["trainingJob"] == meta["name"]
    assert status["lastRetrain"]["fingerprint"] == "5a1e5c0ffee0ba11"
    assert status["retrainKeys"] == ["alert:5a1e5c0ffee0ba11@2024-05-01T10:00:00.500000Z"]
    return dict(meta)


def redeliveries_are_duplicates(
    cluster: Cluster, operator: RetrainOperator, first: dict[str, Any]
) -> None:
    """The same notification again (Alertmanager repeats and retries): no twin."""
    assert results(operator.post(first)) == ["duplicate"]
    # ... also after the operator was killed and came back
    operator.kill()
    operator.start()
    assert results(operator.post(first)) == ["duplicate"]
    assert len(retrained(cluster)) == 1


def a_new_episode_waits(cluster: Cluster, operator: RetrainOperator, tj_name: str) -> None:
    """While the retrain runs: max-concurrent; once it has finished, the cooldown still holds."""
    cluster.wait_phase("TrainingJob", tj_name, "Running")
    later = notification(alert(cluster.namespace, "iris", starts_at="2024-05-01T11:00:00Z"))
    assert results(operator.post(later)) == ["max-concurrent"]

    job = cluster.wait_job(f"kubeloop.io/training-job={tj_name}")
    finish_pod(cluster.core, pod_of(cluster, job["metadata"]["name"]), exit_code=1, message="x")
    cluster.wait_phase("TrainingJob", tj_name, "Failed")
    assert results(operator.post(later)) == ["cooldown"]
    assert len(retrained(cluster)) == 1


def test_guard_rails_over_the_real_api_server(cluster, operator, data_csv, namespace):
    dataset_ready(cluster, data_csv, "iris-data", FEATURES)
    md = model_deployment("iris", "iris", "iris-data", FEATURES)
    md["spec"]["retrain"]["template"]["datasetRef"]["fresh"] = False
    cluster.apply(md)
    first = notification(alert(namespace, "iris"))
    meta = first_alert_creates_one_trainingjob(cluster, operator, first)
    redeliveries_are_duplicates(cluster, operator, first)
    a_new_episode_waits(cluster, operator, meta["name"])

    # resolved alerts and alerts for unknown deployments are acknowledged
    mixed = notification(
        alert(namespace, "iris", status="resolved"),
        alert(namespace, "nope", fingerprint="0000000000000001"),
        alert("other-namespace", "iris", fingerprint="0000000000000002"),
    )
    assert results(operator.post(mixed)) == ["resolved", "unknown-deployment", "unknown-deployment"]

    # every decision is an Event on the ModelDeployment and a counter
    decided = {"RetrainCreated", "RetrainDuplicate", "RetrainMaxConcurrent", "RetrainCooldown"}
    wait_for(
        lambda: decided <= set(cluster.events("iris")),
        "the decisions' Events",
        state=lambda: cluster.events("iris"),
    )
    counted = operator.decisions()  # since the restart
    assert counted[("duplicate", "alert")] == 1
    assert counted[("max-concurrent", "alert")] == 1
    assert counted[("cooldown", "alert")] == 1
    assert counted[("unknown-deployment", "alert")] == 2
    assert len(retrained(cluster)) == 1


def test_disabled_policy_unwatched_namespace_and_the_receivers_auth(
    cluster, operator, api_client, core, namespace
):
    doc = model_deployment("iris", "iris", "iris-data", FEATURES)
    doc["spec"]["retrain"]["enabled"] = False
    cluster.apply(doc)
    assert results(operator.post(notification(alert(namespace, "iris")))) == ["disabled"]

    # a ModelDeployment in a namespace this operator does not watch is not its business
    other = f"{namespace[:50]}-other"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        Cluster(api_client, other).apply(model_deployment("iris", "iris", "iris-data", FEATURES))
        assert results(operator.post(notification(alert(other, "iris")))) == ["unknown-deployment"]
        assert Cluster(api_client, other).list("TrainingJob") == []
    finally:
        core.delete_namespace(other)

    assert operator.post(notification(alert(namespace, "iris")), token="wrong").status_code == 401
    bad = operator.post({"version": "4", "status": "firing"})
    assert bad.status_code == 400
    assert "alerts" in bad.json()["error"]
    assert retrained(cluster) == []


def test_scheduled_retraining_under_the_same_guard_rails(cluster, operator, data_csv):
    dataset_ready(cluster, data_csv, "iris-data", FEATURES)
    # every minute; croniter's 6th field is seconds: every 2 seconds here
    cluster.apply(model_deployment("iris", "iris", "iris-data", FEATURES, schedule="* * * * * */2"))
    (tj,) = wait_for(lambda: retrained(cluster), "a scheduled TrainingJob", timeout=30)
    assert tj["metadata"]["labels"]["kubeloop.io/retrain-trigger"] == "schedule"
    # fresh data by default; waiting for its snapshot, it still counts as running
    assert tj["spec"]["datasetRef"] == {"name": "iris-data", "fresh": True}
    # later ticks are decided (max-concurrent while it runs, then cooldown), none creates
    wait_for(
        lambda: (
            {"RetrainMaxConcurrent"} <= set(cluster.events("iris"))
            or {"RetrainCooldown"} <= set(cluster.events("iris"))
        ),
        "a later tick to be skipped",
        state=lambda: cluster.events("iris"),
    )
    assert len(retrained(cluster)) == 1
    keys = cluster.status("ModelDeployment", "iris")["retrainKeys"]
    assert all(k.startswith("schedule:") for k in keys)
    assert len(keys) == len(set(keys)) >= 2
