"""The operator reacts to its children at once and costs nothing when nothing changes.

The operators here run with a safety resync far longer than every deadline, so only
events (a Job finishing, a Deployment becoming ready, a ModelVersion turning Ready) can
move the objects on in time; the steady-state test runs a short resync instead and counts
the operator's own API requests (its ``kubeloop_operator_api_requests_total``) over
several of them.
"""

from __future__ import annotations

import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubelet import finish_job
from kubetest import wait_for
from operator_harness import Cluster, OperatorProcess, free_port, operating
from sklearn.datasets import load_breast_cancer
from test_operator import (
    FEATURES,
    dataset_ready_fast,
    example,
    publish,
    trained_summary,
    training_job,
)

pytestmark = pytest.mark.cluster

#: Longer than any wait below: a pass the timer made would be too late to pass them.
SAFETY_RESYNC = 600
WRITE_VERBS = ("create", "apply", "delete", "patch")


class CountedOperator(OperatorProcess):
    """The operator with its /metrics on a port of its own and the given resync."""

    def __init__(self, resync: float, *args: Any) -> None:
        super().__init__(*args)
        self.metrics_port = free_port()
        self.env.update(
            KUBELOOP_RESYNC_SECONDS=str(resync),
            KUBELOOP_TICK_SECONDS="1",
            KUBELOOP_METRICS_PORT=str(self.metrics_port),
        )

    def metric(self, name: str) -> dict[str, float]:
        """The samples of one counter, by their label string."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        pattern = rf"^{name}\{{([^}}]*)\}} ([0-9.e+]+)$"
        return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.M)}

    def writes(self) -> float:
        samples = self.metric("kubeloop_operator_api_requests_total")
        return sum(
            v for k, v in samples.items() if re.search(rf'verb="({"|".join(WRITE_VERBS)})"', k)
        )

    def reconciles(self, kind: str) -> float:
        samples = self.metric("kubeloop_operator_reconciles_total")
        return sum(v for k, v in samples.items() if f'kind="{kind}"' in k)


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = load_breast_cancer(as_frame=True).frame
    path = tmp_path_factory.mktemp("data") / "breast-cancer.csv"
    frame[[*FEATURES, "target"]].to_csv(path, index=False)
    return path


def counted(resync: float, kubeconfig: str, namespace: str, store: Path, log: Path) -> Any:
    return CountedOperator(resync, kubeconfig, namespace, store.as_uri(), log)


@pytest.fixture
def reactive(kubeconfig: str, api_client: Any, namespace: str, store: Path, tmp_path: Path):
    proc = counted(SAFETY_RESYNC, kubeconfig, namespace, store, tmp_path / "operator.log")
    with operating(proc, api_client) as running:
        yield running


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    md = example("ModelDeployment", modelName="cancer", replicas=replicas)
    md["metadata"]["name"] = name
    for field in ("retrain", "canary"):
        md["spec"].pop(field, None)
    return md


def job_complete(cluster: Cluster, name: str) -> bool:
    job = cluster.get("Job", name, "batch/v1") or {}
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)


def test_each_stage_follows_its_child_within_seconds(cluster, reactive, data_csv, store, tmp_path):
    dataset_ready_fast(cluster, data_csv, tmp_path)
    cluster.apply(deployment("cancer"))
    cluster.wait_phase("ModelDeployment", "cancer", "Pending", timeout=30)
    cluster.apply(training_job("fast"))
    job = cluster.wait_job("kubeloop.io/training-job=fast")
    cluster.wait_phase("TrainingJob", "fast", "Running", timeout=30)
    finish_job(
        cluster.core, cluster.namespace, job["metadata"]["name"], message=trained_summary(store)
    )
    wait_for(lambda: job_complete(cluster, job["metadata"]["name"]), "the trainer Job to complete")
    completed = time.monotonic()
    # the Job's change wakes the TrainingJob
    cluster.wait_phase("TrainingJob", "fast", "Succeeded", timeout=10)
    assert time.monotonic() - completed < 10
    # a version turning Ready wakes the deployment waiting for one; its Deployment's
    # readiness wakes it again (cancer-v1, the trained one, waits for its inspection Job)
    publish(cluster, store, 2)
    ready = time.monotonic()
    cluster.wait_phase("ModelDeployment", "cancer", "Serving", timeout=45)
    assert time.monotonic() - ready < SAFETY_RESYNC / 4
    # a child deleted by someone else is put back at once
    cluster.delete("Service", "cancer", "v1")
    wait_for(
        lambda: cluster.get("Service", "cancer", "v1") is not None,
        "the deleted Service to be applied again",
        timeout=15,
    )


def test_a_burst_of_a_hundred_deployments_all_converge(cluster, reactive, store):
    publish(cluster, store, 1)
    names = [f"burst-{i}" for i in range(100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: cluster.apply(deployment(n)), names))

    def serving() -> set[str]:
        phases = {
            md["metadata"]["name"]: (md.get("status") or {}).get("phase")
            for md in cluster.list("ModelDeployment")
        }
        return {n for n, p in phases.items() if p == "Serving"}

    wait_for(
        lambda: serving() == set(names),
        "all 100 ModelDeployments to be Serving",
        timeout=300,
        interval=2,
        state=lambda: sorted(set(names) - serving()),
    )
    cluster.delete_all(("ModelDeployment",), timeout=180)


def test_an_unchanged_object_costs_no_write_per_resync(
    cluster, kubeconfig, api_client, namespace, store, tmp_path
):
    proc = counted(2, kubeconfig, namespace, store, tmp_path / "operator.log")
    with operating(proc, api_client) as operator:
        publish(cluster, store, 1)
        cluster.apply(deployment("steady", replicas=2))
        cluster.wait_phase("ModelDeployment", "steady", "Serving", timeout=90)
        # converged: two looks more than a resync apart see the same count of writes
        wait_for(lambda: _same_after(operator.writes, 2.5), "the writes to stop", timeout=60)
        writes = operator.writes()
        md = cluster.get("ModelDeployment", "steady")
        stable = cluster.get("Deployment", "steady-stable", "apps/v1")
        passes = operator.reconciles("ModelDeployment")
        wait_for(
            lambda: operator.reconciles("ModelDeployment") >= passes + 3,
            "three more resyncs of the ModelDeployment",
            timeout=30,
        )
        assert operator.writes() == writes
        assert (
            cluster.get("ModelDeployment", "steady")["metadata"]["resourceVersion"]
            == (md["metadata"]["resourceVersion"])
        )
        after = cluster.get("Deployment", "steady-stable", "apps/v1")
        assert after["metadata"]["resourceVersion"] == stable["metadata"]["resourceVersion"]
        assert [f["manager"] for f in after["metadata"]["managedFields"]] == [
            f["manager"] for f in stable["metadata"]["managedFields"]
        ]


def _same_after(read: Any, seconds: float) -> bool:
    """Whether ``read()`` gives the same value now and ``seconds`` later (the wait between
    the two looks is the point: nothing may have happened in it)."""
    first = read()
    time.sleep(seconds)  # a measuring window, not a wait for something to happen
    return bool(read() == first)
