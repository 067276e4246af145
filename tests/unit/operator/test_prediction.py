"""BatchPrediction's pure part: which versions a run scores, its Job or CronJob, and the
status a finished Job yields."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeloop.api.v1alpha1 import BatchPredictionSpec, DatasetRef, ModelRef
from kubeloop.contracts.results import (
    EXIT_BAD_INPUT,
    TERMINATION_LOG,
    TERMINATION_LOG_ENV,
    JobResult,
)
from kubeloop.contracts.storage import CREDENTIAL_KEYS
from kubeloop.operator import prediction
from kubeloop.operator.handlers.jobs import Finished
from kubeloop.operator.prediction import NotYetError, Target
from kubeloop.operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
DIGEST = "sha256:" + "ab" * 32
SHA = "cd" * 32


@pytest.fixture
def settings() -> OperatorSettings:
    return OperatorSettings(
        volume_claim="kubeloop-data",
        artifact_root="file:///data/kubeloop",
        artifacts_secret="store-creds",
        trainer_image="kubeloop-trainer:test",
    )


def bp(example: str = "batchprediction", **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="0123456789abcdef", generation=1)
    doc["spec"].update(spec)
    return doc


def spec_of(doc: dict[str, Any]) -> BatchPredictionSpec:
    return BatchPredictionSpec.model_validate(doc["spec"])


def chosen() -> Target:
    return Target(
        model_name="breast-cancer",
        model_version="breast-cancer-v2",
        version=2,
        model_uri="file:///data/kubeloop/models/ml/t-0123/model.onnx",
        model_sha256=SHA,
        dataset_version=DIGEST,
        data_uri=f"file:///data/kubeloop/datasets/ml/breast-cancer/{DIGEST}/data.csv",
        data_format="csv",
    )


def mv(version: int, *, ready: bool = True, rejected: bool = False, model: str = "cancer"):
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if rejected:
        conditions.append({"type": "Rejected", "status": "True"})
    return {
        "metadata": {"name": f"{model}-v{version}"},
        "spec": {
            "modelName": model,
            "version": version,
            "artifact": {"uri": f"s3://m/{version}/model.onnx", "sha256": SHA},
        },
        "status": {"conditions": conditions},
    }


# ------------------------------------------------------------------ names


def test_one_off_job_name_is_stable_and_follows_the_spec_not_suspend():
    doc = bp()
    name = prediction.job_name(doc, spec_of(doc))
    assert name == prediction.job_name(copy.deepcopy(doc), spec_of(doc))
    assert name.startswith("breast-cancer-scores-predict-01234-")
    assert len(name) <= 63
    suspended = bp(suspend=True)
    assert prediction.job_name(suspended, spec_of(suspended)) == name
    moved = bp(output={"uri": "s3://b/other.csv"})
    assert prediction.job_name(moved, spec_of(moved)) != name
    successor = bp()
    successor["metadata"]["uid"] = "fedcba9876543210"
    assert prediction.job_name(successor, spec_of(successor)) != name


def test_cronjob_name_leaves_room_for_the_controllers_suffix():
    long = bp("batchprediction-nightly")
    long["metadata"]["name"] = "n" * 63
    name = prediction.cronjob_name(long)
    assert len(name) <= prediction.CRONJOB_NAME_LIMIT
    assert name.endswith("-01234")
    assert prediction.cronjob_name(bp("batchprediction-nightly")) == "breast-cancer-nightly-01234"


def test_scheduled_job_name_is_the_cronjob_controllers():
    scheduled = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)
    minutes = int(scheduled.timestamp()) // 60
    assert prediction.scheduled_job_name("n-01234", scheduled) == f"n-01234-{minutes}"


# ------------------------------------------------------------------ the Job and the CronJob


def test_job_runs_predict_on_the_chosen_versions_with_the_store_settings(settings):
    doc = bp(output={"uri": "s3://b/scores", "format": "csv"})
    job = prediction.build_prediction_job(doc, spec_of(doc), chosen(), settings)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    target = chosen()
    assert job["metadata"]["name"] == prediction.job_name(doc, spec_of(doc))
    assert job["metadata"]["ownerReferences"][0]["kind"] == "BatchPrediction"
    assert container["image"] == "kubeloop-trainer:test"
    assert container["args"] == [
        "predict",
        "--model", target.model_uri,
        "--sha256", SHA,
        "--data", target.data_uri,
        "--data-format", "csv",
        "--out", "s3://b/scores",
        "--format", "csv",
    ]  # fmt: skip
    env = {e["name"]: e for e in container["env"]}
    assert env[TERMINATION_LOG_ENV]["value"] == TERMINATION_LOG
    for key in CREDENTIAL_KEYS:  # the artifacts Secret, as trainer Jobs get it
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "store-creds"
    assert container["terminationMessagePolicy"] == "File"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["kubeloop-data"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert job["metadata"]["annotations"] == {
        prediction.MODEL_VERSION_ANNOTATION: "breast-cancer-v2",
        prediction.VERSION_ANNOTATION: "2",
        prediction.DATASET_VERSION_ANNOTATION: DIGEST,
    }
    assert job["metadata"]["labels"][prediction.BATCH_PREDICTION_LABEL] == "breast-cancer-scores"
    assert job["metadata"]["labels"]["kubeloop.io/model"] == "breast-cancer"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert EXIT_BAD_INPUT in rules[0]["onExitCodes"]["values"]  # bad input is not retried


def test_output_format_comes_from_the_uri_when_not_given(settings):
    doc = bp()
    args = prediction.build_prediction_job(doc, spec_of(doc), chosen(), settings)["spec"][
        "template"
    ]["spec"]["containers"][0]["args"]
    assert "--format" not in args
    assert args[args.index("--out") + 1].endswith(".parquet")


def test_cronjob_wraps_the_same_job_on_the_schedule(settings):
    doc = bp("batchprediction-nightly")
    spec = spec_of(doc)
    cron = prediction.build_prediction_cronjob(doc, spec, chosen(), settings)
    job = prediction.build_prediction_job(doc, spec, chosen(), settings)
    assert cron["kind"] == "CronJob"
    assert cron["metadata"]["name"] == prediction.cronjob_name(doc)
    assert cron["metadata"]["ownerReferences"][0]["uid"] == "0123456789abcdef"
    assert cron["spec"]["schedule"] == "0 3 * * *"
    assert cron["spec"]["suspend"] is False
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    template = cron["spec"]["jobTemplate"]
    assert template["spec"] == job["spec"]
    assert template["metadata"]["annotations"] == job["metadata"]["annotations"]
    suspended = bp("batchprediction-nightly", suspend=True)
    cron = prediction.build_prediction_cronjob(suspended, spec_of(suspended), chosen(), settings)
    assert cron["spec"]["suspend"] is True


# ------------------------------------------------------------------ resolution


def test_a_model_version_by_name_must_exist_and_be_ready():
    ref = ModelRef(name="cancer-v2")
    with pytest.raises(NotYetError) as missing:
        prediction.resolve_model(ref, [mv(1)])
    assert missing.value.waiting.reason == "ModelVersionNotFound"
    with pytest.raises(NotYetError) as unready:
        prediction.resolve_model(ref, [mv(2, ready=False)])
    assert unready.value.waiting.reason == "ModelNotReady"
    found, number = prediction.resolve_model(ref, [mv(1), mv(2, rejected=True)])
    assert (found["metadata"]["name"], number) == ("cancer-v2", 2)  # naming it overrides


def test_a_model_by_name_follows_the_deployments_policy():
    versions = [mv(1), mv(2), mv(3, rejected=True), mv(4, ready=False), mv(9, model="other")]
    latest = prediction.resolve_model(ModelRef(model_name="cancer"), versions)
    assert latest[1] == 2  # newest Ready, not Rejected
    pinned = ModelRef.model_validate(
        {"modelName": "cancer", "version": {"policy": "Pinned", "pinned": 3}}
    )
    assert prediction.resolve_model(pinned, versions)[1] == 3
    with pytest.raises(NotYetError) as none:
        prediction.resolve_model(ModelRef(model_name="cancer"), [mv(1, ready=False)])
    assert none.value.waiting.reason == "NoReadyVersion"
    assert "a version of cancer" in none.value.waiting.message
    pinned_missing = ModelRef.model_validate(
        {"modelName": "cancer", "version": {"policy": "Pinned", "pinned": 7}}
    )
    with pytest.raises(NotYetError, match="version 7 of cancer"):
        prediction.resolve_model(pinned_missing, versions)


def dataset(fmt: str = "csv", version: str | None = DIGEST, ready: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": str(ready)}]}
    if version:
        status["version"] = version
    return {
        "metadata": {"name": "cancer", "namespace": "ml"},
        "spec": {"source": {"path": "/data/x"}, "format": fmt},
        "status": status,
    }


def locate(ds: dict[str, Any], version: str) -> str:
    return f"file:///store/{ds['metadata']['name']}/{version}"


def test_the_data_version_is_the_pinned_one_else_the_current_one():
    current = prediction.resolve_data(DatasetRef(name="cancer"), dataset(), locate)
    assert current == (DIGEST, f"file:///store/cancer/{DIGEST}", "csv")
    other = "sha256:" + "01" * 32
    pinned = prediction.resolve_data(DatasetRef(name="cancer", version=other), dataset(), locate)
    assert pinned[0] == other
    assert pinned[1].endswith(other)
    parquet = prediction.resolve_data(DatasetRef(name="cancer"), dataset("parquet"), locate)
    assert parquet[2] == "parquet"


@pytest.mark.parametrize(
    ("found", "reason"),
    [
        (None, "DatasetNotFound"),
        (dataset(version=None, ready=False), "DatasetNotReady"),
        (dataset("jsonl"), "UnsupportedDataFormat"),
    ],
)
def test_no_data_version_yet_says_why(found, reason):
    with pytest.raises(NotYetError) as info:
        prediction.resolve_data(DatasetRef(name="cancer"), found, locate)
    assert info.value.waiting.reason == reason


@pytest.mark.parametrize(
    ("uri", "refused"),
    [
        ("s3://bucket/scores.csv", False),
        ("/elsewhere/scores.csv", False),
        ("file:///data/kubeloop/predictions/ml/scores.csv", False),
        ("/data/kubeloop/predictions/ml/nightly/scores.csv", False),
        ("file:///data/kubeloop/models/ml/t-0123/model.onnx", True),
        ("/data/kubeloop/datasets/ml/cancer/data.csv", True),
        ("file:///data/kubeloop/predictions/other/scores.csv", True),
        ("file:///data/kubeloop/predictions/ml/../../models/x.csv", True),
        ("file:///data/kubeloop/scores.csv", True),
    ],
)
def test_a_prediction_may_not_overwrite_the_artifact_store(settings, uri, refused):
    answer = prediction.output_refused(uri, settings, "ml")
    assert (answer is not None) is refused, answer
    if refused:
        assert "predictions/ml/" in str(answer)


# ------------------------------------------------------------------ a finished run


def finished_job(**status: Any) -> dict[str, Any]:
    doc = bp()
    job = prediction.build_prediction_job(
        doc, spec_of(doc), chosen(), OperatorSettings(trainer_image="t")
    )
    job["status"] = status
    return job


def test_a_succeeded_run_reports_rows_digest_and_the_versions_its_job_scored():
    result = JobResult(
        kind="predict",
        status="succeeded",
        rows=569,
        sha256="ef" * 32,
        output_uri="s3://b/scores.parquet",
        duration_seconds=1.25,
    )
    job = finished_job(startTime="2026-12-03T03:00:01Z", completionTime="2026-12-03T03:00:09Z")
    out = prediction.run_outcome(job, Finished("Succeeded", result, ""))
    assert out.succeeded
    assert out.reason == "PredictionSucceeded"
    assert out.fields == {
        "observedJob": job["metadata"]["name"],
        "modelVersion": "breast-cancer-v2",
        "version": 2,
        "datasetVersion": DIGEST,
        "rows": 569,
        "durationSeconds": 1.25,
        "outputUri": "s3://b/scores.parquet",
        "outputSha256": "ef" * 32,
        "reason": None,
    }
    assert "569 rows" in out.message
    assert prediction.run_times(job) == ("2026-12-03T03:00:01Z", "2026-12-03T03:00:09Z")


def test_a_failed_run_keeps_the_predict_reason_else_the_jobs():
    bad = JobResult(kind="predict", status="failed", reason="column 'age': missing from the data")
    failed = {"type": "Failed", "status": "True", "lastTransitionTime": "2026-12-03T03:01:00Z"}
    job = finished_job(startTime="2026-12-03T03:00:01Z", conditions=[failed])
    out = prediction.run_outcome(job, Finished("Failed", bad, "BackoffLimitExceeded"))
    assert not out.succeeded
    assert out.reason == "PredictionFailed"
    assert out.fields["reason"] == "column 'age': missing from the data"
    assert "rows" not in out.fields
    assert prediction.run_times(job)[1] == "2026-12-03T03:01:00Z"
    crashed = prediction.run_outcome(job, Finished("Failed", None, "DeadlineExceeded: too long"))
    assert crashed.fields["reason"] == "DeadlineExceeded: too long"


def test_a_completed_job_without_a_prediction_result_failed():
    other = JobResult(kind="train", status="succeeded", rows=3, sha256="ab" * 32)
    for result in (None, other):
        out = prediction.run_outcome(finished_job(), Finished("Succeeded", result, ""))
        assert not out.succeeded
        assert "no output" in out.message
