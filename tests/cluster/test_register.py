"""A model exported elsewhere, registered with ``kubeloop register --apply`` against the real
API server: the operator verifies it like a trained version and a ModelDeployment serves it.
A hand-written manifest of a bare model.onnx is inspected by a Job (the test plays the
kubelet: it runs the Job's ``kubeloop inspect`` here) that fills in the version's status.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kubelet import finish_pod
from operator_harness import (
    KUBELOOP,
    Cluster,
    pod_of,
    run_job_locally,
    wait_for,
)

from kubeloop.contracts.artifacts import ArtifactLayout
from onnx_models import linear_classifier

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
FEATURES = "sepal,petal,stem,leaf"


def register_apply(model: Path, store: Path, kubeconfig: str, namespace: str) -> str:
    result = subprocess.run(
        [
            KUBELOOP, "register", "--onnx", str(model), "--name", "flowers",
            "--feature-names", FEATURES, "--label-output", "class_id", "--proba-output", "probs",
            "--store", store.as_uri(), "-n", namespace, "--kubeconfig", kubeconfig, "--apply",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_registered_model_is_verified_and_served(
    cluster: Cluster, operator: Any, store: Path, kubeconfig: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    first = linear_classifier(tmp_path / "a.onnx", rng.normal(size=(4, 3)), rng.normal(size=3))
    assert register_apply(first, store, kubeconfig, cluster.namespace) == (
        "modelversion.kubeloop.io/flowers-v1 created"
    )
    wait_for(
        lambda: cluster.condition("ModelVersion", "flowers-v1").get("status") == "True",
        "flowers-v1 to be verified and Ready",
        state=lambda: cluster.get("ModelVersion", "flowers-v1"),
    )
    mv = cluster.get("ModelVersion", "flowers-v1")
    assert mv is not None
    sha = hashlib.sha256(first.read_bytes()).hexdigest()
    assert mv["status"]["verifiedSha256"] == sha
    assert [i["name"] for i in mv["spec"]["inputs"]] == FEATURES.split(",")

    md = yaml.safe_load((ROOT / "examples" / "modeldeployment.yaml").read_text())
    md["metadata"]["name"] = "flowers"
    md["spec"].update(modelName="flowers", replicas=1)
    for field in ("retrain", "canary"):
        md["spec"].pop(field)
    cluster.apply(md)
    cluster.wait_phase("ModelDeployment", "flowers", "Serving", timeout=90)
    folder = store / "models" / cluster.namespace / "flowers" / sha
    assert_serves(cluster, folder, sha)

    # a second export is the next version, and the deployment follows it
    second = linear_classifier(tmp_path / "b.onnx", rng.normal(size=(4, 3)), rng.normal(size=3))
    assert register_apply(second, store, kubeconfig, cluster.namespace).endswith(
        "flowers-v2 created"
    )
    sha2 = hashlib.sha256(second.read_bytes()).hexdigest()
    wait_for(
        lambda: cluster.status("ModelDeployment", "flowers").get("stableVersion") == 2,
        "the deployment to serve flowers-v2",
        state=lambda: cluster.status("ModelDeployment", "flowers"),
    )
    assert_serves(cluster, store / "models" / cluster.namespace / "flowers" / sha2, sha2)


def assert_serves(cluster: Cluster, folder: Path, sha: str) -> None:
    """The stable pods run ``kubeloop serve`` on the registered folder, pinned to its digest."""
    assert (folder / ArtifactLayout.METADATA).exists()

    def container() -> dict[str, Any] | None:
        dep = cluster.get("Deployment", "flowers-stable", "apps/v1")
        if dep is None:
            return None
        found: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
        return found

    def pinned() -> bool:
        c = container()
        env = {e["name"]: e.get("value") for e in (c or {}).get("env", [])}
        return env.get("KUBELOOP_SERVING_EXPECTED_SHA256") == sha

    wait_for(pinned, f"the stable pods to serve sha256 {sha[:12]}", state=container)
    args = (container() or {})["args"]
    assert args[args.index("--model") + 1] == folder.as_uri()


def bare_version(cluster: Cluster, name: str, artifact: Path) -> None:
    """A hand-written ModelVersion naming only the artifact."""
    cluster.apply(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "ModelVersion",
            "metadata": {"name": name},
            "spec": {
                "modelName": name.rsplit("-v", 1)[0],
                "version": 1,
                "task": "classification",
                "artifact": {
                    "uri": artifact.as_uri(),
                    "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
                },
            },
        }
    )


def run_inspection(cluster: Cluster, name: str, tmp_path: Path) -> tuple[int, str]:
    """Play the kubelet for the version's inspection Job: run it here, end its pod."""
    selector = "app.kubernetes.io/name=kubeloop-inspect"
    job = wait_for(
        lambda: next(
            (
                j
                for j in cluster.list("Job", "batch/v1", selector)
                if j["metadata"]["name"].startswith(name)
            ),
            None,
        ),
        f"the inspection Job of {name}",
        state=lambda: cluster.get("ModelVersion", name),
    )
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][0] == "inspect"
    code, message = run_job_locally(job, tmp_path / job["metadata"]["name"])
    pod = pod_of(cluster, job["metadata"]["name"])
    finish_pod(cluster.core, pod, exit_code=code, message=message)
    return code, message


def test_a_bare_model_is_inspected_by_a_job_into_status(
    cluster: Cluster, operator: Any, store: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    onnx_file = store / "bare" / ArtifactLayout.MODEL
    linear_classifier(onnx_file, rng.normal(size=(4, 3)), rng.normal(size=3))
    bare_version(cluster, "bare-v1", onnx_file)
    wait_for(
        lambda: cluster.condition("ModelVersion", "bare-v1").get("reason") == "Inspecting",
        "bare-v1 to wait for its inspection",
        state=lambda: cluster.get("ModelVersion", "bare-v1"),
    )
    code, _ = run_inspection(cluster, "bare-v1", tmp_path)
    assert code == 0
    wait_for(
        lambda: cluster.condition("ModelVersion", "bare-v1").get("status") == "True",
        "bare-v1 to be Ready once inspected",
        state=lambda: cluster.get("ModelVersion", "bare-v1"),
    )
    mv = cluster.get("ModelVersion", "bare-v1")
    assert mv is not None
    assert mv["status"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in mv["status"]["outputs"]] == ["probs", "class_id"]
    assert "inputs" not in mv["spec"]  # the spec stays as written


def test_a_file_that_is_not_onnx_fails_its_inspection(
    cluster: Cluster, operator: Any, store: Path, tmp_path: Path
) -> None:
    notes = store / "notes" / ArtifactLayout.MODEL
    notes.parent.mkdir()
    notes.write_text("sepal,petal\n1,2\n")
    bare_version(cluster, "notes-v1", notes)
    code, message = run_inspection(cluster, "notes-v1", tmp_path)
    assert code == 2, message
    wait_for(
        lambda: (
            cluster.condition("ModelVersion", "notes-v1", "Verified").get("reason")
            == "InspectionFailed"
        ),
        "notes-v1 to fail its inspection",
        state=lambda: cluster.get("ModelVersion", "notes-v1"),
    )
    ready = cluster.condition("ModelVersion", "notes-v1")
    assert ready["status"] == "False"
    assert "not an ONNX model" in ready["message"]
