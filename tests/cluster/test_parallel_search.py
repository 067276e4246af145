"""A search across pods through the operator, against the real API server.

The real Job controller runs the search's Indexed Job; the test plays the kubelet for
each of its pods (see test_operator): it runs the real `kubeloop train --search-shards`
with the pod's arguments and the index the controller gave the pod, writing trials to the
store the operator reads. One pod is lost after writing its trials: the controller
replaces it (a retry of that index alone) and the rerun overwrites the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubelet import finish_pod, wait_running
from kubetest import wait_for
from operator_harness import Cluster, run_job_locally
from test_operator import (  # the fixtures and helpers of the operator's own tests
    data_csv,
    dataset_ready_fast,
    play_kubelet,
    snapshot_ready,
    train,
    training_job,
)

from kubeloop.contracts import search as contract
from kubeloop.operator import builders
from kubeloop.operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster
__all__ = ["data_csv"]  # a fixture, used by name

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
SEARCH: dict[str, Any] = {
    "strategy": "random",
    "space": {"max_depth": [2, 3, 4, 6, 8], "min_samples_leaf": [1, 2, 5, 10]},
    "trials": 7,
    "cv": 3,
}
TREE = {"className": "DecisionTreeClassifier"}
TRAINER = "app.kubernetes.io/name=kubeloop-trainer"


def search_pods(cluster: Cluster, job_name: str) -> list[dict[str, Any]]:
    pods = cluster.list("Pod", "v1", f"job-name={job_name}")
    return sorted(pods, key=lambda p: p["metadata"]["annotations"][INDEX_ANNOTATION])


def play_shard(cluster: Cluster, pod: dict[str, Any], workdir: Path, *, lost: bool = False) -> None:
    """Run the pod's shard here with its completion index; end the pod as its kubelet would
    (``lost``: killed after it wrote its trials, as when its node goes away)."""
    index = pod["metadata"]["annotations"][INDEX_ANNOTATION]
    job = cluster.get("Job", pod["metadata"]["labels"]["job-name"], "batch/v1")
    assert job is not None
    where = workdir / f"shard-{index}-{pod['metadata']['uid'][:8]}"
    code, message = run_job_locally(job, where, env={contract.SHARD_ENV: index})
    assert code == 0, message
    if lost:
        code, message = 137, ""
    wait_running(cluster.core, pod["metadata"]["name"], cluster.namespace)
    finish_pod(cluster.core, pod, exit_code=code, message=message)


def play_shards_losing_one(
    cluster: Cluster, tj_name: str, pods: list[dict[str, Any]], workdir: Path
) -> None:
    """Play every shard; index 0's pod is lost after writing its trials (status counts them)
    and the Job controller's replacement runs it again."""
    job_name = pods[0]["metadata"]["labels"]["job-name"]
    play_shard(cluster, pods[0], workdir, lost=True)  # index 0: trials written, pod lost
    wait_for(
        lambda: cluster.status("TrainingJob", tj_name)["search"]["done"] == 3,
        "status.search.done to count index 0's 3 trials",
    )
    for pod in pods[1:]:
        play_shard(cluster, pod, workdir)
    first = pods[0]["metadata"]["uid"]
    rerun = wait_for(
        lambda: next(
            (p for p in search_pods(cluster, job_name)
             if p["metadata"]["annotations"][INDEX_ANNOTATION] == "0"
             and p["metadata"]["uid"] != first),
            None,
        ),
        "the Job controller to replace the lost pod of index 0",
    )  # fmt: skip
    play_shard(cluster, rerun, workdir)


def test_parallel_search_gives_the_serial_winner(cluster, operator, data_csv, store, tmp_path):
    snapshot_ready(cluster, data_csv, tmp_path)
    serial = train(cluster, tmp_path, "serial", estimator=TREE, search=SEARCH)
    serial_mv = cluster.get("ModelVersion", serial["modelVersion"])
    assert serial_mv is not None

    tj = cluster.apply(
        training_job("parallel", estimator=TREE, search={**SEARCH, "parallelism": 3})
    )
    job_name = builders.search_job_name(tj)
    pods = wait_for(
        lambda: len(found := search_pods(cluster, job_name)) == 3 and found,
        f"3 pods of the Indexed Job {job_name}",
    )
    status = cluster.wait_phase("TrainingJob", "parallel", "Running")
    assert status["search"] == {"jobName": job_name, "pods": 3, "trials": 7, "done": 0,
                                "metric": "accuracy"}  # fmt: skip
    assert cluster.condition("TrainingJob", "parallel")["reason"] == "Searching"

    play_shards_losing_one(cluster, "parallel", pods, tmp_path)

    trainer = builders.trainer_job_name(tj)
    _, message = play_kubelet(cluster, f"{TRAINER},kubeloop.io/training-job=parallel", tmp_path)
    args = cluster.get("Job", trainer, "batch/v1")["spec"]["template"]["spec"]["containers"][0]
    folder = builders.search_dir_uri(
        OperatorSettings(artifact_root=store.as_uri()),
        cluster.namespace,
        "parallel",
        tj["metadata"]["uid"],
    )
    assert args["args"][args["args"].index("--trials") + 1] == folder
    done = cluster.wait_phase("TrainingJob", "parallel", "Succeeded")
    trial_files = sorted(Path(folder.removeprefix("file://"), contract.TRIALS_DIR).iterdir())
    assert [p.name for p in trial_files] == [f"{i:05d}.json" for i in range(7)]  # none twice

    mv = cluster.get("ModelVersion", done["modelVersion"])
    assert mv is not None
    assert mv["spec"]["artifact"]["sha256"] == serial_mv["spec"]["artifact"]["sha256"]
    assert mv["spec"]["lineage"]["params"] == serial_mv["spec"]["lineage"]["params"]
    assert done["metrics"] == serial["metrics"]
    winner = done["search"]["winner"]
    assert done["search"]["done"] == 7
    assert winner["params"] == {
        k: serial_mv["spec"]["lineage"]["params"][k] for k in SEARCH["space"]
    }
    assert json.loads(message)["sha256"] == mv["spec"]["artifact"]["sha256"]
    assert "SearchStarted" in cluster.events("parallel")


def test_a_failed_search_fails_the_training_job_and_publishes_nothing(
    cluster, operator, data_csv, tmp_path
):
    dataset_ready_fast(cluster, data_csv, tmp_path)
    tj = cluster.apply(training_job("broken", search={**SEARCH, "parallelism": 2}))
    job_name = builders.search_job_name(tj)
    reason = "search.space: LogisticRegression has no parameter 'max_depth'"
    result = json.dumps({"kind": "train", "status": "failed", "reason": reason})
    selector = "app.kubernetes.io/name=kubeloop-search,kubeloop.io/training-job=broken"
    play_kubelet(cluster, selector, tmp_path, override=(2, result))
    status = cluster.wait_phase("TrainingJob", "broken", "Failed", timeout=60)
    assert status["reason"] == f"search Job {job_name}: {reason}"
    assert cluster.condition("TrainingJob", "broken")["reason"] == "SearchFailed"
    assert cluster.get("Job", builders.trainer_job_name(tj), "batch/v1") is None
    assert cluster.list("ModelVersion") == []
