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

And the online metric: two replicas each take part of the feedback labels, neither
alone holds enough rows, together they are under ``monitoring.feedback.floor``:
one alert, one TrainingJob.

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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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

from kubeloop.contracts.artifacts import ArtifactLayout
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
    artifact = copy / ArtifactLayout.MODEL
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


def run_server(pod: dict[str, Any], extra: dict[str, str] | None = None) -> Any:
    """Play the kubelet for the serving pod: its container's args, drift env and registered
    digest (and ``extra`` settings), on loopback."""
    sys.path.insert(0, str(SERVING_TESTS))
    from serving_helpers import start_server

    (container,) = pod["spec"]["containers"]
    args = container["args"]
    model = args[args.index("--model") + 1]
    name = args[args.index("--name") + 1]
    env = {
        e["name"]: e["value"]
        for e in container.get("env") or []
        if e["name"].startswith(
            (
                "KUBELOOP_SERVING_DRIFT",
                "KUBELOOP_SERVING_FEEDBACK",
                "KUBELOOP_SERVING_MODEL_VERSION",
                "KUBELOOP_SERVING_EXPECTED_SHA256",
            )
        )
    }
    return start_server(model, "--name", name, env={**env, **(extra or {})})


@dataclass(frozen=True)
class Loop:
    """The running loop: cluster, operator, serving process, Prometheus and Alertmanager."""

    cluster: Cluster
    operator: RetrainOperator
    server: Any
    prom: Daemon
    am: Daemon
    data_version: str

    @property
    def selector(self) -> str:
        """PromQL labels of the ModelDeployment's series (from the scrape config)."""
        return f'{{namespace="{self.cluster.namespace}",model_deployment="{MD}"}}'

    def alerts(self) -> list[dict[str, Any]]:
        """The drift alerts Prometheus has (pending or firing)."""
        found: list[dict[str, Any]] = self.prom.get("/api/v1/alerts")["data"]["alerts"]
        return [a for a in found if a["labels"].get("alertname") == "KubeloopDataDrift"]

    def retrained(self) -> list[dict[str, Any]]:
        """The TrainingJobs the retrain policy made for the ModelDeployment."""
        return self.cluster.list("TrainingJob", selector=f"kubeloop.io/model-deployment={MD}")


@contextmanager
def monitored(
    tmp_path: Path, operator: RetrainOperator, pod: dict[str, Any]
) -> Iterator[tuple[Any, Daemon, Daemon]]:
    """The serving pod run here, scraped by Prometheus, whose alerts Alertmanager sends on."""
    with ExitStack() as stack:
        server = run_server(pod)
        stack.callback(server.stop)
        rules = rules_file(
            tmp_path, "--drift-for", FOR, "--min-window-rows", str(MIN_ROWS), "--online-for", FOR
        )
        # Repeats every 2s: re-deliveries of a firing alert reach the receiver during the test.
        am = alertmanager(tmp_path, operator.url, operator.token, repeat_interval="2s")
        stack.callback(am.stop)
        # the serving process runs on loopback (kwok runs no containers): its address, the
        # pod's labels
        job = serving_job(static_configs=[discovered_pod(server.url.removeprefix("http://"), pod)])
        prom = prometheus(tmp_path, rules, am.port, [job])
        stack.callback(prom.stop)
        yield server, prom, am


@pytest.fixture
def loop(
    kubeconfig: str,
    api_client: Any,
    namespace: str,
    tmp_path: Path,
    model_dir: Path,
    data_csv: Path,
) -> Iterator[Loop]:
    """The ModelDeployment served by a real server, Prometheus and Alertmanager wired to it."""
    cluster = Cluster(api_client, namespace)
    with running_operator(kubeconfig, api_client, namespace, tmp_path) as operator:
        data_version = dataset_ready(
            cluster, data_csv, "cancer-data", FEATURES, snapshot_in=tmp_path / "snapshot"
        )
        publish(cluster, model_dir, tmp_path / "store", 1)
        cluster.apply(
            model_deployment(MD, MODEL, "cancer-data", FEATURES, threshold=THRESHOLD, window=WINDOW)
        )
        with monitored(tmp_path, operator, serving_pod(cluster)) as (server, prom, am):
            yield Loop(cluster, operator, server, prom, am, data_version)


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


def calm_traffic_raises_nothing(loop: Loop, calm: pd.DataFrame) -> None:
    """In distribution: a full window, watched by Prometheus for longer than `for:`."""
    send(loop.server, calm)
    selector, prom = loop.selector, loop.prom
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
    assert loop.alerts() == []
    assert query(prom, "ALERTS") == []
    assert loop.retrained() == []


def drift_creates_one_trainingjob(
    loop: Loop, calm: pd.DataFrame
) -> tuple[dict[str, Any], dict[str, float]]:
    """Shifted traffic: the alert fires, exactly one TrainingJob appears (and the timings)."""
    drift_started = time.time()
    send(loop.server, shifted(calm))
    (tj,) = wait_for(
        loop.retrained,
        "a TrainingJob created from the drift alert",
        timeout=90,
        interval=0.05,
        state=lambda: {"prometheus": loop.alerts(), "operator": loop.operator.tail()},
    )
    observed = time.time() - drift_started
    (firing,) = wait_for(
        lambda: [
            a
            for a in loop.am.get("/api/v2/alerts")
            if a["labels"]["alertname"] == "KubeloopDataDrift"
        ],
        "the alert in Alertmanager",
    )
    meta = tj["metadata"]
    assert firing["labels"]["namespace"] == loop.cluster.namespace
    assert firing["labels"]["model_deployment"] == MD
    assert meta["labels"]["kubeloop.io/alert-fingerprint"] == firing["fingerprint"]
    assert meta["annotations"]["kubeloop.io/alert-name"] == "KubeloopDataDrift"
    assert float(meta["annotations"]["kubeloop.io/alert-value"]) > THRESHOLD
    # on fresh data: a snapshot taken after the alert, not the data already served
    assert tj["spec"]["datasetRef"] == {"name": "cancer-data", "fresh": True}
    active_at = pd.Timestamp(loop.alerts()[0]["activeAt"]).timestamp()
    # Alertmanager repeats the firing alert every 2s: duplicates, never a twin
    wait_for(
        lambda: loop.operator.decisions().get(("duplicate", "alert"), 0) >= 2,
        "Alertmanager's repeats to reach the receiver",
        timeout=30,
        state=loop.operator.decisions,
    )
    assert len(loop.retrained()) == 1
    timing = {
        "drift_to_trainingjob_s": round(observed, 2),
        "drift_to_alert_active_s": round(active_at - drift_started, 2),
    }
    return tj, timing


def the_snapshot_it_requested_runs(loop: Loop, tj_name: str, workdir: Path) -> None:
    """The retrain asks the Dataset for a snapshot newer than itself; the test plays the
    kubelet for that snapshot pod with the real `kubeloop snapshot`. The source has not
    changed, so the run goes on with the same version, and says so."""
    cluster = loop.cluster
    job = wait_for(
        lambda: next(
            (
                j
                for j in cluster.list("Job", "batch/v1", "kubeloop.io/dataset=cancer-data")
                if "-req-" in j["metadata"]["name"]
            ),
            None,
        ),
        "the snapshot Job the retrain requested",
        state=lambda: cluster.get("Dataset", "cancer-data"),
    )
    code, message = run_job_locally(job, workdir)
    assert code == 0, message
    finish_pod(
        cluster.core, pod_of(cluster, job["metadata"]["name"]), exit_code=code, message=message
    )
    wait_for(
        lambda: cluster.status("TrainingJob", tj_name).get("datasetVersion") == loop.data_version,
        "the retrain to take the requested snapshot's (unchanged) version",
        state=lambda: cluster.get("TrainingJob", tj_name),
    )
    assert cluster.status("Dataset", "cancer-data")["lastSnapshot"]["changed"] is False


def the_retrain_rolls_out(loop: Loop, tj_name: str, workdir: Path) -> None:
    """The test plays the kubelet for the trainer pod, running the real `kubeloop train` with
    the pod's arguments; the deployment, following Latest, then rolls the new version out."""
    cluster = loop.cluster
    job = cluster.wait_job(f"kubeloop.io/training-job={tj_name}")
    code, message = run_job_locally(job, workdir)
    assert code == 0, message
    finish_pod(
        cluster.core, pod_of(cluster, job["metadata"]["name"]), exit_code=code, message=message
    )
    wait_for(
        lambda: cluster.status("TrainingJob", tj_name).get("version") == 2,
        "the retrain to publish version 2",
        state=lambda: cluster.get("TrainingJob", tj_name),
    )
    wait_for(
        lambda: cluster.status("ModelDeployment", MD).get("stableVersion") == 2,
        "the ModelDeployment to roll version 2 out",
        state=lambda: cluster.status("ModelDeployment", MD),
    )
    stable = cluster.get("Deployment", f"{MD}-stable", "apps/v1")
    assert stable["metadata"]["labels"]["app.kubernetes.io/version"] == "2"


def a_new_episode_meets_the_cooldown(loop: Loop, calm: pd.DataFrame) -> None:
    """The alert resolves; drift again (a new episode) inside the cooldown: no TrainingJob."""
    send(loop.server, calm)
    wait_for(lambda: not loop.alerts(), "the drift alert to resolve", timeout=60)
    send(loop.server, shifted(calm))
    wait_for(
        lambda: loop.operator.decisions().get(("cooldown", "alert"), 0) >= 1,
        "the second episode to be refused for the cooldown",
        timeout=90,
        state=lambda: {"decisions": loop.operator.decisions(), "alerts": loop.alerts()},
    )
    assert len(loop.retrained()) == 1
    assert {"RetrainCreated", "RetrainDuplicate", "RetrainCooldown"} <= set(loop.cluster.events(MD))


def test_drift_alert_to_one_trainingjob_then_cooldown(loop, data_csv, tmp_path):
    calm = pd.read_csv(data_csv)[FEATURES].iloc[:WINDOW]
    calm_traffic_raises_nothing(loop, calm)
    tj, timing = drift_creates_one_trainingjob(loop, calm)
    the_snapshot_it_requested_runs(loop, tj["metadata"]["name"], tmp_path / "snapshot")
    the_retrain_rolls_out(loop, tj["metadata"]["name"], tmp_path / "trainer")
    a_new_episode_meets_the_cooldown(loop, calm)
    report = {
        **timing,
        "settings": {"scrape": "1s", "eval": "1s", "for": FOR, "group_wait": "1s"},
    }
    print("drift loop timing:", json.dumps(report))
    (tmp_path / "timing.json").write_text(json.dumps(report))


# ---------------------------------------------------------------- feedback across replicas

FLOOR, FEEDBACK_ROWS = 0.9, 60


def serving_pods(cluster: Cluster, count: int) -> list[dict[str, Any]]:
    selector = f"kubeloop.io/model-deployment={MD},kubeloop.io/role=stable"

    def pods() -> list[dict[str, Any]] | None:
        found = cluster.list("Pod", "v1", selector)
        return sorted(found, key=lambda p: p["metadata"]["name"]) if len(found) == count else None

    return wait_for(
        pods,
        f"{count} stable serving pods",
        timeout=60,
        state=lambda: cluster.get("ModelDeployment", MD),
    )


def label_some_wrongly(server: Any, rows: pd.DataFrame, prefix: str) -> None:
    """Predict ``rows`` one request each, then post feedback: 3 rows in 10 get the label
    the model did not give (an accuracy of 0.7 on this replica)."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        feedback = []
        for i in range(len(rows)):
            part = rows.iloc[i : i + 1]
            body = {
                "id": f"{prefix}-{i}",
                "inputs": [
                    {"name": "x", "shape": list(part.shape), "datatype": "FP32",
                     "data": part.to_numpy(np.float32).ravel().tolist()}
                ],
            }  # fmt: skip
            response = http.post(f"/v2/models/{MODEL}/infer", json=body)
            assert response.status_code == 200, response.text
            label = next(o for o in response.json()["outputs"] if o["name"] == "label")
            predicted = int(label["data"][0])
            feedback.append(
                {"id": f"{prefix}-{i}", "truth": 1 - predicted if i % 10 < 3 else predicted}
            )
        answer = http.post(f"/v2/models/{MODEL}/feedback", json={"feedback": feedback})
        assert answer.status_code == 200, answer.text
        assert answer.json()["matched"] == len(rows)


def test_feedback_below_the_floor_across_two_replicas_makes_one_trainingjob(
    kubeconfig, api_client, namespace, tmp_path, model_dir, data_csv
):
    cluster = Cluster(api_client, namespace)
    with running_operator(kubeconfig, api_client, namespace, tmp_path) as operator:
        dataset_ready(cluster, data_csv, "cancer-data", FEATURES)
        publish(cluster, model_dir, tmp_path / "store", 1)
        md = model_deployment(MD, MODEL, "cancer-data", FEATURES)
        md["spec"]["replicas"] = 2
        md["spec"]["monitoring"] = {"feedback": {"floor": FLOOR, "window": 100}}
        cluster.apply(md)
        with ExitStack() as stack:
            servers = []
            for pod in serving_pods(cluster, 2):
                servers.append(server := run_server(pod))
                stack.callback(server.stop)
            # each pod alone holds fewer rows than the rule asks for; together enough
            half = FEEDBACK_ROWS * 2 // 3
            rules = rules_file(
                tmp_path, "--online-for", FOR, "--online-min-rows", str(FEEDBACK_ROWS)
            )
            am = alertmanager(tmp_path, operator.url, operator.token, repeat_interval="2s")
            stack.callback(am.stop)
            targets = [
                discovered_pod(s.url.removeprefix("http://"), pod)
                for s, pod in zip(servers, serving_pods(cluster, 2), strict=True)
            ]
            prom = prometheus(tmp_path, rules, am.port, [serving_job(static_configs=targets)])
            stack.callback(prom.stop)
            calm = pd.read_csv(data_csv)[FEATURES]
            for n, server in enumerate(servers):
                label_some_wrongly(server, calm.iloc[n * half : (n + 1) * half], f"r{n}")
            (tj,) = wait_for(
                lambda: operator_made(cluster),
                "one TrainingJob for the online-metric alert",
                timeout=90,
                interval=0.1,
                state=lambda: prom.get("/api/v1/alerts")["data"]["alerts"],
            )
            meta = tj["metadata"]
            assert meta["annotations"]["kubeloop.io/alert-name"] == "KubeloopOnlineMetricBelowFloor"
            assert float(meta["annotations"]["kubeloop.io/alert-value"]) == pytest.approx(0.7)
            # the pods export the deployment's floor; Alertmanager's repeats make no twin
            (floor,) = {float(r["value"][1]) for r in query(prom, "kubeloop_online_metric_floor")}
            assert floor == FLOOR
            wait_for(
                lambda: operator.decisions().get(("duplicate", "alert"), 0) >= 1,
                "a repeat of the alert to reach the receiver",
                timeout=30,
                state=operator.decisions,
            )
            assert len(operator_made(cluster)) == 1


def operator_made(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.list("TrainingJob", selector=f"kubeloop.io/model-deployment={MD}")
