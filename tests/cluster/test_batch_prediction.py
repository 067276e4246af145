"""BatchPrediction through the operator, against the real API server.

The prediction pods are played here (see test_operator): a one-off run's Job runs the real
``kubeloop predict`` with the arguments the operator gave it, on the real snapshot and the
real trained model, and its termination message becomes the status. A scheduled run is the
CronJob controller's Job for one tick: the test records the tick in the CronJob's status and
creates that Job from the CronJob's template, as the controller does, and ends its pod.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubelet import finish_pod
from kubetest import Kubectl, wait_for
from operator_harness import Cluster, pod_of
from test_operator import (  # the fixtures and helpers of the operator's own tests
    data_csv,
    dataset_ready_fast,
    example,
    play_kubelet,
    publish,
    snapshot_ready,
    train,
)

from kubeloop.contracts.results import EXIT_BAD_INPUT
from kubeloop.operator import prediction
from kubeloop.operator.timestamps import rfc3339

pytestmark = pytest.mark.cluster
__all__ = ["data_csv"]  # a fixture, used by name

SELECTOR = "kubeloop.io/batch-prediction={}"


def batch_prediction(name: str, example_name: str = "BatchPrediction", **spec: Any) -> dict:
    doc = example(example_name)
    doc["metadata"]["name"] = name
    doc["spec"].pop("resources", None)
    doc["spec"].update(datasetRef={"name": "cancer"}, **spec)
    return doc


def output_uri(store: Path, namespace: str, file: str) -> str:
    return (store / "predictions" / namespace / file).as_uri()


def test_a_one_off_prediction_runs_once_and_reports_what_it_wrote(
    cluster, operator, data_csv, tmp_path, store, kubectl: Kubectl
):
    data = snapshot_ready(cluster, data_csv, tmp_path)
    trained = train(cluster, tmp_path, "cancer-1")
    wait_for(
        lambda: cluster.condition("ModelVersion", trained["modelVersion"]).get("status") == "True",
        "the ModelVersion to be Ready",
    )
    out = output_uri(store, cluster.namespace, "scores.parquet")
    cluster.apply(batch_prediction("scores", modelRef={"modelName": "cancer"}, output={"uri": out}))
    code, message = play_kubelet(cluster, SELECTOR.format("scores"), tmp_path)
    assert code == 0, message
    status = cluster.wait_phase("BatchPrediction", "scores", "Succeeded")
    written = Path(out.removeprefix("file://"))
    assert status["rows"] == 569
    assert status["outputSha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
    assert status["outputUri"] == out
    assert (status["modelVersion"], status["version"]) == ("cancer-v1", 1)
    assert status["datasetVersion"] == data["version"]
    assert status["durationSeconds"] >= 0
    assert status["startTime"] <= status["completionTime"]
    assert cluster.condition("BatchPrediction", "scores")["reason"] == "PredictionSucceeded"
    assert cluster.condition("BatchPrediction", "scores", "Succeeded")["status"] == "True"
    row = kubectl("get", "bp", "scores", "--no-headers").stdout.split()
    assert row[:4] == ["scores", "True", "Succeeded", "cancer-v1"]
    assert row[4] == "569"

    # a restarted operator neither starts the run again nor rewrites its status
    settled = cluster.status("BatchPrediction", "scores")
    operator.kill()
    operator.start()
    checks = iter(range(5))
    wait_for(lambda: next(checks, None) is None, "five resync periods", timeout=30, interval=1)
    assert cluster.status("BatchPrediction", "scores") == settled
    assert len(cluster.list("Job", "batch/v1", SELECTOR.format("scores"))) == 1

    # a run that fails says why, and writes nothing
    bad_out = output_uri(store, cluster.namespace, "bad.csv")
    cluster.apply(batch_prediction("bad", modelRef={"name": "cancer-v1"}, output={"uri": bad_out}))
    failed = {"kind": "predict", "status": "failed", "reason": "column 'age': missing"}
    play_kubelet(
        cluster, SELECTOR.format("bad"), tmp_path, override=(EXIT_BAD_INPUT, json.dumps(failed))
    )
    status = cluster.wait_phase("BatchPrediction", "bad", "Failed")
    assert status["reason"] == "column 'age': missing"
    assert "rows" not in status
    ready = cluster.condition("BatchPrediction", "bad")
    assert (ready["status"], ready["reason"]) == ("False", "PredictionFailed")
    assert "PredictionFailed" in wait_for(lambda: cluster.events("bad"), "a Warning Event")


def cronjob_of(cluster: Cluster, name: str) -> dict[str, Any]:
    bp = cluster.get("BatchPrediction", name)
    assert bp is not None
    cron_name = prediction.cronjob_name(bp)
    return wait_for(
        lambda: cluster.get("CronJob", cron_name, "batch/v1"),
        f"CronJob {cron_name}",
        state=lambda: cluster.get("BatchPrediction", name),
    )


def run_tick(cluster: Cluster, cronjob: dict[str, Any], tick: datetime) -> str:
    """What the CronJob controller does at ``tick``: record it, create the tick's Job."""
    name = cronjob["metadata"]["name"]
    cron_api = cluster.dyn.resources.get(api_version="batch/v1", kind="CronJob")
    cron_api.status.patch(
        body={"status": {"lastScheduleTime": rfc3339(tick)}},
        name=name,
        namespace=cluster.namespace,
        content_type="application/merge-patch+json",
    )
    job_name = prediction.scheduled_job_name(name, tick)
    template = cronjob["spec"]["jobTemplate"]
    owner = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "name": name,
        "uid": cronjob["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    metadata = {**template["metadata"], "name": job_name, "ownerReferences": [owner]}
    cluster.apply({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
                   "spec": template["spec"]})  # fmt: skip
    return job_name


def suspend_then_unschedule(cluster: Cluster, cron_name: str) -> None:
    """Suspending suspends the CronJob; removing the schedule deletes it (and, suspended,
    starts no one-off run)."""
    cluster.patch("BatchPrediction", "nightly", {"spec": {"suspend": True}})
    wait_for(
        lambda: cluster.get("CronJob", cron_name, "batch/v1")["spec"]["suspend"],
        "the CronJob to be suspended",
    )
    cluster.wait_phase("BatchPrediction", "nightly", "Suspended")

    # the schedule goes: so does the CronJob; suspended, the one-off run does not start
    cluster.patch("BatchPrediction", "nightly", {"spec": {"schedule": None}})
    wait_for(
        lambda: (
            (found := cluster.get("CronJob", cron_name, "batch/v1")) is None
            or found["metadata"].get("deletionTimestamp")
        ),
        "the CronJob to be deleted",
    )
    wait_for(
        lambda: "cronJobName" not in cluster.status("BatchPrediction", "nightly"),
        "status to drop the CronJob",
    )
    ready = cluster.condition("BatchPrediction", "nightly")
    assert (ready["reason"], ready["message"]) == (
        "Suspended",
        "spec.suspend is true: no run starts",
    )


def test_a_scheduled_prediction_keeps_a_cronjob_and_reports_its_latest_run(
    cluster, operator, data_csv, tmp_path, store
):
    dataset_ready_fast(cluster, data_csv, tmp_path)
    publish(cluster, store, 1)
    out = output_uri(store, cluster.namespace, "nightly.csv")
    bp = batch_prediction(
        "nightly", "BatchPrediction-nightly", modelRef={"name": "cancer-v1"}, output={"uri": out}
    )
    cluster.apply(bp)
    cronjob = cronjob_of(cluster, "nightly")
    spec = cronjob["spec"]
    assert spec["schedule"] == "0 3 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["suspend"] is False
    assert cronjob["metadata"]["ownerReferences"][0]["kind"] == "BatchPrediction"
    args = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    mv = cluster.get("ModelVersion", "cancer-v1")
    assert mv is not None
    assert args[args.index("--model") + 1] == mv["spec"]["artifact"]["uri"]
    assert args[args.index("--sha256") + 1] == mv["spec"]["artifact"]["sha256"]
    assert args[args.index("--data") + 1] == data_csv.as_uri()
    assert args[args.index("--out") + 1] == out
    status = cluster.wait_phase("BatchPrediction", "nightly", "Scheduled")
    assert cluster.condition("BatchPrediction", "nightly")["reason"] == "Scheduled"
    assert status["cronJobName"] == cronjob["metadata"]["name"]
    assert not cluster.list("Job", "batch/v1", SELECTOR.format("nightly"))

    tick = datetime.now(UTC).replace(second=0, microsecond=0)
    job_name = run_tick(cluster, cronjob, tick)
    result = {"kind": "predict", "status": "succeeded", "rows": 569, "sha256": "ab" * 32,
              "output_uri": out, "duration_seconds": 0.5}  # fmt: skip
    finish_pod(cluster.core, pod_of(cluster, job_name), exit_code=0, message=json.dumps(result))
    status = wait_for(
        lambda: (
            (s := cluster.status("BatchPrediction", "nightly")).get("observedJob") == job_name and s
        ),
        "the scheduled run's result in status",
        state=lambda: cluster.get("BatchPrediction", "nightly"),
    )
    assert status["lastScheduleTime"] == rfc3339(tick)
    assert (status["rows"], status["outputSha256"]) == (569, "ab" * 32)
    assert status["modelVersion"] == "cancer-v1"
    assert status["phase"] == "Scheduled"
    assert cluster.condition("BatchPrediction", "nightly", "Succeeded")["status"] == "True"
    assert cluster.condition("BatchPrediction", "nightly")["status"] == "True"

    suspend_then_unschedule(cluster, cronjob["metadata"]["name"])


def test_an_output_inside_the_model_store_is_an_invalid_spec(cluster, operator, store):
    into_models = (store / "models" / "x" / "model.onnx").as_uri()
    cluster.apply(
        batch_prediction("overwrite", modelRef={"name": "cancer-v1"}, output={
            "uri": into_models, "format": "csv"})
    )  # fmt: skip
    ready = wait_for(
        lambda: (
            cluster.condition("BatchPrediction", "overwrite").get("reason") == "InvalidSpec"
            and cluster.condition("BatchPrediction", "overwrite")
        ),
        "Ready=False InvalidSpec",
        state=lambda: cluster.get("BatchPrediction", "overwrite"),
    )
    assert ready["status"] == "False"
    assert f"predictions/{cluster.namespace}/" in ready["message"]
    assert not cluster.list("Job", "batch/v1", SELECTOR.format("overwrite"))


def test_a_schedule_following_the_newest_version_moves_its_cronjob_to_it(
    cluster, operator, data_csv, tmp_path, store
):
    dataset_ready_fast(cluster, data_csv, tmp_path)
    publish(cluster, store, 1)
    out = output_uri(store, cluster.namespace, "latest.parquet")
    cluster.apply(
        batch_prediction("latest", "BatchPrediction-nightly", modelRef={"modelName": "cancer"},
                         output={"uri": out})
    )  # fmt: skip

    def scored_model() -> str:
        cronjob = cronjob_of(cluster, "latest")
        return str(
            cronjob["spec"]["jobTemplate"]["metadata"]["annotations"][
                prediction.MODEL_VERSION_ANNOTATION
            ]
        )

    wait_for(lambda: scored_model() == "cancer-v1", "the CronJob to score cancer-v1")
    publish(cluster, store, 2)
    wait_for(lambda: scored_model() == "cancer-v2", "the CronJob to move to cancer-v2")
    args = cronjob_of(cluster, "latest")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    mv = cluster.get("ModelVersion", "cancer-v2")
    assert mv is not None
    assert args[args.index("--model") + 1] == mv["spec"]["artifact"]["uri"]
    status = wait_for(
        lambda: (s := cluster.status("BatchPrediction", "latest")).get("version") == 2 and s,
        "status to name version 2",
    )
    assert status["modelVersion"] == "cancer-v2"
    assert len(cluster.list("CronJob", "batch/v1", SELECTOR.format("latest"))) == 1
