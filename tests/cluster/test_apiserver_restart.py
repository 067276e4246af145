"""The operator rides out a kube-apiserver crash: same process, work still reconciled.

The module starts a cluster of its own (the outage would disturb every other test on
the session's cluster), runs the operator, kills the API server (SIGKILL), keeps it down
for longer than a resync period and starts it again (``DevCluster.restart``). Then,
against the same operator process: a TrainingJob made after the restart gets its Job,
pods finishing after it get their TrainingJobs Succeeded with one ModelVersion each,
nothing is started twice, and the resync timers, whose passes failed while the API
server was down, run again within seconds (not after kopf's default minute).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubelet import finish_pod
from kubernetes import client, config
from kubetest import Kubectl, install_crds, new_namespace, wait_for
from operator_harness import Cluster, operating, pod_of
from test_operator import (  # the fixtures and helpers of the operator's own tests
    data_csv,
    dataset_ready_fast,
    trained_summary,
    training_job,
)
from test_reactive import CountedOperator

from kubeloop.devcluster import DevCluster
from kubeloop.operator.kube import Kube, unavailable

pytestmark = pytest.mark.cluster
__all__ = ["data_csv"]  # a fixture, used by name
DOWN_SECONDS = 3.0  # the outage: longer than the operator's resync and tick (1 s here)


def _say(message: str) -> None:
    print(f"[restart] {message}", file=sys.stderr)


@pytest.fixture(scope="module")
def own_cluster(kubectl_bin: str) -> Iterator[DevCluster]:
    """A one-node cluster for this module alone, with the CRDs; removed afterwards."""
    dev = DevCluster(
        f"pytest-restart-{os.getpid()}-{secrets.token_hex(2)}", bind_to_parent=True, log=_say
    )
    try:
        install_crds(Kubectl(kubectl_bin, dev.up(nodes=1, timeout=180)))
        yield dev
    finally:
        dev.down()


@pytest.fixture(scope="module")
def own_api(own_cluster: DevCluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(own_cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def own_namespace(own_api: client.ApiClient) -> str:
    """A namespace whose ``default`` ServiceAccount exists (the Job controller needs it)."""
    return new_namespace(client.CoreV1Api(own_api), f"restart-{secrets.token_hex(3)}")


def jobs_of(cluster: Cluster, selector: str) -> list[str]:
    return [j["metadata"]["name"] for j in cluster.list("Job", "batch/v1", selector)]


def ok_passes(operator: CountedOperator, kind: str) -> float:
    """Reconcile passes of ``kind`` that ended well, from the operator's /metrics."""
    return operator.metric("kubeloop_operator_reconciles_total").get(
        f'kind="{kind}",result="ok"', 0.0
    )


def test_operator_recovers_from_an_apiserver_outage(
    own_cluster: DevCluster,
    own_api: client.ApiClient,
    own_namespace: str,
    data_csv: Path,
    tmp_path: Path,
) -> None:
    t0 = time.monotonic()
    store = tmp_path / "store"
    store.mkdir()
    cluster = Cluster(own_api, own_namespace)
    proc = CountedOperator(
        1, str(own_cluster.kubeconfig), own_namespace, store.as_uri(), tmp_path / "operator.log"
    )
    with operating(proc, own_api) as operator:
        assert operator.proc is not None
        pid = operator.proc.pid
        dataset_ready_fast(cluster, data_csv, tmp_path)
        cluster.apply(training_job("before"))
        before = cluster.wait_job("kubeloop.io/training-job=before")

        own_cluster.restart("kube-apiserver", hard=True, down_for=DOWN_SECONDS)
        back = time.monotonic()
        assert operator.proc.poll() is None, "the operator exited with the API server"
        passes = ok_passes(operator, "Dataset")

        cluster.apply(training_job("after"))
        after = cluster.wait_job("kubeloop.io/training-job=after")
        acted = time.monotonic() - back
        # Nothing changes the Dataset now: only its resync timer, whose passes failed
        # during the outage, reconciles it (after kopf's default backoff: in 60 s).
        wait_for(
            lambda: ok_passes(operator, "Dataset") >= passes + 3,
            "three resync passes of the Dataset after the outage",
            timeout=15,
            state=lambda: operator.metric("kubeloop_operator_reconciles_total"),
        )
        resynced = time.monotonic() - back

        summary = trained_summary(store)
        for job in (before, after):
            finish_pod(cluster.core, pod_of(cluster, job["metadata"]["name"]), message=summary)
        done = {n: cluster.wait_phase("TrainingJob", n, "Succeeded") for n in ("before", "after")}
        settled = {n: cluster.status("TrainingJob", n) for n in done}
        # a few resync periods (1 s each) for a confused operator to start something twice
        checks = iter(range(3))
        wait_for(lambda: next(checks, None) is None, "three resync periods", interval=1)
        assert {n: cluster.status("TrainingJob", n) for n in done} == settled
        assert_truthful(cluster, done, before, after)
        assert operator.proc.poll() is None, "the operator exited"
        assert operator.proc.pid == pid
    _say(
        f"API server down {DOWN_SECONDS}s; after it was back the operator made a new "
        f"TrainingJob's Job in {acted:.1f}s and had resynced the Dataset three times at "
        f"{resynced:.1f}s; test {time.monotonic() - t0:.1f}s"
    )


def assert_truthful(
    cluster: Cluster, done: dict[str, dict[str, Any]], *jobs: dict[str, Any]
) -> None:
    """One Job per TrainingJob, one ModelVersion per success, each status naming its own;
    the Dataset still Ready."""
    for name, job in zip(("before", "after"), jobs, strict=True):
        assert jobs_of(cluster, f"kubeloop.io/training-job={name}") == [job["metadata"]["name"]]
        assert done[name]["jobName"] == job["metadata"]["name"]
    versions = sorted(m["metadata"]["name"] for m in cluster.list("ModelVersion"))
    assert sorted(s["modelVersion"] for s in done.values()) == versions
    assert versions == ["cancer-v1", "cancer-v2"]
    assert cluster.condition("Dataset", "cancer").get("status") == "True"


def test_a_stalled_apiserver_times_a_request_out(
    own_cluster: DevCluster, own_api: client.ApiClient, own_namespace: str
) -> None:
    """An API server that holds the connection open and never answers (frozen with
    SIGSTOP: accepted by the kernel, read by no one) fails the operator's request within
    its timeout, as an "unavailable" error a pass retries soon; without a timeout it would
    hold one of kopf's worker threads until the connection died."""
    kube = Kube(own_api, request_timeout=(2.0, 2.0))
    assert kube.get("v1", "ServiceAccount", own_namespace, "default") is not None  # discovered
    state = own_cluster.state()
    assert state is not None
    apiserver = next(p for p in state.processes if p.name == "kube-apiserver")
    os.kill(apiserver.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(urllib3.exceptions.HTTPError) as caught:
            kube.get("v1", "ServiceAccount", own_namespace, "default")
        waited = time.monotonic() - start
    finally:
        os.kill(apiserver.pid, signal.SIGCONT)
    assert unavailable(caught.value), repr(caught.value)
    assert waited < 30, f"the request took {waited:.1f}s with a 2 s timeout"
    wait_for(
        lambda: kube.get("v1", "ServiceAccount", own_namespace, "default") is not None,
        "the API server answering again after SIGCONT",
        timeout=60,
    )
    _say(f"frozen API server: the request failed after {waited:.1f}s (timeout 2 s)")
