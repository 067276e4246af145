"""Drift to retraining with real parts, end to end.

A real ``kubeloop serve`` with a trained model measures drift; a real
Prometheus (Debian's package) scrapes it every second and evaluates the
``kubeloop rules`` output; a real Alertmanager groups the alert and calls the
operator's webhook with a bearer token; the operator process, against the
real API server, applies the ModelDeployment's retrain policy.

- in-distribution traffic: once Prometheus has watched a full window for
  longer than the rule's ``for:``, there is no alert and no TrainingJob;
- shifted traffic: the alert fires and exactly one TrainingJob appears, linked
  to the alert (Alertmanager's repeats are duplicates, not twins);
- the retrain runs the real trainer (the test plays the kubelet for its pod)
  and the deployment rolls the new version out;
- the alert resolves, shifted traffic again (a new episode of the alert)
  inside the cooldown: no second TrainingJob.

The time from the first drifted request to the TrainingJob is printed (see
docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from kubelet import finish_pod
from kubetest import wait_for
from monitoring import Daemon, alertmanager, prometheus, query, rules_file
from operator_harness import Cluster, pod_of, run_job_locally
from retrain_helpers import (
    RetrainOperator,
    dataset_ready,
    model_deployment,
    running_operator,
)

from kubeloop.devcluster.monitoring import discovered_pod, serving_job

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SERVING_TESTS = ROOT / "tests" / "component" / "serving"
FEATURES = ["mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness"]
MD, MODEL = "cancer", "cancer"
WINDOW, THRESHOLD, MIN_ROWS, FOR = 200, 0.5, 100, "2s"


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    path = tmp_path_factory.mktemp("data") / "cancer.csv"
    frame[[*FEATURES, "target"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def model_dir(data_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1, from the real trainer."""
    out = tmp_path_factory.mktemp("model")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("kubeloop")), "train", "--data", str(data_csv),
         "--target", "target", "--task", "classification", "--estimator", "LogisticRegression",
         "--params", '{"max_iter": 2000}', "--name", MODEL, "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def publish(cluster: Cluster, model: Path, store: Path, version: int) -> str:
    """A Ready ModelVersion of the model whose artifact is a copy of ``model``."""
    copy = store / "models" / str(version)
    shutil.copytree(model, copy)
    artifact = copy / "model.onnx"
    name = f"{MODEL}-v{version}"
    cluster.apply(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "ModelVersion",
            "metadata": {"name": name},
            "spec": {
                "modelName": MODEL,
                "version": version,
                "task": "classification",
                "artifact": {
                    "uri": artifact.as_uri(),
                    "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
                },
            },
        }
    )
    wait_for(
        lambda: cluster.condition("ModelVersion", name).get("status") == "True",
        f"{name} to be Ready",
        state=lambda: cluster.get("ModelVersion", name),
    )
    return artifact.as_uri()


def serving_pod(cluster: Cluster) -> dict[str, Any]:
    """The stable serving pod the operator's Deployment made (kwok keeps it Running)."""
    selector = f"kubeloop.io/model-deployment={MD},kubeloop.io/role=stable"
    return wait_for(
        lambda: next(iter(cluster.list("Pod", "v1", selector)), None),
        "the stable serving pod",
        timeout=60,
        state=lambda: cluster.get("ModelDeployment", MD),
    )


def run_server(pod: dict[str, Any]) -> Any:
    """Play the kubelet for the serving pod: its container's args and drift env, on loopback."""
    sys.path.insert(0, str(SERVING_TESTS))
    from serving_helpers import start_server

    (container,) = pod["spec"]["containers"]
    args = container["args"]
    model = args[args.index("--model") + 1]
    name = args[args.index("--name") + 1]
    env = {
        e["name"]: e["value"]
        for e in container.get("env") or []
        if e["name"].startswith(("KUBELOOP_SERVING_DRIFT", "KUBELOOP_SERVING_MODEL_VERSION"))
    }
    return start_server(model, "--name", name, env=env)


@pytest.fixture
def cluster(api_client: Any, namespace: str) -> Cluster:
    return Cluster(api_client, namespace)


@pytest.fixture
def operator(kubeconfig: str, api_client: Any, namespace: str, tmp_path: Path):
    store = tmp_path / "store"
    store.mkdir()
    with running_operator(
        kubeconfig, api_client, namespace, store, tmp_path / "operator.log"
    ) as proc:
        yield proc


@pytest.fixture
def loop(
    tmp_path: Path,
    cluster: Cluster,
    operator: RetrainOperator,
    model_dir: Path,
    data_csv: Path,
    namespace: str,
):
    """The ModelDeployment served by a real server, Prometheus and Alertmanager wired to it."""
    data_version = dataset_ready(
        cluster, data_csv, "cancer-data", FEATURES, snapshot_in=tmp_path / "snapshot"
    )
    publish(cluster, model_dir, tmp_path / "store", 1)
    cluster.apply(
        model_deployment(MD, MODEL, "cancer-data", FEATURES, threshold=THRESHOLD, window=WINDOW)
    )
    pod = serving_pod(cluster)
    server = run_server(pod)
    rules = rules_file(
        tmp_path, "--drift-for", FOR, "--min-window-rows", str(MIN_ROWS), "--online-for", FOR
    )
    # Repeats every 2s: re-deliveries of a firing alert reach the receiver during the test.
    am = alertmanager(tmp_path, operator.url, operator.token, repeat_interval="2s")
    # the serving process runs on loopback (kwok runs no containers): its address, the pod's labels
    job = serving_job(static_configs=[discovered_pod(server.url.removeprefix("http://"), pod)])
    try:
        prom = prometheus(tmp_path, rules, am.port, [job])
    except BaseException:
        am.stop()
        server.stop()
        raise
    try:
        yield server, prom, am, data_version
    finally:
        prom.stop()
        am.stop()
        server.stop()


def send(server: Any, rows: pd.DataFrame, batch: int = 50) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for start in range(0, len(rows), batch):
            part = rows.iloc[start : start + batch]
            body = {
                "inputs": [
                    {"name": "x", "shape": list(part.shape), "datatype": "FP32",
                     "data": part.to_numpy(np.float32).ravel().tolist()}
                ]
            }  # fmt: skip
            response = http.post(f"/v2/models/{MODEL}/infer", json=body)
            assert response.status_code == 200, response.text


def shifted(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.copy()
    out[FEATURES[0]] = out[FEATURES[0]] * 3 + 50
    return out


def alerts(prom: Daemon) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = prom.get("/api/v1/alerts")["data"]["alerts"]
    return [a for a in found if a["labels"].get("alertname") == "KubeloopDataDrift"]


def retrained(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.list("TrainingJob", selector=f"kubeloop.io/model-deployment={MD}")


def test_drift_alert_to_one_trainingjob_then_cooldown(
    cluster, operator, loop, data_csv, model_dir, namespace, tmp_path
):
    served, prom, am, data_version = loop
    rows = pd.read_csv(data_csv)[FEATURES]
    calm = rows.iloc[:WINDOW]

    # ---- in distribution: a full window, watched by Prometheus for longer than `for:`
    send(served, calm)
    selector = f'{{namespace="{namespace}",model_deployment="{MD}"}}'
    watched = f"count_over_time(kubeloop_drift_window_rows{selector}[6s]) >= 5"
    wait_for(
        lambda: (
            query(prom, watched)
            and query(prom, f"min_over_time(kubeloop_drift_window_rows{selector}[6s]) >= {WINDOW}")
        ),
        "Prometheus to have scraped a full calm window for 6s",
        timeout=60,
        state=lambda: query(prom, f"kubeloop_drift_window_rows{selector}"),
    )
    (score,) = query(prom, f"kubeloop_drift_score{selector}")
    (threshold,) = query(prom, f"kubeloop_drift_threshold{selector}")
    assert float(score["value"][1]) < THRESHOLD == float(threshold["value"][1])
    # the documented relabelling turned the operator's pod labels into the rule's labels
    assert score["metric"]["model"] == MODEL
    assert score["metric"]["version"] == "1"
    assert score["metric"]["role"] == "stable"
    assert score["metric"]["pod"].startswith(f"{MD}-stable-")
    assert alerts(prom) == []
    assert query(prom, "ALERTS") == []
    assert retrained(cluster) == []

    # ---- shifted: the alert fires, exactly one TrainingJob appears
    drift_started = time.time()
    send(served, shifted(calm))
    (tj,) = wait_for(
        lambda: retrained(cluster),
        "a TrainingJob created from the drift alert",
        timeout=90,
        interval=0.05,
        state=lambda: {"prometheus": alerts(prom), "operator": operator.tail()},
    )
    observed = time.time() - drift_started
    (firing,) = wait_for(
        lambda: [
            a for a in am.get("/api/v2/alerts") if a["labels"]["alertname"] == "KubeloopDataDrift"
        ],
        "the alert in Alertmanager",
    )
    meta = tj["metadata"]
    assert firing["labels"]["namespace"] == namespace
    assert firing["labels"]["model_deployment"] == MD
    assert meta["labels"]["kubeloop.io/alert-fingerprint"] == firing["fingerprint"]
    assert meta["annotations"]["kubeloop.io/alert-name"] == "KubeloopDataDrift"
    assert float(meta["annotations"]["kubeloop.io/alert-value"]) > THRESHOLD
    # on the Dataset's newest version (the real snapshot's digest)
    assert tj["spec"]["datasetRef"] == {"name": "cancer-data", "version": data_version}
    active_at = pd.Timestamp(alerts(prom)[0]["activeAt"]).timestamp()
    # Alertmanager repeats the firing alert every 2s: duplicates, never a twin
    wait_for(
        lambda: operator.decisions().get(("duplicate", "alert"), 0) >= 2,
        "Alertmanager's repeats to reach the receiver",
        timeout=30,
        state=operator.decisions,
    )
    assert len(retrained(cluster)) == 1

    # ---- the retrain runs: the test plays the kubelet for its trainer pod, running the real
    # `kubeloop train` with the pod's arguments; the deployment, following Latest, then rolls
    # the new version out by itself
    job = cluster.wait_job(f"kubeloop.io/training-job={meta['name']}")
    code, message = run_job_locally(job, tmp_path / "trainer")
    assert code == 0, message
    finish_pod(
        cluster.core, pod_of(cluster, job["metadata"]["name"]), exit_code=code, message=message
    )
    wait_for(
        lambda: cluster.status("TrainingJob", meta["name"]).get("version") == 2,
        "the retrain to publish version 2",
        state=lambda: cluster.get("TrainingJob", meta["name"]),
    )
    wait_for(
        lambda: cluster.status("ModelDeployment", MD).get("stableVersion") == 2,
        "the ModelDeployment to roll version 2 out",
        state=lambda: cluster.status("ModelDeployment", MD),
    )
    stable = cluster.get("Deployment", f"{MD}-stable", "apps/v1")
    assert stable["metadata"]["labels"]["app.kubernetes.io/version"] == "2"

    # ---- the alert resolves; drift again (a new episode) inside the cooldown: none
    send(served, calm)
    wait_for(lambda: not alerts(prom), "the drift alert to resolve", timeout=60)
    send(served, shifted(calm))
    wait_for(
        lambda: operator.decisions().get(("cooldown", "alert"), 0) >= 1,
        "the second episode to be refused for the cooldown",
        timeout=90,
        state=lambda: {"decisions": operator.decisions(), "alerts": alerts(prom)},
    )
    assert len(retrained(cluster)) == 1
    assert {"RetrainCreated", "RetrainDuplicate", "RetrainCooldown"} <= set(cluster.events(MD))
    report = {
        "drift_to_trainingjob_s": round(observed, 2),
        "drift_to_alert_active_s": round(active_at - drift_started, 2),
        "settings": {"scrape": "1s", "eval": "1s", "for": FOR, "group_wait": "1s"},
    }
    print("drift loop timing:", json.dumps(report))
    (tmp_path / "timing.json").write_text(json.dumps(report))
