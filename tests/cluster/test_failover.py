"""Failover: two real operator processes with kopf peering against the real API server.

The leader (the higher priority) reconciles; the standby pauses. The leader is killed
(SIGKILL: no goodbye, its peering record must expire) in the middle of a canary and in
the middle of a training; the standby takes over within the peering lifetime
(``KUBELOOP_PEERING_LIFETIME_SECONDS``, 10 s) and goes on where the leader was, with no
second Job, ModelVersion or TrainingJob. Both replicas run the alert receiver: the same
alert delivered to both makes one TrainingJob, and two alerts decided at once by the two
replicas respect the deployment's maxConcurrent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubelet import finish_pod
from kubetest import wait_for
from operator_harness import KINDS, Cluster, pod_of
from retrain_helpers import RetrainOperator, alert, dataset_ready, model_deployment, notification
from test_operator import publish, serve_setup, trained_summary, training_job

pytestmark = pytest.mark.cluster

FEATURES = ["f1", "f2"]
LEADER, STANDBY = 200, 100


class Replica(RetrainOperator):
    """One operator replica: kopf peering at a fixed priority, its receiver on loopback."""

    def __init__(self, priority: int, kubeconfig: str, namespace: str, store: Path, log: Path):
        super().__init__(kubeconfig, namespace, store, log)
        self.args = ["--peering", "--priority", str(priority)]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def pair(
    kubeconfig: str, api_client: Any, namespace: str, store: Path, tmp_path: Path, kopf_crds: None
) -> Iterator[tuple[Replica, Replica]]:
    """The leader and the standby, the standby seen pausing; afterwards every Kubeloop
    object deleted by whichever replica is left, then both stopped."""
    cluster = Cluster(api_client, namespace)
    cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "default"}}
    )
    leader = Replica(LEADER, kubeconfig, namespace, store, tmp_path / "leader.log")
    standby = Replica(STANDBY, kubeconfig, namespace, store, tmp_path / "standby.log")
    leader.start()
    try:
        standby.start()
        wait_for(
            lambda: "Pausing operations in favour of" in standby.text(),
            "the standby to pause in favour of the leader",
            timeout=60,
            state=standby.tail,
        )
        yield leader, standby
        if not (leader.alive() or standby.alive()):
            standby.start()
        cluster.delete_all(KINDS)
    finally:
        standby.stop()
        leader.stop()
    assert "Pausing" not in leader.text()


def handed_over(leader: Replica, standby: Replica) -> float:
    """Kill the leader without notice; the seconds until the standby resumes."""
    assert "Resuming operations" not in standby.text()
    leader.kill()
    killed = time.monotonic()
    wait_for(
        lambda: "Resuming operations" in standby.text(),
        "the standby to take over",
        timeout=60,
        interval=0.2,
        state=standby.tail,
    )
    seconds = time.monotonic() - killed
    print(f"handover after the leader was killed: {seconds:.1f} s")
    return seconds


def uid(cluster: Cluster, kind: str, name: str, api_version: str) -> str:
    obj = cluster.get(kind, name, api_version)
    assert obj is not None, f"{kind} {name} is missing"
    return str(obj["metadata"]["uid"])


def test_leader_killed_mid_canary_the_standby_finishes_the_rollout(pair, cluster, store):
    leader, standby = pair
    serve_setup(cluster, store, steps=[{"weight": 50, "pause": "5s"}])
    stable = uid(cluster, "Deployment", "cancer-stable", "apps/v1")
    publish(cluster, store, 2)
    wait_for(
        lambda: cluster.status("ModelDeployment", "cancer").get("stepStartedTime"),
        "the canary at its first step",
        timeout=60,
        state=lambda: cluster.status("ModelDeployment", "cancer"),
    )
    canary = uid(cluster, "Deployment", "cancer-canary", "apps/v1")
    handed_over(leader, standby)
    # the canary the leader made is the one still running: nothing was made again
    assert uid(cluster, "Deployment", "cancer-canary", "apps/v1") == canary
    wait_for(
        lambda: cluster.status("ModelDeployment", "cancer").get("stableVersion") == 2,
        "the standby to promote the canary",
        timeout=90,
        state=lambda: {
            "status": cluster.status("ModelDeployment", "cancer"),
            "log": standby.tail(),
        },
    )
    assert uid(cluster, "Deployment", "cancer-stable", "apps/v1") == stable
    events = cluster.events("cancer")
    assert (events.count("CanaryStarted"), events.count("Promoted")) == (1, 1), events
    assert sorted(m["metadata"]["name"] for m in cluster.list("ModelVersion")) == [
        "cancer-v1",
        "cancer-v2",
    ]
    assert cluster.list("TrainingJob") == []


def test_leader_killed_mid_training_leaves_one_job_and_one_version(pair, cluster, store, tmp_path):
    leader, standby = pair
    csv = tmp_path / "data.csv"
    csv.write_text("f1,f2,target\n1,2,0\n3,4,1\n")
    dataset_ready(cluster, csv, "cancer", FEATURES)
    cluster.apply(training_job("once"))
    job = cluster.wait_job("kubeloop.io/training-job=once")
    handed_over(leader, standby)
    finish_pod(
        cluster.core, pod_of(cluster, job["metadata"]["name"]), exit_code=0,
        message=trained_summary(store),
    )  # fmt: skip
    cluster.wait_phase("TrainingJob", "once", "Succeeded", timeout=60)
    assert len(cluster.list("Job", "batch/v1", "kubeloop.io/training-job=once")) == 1
    assert len(cluster.list("Job", "batch/v1", "kubeloop.io/dataset=cancer")) == 1
    assert [m["metadata"]["name"] for m in cluster.list("ModelVersion")] == ["cancer-v1"]


def test_the_same_alert_to_both_replicas_makes_one_training_job(pair, cluster, tmp_path):
    leader, standby = pair
    csv = tmp_path / "data.csv"
    csv.write_text("f1,f2,target\n1,2,0\n3,4,1\n")
    dataset_ready(cluster, csv, "iris-data", FEATURES)
    cluster.apply(model_deployment("iris", "iris", "iris-data", FEATURES))
    payload = notification(alert(cluster.namespace, "iris"))
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda replica: replica.post(payload), (leader, standby)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    decisions = sorted(a.json()["results"][0]["result"] for a in answers)
    assert decisions == ["created", "duplicate"], decisions
    assert len(cluster.list("TrainingJob")) == 1
    # a re-delivery to either one is a duplicate too
    for replica in (leader, standby):
        again = replica.post(payload).json()["results"][0]["result"]
        assert again == "duplicate"
    assert len(cluster.list("TrainingJob")) == 1


def test_two_alerts_at_once_to_two_replicas_respect_max_concurrent(pair, cluster, tmp_path):
    """Different alerts for one deployment (maxConcurrent 1, no cooldown), one to each
    replica at the same moment: each replica decides alone, so without a claim both would
    see no TrainingJob running and create one. Several deployments at once, to meet the race."""
    leader, standby = pair
    csv = tmp_path / "data.csv"
    csv.write_text("f1,f2,target\n1,2,0\n3,4,1\n")
    dataset_ready(cluster, csv, "iris-data", FEATURES)
    names = [f"iris-{i}" for i in range(4)]
    for name in names:
        cluster.apply(model_deployment(name, name, "iris-data", FEATURES, cooldown="0s"))
    posts = [
        (
            replica,
            notification(
                alert(cluster.namespace, name, fingerprint=f"{name}{replica}".replace("-", ""))
            ),
        )
        for name in names
        for replica in ("leader", "standby")
    ]
    by_role = {"leader": leader, "standby": standby}
    with ThreadPoolExecutor(len(posts)) as pool:
        answers = list(pool.map(lambda post: by_role[post[0]].post(post[1]), posts))
    assert [a.status_code for a in answers] == [200] * len(posts), [a.text for a in answers]
    for name in names:
        decisions = sorted(
            result["result"]
            for a in answers
            for result in a.json()["results"]
            if result["deployment"].endswith(f"/{name}")
        )
        assert decisions == ["created", "max-concurrent"], (name, decisions)
        made = [tj for tj in cluster.list("TrainingJob") if tj["spec"]["modelName"] == name]
        assert len(made) == 1, [tj["metadata"]["name"] for tj in made]
