"""`kubeloop drift-report --deployment` against the real API server: it reads the
ModelDeployment, its Service and the token Secret the status names, and asks the API
server's service proxy for the report. No serving pod runs here (the API server proxies
to no loopback address), so the proxy's own answer — no endpoints — is what comes back,
which proves the path it built names a real Service port."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.dynamic import DynamicClient

from loop_objects import deployment

pytestmark = pytest.mark.cluster

KUBELOOP = Path(sys.executable).with_name("kubeloop")
NAME = "breast-cancer"
SECRET = f"{NAME}-feedback-token"


@pytest.fixture
def stored(api_client, core, namespace) -> None:
    """The deployment (status naming its token Secret) and its Service, no pods."""
    res = DynamicClient(api_client).resources.get(
        api_version="kubeloop.io/v1alpha1", kind="ModelDeployment"
    )
    md = deployment()
    status = {**md.pop("status"), "feedbackTokenSecret": SECRET}
    created = res.create(body=md, namespace=namespace).to_dict()
    created["status"] = status
    res.status.replace(body=created, namespace=namespace)
    port = client.V1ServicePort(name="http", port=8080, target_port=8080)
    spec = client.V1ServiceSpec(ports=[port], selector={"kubeloop.io/model-deployment": NAME})
    meta = client.V1ObjectMeta(name=NAME)
    core.create_namespaced_service(namespace, client.V1Service(metadata=meta, spec=spec))


def drift_report(kubeconfig: str, namespace: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    argv = [str(KUBELOOP), "drift-report", "--deployment", NAME, "-n", namespace]
    return subprocess.run(
        [*argv, "--out", str(out), f"--kubeconfig={kubeconfig}", "--timeout", "20"],
        capture_output=True, text=True, timeout=90, env=env, check=False,
    )  # fmt: skip


def test_a_missing_token_secret_is_named(stored, kubeconfig, namespace, tmp_path):
    answer = drift_report(kubeconfig, namespace, tmp_path / "r.html")
    assert answer.returncode == 1
    assert f"secret {namespace}/{SECRET} (the serving token): 404" in answer.stderr
    assert not (tmp_path / "r.html").exists()


def test_the_report_is_asked_of_the_services_proxy(stored, core, kubeconfig, namespace, tmp_path):
    token = base64.b64encode(b"t0ken").decode()
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=SECRET), data={"token": token})
    )
    path = f"/api/v1/namespaces/{namespace}/services/http:{NAME}:http/proxy/v2/models/{NAME}/drift"
    # the proxy answers 404 until the controller-manager has written the Service's (empty)
    # endpoints, then 503
    deadline = time.monotonic() + 60
    while True:
        answer = drift_report(kubeconfig, namespace, tmp_path / "r.html")
        if "HTTP 404" not in answer.stderr or time.monotonic() > deadline:
            break
    assert answer.returncode == 1
    assert f"service proxy {path}: HTTP 503" in answer.stderr, answer.stderr
    assert "no endpoints available" in answer.stderr, answer.stderr
    assert "t0ken" not in answer.stderr
    assert not (tmp_path / "r.html").exists()


def test_an_unknown_deployment_is_named(kubeconfig, namespace, tmp_path):
    answer = drift_report(kubeconfig, namespace, tmp_path / "r.html")
    assert answer.returncode == 1
    assert f"modeldeployment {namespace}/{NAME}: 404" in answer.stderr
