"""The local control plane itself: nodes, Jobs run by kwok or by the test, RBAC, tokens."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubelet import finish_pod, job_pod, wait_running
from kubernetes import client
from kubetest import Kubectl, server_and_tls, wait_for

from kubeloop.contracts.artifacts import ArtifactLayout, join
from kubeloop.devcluster.cluster import Process, clusters_dir

pytestmark = pytest.mark.cluster

KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
COMPLETE = {"kwok.x-k8s.io/complete": "true"}


def job(name: str, *, labels: dict[str, str] | None = None, backoff: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff,
            "template": {
                "metadata": {"labels": labels or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "example.invalid/job:1"}],
                },
            },
        },
    }


def job_condition(kubectl: Kubectl, name: str) -> dict[str, str] | None:
    """The Job's Complete or Failed condition, once it has one that is True."""
    conditions = kubectl.json("get", "job", name).get("status", {}).get("conditions") or []
    return next(
        (c for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"),
        None,
    )


def test_nodes_are_ready(kubectl: Kubectl):
    nodes = kubectl.json("get", "nodes")["items"]
    ready = [
        n["metadata"]["name"]
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
    ]
    assert len(ready) >= 1, nodes
    if not os.environ.get("KUBELOOP_TEST_KUBECONFIG"):
        version = json.loads(kubectl("version", "-o", "json").stdout)
        assert version["serverVersion"]["gitVersion"] == "v1.34.4"


def test_job_labelled_complete_is_run_to_completion_by_kwok(kubectl: Kubectl):
    kubectl.apply(job("done", labels=COMPLETE))
    cond = wait_for(
        lambda: job_condition(kubectl, "done"),
        "Job done to finish",
        state=lambda: kubectl.json("get", "job,pod"),
    )
    assert cond["type"] == "Complete"
    (pod,) = kubectl.json("get", "pods", "-l", "job-name=done")["items"]
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"].startswith("kwok-node-")
    (status,) = pod["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 0


def test_test_plays_kubelet_and_the_job_controller_completes_the_job(
    kubectl: Kubectl, core: client.CoreV1Api, namespace: str
):
    kubectl.apply(job("train"))
    pod = wait_running(core, job_pod(core, namespace, "train").metadata.name, namespace)
    assert pod.status.container_statuses[0].ready is True
    # Unlabelled, the pod stays Running: a labelled Job created later completes first.
    kubectl.apply(job("barrier", labels=COMPLETE))
    wait_for(lambda: job_condition(kubectl, "barrier"), "Job barrier to finish")
    assert core.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Running"
    assert job_condition(kubectl, "train") is None

    artifact = join("file:///m", ArtifactLayout.MODEL)
    summary = json.dumps({"artifact": artifact, "metrics": {"accuracy": 0.97}})
    finished = finish_pod(core, pod, exit_code=0, message=summary)
    assert finished.status.phase == "Succeeded"

    cond = wait_for(lambda: job_condition(kubectl, "train"), "Job train to finish")
    assert cond["type"] == "Complete"
    # kwok leaves the status the test wrote alone, also after later pod events.
    kubectl.apply(job("barrier-2", labels=COMPLETE))
    wait_for(lambda: job_condition(kubectl, "barrier-2"), "Job barrier-2 to finish")
    stored = core.read_namespaced_pod(pod.metadata.name, namespace)
    assert stored.status.phase == "Succeeded"
    terminated = stored.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, json.loads(terminated.message)) == (0, json.loads(summary))


def test_failed_pod_fails_the_job(kubectl: Kubectl, core: client.CoreV1Api, namespace: str):
    kubectl.apply(job("broken"))
    pod = job_pod(core, namespace, "broken")
    finish_pod(core, pod.to_dict(), exit_code=3, message='{"error": "bad data"}')
    cond = wait_for(lambda: job_condition(kubectl, "broken"), "Job broken to finish")
    assert (cond["type"], cond["reason"]) == ("Failed", "BackoffLimitExceeded")
    stored = core.read_namespaced_pod(pod.metadata.name, namespace)
    assert stored.status.phase == "Failed"
    terminated = stored.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert json.loads(terminated.message) == {"error": "bad data"}


def test_deployment_pods_become_ready(kubectl: Kubectl):
    kubectl.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
                },
            },
        }
    )
    wait_for(
        lambda: (
            kubectl.json("get", "deployment", "web").get("status", {}).get("readyReplicas") == 2
        ),
        "Deployment web to have 2 ready replicas",
        state=lambda: kubectl.json("get", "deployment,pods"),
    )


def test_controller_manager_publishes_the_root_ca(kubectl: Kubectl):
    def published() -> str | None:
        got = kubectl("get", "configmap", "kube-root-ca.crt", "-o", "json", check=False)
        return got.stdout if got.returncode == 0 else None

    cm = wait_for(published, "ConfigMap kube-root-ca.crt")
    assert "BEGIN CERTIFICATE" in json.loads(cm)["data"]["ca.crt"]


def grant_pod_reader(kubectl: Kubectl, namespace: str, sa: str) -> None:
    kubectl.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "pod-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
    )


def test_auth_can_i_as_a_service_account(kubectl: Kubectl, namespace: str):
    grant_pod_reader(kubectl, namespace, "reader")
    who = f"--as=system:serviceaccount:{namespace}:reader"

    def can(*args: str) -> str:
        return kubectl("auth", "can-i", *args, who, check=False).stdout.strip()

    assert can("list", "pods") == "yes"
    assert can("delete", "pods") == "no"
    assert can("get", "secrets") == "no"
    assert can("list", "pods", "--namespace=default") == "no"


def test_create_token_authenticates_as_the_service_account(
    kubectl: Kubectl, kubeconfig: str, namespace: str
):
    grant_pod_reader(kubectl, namespace, "reader")
    token = kubectl("create", "token", "reader", "--duration=10m").stdout.strip()
    assert token.count(".") == 2  # a JWT
    server, tls = server_and_tls(kubeconfig)

    def get(path: str) -> int:
        request = urllib.request.Request(server + path)
        request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, context=tls, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return err.code

    assert get(f"/api/v1/namespaces/{namespace}/pods") == 200
    assert get(f"/api/v1/namespaces/{namespace}/secrets") == 403
    assert get("/api/v1/namespaces/default/pods") == 403


def kubeloop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBELOOP, *args], capture_output=True, text=True, timeout=240, check=False, env=env
    )


def test_cli_round_trip_leaves_nothing_behind(kubectl_bin: str):
    name = f"pytest-cli-{secrets.token_hex(3)}"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    up = kubeloop("cluster", "up", "--name", name, "--nodes", "1", env=env)
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = up.stdout.strip()
        assert kubeconfig == str(clusters_dir() / name / "kubeconfig")
        printed = kubeloop("cluster", "kubeconfig", "--name", name, env=env)
        assert printed.stdout.strip() == kubeconfig

        nodes = Kubectl(kubectl_bin, kubeconfig).json("get", "nodes")["items"]
        assert [n["metadata"]["name"] for n in nodes] == ["kwok-node-0"]
        assert any(
            c["type"] == "Ready" and c["status"] == "True" for c in nodes[0]["status"]["conditions"]
        )

        status = kubeloop("cluster", "status", "--name", name, "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        before = json.loads(status.stdout)
        assert before["running"] is True
        assert before["nodes"] == {"kwok-node-0": True}
        assert {p["name"] for p in before["processes"]} == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        }

        again = kubeloop("cluster", "up", "--name", name, "--nodes", "1", env=env)
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr
        after = json.loads(kubeloop("cluster", "status", "--name", name, "--json", env=env).stdout)
        assert [p["pid"] for p in after["processes"]] == [p["pid"] for p in before["processes"]]
        state = json.loads((clusters_dir() / name / "state.json").read_text())
        recorded = [Process(**p) for p in state["processes"]]
    finally:
        down = kubeloop("cluster", "down", "--name", name, env=env)
    assert down.returncode == 0, down.stderr
    assert not (clusters_dir() / name).exists()
    assert [p.name for p in recorded if p.alive() or p.group()] == []
    gone = kubeloop("cluster", "status", "--name", name, env=env)
    assert gone.returncode == 1
    assert "not running" in gone.stdout
