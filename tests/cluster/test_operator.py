"""The operator, as a real process, against the real API server.

kwok runs no containers, so where a Job's pod must "run" the test plays the
kubelet: it runs the real trainer command locally with the pod's arguments
and writes the exit code and termination message into the pod's status; the
real Job controller then completes or fails the Job.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubelet import finish_pod
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import (
    KINDS,
    Cluster,
    pod_of,
    run_job_locally,
    wait_for,
)
from sklearn.datasets import load_breast_cancer

from kubeloop.api.v1alpha1 import ModelDeploymentSpec
from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.operator import retention
from kubeloop.operator.handlers import retention as handlers_retention
from kubeloop.operator.handlers.common import Context, Reconcile
from kubeloop.operator.kube import Kube
from kubeloop.operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness"]


@pytest.fixture(scope="session")
def data_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = load_breast_cancer(as_frame=True).frame
    path = tmp_path_factory.mktemp("data") / "breast-cancer.csv"
    frame[[*FEATURES, "target"]].to_csv(path, index=False)
    return path


def example(kind: str, **spec_updates: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"{kind.lower()}.yaml").read_text())
    doc["spec"].update(spec_updates)
    return doc


def dataset(data_csv: Path, name: str = "cancer") -> dict[str, Any]:
    doc = example(
        "Dataset",
        source={"uri": data_csv.as_uri()},
        schema={
            "columns": [{"name": f, "type": "number"} for f in FEATURES]
            + [{"name": "target", "type": "integer"}]
        },
    )
    doc["metadata"]["name"] = name
    doc["spec"].pop("refreshInterval")
    return doc


def training_job(name: str, dataset_name: str = "cancer", **updates: Any) -> dict[str, Any]:
    doc = example("TrainingJob")
    doc["metadata"]["name"] = name
    doc["spec"].update(
        datasetRef={"name": dataset_name},
        modelName="cancer",
        estimator={"className": "LogisticRegression", "params": {"max_iter": 500}},
        gate={"min": {"accuracy": 0.8}},
    )
    doc["spec"].pop("resources")
    doc["spec"].update(updates)
    return doc


def play_kubelet(
    cluster: Cluster, selector: str, workdir: Path, *, override: tuple[int, str] | None = None
) -> tuple[int, str]:
    """Run the Job matching ``selector`` here (or pretend, with ``override``); finish its pod."""
    job = cluster.wait_job(selector)
    pod = pod_of(cluster, job["metadata"]["name"])
    exit_code, message = override or run_job_locally(job, workdir / job["metadata"]["name"])
    finish_pod(cluster.core, pod, exit_code=exit_code, message=message)
    return exit_code, message


def snapshot_ready(
    cluster: Cluster, data_csv: Path, tmp_path: Path, name: str = "cancer"
) -> dict[str, Any]:
    cluster.apply(dataset(data_csv, name))
    code, message = play_kubelet(cluster, f"kubeloop.io/dataset={name}", tmp_path)
    assert code == 0, message
    return wait_for(
        lambda: cluster.status("Dataset", name).get("version") and cluster.status("Dataset", name),
        f"Dataset {name} to get a version",
        state=lambda: cluster.get("Dataset", name),
    )


DIGEST = "sha256:" + "ab" * 32


def dataset_ready_fast(cluster: Cluster, data_csv: Path, tmp_path: Path) -> None:
    """A Ready Dataset whose snapshot pod reports a result without running the trainer."""
    cluster.apply(dataset(data_csv))
    summary = {
        "kind": "snapshot",
        "status": "succeeded",
        "digest": DIGEST,
        "rows": 569,
        "snapshot_uri": data_csv.as_uri(),
    }
    play_kubelet(cluster, "kubeloop.io/dataset=cancer", tmp_path, override=(0, json.dumps(summary)))
    wait_for(lambda: cluster.status("Dataset", "cancer").get("version") == DIGEST, "Dataset Ready")


def trained_summary(store: Path) -> str:
    """A trainer summary pointing at a real (tiny) artifact in the store."""
    artifact = store / "trained" / ArtifactLayout.MODEL
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(b"trained model")
    return json.dumps(
        {
            "kind": "train",
            "status": "succeeded",
            "artifact_uri": artifact.as_uri(),
            "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
            "metrics": {"accuracy": 0.93},
        }
    )


def train(cluster: Cluster, tmp_path: Path, name: str, **updates: Any) -> dict[str, Any]:
    cluster.apply(training_job(name, **updates))
    code, message = play_kubelet(cluster, f"kubeloop.io/training-job={name}", tmp_path)
    assert code == 0, message
    return cluster.wait_phase("TrainingJob", name, "Succeeded")


def test_dataset_to_training_to_version(cluster, operator, data_csv, tmp_path):
    status = snapshot_ready(cluster, data_csv, tmp_path)
    assert status["version"].startswith("sha256-v2:")
    assert status["rows"] == 569
    assert status["columns"] == 6
    assert cluster.condition("Dataset", "cancer")["status"] == "True"
    assert status["observedGeneration"] == 1

    tj = train(cluster, tmp_path, "cancer-1")
    assert tj["datasetVersion"] == status["version"]
    assert tj["metrics"]["accuracy"] >= 0.8
    mv_name = tj["modelVersion"]
    assert (mv_name, tj["version"]) == ("cancer-v1", 1)
    mv = wait_for(
        lambda: (
            cluster.condition("ModelVersion", mv_name).get("status") == "True"
            and cluster.get("ModelVersion", mv_name)
        ),
        "ModelVersion to be verified",
        state=lambda: cluster.get("ModelVersion", mv_name),
    )
    assert mv["spec"]["lineage"]["datasetVersion"] == status["version"]
    assert mv["spec"]["lineage"]["trainingJob"] == "cancer-1"
    assert [i["name"] for i in mv["spec"]["inputs"]] == FEATURES
    # a registry entry: not owned by (so not deleted with) the TrainingJob
    assert "ownerReferences" not in mv["metadata"]
    assert mv["spec"]["lineage"]["image"]
    assert cluster.condition("ModelVersion", mv_name, "Verified")["reason"] == "DigestMatches"
    assert "ModelVersionCreated" in wait_for(lambda: cluster.events("cancer-1"), "events")


def test_a_version_owned_by_its_training_job_is_disowned(cluster, operator, store):
    """Versions made when TrainingJobs owned them lose that owner reference, so deleting the
    job (which the garbage collector then acts on) leaves them."""
    tj = cluster.apply(training_job("old"))  # no Dataset: it waits, which is all we need
    publish(
        cluster,
        store,
        1,
        owners=[
            {
                "apiVersion": "kubeloop.io/v1alpha1",
                "kind": "TrainingJob",
                "name": "old",
                "uid": tj["metadata"]["uid"],
                "controller": True,
            }
        ],
    )
    wait_for(
        lambda: not cluster.get("ModelVersion", "cancer-v1")["metadata"].get("ownerReferences"),
        "the TrainingJob owner reference to go",
        state=lambda: cluster.get("ModelVersion", "cancer-v1"),
    )
    cluster.delete_all(("TrainingJob",))
    assert cluster.get("ModelVersion", "cancer-v1") is not None


def test_training_waits_for_missing_dataset_then_recovers(
    cluster, operator, data_csv, tmp_path, store
):
    cluster.apply(training_job("early"))
    wait_for(
        lambda: cluster.condition("TrainingJob", "early").get("reason") == "DatasetNotFound",
        "DatasetNotFound",
        state=lambda: cluster.get("TrainingJob", "early"),
    )
    assert cluster.list("Job", "batch/v1", "kubeloop.io/training-job=early") == []
    cluster.apply(dataset(data_csv))
    wait_for(
        lambda: cluster.condition("TrainingJob", "early").get("reason") == "DatasetNotReady",
        "DatasetNotReady",
    )
    summary = {"kind": "snapshot", "status": "succeeded", "digest": DIGEST, "rows": 569}
    play_kubelet(cluster, "kubeloop.io/dataset=cancer", tmp_path, override=(0, json.dumps(summary)))
    job = cluster.wait_job("kubeloop.io/training-job=early")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][4].endswith(
        ArtifactLayout.snapshot_data("", DIGEST, "csv")
    )
    play_kubelet(
        cluster, "kubeloop.io/training-job=early", tmp_path, override=(0, trained_summary(store))
    )
    cluster.wait_phase("TrainingJob", "early", "Succeeded")


def test_failing_trainer_keeps_its_reason(cluster, operator, data_csv, tmp_path):
    dataset_ready_fast(cluster, data_csv, tmp_path)
    cluster.apply(training_job("crash", backoffLimit=0))
    play_kubelet(
        cluster,
        "kubeloop.io/training-job=crash",
        tmp_path,
        override=(1, "MemoryError: out of memory"),
    )
    failed = cluster.wait_phase("TrainingJob", "crash", "Failed")
    assert "BackoffLimitExceeded" in failed["reason"]
    assert cluster.condition("TrainingJob", "crash")["reason"] == "TrainingFailed"
    assert "TrainingFailed" in cluster.events("crash")
    assert cluster.list("ModelVersion") == []


def test_rejected_gate_publishes_nothing(cluster, operator, data_csv, tmp_path):
    snapshot_ready(cluster, data_csv, tmp_path)
    cluster.apply(training_job("picky", gate={"min": {"accuracy": 0.999}}))
    code, message = play_kubelet(cluster, "kubeloop.io/training-job=picky", tmp_path)
    assert code == 3, message
    rejected = cluster.wait_phase("TrainingJob", "picky", "Rejected")
    assert "accuracy" in rejected["reason"]
    assert rejected["metrics"]["accuracy"] < 0.999
    assert cluster.condition("TrainingJob", "picky")["reason"] == "GateRejected"
    # Exit code 3 fails the Job at once (podFailurePolicy): no retry pod.
    job = cluster.wait_job("kubeloop.io/training-job=picky")
    assert len(cluster.list("Pod", "v1", f"job-name={job['metadata']['name']}")) == 1
    assert cluster.list("ModelVersion") == []


def test_unreadable_or_tampered_artifact(cluster, operator, store):
    artifact = store / "external" / ArtifactLayout.MODEL
    artifact.parent.mkdir()
    artifact.write_bytes(b"not really onnx")
    mv = example("ModelVersion")
    wrong = copy.deepcopy(mv)
    wrong["metadata"]["name"] = "tampered"
    wrong["spec"]["artifact"]["uri"] = artifact.as_uri()
    cluster.apply(wrong)
    missing = copy.deepcopy(mv)
    missing["metadata"]["name"] = "missing"
    missing["spec"]["artifact"]["uri"] = (store / "nope" / ArtifactLayout.MODEL).as_uri()
    cluster.apply(missing)
    good = copy.deepcopy(mv)
    good["metadata"]["name"] = "good"
    good["spec"]["artifact"] = {
        "uri": artifact.as_uri(),
        "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
    }
    cluster.apply(good)
    wait_for(
        lambda: cluster.condition("ModelVersion", "tampered").get("reason") == "DigestMismatch",
        "DigestMismatch",
    )
    wait_for(
        lambda: cluster.condition("ModelVersion", "missing").get("reason") == "ArtifactNotFound",
        "ArtifactNotFound",
    )
    wait_for(
        lambda: cluster.condition("ModelVersion", "good").get("status") == "True", "good Ready"
    )
    assert "DigestMismatch" in cluster.events("tampered")


def test_restart_never_creates_a_second_job_or_version(
    cluster, operator, data_csv, tmp_path, store
):
    dataset_ready_fast(cluster, data_csv, tmp_path)
    cluster.apply(training_job("once"))
    job = cluster.wait_job("kubeloop.io/training-job=once")
    operator.kill()
    operator.start()
    pod = pod_of(cluster, job["metadata"]["name"])
    finish_pod(cluster.core, pod, exit_code=0, message=trained_summary(store))
    operator.kill()  # possibly between ModelVersion creation and the status write
    operator.start()
    cluster.wait_phase("TrainingJob", "once", "Succeeded")
    operator.kill()
    operator.start()
    settled = cluster.status("TrainingJob", "once")
    # Several resync periods (1 s each) for the restarted operator to make a mistake in.
    checks = iter(range(5))
    wait_for(lambda: next(checks, None) is None, "five resync periods", timeout=30, interval=1)
    assert cluster.status("TrainingJob", "once") == settled
    assert len(cluster.list("Job", "batch/v1", "kubeloop.io/training-job=once")) == 1
    assert [m["metadata"]["name"] for m in cluster.list("ModelVersion")] == ["cancer-v1"]
    assert len(cluster.list("Job", "batch/v1", "kubeloop.io/dataset=cancer")) == 1


def test_ten_parallel_trainings_get_ten_distinct_versions(
    cluster, operator, data_csv, tmp_path, store
):
    dataset_ready_fast(cluster, data_csv, tmp_path)
    publish(cluster, store, 1)  # an existing, hand-registered version 1
    # One real artifact, reported by ten trainer pods finishing together.
    summary = trained_summary(store)
    names = [f"par-{i}" for i in range(1, 11)]
    for name in names:
        cluster.apply(training_job(name))
    pods = [
        pod_of(cluster, cluster.wait_job(f"kubeloop.io/training-job={n}")["metadata"]["name"])
        for n in names
    ]
    for pod in pods:
        finish_pod(cluster.core, pod, exit_code=0, message=summary)
    wait_for(
        lambda: all(cluster.status("TrainingJob", n).get("phase") == "Succeeded" for n in names),
        "ten TrainingJobs to succeed",
        timeout=120,
        state=lambda: {n: cluster.status("TrainingJob", n).get("phase") for n in names},
    )
    versions = sorted(cluster.status("TrainingJob", n)["version"] for n in names)
    assert versions == list(range(2, 12))
    assert len(cluster.list("ModelVersion")) == 11


def publish(
    cluster: Cluster,
    store: Path,
    version: int,
    owners: list[dict[str, Any]] | None = None,
    folder: Path | None = None,
) -> None:
    """A Ready ModelVersion of model "cancer", registered by hand like an external model
    (its files under ``folder``, by default outside the operator's model folders)."""
    artifact = (folder or store / "external") / str(version) / ArtifactLayout.MODEL
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(f"model {version}".encode())
    mv = example("ModelVersion", modelName="cancer", version=version)
    mv["metadata"]["name"] = f"cancer-v{version}"
    if owners:
        mv["metadata"]["ownerReferences"] = owners
    mv["spec"]["artifact"] = {
        "uri": artifact.as_uri(),
        "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
    }
    cluster.apply(mv)
    wait_for(
        lambda: cluster.condition("ModelVersion", f"cancer-v{version}").get("status") == "True",
        f"cancer-v{version} to be Ready",
    )


def serve_setup(
    cluster: Cluster, store: Path, steps: list[dict[str, Any]] | None, **spec: Any
) -> None:
    publish(cluster, store, 1)
    md = example("ModelDeployment", modelName="cancer", replicas=2, **spec)
    md["metadata"]["name"] = "cancer"
    md["spec"].pop("retrain")
    if steps is None:
        md["spec"].pop("canary")
    else:
        md["spec"]["canary"] = {"steps": steps}
    cluster.apply(md)
    cluster.wait_phase("ModelDeployment", "cancer", "Serving", timeout=90)


def routing(cluster: Cluster) -> dict[str, Any]:
    cm = cluster.get("ConfigMap", "cancer-routing", "v1")
    return json.loads(cm["data"]["routing.json"]) if cm else {}


def test_deployment_serves_the_newest_version(cluster, operator, store):
    serve_setup(cluster, store, steps=None)
    status = cluster.status("ModelDeployment", "cancer")
    assert status["stableVersion"] == 1
    assert status["url"] == f"http://cancer.{cluster.namespace}.svc:8080"
    dep = cluster.get("Deployment", "cancer-stable", "apps/v1")
    assert dep["spec"]["replicas"] == 2
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "1"
    assert (
        cluster.get("Service", "cancer", "v1")["spec"]["selector"]["kubeloop.io/role"] == "stable"
    )
    assert cluster.condition("ModelDeployment", "cancer")["status"] == "True"
    # Without canary steps a new version is a rolling update of the stable pods.
    publish(cluster, store, 2)
    wait_for(
        lambda: (
            cluster.get("Deployment", "cancer-stable", "apps/v1")["metadata"]["labels"][
                "app.kubernetes.io/version"
            ]
            == "2"
        ),
        "the stable Deployment to move to version 2",
    )
    assert cluster.get("Deployment", "cancer-canary", "apps/v1") is None
    # the served-by label moves with the version served
    wait_for(
        lambda: (
            served_by(cluster) == {"cancer-v2": "stable"}
            and cluster.status("ModelDeployment", "cancer")["servedModelVersions"] == ["cancer-v2"]
        ),
        "the served-by label and status to move to cancer-v2",
        state=lambda: served_by(cluster),
    )


def served_by(cluster: Cluster, deployment: str = "cancer") -> dict[str, str]:
    """ModelVersion name -> role, for the versions labelled served by ``deployment``."""
    key = f"served-by.kubeloop.io/{deployment}"
    return {
        mv["metadata"]["name"]: mv["metadata"]["labels"][key]
        for mv in cluster.list("ModelVersion")
        if key in (mv["metadata"].get("labels") or {})
    }


NETWORK_POLICY = "networking.k8s.io/v1"


def test_tls_and_network_policy_reach_the_children_and_the_policy_goes_with_the_field(
    cluster, operator, store
):
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    spec = {"tls": {"secretName": "cancer-tls"}, "networkPolicy": {"ingressFrom": [peer]}}
    serve_setup(cluster, store, steps=None, **spec)
    assert cluster.status("ModelDeployment", "cancer")["url"] == (
        f"https://cancer.{cluster.namespace}.svc:8080"
    )
    pod = cluster.get("Deployment", "cancer-stable", "apps/v1")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "cancer-tls", "defaultMode": 0o440}} in pod[
        "volumes"
    ]
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert cluster.get("Service", "cancer", "v1")["spec"]["ports"][0]["name"] == "https"
    policy = cluster.get("NetworkPolicy", "cancer", NETWORK_POLICY)
    assert policy is not None
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"][1] == peer
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    cluster.patch("ModelDeployment", "cancer", {"spec": {"networkPolicy": None, "tls": None}})
    wait_for(
        lambda: cluster.get("NetworkPolicy", "cancer", NETWORK_POLICY) is None,
        "the NetworkPolicy to go with spec.networkPolicy",
    )
    wait_for(
        lambda: cluster.status("ModelDeployment", "cancer")["url"].startswith("http://"),
        "plain HTTP again without spec.tls",
    )


def server_env(cluster: Cluster) -> dict[str, str]:
    pod = cluster.get("Deployment", "cancer-stable", "apps/v1")["spec"]["template"]["spec"]
    return {e["name"]: e.get("value", "") for e in pod["containers"][0]["env"]}


def test_prediction_log_reaches_the_pods_and_goes_with_the_field(cluster, operator, store):
    serve_setup(cluster, store, steps=None, predictionLog={"sampleRate": 0.5})
    env = server_env(cluster)
    assert env["KUBELOOP_SERVING_PREDICTION_LOG"] == "-"
    assert env["KUBELOOP_SERVING_PREDICTION_LOG_SAMPLE_RATE"] == "0.5"
    # a claim: the template changes (its pods stay Pending here, no claim exists: that is fine)
    plog = {"sink": "pvc", "pvc": {"claimName": "pred-logs", "path": "cancer"}}
    cluster.patch("ModelDeployment", "cancer", {"spec": {"predictionLog": plog}})
    wait_for(
        lambda: (
            server_env(cluster)
            .get("KUBELOOP_SERVING_PREDICTION_LOG", "")
            .endswith("/$(KUBELOOP_POD_NAME).jsonl")
        ),
        "the stable pods to log to a file of their own on the claim",
        state=lambda: server_env(cluster).get("KUBELOOP_SERVING_PREDICTION_LOG"),
    )
    pod = cluster.get("Deployment", "cancer-stable", "apps/v1")["spec"]["template"]["spec"]
    claim = {"name": "prediction-log", "persistentVolumeClaim": {"claimName": "pred-logs"}}
    assert claim in pod["volumes"]
    cluster.patch("ModelDeployment", "cancer", {"spec": {"predictionLog": None}})
    wait_for(
        lambda: "KUBELOOP_SERVING_PREDICTION_LOG" not in server_env(cluster),
        "the prediction log to go with spec.predictionLog",
    )
    pod = cluster.get("Deployment", "cancer-stable", "apps/v1")["spec"]["template"]["spec"]
    assert claim not in pod["volumes"]


def test_shadow_serves_its_version_beside_the_stable_and_goes_with_the_field(
    cluster, operator, store
):
    serve_setup(cluster, store, steps=None, shadow={"version": 1, "percent": 50})
    publish(cluster, store, 2)  # stable moves on to 2; the shadow keeps serving 1
    # status is written after the children, so it is part of what the wait waits for
    wait_for(
        lambda: (
            served_by(cluster) == {"cancer-v2": "stable", "cancer-v1": "shadow"}
            and cluster.status("ModelDeployment", "cancer").get("shadowVersion") == 1
        ),
        "v2 stable, v1 labelled shadow and status.shadowVersion 1",
        state=lambda: (served_by(cluster), cluster.status("ModelDeployment", "cancer")),
    )
    shadow = cluster.get("Deployment", "cancer-shadow", "apps/v1")
    assert shadow["metadata"]["labels"]["app.kubernetes.io/version"] == "1"
    assert shadow["metadata"]["ownerReferences"][0]["name"] == "cancer"
    assert cluster.get("Service", "cancer-shadow", "v1")["spec"]["selector"][
        "kubeloop.io/role"
    ] == ("shadow")
    assert routing(cluster)["shadow_url"] == f"http://cancer-shadow.{cluster.namespace}.svc:8080"
    assert routing(cluster)["shadow_weight"] == 50
    cluster.patch("ModelDeployment", "cancer", {"spec": {"shadow": None}})
    wait_for(
        lambda: (
            cluster.get("Deployment", "cancer-shadow", "apps/v1") is None
            and cluster.get("Service", "cancer-shadow", "v1") is None
            and served_by(cluster) == {"cancer-v2": "stable"}
            and cluster.status("ModelDeployment", "cancer").get("shadowVersion") is None
        ),
        "the shadow children, label and status.shadowVersion to go with spec.shadow",
        state=lambda: (served_by(cluster), cluster.status("ModelDeployment", "cancer")),
    )
    assert "shadow_url" not in routing(cluster)


def test_feedback_token_secret_is_created_once_and_kept(cluster, operator, store):
    serve_setup(cluster, store, steps=None)
    name = "cancer-feedback-token"
    assert cluster.status("ModelDeployment", "cancer")["feedbackTokenSecret"] == name
    secret = cluster.get("Secret", name, "v1")
    assert secret is not None
    md = cluster.get("ModelDeployment", "cancer")
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "ModelDeployment",
        md["metadata"]["uid"],
        True,
    )
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) >= 32
    pod = cluster.get("Deployment", "cancer-stable", "apps/v1")["spec"]["template"]["spec"]
    assert {"key": "token", "path": "token"} in next(
        v["secret"]["items"]
        for v in pod["volumes"]
        if v.get("secret", {}).get("secretName") == name
    )
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBELOOP_SERVING_TOKEN_FILE"].endswith("/token")
    mv = cluster.get("ModelVersion", "cancer-v1")
    assert env["KUBELOOP_SERVING_EXPECTED_SHA256"] == mv["spec"]["artifact"]["sha256"]
    # a spec change, a new version, restarts and many resyncs: the same Secret, untouched
    cluster.patch("ModelDeployment", "cancer", {"spec": {"replicas": 3}})
    wait_for(
        lambda: cluster.get("Deployment", "cancer-stable", "apps/v1")["spec"]["replicas"] == 3,
        "the stable Deployment to have 3 replicas",
    )
    operator.kill()
    operator.start()
    publish(cluster, store, 2)
    wait_for(
        lambda: cluster.status("ModelDeployment", "cancer").get("stableVersion") == 2,
        "version 2 to be served",
    )
    operator.kill()
    operator.start()
    checks = iter(range(4))
    wait_for(lambda: next(checks, None) is None, "four resync periods", timeout=30, interval=1)
    again = cluster.get("Secret", name, "v1")
    assert again["metadata"]["uid"] == secret["metadata"]["uid"]
    assert again["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
    assert again["data"] == secret["data"]
    assert cluster.status("ModelDeployment", "cancer")["feedbackTokenSecret"] == name
    assert cluster.events("cancer").count("TokenCreated") == 1
    # deleted with its ModelDeployment (garbage collection of owned objects)
    cluster.delete("ModelDeployment", "cancer")
    wait_for(
        lambda: cluster.get("Secret", name, "v1") is None,
        "the token Secret to be garbage-collected",
        timeout=60,
    )


RBAC = "rbac.authorization.k8s.io/v1"


def test_stable_pods_read_their_routing_with_their_own_account_which_goes_with_them(
    cluster, operator, store
):
    serve_setup(cluster, store, steps=[{"weight": 10, "pause": "1h"}])
    md = cluster.get("ModelDeployment", "cancer")
    account = cluster.get("ServiceAccount", "cancer-router", "v1")
    role = cluster.get("Role", "cancer-router", RBAC)
    binding = cluster.get("RoleBinding", "cancer-router", RBAC)
    for obj in (account, role, binding):
        assert obj is not None
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("ModelDeployment", md["metadata"]["uid"])
    assert account["automountServiceAccountToken"] is False
    (rule,) = role["rules"]
    assert (rule["resources"], rule["resourceNames"]) == (["configmaps"], ["cancer-routing"])
    assert rule["verbs"] == ["get", "list", "watch"]
    assert binding["subjects"][0]["name"] == "cancer-router"
    pod = cluster.get("Deployment", "cancer-stable", "apps/v1")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cancer-router"
    assert pod["automountServiceAccountToken"] is True
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBELOOP_SERVING_ROUTING_CONFIGMAP"] == "cancer-routing"
    # spec.canary.stickyBy reaches the routing the pods follow
    cluster.patch(
        "ModelDeployment", "cancer", {"spec": {"canary": {"stickyBy": {"header": "x-user"}}}}
    )
    wait_for(lambda: routing(cluster).get("sticky_header") == "x-user", "the sticky header")
    cluster.delete("ModelDeployment", "cancer")
    wait_for(
        lambda: all(
            cluster.get(kind, "cancer-router", api) is None
            for kind, api in (("ServiceAccount", "v1"), ("Role", RBAC), ("RoleBinding", RBAC))
        ),
        "the routing reader's account, Role and RoleBinding to be garbage-collected",
        timeout=60,
    )


def test_canary_walks_steps_and_promotes(cluster, operator, store):
    serve_setup(
        cluster, store, steps=[{"weight": 20, "pause": "2s"}, {"weight": 60, "pause": "2s"}]
    )
    publish(cluster, store, 2)
    seen: list[int] = []

    labelled: list[dict[str, str]] = []

    def weights() -> bool:
        weight = routing(cluster).get("weight", 0)
        if not seen or seen[-1] != weight:
            seen.append(weight)
        if not labelled or labelled[-1] != served_by(cluster):
            labelled.append(served_by(cluster))
        return cluster.status("ModelDeployment", "cancer").get("stableVersion") == 2

    wait_for(
        weights,
        "the canary to be promoted",
        timeout=90,
        interval=0.1,
        state=lambda: cluster.get("ModelDeployment", "cancer"),
    )
    assert [w for w in seen if w] == [20, 60]
    # during the canary both versions were labelled; after it only the new stable one
    assert {"cancer-v1": "stable", "cancer-v2": "canary"} in labelled
    wait_for(lambda: served_by(cluster) == {"cancer-v2": "stable"}, "cancer-v1 unlabelled")
    assert routing(cluster)["weight"] == 0
    wait_for(
        lambda: cluster.get("Deployment", "cancer-canary", "apps/v1") is None,
        "the canary Deployment to go",
    )
    events = cluster.events("cancer")
    assert {"CanaryStarted", "CanaryStep", "Promoted"} <= set(events)


def test_promote_and_abort_annotations(cluster, operator, store):
    serve_setup(cluster, store, steps=[{"weight": 10, "pause": "1h"}])
    publish(cluster, store, 2)
    wait_for(
        lambda: cluster.status("ModelDeployment", "cancer").get("canaryVersion") == 2, "canary v2"
    )
    # no traffic to the canary until its pods are ready, then the step's share
    assert cluster.get("Deployment", "cancer-canary", "apps/v1") is not None
    wait_for(lambda: routing(cluster).get("weight") == 10, "the canary's 10%")
    wait_for(
        lambda: cluster.status("ModelDeployment", "cancer").get("canaryWeight") == 10,
        "status to show the routed 10%",
    )
    cluster.patch(
        "ModelDeployment", "cancer", {"metadata": {"annotations": {"kubeloop.io/abort": "true"}}}
    )
    wait_for(
        lambda: cluster.status("ModelDeployment", "cancer").get("abortedVersion") == 2, "abort"
    )
    wait_for(lambda: routing(cluster).get("weight") == 0, "traffic back to stable")
    assert cluster.status("ModelDeployment", "cancer")["stableVersion"] == 1
    assert (
        cluster.condition("ModelDeployment", "cancer", "Progressing")["reason"] == "CanaryAborted"
    )
    wait_for(
        lambda: (
            "kubeloop.io/abort"
            not in (cluster.get("ModelDeployment", "cancer")["metadata"].get("annotations") or {})
        ),
        "annotation removed",
    )

    publish(cluster, store, 3)
    wait_for(
        lambda: cluster.status("ModelDeployment", "cancer").get("canaryVersion") == 3, "canary v3"
    )
    cluster.patch(
        "ModelDeployment", "cancer", {"metadata": {"annotations": {"kubeloop.io/promote": "true"}}}
    )
    wait_for(
        lambda: cluster.status("ModelDeployment", "cancer").get("stableVersion") == 3,
        "promotion of v3",
    )
    assert (
        cluster.get("Deployment", "cancer-stable", "apps/v1")["metadata"]["labels"][
            "app.kubernetes.io/version"
        ]
        == "3"
    )


def test_dataset_refresh_records_new_versions_and_failures(cluster, operator, data_csv, tmp_path):
    doc = dataset(data_csv)
    doc["spec"]["refreshInterval"] = "3s"
    cluster.apply(doc)
    done: set[str] = set()

    def finish_next(digest: str | None) -> None:
        """Finish the next snapshot Job: with ``digest``, or failing when it is None."""
        job = wait_for(
            lambda: next(
                (
                    j
                    for j in cluster.list("Job", "batch/v1", "kubeloop.io/dataset=cancer")
                    if j["metadata"]["name"] not in done
                ),
                None,
            ),
            "the next snapshot Job",
        )
        done.add(job["metadata"]["name"])
        pod = pod_of(cluster, job["metadata"]["name"])
        if digest is None:
            summary = {
                "kind": "snapshot",
                "status": "failed",
                "reason": "column 'mean area': missing from the data",
            }
            finish_pod(cluster.core, pod, exit_code=2, message=json.dumps(summary))
        else:
            summary = {"kind": "snapshot", "status": "succeeded", "digest": digest, "rows": 10}
            finish_pod(cluster.core, pod, exit_code=0, message=json.dumps(summary))

    first, second = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    finish_next(first)
    wait_for(lambda: cluster.status("Dataset", "cancer").get("version") == first, "version 1")
    finish_next(second)
    status = wait_for(
        lambda: (
            cluster.status("Dataset", "cancer").get("version") == second
            and cluster.status("Dataset", "cancer")
        ),
        "version 2",
    )
    assert [h["version"] for h in status["history"]] == [second, first]
    finish_next(None)
    ready = wait_for(
        lambda: (
            cluster.condition("Dataset", "cancer").get("reason") == "SnapshotFailed"
            and cluster.condition("Dataset", "cancer")
        ),
        "the failed refresh to show",
    )
    # A failed refresh keeps the last good version current (and Ready).
    assert ready["status"] == "True"
    assert "column 'mean area'" in ready["message"]
    assert cluster.status("Dataset", "cancer")["version"] == second
    assert "SnapshotFailed" in cluster.events("cancer")


def test_retention_keeps_the_newest_and_every_served_version(cluster, operator, store, tmp_path):
    """keepVersions 2 of 5: v1 (pinned) and v2 (another deployment's) stay, v3 goes; its
    folder goes by the cleanup Job (run here with its arguments), the kept ones' stay."""
    models = store / "models" / cluster.namespace
    for version in range(1, 6):
        publish(cluster, store, version, folder=models)
    other = example("ModelDeployment", modelName="cancer", replicas=1)
    other["metadata"]["name"] = "other"
    other["spec"].pop("retrain")
    other["spec"].pop("canary")
    other["spec"]["version"] = {"policy": "Pinned", "pinned": 2}
    cluster.apply(other)
    wait_for(lambda: served_by(cluster, "other") == {"cancer-v2": "stable"}, "other on v2")
    md = example("ModelDeployment", modelName="cancer", replicas=1)
    md["metadata"]["name"] = "cancer"
    md["spec"].pop("retrain")
    md["spec"].pop("canary")
    md["spec"]["version"] = {"policy": "Pinned", "pinned": 1}
    md["spec"]["retention"] = {"keepVersions": 2}
    cluster.apply(md)
    wait_for(
        lambda: cluster.get("ModelVersion", "cancer-v3") is None,
        "cancer-v3 to be pruned",
        state=lambda: [v["metadata"]["name"] for v in cluster.list("ModelVersion")],
    )
    kept = sorted(v["metadata"]["name"] for v in cluster.list("ModelVersion"))
    assert kept == ["cancer-v1", "cancer-v2", "cancer-v4", "cancer-v5"]
    (job,) = cluster.list("Job", "batch/v1", "app.kubernetes.io/name=kubeloop-gc")
    code, message = run_job_locally(job, tmp_path / "gc")
    assert code == 0, message
    assert not (models / "3").exists()
    assert all((models / str(v) / ArtifactLayout.MODEL).exists() for v in (1, 2, 4, 5))
    assert "RetentionPruned" in cluster.events("cancer")


def test_retention_on_an_outdated_spec_deletes_nothing(cluster, api_client, store):
    """A pass woken by a child runs on the body kopf's index holds, which can be a moment
    behind a spec change: a pass on ``keepVersions: 1`` when the deployment already says 4
    must not delete the three versions the new spec keeps. Run in-process against the real
    API server, without an operator (the pass is the unit here)."""
    for version in range(1, 5):
        mv = example("ModelVersion", modelName="cancer", version=version)
        mv["metadata"]["name"] = f"cancer-v{version}"
        cluster.apply(mv)
    md = example("ModelDeployment", modelName="cancer", replicas=1)
    md["metadata"]["name"] = "cancer"
    md["spec"].pop("retrain")
    md["spec"].pop("canary")
    md["spec"]["retention"] = {"keepVersions": 1}
    cluster.apply(md)
    outdated = cluster.get("ModelDeployment", "cancer")
    cluster.patch("ModelDeployment", "cancer", {"spec": {"retention": {"keepVersions": 4}}})
    try:
        ctx = Context(
            settings=OperatorSettings(artifact_root=store.as_uri()), kube=Kube(api_client)
        )
        rec = Reconcile(outdated)
        spec = ModelDeploymentSpec.model_validate(outdated["spec"])
        versions = cluster.list("ModelVersion")
        assert retention.prune(versions, 1, set(), "cancer", "").versions  # it would delete
        handlers_retention.enforce(ctx, rec, spec, versions, {"cancer-v4": "stable"})
        names = sorted(v["metadata"]["name"] for v in cluster.list("ModelVersion"))
        assert names == [f"cancer-v{v}" for v in range(1, 5)]
        assert cluster.list("Job", "batch/v1") == []  # nor a cleanup Job
    finally:
        cluster.delete_all(KINDS)


def test_snapshot_retention_keeps_the_newest_and_what_a_version_was_trained_on(
    cluster, operator, data_csv, store, tmp_path
):
    """keepSnapshots 1 after three snapshots: the newest stays, and the first because a
    ModelVersion's lineage names it; the second leaves the history and, by the cleanup Job
    (run here with its arguments), the store."""
    doc = dataset(data_csv)
    doc["spec"]["refreshInterval"] = "2s"
    doc["spec"]["retention"] = {"keepSnapshots": 1}
    cluster.apply(doc)
    folder = store / "datasets" / cluster.namespace / "cancer"
    digests = [f"sha256-v2:{n:064x}" for n in (1, 2, 3)]
    mv = example("ModelVersion", modelName="cancer", version=1)
    mv["metadata"]["name"] = "cancer-v1"
    mv["spec"]["lineage"] = {"dataset": "cancer", "datasetVersion": digests[0]}
    cluster.apply(mv)
    done: set[str] = set()
    for n, digest in enumerate(digests, start=1):
        data = folder / f"v2-{n}" / "data.csv"
        data.parent.mkdir(parents=True)
        data.write_text("a\n1\n")
        job = wait_for(
            lambda: next(
                (
                    j
                    for j in cluster.list("Job", "batch/v1", "kubeloop.io/dataset=cancer")
                    if j["metadata"]["name"] not in done
                ),
                None,
            ),
            f"snapshot Job {n}",
        )
        done.add(job["metadata"]["name"])
        summary = {"kind": "snapshot", "status": "succeeded", "digest": digest, "rows": 1,
                   "snapshot_uri": data.as_uri()}  # fmt: skip
        pod = pod_of(cluster, job["metadata"]["name"])
        finish_pod(cluster.core, pod, exit_code=0, message=json.dumps(summary))
        wait_for(lambda d=digest: cluster.status("Dataset", "cancer").get("version") == d, digest)
    history = wait_for(
        lambda: (
            [h["version"] for h in cluster.status("Dataset", "cancer")["history"]]
            == [digests[2], digests[0]]
            and cluster.status("Dataset", "cancer")["history"]
        ),
        "the second snapshot to leave the history",
        state=lambda: cluster.status("Dataset", "cancer").get("history"),
    )
    assert len(history) == 2
    (job,) = cluster.list("Job", "batch/v1", "kubeloop.io/gc-for=cancer")
    code, message = run_job_locally(job, tmp_path / "gc")
    assert code == 0, message
    assert [p.name for p in sorted(folder.iterdir())] == ["v2-1", "v2-3"]


ROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")


def http_route(cluster: Cluster) -> dict[str, Any] | None:
    api = client.CustomObjectsApi(cluster.core.api_client)
    try:
        route: dict[str, Any] = api.get_namespaced_custom_object(
            ROUTES[0], ROUTES[1], cluster.namespace, ROUTES[2], "cancer"
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return route


def install_http_route_crd(cluster: Cluster) -> None:
    """HTTPRoute's CRD from the pinned Gateway API module (hack/gateway-api-crds.sh)."""
    folder = subprocess.run(
        [str(ROOT / "hack" / "gateway-api-crds.sh")],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert folder.returncode == 0, folder.stderr
    crd = yaml.safe_load(
        (Path(folder.stdout.strip()) / "gateway.networking.k8s.io_httproutes.yaml").read_text()
    )
    api = client.ApiextensionsV1Api(cluster.core.api_client)
    if not any(
        c.metadata.name == crd["metadata"]["name"]
        for c in api.list_custom_resource_definition().items
    ):
        api.create_custom_resource_definition(crd)
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in api.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions
            or []
        ),
        "the HTTPRoute CRD to be established",
    )


def test_gateway_router_splits_by_an_http_route(cluster, operator, store):
    """canary.router gateway: without the Gateway API the deployment says so; with it, an
    HTTPRoute carries each step's weight (the stable pods forward nothing), and it goes
    when the router goes back to the pods."""
    publish(cluster, store, 1)
    md = example("ModelDeployment", modelName="cancer", replicas=1)
    md["metadata"]["name"] = "cancer"
    md["spec"].pop("retrain")
    md["spec"]["canary"] = {
        "steps": [{"weight": 30, "pause": "1h"}],
        "router": "gateway",
        "gateway": {"parentRefs": [{"name": "public"}]},
    }
    cluster.apply(md)
    api = client.ApiextensionsV1Api(cluster.core.api_client)
    served = {c.metadata.name for c in api.list_custom_resource_definition().items}
    if "httproutes.gateway.networking.k8s.io" not in served:  # the first test to install it
        missing = wait_for(
            lambda: (
                (c := cluster.condition("ModelDeployment", "cancer")).get("reason")
                == "GatewayAPIMissing"
                and c
            ),
            "the deployment to say the Gateway API is missing",
            state=lambda: cluster.get("ModelDeployment", "cancer"),
        )
        assert "install the Gateway API CRDs" in missing["message"]
    install_http_route_crd(cluster)
    cluster.wait_phase("ModelDeployment", "cancer", "Serving", timeout=90)
    backends = lambda: [  # noqa: E731
        (b["name"], b["weight"])
        for b in ((http_route(cluster) or {}).get("spec") or {"rules": [{}]})["rules"][0].get(
            "backendRefs", []
        )
    ]
    wait_for(lambda: backends() == [("cancer", 100)], "the route to the stable Service")
    publish(cluster, store, 2)
    wait_for(
        lambda: backends() == [("cancer", 70), ("cancer-canary", 30)],
        "the canary's 30% on the route",
        state=lambda: http_route(cluster),
    )
    assert routing(cluster)["weight"] == 0  # the pods forward nothing
    assert cluster.status("ModelDeployment", "cancer")["httpRoute"] == "cancer"
    cluster.patch(
        "ModelDeployment", "cancer", {"spec": {"canary": {"router": "pod", "gateway": None}}}
    )
    wait_for(
        lambda: http_route(cluster) is None and routing(cluster).get("weight") == 30,
        "the route to go and the stable pods to forward the canary's share",
        state=lambda: (http_route(cluster), routing(cluster)),
    )
