"""For the retrain cluster tests: the operator with its alert receiver, objects, payloads."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from kubelet import finish_pod
from kubetest import wait_for
from operator_harness import (
    Cluster,
    OperatorProcess,
    free_port,
    operating,
    pod_of,
    run_job_locally,
)

DIGEST = "sha256:" + "cd" * 32
RECEIVER_PATH = "/v1/alerts"


class RetrainOperator(OperatorProcess):
    """The operator process with its alert receiver and metrics on loopback ports."""

    def __init__(self, kubeconfig: str, namespace: str, store: Path, log: Path) -> None:
        super().__init__(kubeconfig, namespace, store.as_uri(), log)
        self.token = secrets.token_urlsafe(24)
        self.webhook_port = free_port()
        self.metrics_port = free_port()
        self.env.update(
            KUBELOOP_WEBHOOK_TOKEN=self.token,
            KUBELOOP_WEBHOOK_HOST="127.0.0.1",
            KUBELOOP_WEBHOOK_PORT=str(self.webhook_port),
            KUBELOOP_METRICS_PORT=str(self.metrics_port),
            KUBELOOP_SCHEDULE_CHECK_SECONDS="1",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}{RECEIVER_PATH}"

    def start(self) -> None:
        super().start()
        wait_for(self._receiving, "the alert receiver to listen", timeout=30, state=self.tail)

    def tail(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()[-30:]

    def _receiving(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.webhook_port}/healthz", timeout=2).is_success
        except httpx.HTTPError:
            return False

    def post(self, payload: Any, token: str | None = None) -> httpx.Response:
        return httpx.post(
            self.url,
            json=payload,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=30,
        )

    def decisions(self) -> dict[tuple[str, str], float]:
        """kubeloop_operator_retrain_decisions_total by (decision, trigger)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        found: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            if line.startswith("kubeloop_operator_retrain_decisions_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                found[(labels["decision"], labels["trigger"])] = float(line.rsplit(" ", 1)[1])
        return found


@contextmanager
def running_operator(
    kubeconfig: str, api_client: Any, namespace: str, tmp_path: Path, **env: str
) -> Iterator[RetrainOperator]:
    """The retrain operator for one test, its store and log under ``tmp_path``; ``env``
    overrides its settings (e.g. ``KUBELOOP_RESYNC_SECONDS``)."""
    store = tmp_path / "store"
    store.mkdir()
    proc = RetrainOperator(kubeconfig, namespace, store, tmp_path / "operator.log")
    proc.env.update(env)
    with operating(proc, api_client) as running:
        yield running


def dataset_ready(
    cluster: Cluster,
    data_csv: Path,
    name: str,
    columns: list[str],
    *,
    snapshot_in: Path | None = None,
) -> str:
    """A Ready Dataset; returns its data version.

    With ``snapshot_in`` the test plays the kubelet for the snapshot pod and runs
    the real ``kubeloop snapshot`` with its arguments there; without, the pod
    reports a made-up snapshot at version DIGEST.
    """
    cluster.apply(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": name},
            "spec": {"source": {"uri": data_csv.as_uri()}, "format": "csv", "target": "target"},
        }
    )
    job = cluster.wait_job(f"kubeloop.io/dataset={name}")
    if snapshot_in is not None:
        code, message = run_job_locally(job, snapshot_in)
        assert code == 0, message
    else:
        code, message = (
            0,
            json.dumps(
                {
                    "kind": "snapshot",
                    "status": "succeeded",
                    "digest": DIGEST,
                    "rows": 569,
                    "snapshot_uri": data_csv.as_uri(),
                    "columns": [{"name": c, "type": "number"} for c in columns],
                }
            ),
        )
    pod = pod_of(cluster, job["metadata"]["name"])
    finish_pod(cluster.core, pod, exit_code=code, message=message)
    status = wait_for(
        lambda: cluster.status("Dataset", name).get("version") and cluster.status("Dataset", name),
        f"Dataset {name} to be Ready",
        state=lambda: cluster.get("Dataset", name),
    )
    assert snapshot_in is not None or status["version"] == DIGEST
    return str(status["version"])


def model_deployment(
    name: str,
    model: str,
    dataset: str,
    features: list[str],
    *,
    threshold: float = 0.3,
    window: int = 200,
    cooldown: str = "1h",
    max_concurrent: int = 1,
    schedule: str | None = None,
) -> dict[str, Any]:
    retrain: dict[str, Any] = {
        "enabled": True,
        "cooldown": cooldown,
        "maxConcurrent": max_concurrent,
        "template": {
            "datasetRef": {"name": dataset},
            "modelName": model,
            "task": "classification",
            "target": "target",
            "features": features,
            "estimator": {"className": "LogisticRegression", "params": {"max_iter": 500}},
            "backoffLimit": 0,
        },
    }
    if schedule:
        retrain["schedule"] = schedule
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "modelName": model,
            "replicas": 1,
            "monitoring": {"drift": {"threshold": threshold, "window": window}},
            "retrain": retrain,
        },
    }


def alert(
    namespace: str,
    deployment: str,
    *,
    fingerprint: str = "5a1e5c0ffee0ba11",
    starts_at: str = "2024-05-01T10:00:00.5Z",
    status: str = "firing",
    name: str = "KubeloopDataDrift",
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {
            "alertname": name,
            "namespace": namespace,
            "model_deployment": deployment,
            "kubeloop_retrain": "true",
        },
        "annotations": {"value": "0.87"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": fingerprint,
    }


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "kubeloop",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }
