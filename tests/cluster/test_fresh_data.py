"""A retrain on fresh data, against the real API server: the TrainingJob the alert creates
waits for a snapshot it requested on the Dataset, then trains on that snapshot's version
(changed or not), or fails naming the Dataset when the snapshot failed.

The test plays the kubelet for the snapshot pods (kwok runs none); the operator is killed
and restarted while the requested snapshot runs, and still makes exactly one Job for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubelet import finish_pod
from kubetest import wait_for
from operator_harness import Cluster, pod_of
from retrain_helpers import (
    DIGEST,
    alert,
    dataset_ready,
    model_deployment,
    notification,
    running_operator,
)

pytestmark = pytest.mark.cluster

FEATURES = ["f1", "f2"]
NEW = "sha256:" + "ef" * 32
DATASET = "iris-data"
REQUEST = "kubeloop.io/snapshot-requested"


@pytest.fixture
def data_csv(tmp_path: Path) -> Path:
    path = tmp_path / "iris.csv"
    path.write_text("f1,f2,target\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(100)))
    return path


def snapshot_jobs(cluster: Cluster) -> list[str]:
    jobs = cluster.list("Job", "batch/v1", f"kubeloop.io/dataset={DATASET}")
    return sorted(j["metadata"]["name"] for j in jobs)


def snapshot_result(digest: str, data_csv: Path) -> str:
    return json.dumps(
        {
            "kind": "snapshot",
            "status": "succeeded",
            "digest": digest,
            "rows": 100,
            "snapshot_uri": data_csv.as_uri(),
            "columns": [{"name": c, "type": "number"} for c in [*FEATURES, "target"]],
        }
    )


def fail_job(cluster: Cluster, job: str) -> None:
    """Fail every pod of ``job`` (the source unreachable) until its retries are used up."""

    def failed() -> bool:
        status = (cluster.get("Job", job, "batch/v1") or {}).get("status") or {}
        if any(c["type"] == "Failed" for c in status.get("conditions") or []):
            return True
        pods = cluster.core.list_namespaced_pod(cluster.namespace, label_selector=f"job-name={job}")
        for pod in pods.items:
            if pod.status.phase not in ("Failed", "Succeeded"):
                finish_pod(cluster.core, pod, exit_code=1, message="source unreachable")
        return False

    wait_for(failed, f"Job {job} to fail", state=lambda: cluster.get("Job", job, "batch/v1"))


def fresh_retrain(cluster: Cluster, operator: Any, namespace: str) -> str:
    """An alert makes a TrainingJob that leaves the version unset and waits for a snapshot
    (the default for a retrain: the template says nothing about freshness)."""
    md = model_deployment("iris", "iris", DATASET, FEATURES)
    assert md["spec"]["retrain"]["template"]["datasetRef"] == {"name": DATASET}
    cluster.apply(md)
    response = operator.post(notification(alert(namespace, "iris")))
    assert response.status_code == 200, response.text
    (tj,) = cluster.list("TrainingJob", selector="kubeloop.io/model-deployment=iris")
    assert tj["spec"]["datasetRef"] == {"name": DATASET, "fresh": True}
    name = str(tj["metadata"]["name"])
    ready = wait_for(
        lambda: (
            (c := cluster.condition("TrainingJob", name)).get("reason") == "WaitingForSnapshot"
            and c
        ),
        "the retrain to wait for a snapshot",
        state=lambda: cluster.get("TrainingJob", name),
    )
    assert f"Dataset {DATASET}" in ready["message"]
    assert cluster.status("TrainingJob", name)["phase"] == "Pending"
    assert "datasetVersion" not in cluster.status("TrainingJob", name)
    return name


@pytest.mark.parametrize(
    ("digest", "changed"), [(NEW, True), (DIGEST, False), (None, None)], ids=str
)
def test_a_retrain_trains_on_a_snapshot_taken_for_it(
    kubeconfig, api_client, namespace, tmp_path, cluster, data_csv, digest, changed
):
    # The safety resync at its default: every step must come from an event, within the
    # waits' seconds (an unchanged snapshot once woke no one, and the run waited 120 s).
    resync = {"KUBELOOP_RESYNC_SECONDS": "120"}
    with running_operator(kubeconfig, api_client, namespace, tmp_path, **resync) as operator:
        dataset_ready(cluster, data_csv, DATASET, FEATURES)
        (initial,) = snapshot_jobs(cluster)
        tj = fresh_retrain(cluster, operator, namespace)
        created = cluster.get("TrainingJob", tj)["metadata"]["creationTimestamp"]
        requested = wait_for(
            lambda: [j for j in snapshot_jobs(cluster) if j != initial],
            "the requested snapshot Job",
            state=lambda: cluster.get("Dataset", DATASET),
        )
        annotations = cluster.get("Dataset", DATASET)["metadata"]["annotations"]
        assert annotations[REQUEST] == created

        # A restart while the snapshot runs makes no second Job for the same request.
        operator.kill()
        operator.start()
        (job,) = requested
        if digest is None:
            fail_job(cluster, job)
        else:
            pod = pod_of(cluster, job)
            finish_pod(cluster.core, pod, exit_code=0, message=snapshot_result(digest, data_csv))
        last = wait_for(
            lambda: cluster.status("Dataset", DATASET).get("lastSnapshot", {}).get("request"),
            "the Dataset to record the requested snapshot",
            state=lambda: cluster.status("Dataset", DATASET),
        )
        assert last
        outcome = cluster.status("Dataset", DATASET)["lastSnapshot"]
        assert outcome["succeeded"] is (digest is not None)
        if digest is None:
            status = cluster.wait_phase("TrainingJob", tj, "Failed")
            ready = cluster.condition("TrainingJob", tj)
            assert ready["reason"] == "SnapshotFailed"
            assert f"Dataset {DATASET}" in ready["message"]
            assert "datasetVersion" not in status
            assert not cluster.list("Job", "batch/v1", f"kubeloop.io/training-job={tj}")
        else:
            assert outcome["digest"] == digest
            assert outcome["changed"] is changed
            status = cluster.wait_phase("TrainingJob", tj, "Running")
            assert status["datasetVersion"] == digest
            cluster.wait_job(f"kubeloop.io/training-job={tj}")
        # Several reconciles since the restart (and since the snapshot): still one Job.
        assert snapshot_jobs(cluster) == sorted([initial, job])
