"""A Dataset fed by a ModelDeployment's feedback, through the real operator and API server.

The operator resolves the deployment's prediction log and writes the snapshot Job with
that claim mounted read-only; the test plays the kubelet (kwok runs no containers): it
runs the Job's real command here, the mounted folder being a local one that holds a
prediction log written by the serving code's own line writers. A deployment whose log is
not on a claim with the inputs makes the Dataset Ready=False naming the field, and no Job.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kubelet import finish_pod, job_pod
from operator_harness import Cluster, pod_of, run_job_locally, wait_for

from kubeloop.operator import builders
from kubeloop.operator.feedbacksource import UNUSABLE
from kubeloop.serving.predlog import Entry, Labels, feedback_lines, lines

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dataset-feedback.yaml"


def schedule(cluster: Cluster, job_name: str) -> None:
    """Play the scheduler for the Job's pod: bind it to a node. This cluster's scheduler
    does not place pods on claims (no volume binding here); kwok then starts it."""
    pod = job_pod(cluster.core, cluster.namespace, job_name)
    if pod.spec.node_name:
        return
    node = cluster.core.list_node().items[0].metadata.name
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod.metadata.name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }
    cluster.core.create_namespaced_binding(cluster.namespace, binding, _preload_content=False)


def example() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = {d["kind"]: d for d in yaml.safe_load_all(EXAMPLE.read_text())}
    return docs["ModelDeployment"], docs["Dataset"]


def write_log(folder: Path, requests: int) -> None:
    """A pod's prediction log (as the server writes it): ``requests`` one-row requests,
    each labelled but the last; one label for a request never served."""
    now = time.time()
    out: list[bytes] = []
    for i in range(requests):
        out += lines(
            Entry(f"req-{i}", "breast-cancer", "1", now - 60 + i, 0.001,
                  {"label": np.array([i % 2])},
                  {"mean radius": np.array([10.0 + i]), "mean texture": np.array([20.0 - i])},
                  "stable")
        )  # fmt: skip
    labels = tuple((f"req-{i}", (i + 1) % 2) for i in range(requests - 1))
    out += feedback_lines(Labels((*labels, ("never-served", 1)), "breast-cancer", now))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "breast-cancer-logged-5c9d-x1.jsonl").write_bytes(b"".join(out))


def snapshot_job(cluster: Cluster, name: str) -> dict[str, Any] | None:
    jobs = cluster.list("Job", "batch/v1", f"{builders.DATASET_LABEL}={name}")
    return jobs[0] if jobs else None


def test_a_feedback_dataset_snapshots_the_deployments_prediction_log(cluster, operator, tmp_path):
    md, ds = example()
    cluster.apply(md)
    cluster.apply(ds)
    name = ds["metadata"]["name"]
    job = wait_for(lambda: snapshot_job(cluster, name), "the feedback Dataset's snapshot Job")
    pod = job["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "feedback")
    assert volume["persistentVolumeClaim"] == {"claimName": "prediction-logs", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "feedback")
    assert (mount["mountPath"], mount["subPath"], mount["readOnly"]) == (
        builders.FEEDBACK_LOG_DIR, "breast-cancer", True
    )  # fmt: skip
    # the kubelet's part: the claim's folder is a local one here
    claim = tmp_path / "claim" / "breast-cancer"
    write_log(claim, 6)
    local = copy.deepcopy(job)
    args = local["spec"]["template"]["spec"]["containers"][0]["args"]
    args[args.index(f"feedback:{builders.FEEDBACK_LOG_DIR}")] = f"feedback:{claim}"
    code, message = run_job_locally(local, tmp_path / "job")
    assert code == 0, message
    schedule(cluster, job["metadata"]["name"])
    finish_pod(cluster.core, pod_of(cluster, job["metadata"]["name"]), exit_code=0, message=message)
    status = wait_for(
        lambda: cluster.status("Dataset", name).get("version") and cluster.status("Dataset", name),
        "the feedback Dataset's first version",
    )
    assert status["rows"] == 5
    assert [c["name"] for c in status["inferredSchema"]] == ["mean radius", "mean texture",
                                                            "target"]  # fmt: skip
    assert status["snapshotUri"].endswith(".parquet")
    assert cluster.condition("Dataset", name)["status"] == "True"


def test_a_deployment_without_a_claimed_log_with_inputs_makes_the_dataset_not_ready(
    cluster, operator
):
    md, ds = example()
    md["spec"]["predictionLog"] = {"sink": "stdout", "includeInputs": True}
    cluster.apply(md)
    cluster.apply(ds)
    name, deployment = ds["metadata"]["name"], md["metadata"]["name"]

    def reason(wanted: str) -> dict[str, Any] | None:
        ready = cluster.condition("Dataset", name)
        return ready if ready.get("reason") == wanted else None

    ready = wait_for(lambda: reason(UNUSABLE), "Ready=False naming the deployment's sink")
    assert ready["status"] == "False"
    assert ready["message"] == (
        f"ModelDeployment {deployment}: a feedback source needs spec.predictionLog.sink pvc "
        "(it is stdout)"
    )
    assert snapshot_job(cluster, name) is None
    # on a claim, but without the inputs: named too
    log = {"sink": "pvc", "pvc": {"claimName": "prediction-logs"}, "includeInputs": False}
    cluster.patch("ModelDeployment", deployment, {"spec": {"predictionLog": log}})
    wait_for(
        lambda: (
            "spec.predictionLog.includeInputs true"
            in cluster.condition("Dataset", name).get("message", "")
        ),
        "Ready naming includeInputs",
    )
    assert snapshot_job(cluster, name) is None
    # fixed: the snapshot Job follows
    log["includeInputs"] = True
    cluster.patch("ModelDeployment", deployment, {"spec": {"predictionLog": log}})
    job = wait_for(lambda: snapshot_job(cluster, name), "the snapshot Job once the log is usable")
    assert job["metadata"]["name"].startswith(f"{name}-snap-g1-")
    wait_for(lambda: reason("Snapshotting"), "Ready=False, reason=Snapshotting")
