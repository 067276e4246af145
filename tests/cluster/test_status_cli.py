"""`kubeloop status` (and `kubectl kubeloop status`, the same script as a kubectl plugin)
against the real API server holding a loop's objects with the status an operator writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes.dynamic import DynamicClient

from loop_objects import loop

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent
KINDS = {
    "datasets": "Dataset",
    "trainingjobs": "TrainingJob",
    "modelversions": "ModelVersion",
    "modeldeployments": "ModelDeployment",
}


@pytest.fixture
def stored(api_client, namespace) -> None:
    """The loop's objects created, then their status written through the subresource."""
    dyn = DynamicClient(api_client)
    for plural, objs in loop().items():
        res = dyn.resources.get(api_version="kubeloop.io/v1alpha1", kind=KINDS[plural])
        for obj in objs:
            status = obj.pop("status")
            obj["metadata"].pop("creationTimestamp", None)
            created = res.create(body=obj, namespace=namespace).to_dict()
            created["status"] = status
            res.status.replace(body=created, namespace=namespace)


def run(*args: str, kubeconfig: str, program: str = "kubeloop") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [program, *args, f"--kubeconfig={kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_status_shows_the_loop_as_json_and_as_tables(stored, kubeconfig, namespace):
    answer = run("status", "breast-cancer", "-n", namespace, "-o", "json", kubeconfig=kubeconfig)
    assert answer.returncode == 0, answer.stderr
    (view,) = json.loads(answer.stdout)
    assert view["namespace"] == namespace
    assert [v["version"] for v in view["versions"]] == [3, 2, 1]
    assert view["versions"][2]["served_by"] == {"breast-cancer": "stable"}
    assert view["deployments"][0]["weight"] == 10
    assert view["drift_note"] == "not read (give --prometheus URL)"
    table = run("status", "-n", namespace, kubeconfig=kubeconfig)  # every model
    assert table.returncode == 0, table.stderr
    for expected in ("model breast-cancer", "Model versions", "breast-cancer (canary)", "10%"):
        assert expected in table.stdout, table.stdout


def test_kubectl_runs_it_as_a_plugin(stored, kubectl_bin, kubeconfig, namespace):
    answer = run(
        "kubeloop",
        "status",
        "-n",
        namespace,
        "-o",
        "yaml",
        kubeconfig=kubeconfig,
        program=kubectl_bin,
    )
    assert answer.returncode == 0, answer.stderr
    assert "model: breast-cancer" in answer.stdout


def test_an_empty_namespace_and_a_missing_cluster_say_so(kubeconfig, namespace, tmp_path):
    answer = run("status", "-n", namespace, kubeconfig=kubeconfig)
    assert answer.returncode == 0, answer.stderr
    assert f"no Kubeloop models in namespace {namespace}" in answer.stdout
    missing = run("status", kubeconfig=str(tmp_path / "absent"))
    assert missing.returncode == 1
    assert "no cluster to read" in missing.stderr
